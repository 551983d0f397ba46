"""What runs inside a Ray Tune trial: constraints first, then `execute_trial`, reporting to Tune as it trains.

Kept apart from study.search.driver so that Ray workers import only what a trial needs.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from study.config import TrialConfig, make_config
from study.core.io import write_json_atomic
from study.core.run_dir import RunDir, trial_name
from study.search.crash import capture_stderr
from study.search.plan import CONFIG_KEY, TrialContext
from study.search.space import CONSTRAINTS
from study.search.told import KEPT, drop_kept_checkpoint, read_told
from study.trial.run import TrialHooks, architecture_costs, execute_trial, record_config, record_metrics


def constraint_violations(costs: dict, constraints: dict) -> list[str]:
    """The constraints `costs` break, one sentence each with the values (none: the trial may train)."""
    out = []
    for key, bound in constraints.items():
        metric = CONSTRAINTS[key]
        if costs.get(metric) is not None and costs[metric] > bound:
            out.append(f"{metric} {costs[metric]:,.4g} > {key} {bound:,.4g}")
    return out


def reportable(metrics: dict) -> dict:
    """Ray results must be plain scalars; drop lists/None, keep numbers and strings."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, (int, float, str, bool)) and not (isinstance(v, float) and math.isnan(v))}


# Deterministic cost counts of the model being trained, reported as rung_<name> for early stopping.
RUNG_COSTS = ("params", "nonzero_params", "macs")


class RayHooks(TrialHooks):
    """Report val_acc to Tune, keep a resumable checkpoint in the trial's folder, and report the final
    architecture costs and the costs of the model being trained right now (rung_*: the dense student before
    pruning, the pruned one after) for MO-ASHA.

    A report is a round trip to the Tune driver plus the checkpoint copy (a sizeable part of a short epoch:
    docs/HOW_IT_RUNS.md), so a trial reports at the scheduler's rung epochs (`report_epochs`, counted from 1) and
    otherwise only once `report_every_s` seconds have passed since its last report: short trials report only where
    early stopping needs them, long ones (GPU epochs of minutes) every epoch. progress.json in the trial
    directory is updated after every epoch.
    """

    def __init__(self, costs: dict, dense_costs: dict | None = None, trial_dir: Path | None = None,
                 report_epochs: list[int] | tuple[int, ...] = (), report_every_s: float = 0.0,
                 ids: dict[str, Any] | None = None):
        self.costs = costs  # from architecture_costs, which pruned an untrained copy as the trial will
        self.architecture_checked = True
        self.trial_dir = trial_dir
        self.report_epochs = set(report_epochs)
        self.report_every_s = report_every_s
        self._last_report = time.monotonic()
        self._due = False
        # in every report: lets the searcher find the Optuna trial even when its own state was restored from an
        # older snapshot (trial_number, trial_dir), and record the trial's config (trial_config)
        if ids is None:
            ids = {"trial_number": int(trial_dir.name), "trial_dir": trial_name(int(trial_dir.name))} if trial_dir \
                else {}
        self.ids = {k: v for k, v in ids.items() if k in ("trial_number", "trial_dir", CONFIG_KEY)}
        self.rung = {"distill": {f"rung_{k}": (dense_costs or costs)[k] for k in RUNG_COSTS},
                     "finetune": {f"rung_{k}": costs[k] for k in RUNG_COSTS}}
        self._resume_tmp: str | None = None  # where a Ray checkpoint was unpacked; removed after the trial

    def wants_checkpoint(self, epoch: int, total_epochs: int) -> bool:
        """Called after each epoch, before on_epoch: is a report (with its checkpoint) due after this one?

        Never after the last epoch: the trial reports "complete" with its final metrics moments later, and Ray's
        ASHA has a rung at max_t whenever max_t / grace is a power of eta (grace 1, eta 3, 9 epochs: rungs 1, 3,
        9), where a "running" report could stop a fully trained trial before it is measured."""
        self._due = epoch + 1 < total_epochs and (epoch + 1 in self.report_epochs
                                                  or time.monotonic() - self._last_report >= self.report_every_s)
        return self._due

    def on_epoch(self, epoch: int, total_epochs: int, val_acc: float, log: dict, checkpoint_dir: Path | None) -> None:
        """Report to Tune (with the checkpoint kept first) when a report is due; update progress.json."""
        from ray import tune

        if self._due:
            result = {**self.costs, **self.rung[log["phase"]], **self.ids, "status": "running", "epoch": epoch + 1,
                      "val_acc": val_acc, "loss": log["loss"], "phase": log["phase"]}
            # The checkpoint is the trial's own (trials/<n>/checkpoint/, on the run folder every node shares), not
            # Tune's: Tune restores a killed study's trials from the checkpoint its last experiment snapshot names,
            # and with num_to_keep that one can be deleted by then, so Trainable.restore raises "does not exist on
            # storage anymore" before the trial runs and the trial ended FAIL. Reported without a checkpoint, Tune
            # restarts it and resume_dir() continues from the kept copy. Kept before the report: never older.
            if checkpoint_dir is not None and self.trial_dir is not None:
                keep_checkpoint(self.trial_dir, checkpoint_dir, epoch + 1)
            tune.report(result)
            self._last_report = time.monotonic()
        if self.trial_dir is not None:  # progress a user (or a test) can watch: epochs done, last report
            write_json_atomic(self.trial_dir / "progress.json", {"epoch": epoch + 1, "total_epochs": total_epochs,
                                                                 "val_acc": val_acc, "phase": log["phase"],
                                                                 "reported": self._due}, durable=False)

    def resume_dir(self) -> Path | None:
        """The trial's newest checkpoint: its own copy in trials/<n>/checkpoint/ (as new as its last report), else
        one Tune restored (a study started by a version that reported its checkpoints to Tune)."""
        from ray import tune

        own = kept_checkpoint(self.trial_dir) if self.trial_dir is not None else None
        if own is not None:
            return own
        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        self._resume_tmp = tempfile.mkdtemp(prefix="kdstudy-resume-")
        ckpt.to_directory(self._resume_tmp)
        return Path(self._resume_tmp)

    def log(self, msg: str) -> None:
        """A trial's message, on stdout (Ray shows it with the trial's name)."""
        print(msg, flush=True)

    def cleanup(self) -> None:
        """Remove the folder a Ray checkpoint was unpacked into (resume_dir), if any."""
        if self._resume_tmp:
            shutil.rmtree(self._resume_tmp, ignore_errors=True)


def keep_checkpoint(trial_dir: Path, checkpoint_dir: Path, epoch: int) -> None:
    """Copy a reported checkpoint to trials/<n>/checkpoint/<epoch, 5 digits>/ (under a temp name, then renamed,
    so a kill mid-copy leaves the previous one whole) and drop the older ones."""
    root = trial_dir / KEPT
    root.mkdir(exist_ok=True)
    final = root / f"{epoch:05d}"
    tmp = root / f".{epoch:05d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint_dir, tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in root.iterdir():
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def kept_checkpoint(trial_dir: Path) -> Path | None:
    """The newest whole checkpoint keep_checkpoint left in trial_dir, or None."""
    root = trial_dir / KEPT
    done = sorted(p for p in root.glob("[0-9]*") if (p / "state.json").is_file()) if root.is_dir() else []
    return done[-1] if done else None


def _finished_metrics(trial_dir: Path, cfg: TrialConfig) -> dict | None:
    """metrics.json of this trial when it finished with exactly this config (a driver kill that Tune's last
    snapshot missed), else None."""
    path = trial_dir / "metrics.json"
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    from study.config import CONFIG_FIELDS, LEGACY_DEFAULTS

    # a field added after the trial ran is absent from its metrics: its default then is what the trial used
    same = all(metrics.get(k, LEGACY_DEFAULTS.get(k, CONFIG_FIELDS[k].default)) == v for k, v in cfg.to_dict().items())
    return metrics if metrics.get("status") == "complete" and same else None


def search_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """Ray Tune function trainable. config: sampled params + trial_number; ctx: the study's fixed context."""
    number = config["trial_number"]
    trial_dir = RunDir(ctx.run_dir).trial(number)
    trial_dir.mkdir(parents=True, exist_ok=True)
    with capture_stderr(trial_dir):  # a native crash leaves its signal and last words in trials/<n>/stderr.log
        try:
            _search_trial(config, ctx, number, trial_dir)
        except BaseException:  # escaped the trial's own handling (Tune's session, a stop): its traceback goes to
            traceback.print_exc()  # stderr.log too; Ray keeps its copy only in its temp folder
            raise


def _search_trial(config: dict[str, Any], ctx: TrialContext, number: int, trial_dir: Path) -> None:
    """One search trial: replayed when it already ended, recorded infeasible when over a constraint, else
    trained; every outcome is reported to Tune, a failure as status "failed" with its reason."""
    from ray import tune

    base: dict[str, Any] = {"trial_number": number, "trial_dir": trial_name(number), "epoch": 0}
    told = read_told(trial_dir)
    if told is not None:  # Optuna knows how it ended (Tune restored it as running after a kill): never rerun
        tune.report({**base, **reportable(told["result"]), "status": told["status"], "replayed": True})
        return
    try:
        cfg = make_config(ctx.trial, {k: v for k, v in config.items() if k != "trial_number"},
                          source=ctx.space_file)
        if not ctx.gpu:
            cfg = cfg.replace(device="cpu")
        record_config(trial_dir, cfg)  # the fully resolved config, also for trials never trained
        base[CONFIG_KEY] = cfg.to_dict()  # the searcher records it in the trial's user attrs
        tune.report(_trained_or_infeasible(cfg, ctx, trial_dir, base))
    except Exception as exc:  # noqa: BLE001  a failing trial (pruning error, NaN loss) must not stop the study
        text = f"{type(exc).__name__}: {exc}"
        (trial_dir / "error.txt").write_text(traceback.format_exc())
        drop_kept_checkpoint(trial_dir)
        tune.report({**base, "status": "failed", "error": text[:2000]})


def _trained_or_infeasible(cfg: TrialConfig, ctx: TrialContext, trial_dir: Path, base: dict[str, Any]) -> dict:
    """The trial's final result: its metrics when it finished before (never rerun), its costs when it breaks a
    constraint (never trained: recorded with the reason), else its metrics after training it."""
    total = cfg.epochs + cfg.finetune_epochs
    done = _finished_metrics(trial_dir, cfg)
    if done is not None:
        return {**base, **reportable(done), "status": "complete", "epoch": total}
    costs = architecture_costs(cfg, ctx.num_classes, ctx.input_shape, latency=ctx.needs_latency)
    violations = constraint_violations(costs, ctx.constraints)
    if violations:
        reason = "infeasible: " + "; ".join(violations)
        record_metrics(trial_dir, {**costs, **cfg.to_dict(), "status": "infeasible", "error": reason})
        return {**base, **costs, "status": "infeasible", "error": reason}
    dense = architecture_costs(cfg.replace(prune_method="none", prune_ratio=0.0), ctx.num_classes,
                               ctx.input_shape, latency=False)
    hooks = RayHooks(costs, dense, trial_dir, ctx.report_epochs, ctx.report_every_s, ids=base)
    try:
        metrics = execute_trial(cfg, out_dir=trial_dir, teacher_path=Path(ctx.teacher_path) if ctx.teacher_path
                                else None, hooks=hooks, add_metrics={"status": "complete"}, config_recorded=True)
    finally:
        hooks.cleanup()
    drop_kept_checkpoint(trial_dir)  # trained: metrics.json is what a rerun reuses
    return {**base, **reportable(metrics), "status": "complete", "epoch": total}

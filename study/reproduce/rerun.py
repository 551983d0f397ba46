"""`kdstudy reproduce RUN_DIR (--rank K | --knee | --trial N | --baseline NAME) [--seeds S] [--epochs E]`: rerun a
trial of a study, or one of its baselines, and export it.

The model is rerun from its saved, fully resolved config (RUN_DIR/trials/<n>/config.yaml, or
RUN_DIR/baselines/<name>/config.yaml for a baseline trained beside the search), never re-sampled.

What to rerun (one of):
  --rank K          the K-th trial of the front by the rank rule below (1 = the most accurate)
  --knee            the front's knee, as benchmark.json names it (`python -m benchmarks RUN_DIR` writes it)
  --trial N         any trial that finished training, by its Optuna number; one line says when it is off the front
  --baseline NAME   a baseline of the space's `baselines:`: the search trial it was enqueued as, or the model
                    trained beside the search (outside the space)

Rank rule (--rank K): the front is the Pareto set (as Optuna's study.best_trials) of the trials that finished
training (state COMPLETE and search status "complete"). Trials over --max-latency-ms (latency_ms_bs1) or
--max-params (params, all stored weights) are dropped, using the values the search measured. The rest are sorted
by validation accuracy, highest first; ties go to fewer params, then lower latency, then the lower trial number.
K = 1 is the first.

Seeds: seed i (i = 0 .. S-1) runs the config with seed = config.seed + i and split_seed = the study's split seed,
so seed 0 repeats the search's run. The seed varies the student's initialisation, the augmentation schedule and
the batch order; the train/validation split, the teacher (the study's file) and the test split stay fixed, so
the validation and test accuracy mean +- std are over the same images, and the teacher never saw the validation
images.

Before training, differences to the study (data set, teacher file, code and torch versions, device) are printed
as WARNING lines and kept in the summary; they do not stop the run.

Output, RUN_DIR/reproduce/<trial>/ (reproduce/baseline-<name>/ for a baseline trained beside the search):
  seed_<s>/config.yaml, metrics.json, epochs.csv, model.pt   one execute_trial per seed; reproduce.json marks it
                                                             finished (a finished seed is reused on a rerun);
                                                             with --epochs E other than the search's: seed_<s>_e<E>/
  summary.json                                               per-seed metrics, mean +- std, diff to the search
                                                             (of the latest reproduce of this trial)
  export/                                                    model.pt2 (torch.export) of seed 0, model_card.md,
                                                             predict.py, meta.json, example images and logits
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from study.config import CONFIG_FIELDS, TrialConfig, load_config, make_config
from study.core.errors import UserError
from study.core.fmt import fmt_value
from study.core.io import (
    code_version,
    dataset_sha256,
    portable_path,
    replace_dir_atomic,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)
from study.core.run_dir import RunDir, trial_name
from study.search.plan import StudyPlan
from study.search.results import front_trials, load_study_plan, open_study
from study.trial.run import TrialHooks

RANK_RULE = ("front = Optuna's Pareto-optimal trials that finished training; drop those over --max-latency-ms "
             "(latency_ms_bs1) or --max-params (params) as measured by the search; sort by val_acc (highest "
             "first), ties by fewer params, lower latency, lower trial number; --rank K takes the K-th (1 = best)")
SEEDS_VARY = ("seed = config seed + i: varies the student init, augmentation and batch order; "
              "train/val split, teacher and test split fixed")
PER_SEED_KEYS = ("test_acc", "val_acc", "params", "nonzero_params", "macs", "latency_ms_bs1", "latency_threads",
                 "latency_device_used", "latency_backend_used", "latency_ms_bs1_torch", "latency_ms_bs1_onnxruntime",
                 "val_acc_fp32", "test_acc_fp32", "wall_s")


def _log(msg: str) -> None:
    # stderr: stdout carries the summary JSON the CLI prints at the end.
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- the study
@dataclass
class FrontTrial:
    """A model reproduce can rerun: a trial of the study (on the front or not), or a baseline trained beside the
    search (number None, `baseline` its name)."""

    number: int | None
    metrics: dict = field(repr=False)  # what the search measured (user_attrs["metrics"] or metrics.json)
    user_attrs: dict = field(repr=False, default_factory=dict)
    baseline: str | None = None  # the baseline's name (an enqueued baseline has its trial number too)

    def get(self, key: str) -> Any:
        """A metric the search measured (None when absent)."""
        return self.metrics.get(key)

    @property
    def folder(self) -> str:
        """Its folder relative to the run dir: its trial's, or baselines/<name> for a baseline beside the search."""
        return trial_name(self.number) if self.number is not None else f"baselines/{self.baseline}"

    @property
    def key(self) -> str:
        """Its folder name under reproduce/: the trial number, or baseline-<name>."""
        return str(self.number) if self.number is not None else f"baseline-{self.baseline}"

    @property
    def label(self) -> str:
        """How the model is named in lines: trial N (baseline NAME), or baseline NAME."""
        if self.number is None:
            return f"baseline {self.baseline}"
        return f"trial {self.number}" + (f" (baseline {self.baseline})" if self.baseline else "")

    def sort_key(self) -> tuple:
        """The rank rule's order: higher val_acc, then fewer params, lower latency, lower number."""
        inf = float("inf")
        val, params, lat = self.get("val_acc"), self.get("params"), self.get("latency_ms_bs1")
        return (-(val if val is not None else -inf), params if params is not None else inf,
                lat if lat is not None else inf, self.number)


def _front_trial(t, run_dir: Path) -> FrontTrial:
    metrics = dict(t.user_attrs.get("metrics") or {})
    path = RunDir(run_dir).trial(t.number) / "metrics.json"
    if not metrics and path.is_file():
        metrics = json.loads(path.read_text())
    return FrontTrial(t.number, metrics, dict(t.user_attrs), t.user_attrs.get("baseline"))


def pareto_front(study, run_dir: Path) -> list[FrontTrial]:
    """Pareto-optimal trials among those that finished training, sorted by the rank rule (before any filter).

    The set is study.search.results.front_trials (the one front rule, also the run's printed Pareto table): Optuna's
    study.best_trials when every COMPLETE trial finished, but a trial marked COMPLETE with partial values (status
    early_stopped) can neither enter the front nor hide others.
    """
    return sorted((_front_trial(t, run_dir) for t in front_trials(study)), key=FrontTrial.sort_key)


def select_trial(front: list[FrontTrial], run_dir: Path, *, rank: int | None = None, trial: int | None = None,
                 max_latency_ms: float | None = None, max_params: float | None = None,
                 all_numbers: set[int] | None = None) -> FrontTrial:
    """Apply the rank rule (module docstring) or pick --trial N of the front; errors name the run dir and the fix."""
    numbers = ", ".join(str(t.number) for t in front) or "none"
    if not front:
        raise UserError(f"{run_dir}: no trial finished training, so the Pareto front is empty; run the study "
                        "(longer) first.")
    if (rank is None) == (trial is None):
        raise UserError("give exactly one of --rank K or --trial N.")
    if trial is not None:
        if max_latency_ms is not None or max_params is not None:
            raise UserError("--max-latency-ms and --max-params select among the front with --rank; drop them "
                            "when you give --trial.")
        for t in front:
            if t.number == trial:
                return t
        what = "is not a trial of this study" if all_numbers is not None and trial not in all_numbers else \
            "is not on the Pareto front (or did not finish training)"
        raise UserError(f"{run_dir}: trial {trial} {what}; use one of the front's trials: {numbers}.")
    assert rank is not None
    kept = [t for t in front
            if (max_latency_ms is None or (t.get("latency_ms_bs1") is not None
                                           and t.get("latency_ms_bs1") <= max_latency_ms))
            and (max_params is None or (t.get("params") is not None and t.get("params") <= max_params))]
    if not kept:
        limits = " and ".join(s for s in (f"latency_ms_bs1 <= {max_latency_ms:g}" if max_latency_ms is not None
                                          else "", f"params <= {max_params:,.0f}" if max_params is not None else "")
                              if s)
        raise UserError(f"{run_dir}: no trial of the Pareto front (trials {numbers}) has {limits}; "
                        "relax --max-latency-ms / --max-params.")
    if not 1 <= rank <= len(kept):
        raise UserError(f"{run_dir}: --rank {rank} is out of range: {len(kept)} front trial(s) pass the filters "
                        f"(trials {', '.join(str(t.number) for t in kept)}); use --rank 1 to {len(kept)}.")
    return kept[rank - 1]


def any_trial(study, run_dir: Path, number: int, front: list[FrontTrial], log=None) -> FrontTrial:
    """Trial `number` if it finished training, on the front or not (`log` gets one line when it is off the front);
    an unknown or unfinished trial is an error that names the complete ones."""
    from optuna.trial import TrialState

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    complete = [n for n, t in sorted(trials.items()) if t.state == TrialState.COMPLETE
                and t.user_attrs.get("status", "complete") == "complete" and t.values is not None]
    choices = ", ".join(str(n) for n in complete) or "none yet"
    if number not in trials:
        raise UserError(f"{run_dir}: trial {number} is not a trial of this study (trials 0 to {len(trials) - 1}); "
                        f"use --trial with a trial that finished training: {choices}.")
    if number not in complete:
        t = trials[number]
        how = t.user_attrs.get("status") or t.state.name.lower()
        raise UserError(f"{run_dir}: trial {number} did not finish training ({how}), so there is no model to "
                        f"rerun; use --trial with one that did: {choices}.")
    on_front = [t.number for t in front]
    if number not in on_front and log is not None:
        log(f"trial {number} is not on the Pareto front (front: {', '.join(map(str, on_front))}); "
            "reproducing and exporting it anyway")
    return _front_trial(trials[number], run_dir)


def knee_trial(run_dir: Path) -> int:
    """The knee's trial number from benchmark.json (benchmarks.collect.knee wrote it)."""
    path = RunDir(run_dir).benchmark_json
    try:
        knee = json.loads(path.read_text()).get("knee")
    except (OSError, ValueError, AttributeError):
        knee = None
    if not isinstance(knee, dict) or knee.get("trial") is None:
        raise UserError(f"{path} names no knee (missing, unreadable or an empty front); run `python -m benchmarks "
                        f"{run_dir}` first, or pick a model with --rank K or --trial N.")
    return int(knee["trial"])


def baseline_entry(run_dir: Path, plan: StudyPlan, name: str) -> FrontTrial | int:
    """--baseline NAME: the trial number it was enqueued as, or the baseline trained beside the search."""
    entries = plan.baselines
    if name not in entries:
        names = ", ".join(entries) or "none (the space lists `baselines: []`, or the study predates baselines)"
        raise UserError(f"{run_dir}: --baseline {name}: no such baseline in this study; its baselines: {names}.")
    number = entries[name].trial
    if number is not None:
        return int(number)
    path = RunDir(run_dir).baseline(name) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path} is missing or unreadable: baseline {name} did not finish training beside the "
                        "search; resume the study to train it, or pick another model.") from None
    return FrontTrial(None, metrics, {}, name)


def choose(study, run_dir: Path, plan: StudyPlan, *, rank: int | None = None, knee: bool = False,
           trial: int | None = None, baseline: str | None = None, max_latency_ms: float | None = None,
           max_params: float | None = None, log=_log) -> tuple[FrontTrial, list[FrontTrial]]:
    """The model to rerun by exactly one of rank, knee, trial or baseline (module docstring), and the front."""
    if sum((rank is not None, bool(knee), trial is not None, baseline is not None)) != 1:
        raise UserError("give exactly one of --rank K, --knee, --trial N or --baseline NAME.")
    if rank is None and (max_latency_ms is not None or max_params is not None):
        raise UserError("--max-latency-ms and --max-params select among the front with --rank; drop them, or use "
                        "--rank.")
    front = pareto_front(study, run_dir)
    if rank is not None:
        return select_trial(front, run_dir, rank=rank, max_latency_ms=max_latency_ms, max_params=max_params), front
    if baseline is not None:
        found = baseline_entry(run_dir, plan, baseline)
        if isinstance(found, FrontTrial):
            return found, front
        trial = found
    number = knee_trial(run_dir) if knee else trial
    assert number is not None
    return any_trial(study, run_dir, number, front, log=log), front


def trial_config(run_dir: Path, chosen: FrontTrial) -> TrialConfig:
    """The trial's (or baseline's) saved, fully resolved config; never re-sampled."""
    path = run_dir / chosen.folder / "config.yaml"
    if path.is_file():
        return load_config(path)
    saved = chosen.user_attrs.get("config")
    if isinstance(saved, dict) and set(CONFIG_FIELDS) <= set(saved):
        return make_config(saved, source=f"{run_dir} {chosen.label} user_attrs['config']")
    raise UserError(f"{path} is missing, so {chosen.label}'s resolved config is unknown; restore the file "
                    "or pick another model.")


def check_against_study(run_dir: Path, plan: StudyPlan, cfg: TrialConfig, ds, search_metrics: dict,
                        teacher_file: Path | None, teacher_embedded: dict | None, code: dict,
                        device: str) -> list[str]:
    """Differences between this reproduction and the study, one sentence each (printed as WARNING lines)."""
    w = _data_warnings(plan, cfg, ds, search_metrics)
    if cfg.uses_teacher:
        w += _teacher_warnings(plan, cfg, teacher_file, teacher_embedded)
    w += _code_warnings(plan, code)
    if plan.device and plan.device != device.split(":")[0]:
        w.append(f"device: reproducing on {device}, the study ran on {plan.device}; numbers can differ slightly.")
    return w


def _data_warnings(plan: StudyPlan, cfg: TrialConfig, ds, search_metrics: dict) -> list[str]:
    """The data set differs from the study's: its name, class count, input shape or fingerprint."""
    w: list[str] = []
    if plan.dataset not in (None, cfg.dataset):
        w.append(f"data: the trial config names data set {cfg.dataset!r} but the study ran on {plan.dataset!r}.")
    for key, now, recorded in (("num_classes", ds.num_classes, plan.num_classes),
                               ("input_shape", list(ds.input_shape), plan.input_shape)):
        for where, then in (("study.json", recorded), ("the trial's metrics", search_metrics.get(key))):
            if then is not None and then != now:
                w.append(f"data: {key} is {now} now but {then} in {where}; the data set files changed.")
    fp_then = plan.data_sha
    fp_now = dataset_sha256(ds)
    if fp_then and fp_then != fp_now:
        w.append(f"data: the data set's fingerprint is {fp_now} now but {fp_then} in the study; the images or "
                 "labels changed.")
    return w


def _teacher_warnings(plan: StudyPlan, cfg: TrialConfig, teacher_file: Path | None,
                      teacher_embedded: dict | None) -> list[str]:
    """The teacher differs from the study's: missing, another key, or a replaced file."""
    from study.teacher.model import teacher_key

    w: list[str] = []
    recorded = plan.teacher
    if not recorded.get("path"):
        w.append("teacher: study.json records no teacher file; the teacher will be trained (or loaded from the "
                 "cache) with the trial's recipe.")
    elif teacher_file is None:
        w.append(f"teacher: the study's teacher {recorded['path']} is missing; it will be retrained with the "
                 "same recipe, which need not give the same weights.")
    if recorded.get("key") and recorded["key"] != teacher_key(cfg):
        w.append(f"teacher: the trial config's teacher key {teacher_key(cfg)} differs from the study's "
                 f"{recorded['key']}.")
    if teacher_file is not None and teacher_embedded is not None:
        for k in ("key", "val_acc", "test_acc", "train_s"):
            if k in recorded and k in teacher_embedded and recorded[k] != teacher_embedded[k]:
                w.append(f"teacher: {teacher_file} has {k} {teacher_embedded[k]!r} but the study recorded "
                         f"{recorded[k]!r}; the file was replaced since the study ran.")
                break
        if recorded.get("sha256") and recorded["sha256"] != sha256_file(teacher_file):
            w.append(f"teacher: {teacher_file} sha256 differs from the one study.json records.")
    return w


def _code_warnings(plan: StudyPlan, code: dict) -> list[str]:
    """The code differs from the study's: torch or torch-pruning versions, the source's hash or git commit."""
    w: list[str] = []
    for k in ("torch", "torch_pruning"):
        if plan.versions.get(k) and code.get(k) and plan.versions[k] != code[k]:
            w.append(f"code: {k} is {code[k]} now but the study ran with {plan.versions[k]}.")
    then_sha = plan.version("code_sha256")
    then_git = plan.version("git_commit")
    if then_sha:
        if then_sha != code["code_sha256"]:
            w.append(f"code: the project's source (sha256 {code['code_sha256']}) differs from the study's "
                     f"({then_sha}).")
    elif then_git:
        if then_git != code["git_commit"]:
            w.append(f"code: git commit {code['git_commit']} now, {then_git} when the study ran.")
        elif code.get("git_dirty"):
            w.append("code: same git commit as the study, but study/ has uncommitted changes now.")
    else:
        w.append(f"code: study.json records no code version, so the code cannot be compared (now: git "
                 f"{(code['git_commit'] or 'unknown')[:12]}{' + uncommitted changes' if code.get('git_dirty') else ''}"
                 f", source sha256 {code['code_sha256']}).")
    return w


def _unset_fields(path: Path) -> list[str]:
    """Config fields the saved config.yaml does not set (the code gained them after the study)."""
    import yaml

    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [k for k in CONFIG_FIELDS if isinstance(saved, dict) and k not in saved]


# ---------------------------------------------------------------------------------------------- one seed
class _SeedHooks(TrialHooks):
    """No epoch checkpoints (a seed reruns from scratch); teacher messages are indented."""

    def __init__(self, log):
        self._log = log

    def log(self, msg: str) -> None:
        self._log("  " + msg)


def _finished(seed_dir: Path, cfg: TrialConfig, teacher_sha: str | None) -> dict | None:
    """metrics.json of a finished earlier run of exactly this config and teacher file, else None."""
    try:
        stamp = json.loads((seed_dir / "reproduce.json").read_text())
        m = json.loads((seed_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not (seed_dir / "model.pt").is_file():
        return None
    return m if stamp == {"config": cfg.to_dict(), "teacher_sha256": teacher_sha} else None


def run_seed(cfg: TrialConfig, seed_dir: Path, teacher_path: Path | None, teacher_sha: str | None,
             log=_log) -> tuple[dict, bool]:
    """Train one seed into seed_dir (config.yaml, metrics.json, epochs.csv, model.pt); reuse a finished one.

    reproduce.json, written last, marks the seed finished with this config and teacher (sha256)."""
    from study.trial.run import execute_trial

    done = _finished(seed_dir, cfg, teacher_sha)
    if done is not None:
        return done, True
    for name in ("reproduce.json", "metrics.json"):  # never leave a stale result next to a new config
        (seed_dir / name).unlink(missing_ok=True)
    metrics = execute_trial(cfg, out_dir=seed_dir, teacher_path=teacher_path, hooks=_SeedHooks(log))
    write_json_atomic(seed_dir / "reproduce.json", {"config": cfg.to_dict(), "teacher_sha256": teacher_sha})
    return metrics, False


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0.0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# ---------------------------------------------------------------------------------------------- the command
def reproduce(run_dir: Path, *, rank: int | None = None, trial: int | None = None, knee: bool = False,
              baseline: str | None = None, seeds: int = 3, epochs: int | None = None,
              max_latency_ms: float | None = None, max_params: float | None = None, export: bool = True,
              log=_log) -> dict:
    """Rerun a trial or baseline of RUN_DIR with `seeds` seeds (see the module docstring), export it; returns the
    summary."""
    run_dir = Path(run_dir).resolve()
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: give at least 1 seed.")
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs {epochs}: give at least 1 epoch.")
    plan = load_study_plan(run_dir)
    study = open_study(run_dir, plan)
    chosen, front = choose(study, run_dir, plan, rank=rank, knee=knee, trial=trial, baseline=baseline,
                           max_latency_ms=max_latency_ms, max_params=max_params, log=log)
    cfg = trial_config(run_dir, chosen)
    flag = (f"--rank {rank}" if rank is not None else "--knee" if knee else
            f"--baseline {baseline}" if baseline is not None else f"--trial {trial}")
    command = (f"kdstudy reproduce {run_dir} {flag}"
               + (f" --max-latency-ms {max_latency_ms:g}" if max_latency_ms is not None else "")
               + (f" --max-params {max_params:g}" if max_params is not None else "")
               + f" --seeds {seeds}" + (f" --epochs {epochs}" if epochs is not None else ""))
    summary, ds, base = _run_seeds(run_dir, plan, chosen, cfg, seeds=seeds, epochs=epochs, flag=flag, log=log)
    summary.update({"rank": rank, "max_latency_ms": max_latency_ms, "max_params": max_params, "selected_by": flag,
                    "on_front": chosen.number in {t.number for t in front} if chosen.number is not None else None,
                    "front": [t.number for t in front], "command": command})
    out = RunDir(run_dir).reproduce(chosen.key)
    summary["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json_atomic(out / "summary.json", summary)  # the seeds' results are safe before the export runs
    if export:
        _export_logged(out, summary, base, ds, log)
    search = chosen.metrics
    log(f"{chosen.label}: test_acc {summary['test_acc_mean']:.2f}% +- {summary['test_acc_std']:.2f} "
        f"(n={summary['n_seeds']}; search {_f(search.get('test_acc'))}%, diff {_f(summary['diff_test_acc'], '+.2f')})"
        f"  val_acc {summary['val_acc_mean']:.2f}% +- {summary['val_acc_std']:.2f} (search "
        f"{_f(search.get('val_acc'))}%)  -> {out / 'summary.json'}")
    return summary


def _teacher_of(run_dir: Path, plan: StudyPlan, cfg: TrialConfig) -> tuple[Path | None, dict | None]:
    """The study's teacher file and what it embeds, when the model distils from one and the file is there."""
    from study.teacher.model import load_teacher

    recorded = plan.teacher
    if not cfg.uses_teacher or not recorded.get("path"):
        return None, None
    p = Path(recorded["path"])
    p = p if p.is_absolute() or not (run_dir / p).is_file() else run_dir / p
    if not p.is_file():
        return None, None
    return p, load_teacher(p, torch.device("cpu"))[1]


def _warnings(run_dir: Path, plan: StudyPlan, chosen: FrontTrial, cfg: TrialConfig, ds, device: str, device_name: str,
              epochs: int | None, teacher: tuple[Path | None, dict | None], code: dict) -> list[str]:
    """check_against_study's sentences plus the device, unset-field and budget notes."""
    warnings = check_against_study(run_dir, plan, cfg, ds, chosen.metrics, teacher[0], teacher[1], code, device)
    if cfg.device != device_name:
        warnings.append(f"device: the trial config asks for {cfg.device}, which this machine lacks; using cpu.")
    unset = _unset_fields(run_dir / chosen.folder / "config.yaml")
    if unset:
        warnings.append(f"code: the trial's saved config has no value for {', '.join(unset)} (fields added to the "
                        "code since the study ran); today's defaults are used: "
                        + ", ".join(f"{k}={getattr(cfg, k)!r}" for k in unset) + ".")
    if epochs is not None and epochs != cfg.epochs:
        warnings.append(f"budget: {epochs} distillation epochs instead of the search's {cfg.epochs}; the "
                        "difference to the search's accuracy is not a pure reproduction check.")
    return warnings


def _run_seeds(run_dir: Path, plan: StudyPlan, chosen: FrontTrial, cfg: TrialConfig, *, seeds: int,
               epochs: int | None, flag: str, log) -> tuple[dict, Any, TrialConfig]:
    """Train the seeds (reusing finished ones); returns (the summary without the selection keys, the data set,
    the config the seeds ran)."""
    from study.core.device import resolve_device
    from study.data.datasets import load_dataset_for
    from study.teacher.model import get_teacher

    # Device: the trial's own, unless that is a GPU this machine lacks.
    device_name = "cpu" if cfg.device.startswith("cuda") and not torch.cuda.is_available() else cfg.device
    device = str(resolve_device(device_name))
    run_epochs = epochs or cfg.epochs
    base = cfg.replace(epochs=run_epochs, device=device_name)
    ds = load_dataset_for(cfg)
    teacher_file, teacher_embedded = _teacher_of(run_dir, plan, cfg)
    code = code_version()
    warnings = _warnings(run_dir, plan, chosen, cfg, ds, device, device_name, epochs,
                         (teacher_file, teacher_embedded), code)
    seed_list = [cfg.seed + i for i in range(seeds)]
    out = RunDir(run_dir).reproduce(chosen.key)
    search = chosen.metrics
    log(f"reproduce {run_dir.name} {chosen.label} ({flag}; search val_acc {_f(search.get('val_acc'))}%, "
        f"test_acc {_f(search.get('test_acc'))}%): {cfg.student_arch} x{cfg.width_mult:g}, kd={cfg.kd_loss} "
        f"T={cfg.temperature:.3g} alpha={cfg.alpha:.3g}, {cfg.prune_method}@{cfg.prune_ratio:.3g}, "
        f"{run_epochs}+{cfg.finetune_epochs} epochs, seeds {seed_list} on {device} -> {out}")
    for msg in warnings:
        log(f"WARNING: {msg}")
    if cfg.uses_teacher and teacher_file is None:  # one teacher for every seed
        _, teacher_embedded = get_teacher(cfg.replace(device=device_name), resolve_device(device_name), log=log)
        teacher_file = Path(teacher_embedded["path"])
    teacher_sha = sha256_file(teacher_file) if teacher_file is not None else None

    per_seed: list[dict] = []
    for i, s in enumerate(seed_list):
        t0 = time.time()
        seed_cfg = base.replace(seed=s, split_seed=base.val_split_seed)  # same split as the study
        m, reused = run_seed(seed_cfg, out / _seed_dir(s, run_epochs, cfg.epochs), teacher_file, teacher_sha, log)
        row = {"seed": s, "dir": _seed_dir(s, run_epochs, cfg.epochs), **{k: m.get(k) for k in PER_SEED_KEYS}}
        per_seed.append(row)
        log(f"seed {s} ({i + 1}/{seeds}){' reused' if reused else ''}: test_acc {row['test_acc']:.2f}%  "
            f"val_acc {row['val_acc']:.2f}%  params {row['params']:,} (nonzero {row['nonzero_params']:,})  "
            f"MACs {row['macs']:,}  latency {row['latency_ms_bs1']:.3f} ms  [{time.time() - t0:.1f}s]")
    summary = {"run_dir": portable_path(run_dir), "run_name": plan.name or run_dir.name, "trial": chosen.number,
               "baseline": chosen.baseline, "label": chosen.label, "rank_rule": RANK_RULE,
               **_seed_stats(per_seed, search, run_epochs, cfg.epochs), "seeds_vary": SEEDS_VARY,
               "epochs": run_epochs, "epochs_search": cfg.epochs, "finetune_epochs": cfg.finetune_epochs,
               "budget_changed": run_epochs != cfg.epochs, "device": device,
               "teacher": {"path": str(teacher_file) if teacher_file else None, "sha256": teacher_sha,
                           **{k: (teacher_embedded or {}).get(k) for k in ("key", "val_acc")}},
               "data": {"dataset": cfg.dataset, "num_classes": ds.num_classes, "input_shape": list(ds.input_shape),
                        "fingerprint": dataset_sha256(ds)},
               "code": code, "warnings": warnings, "config": base.to_dict()}
    return summary, ds, base


def _seed_stats(per_seed: list[dict], search: dict, run_epochs: int, search_epochs: int) -> dict:
    """Per-seed rows, mean +- sample std, the difference to the search and the first seed's costs."""
    test_mean, test_std = mean_std([r["test_acc"] for r in per_seed])
    val_mean, val_std = mean_std([r["val_acc"] for r in per_seed])
    fp32 = [r["test_acc_fp32"] for r in per_seed if r.get("test_acc_fp32") is not None]
    fp32_mean, fp32_std = mean_std(fp32) if fp32 else (None, None)  # = test_acc unless the trials quantize
    first = per_seed[0]
    return {
        "seeds": [r["seed"] for r in per_seed], "n_seeds": len(per_seed), "per_seed": per_seed,
        "test_acc_mean": test_mean, "test_acc_std": test_std, "val_acc_mean": val_mean, "val_acc_std": val_std,
        "test_acc_fp32_mean": fp32_mean, "test_acc_fp32_std": fp32_std,
        "std": "sample std (n-1)" if len(per_seed) > 1 else "n=1: no spread (std 0)",
        "test_acc_search": search.get("test_acc"), "val_acc_search": search.get("val_acc"),
        "diff_test_acc": test_mean - search["test_acc"] if search.get("test_acc") is not None else None,
        "diff_val_acc": val_mean - search["val_acc"] if search.get("val_acc") is not None else None,
        "same_seed_val_acc_diff": (first["val_acc"] - search["val_acc"]
                                   if search.get("val_acc") is not None and run_epochs == search_epochs else None),
        "params": first["params"], "nonzero_params": first["nonzero_params"], "macs": first["macs"],
        "latency_ms_bs1": statistics.median(r["latency_ms_bs1"] for r in per_seed),
        "latency_threads": first["latency_threads"], "latency_device_used": first.get("latency_device_used"),
        "latency_backend_used": first.get("latency_backend_used") or "torch",
        "search": {k: search.get(k) for k in ("val_acc", "test_acc", "params", "nonzero_params", "macs",
                                              "latency_ms_bs1", "latency_threads")},
    }


def _export_logged(out: Path, summary: dict, base: TrialConfig, ds, log) -> None:
    """Export seed 0 into out/export and record the outcome in the summary; a failure keeps the summary."""
    first = summary["per_seed"][0]
    try:
        summary["export"] = _export(out, summary, base, ds, first["seed"], out / first["dir"])
    except Exception as exc:  # noqa: BLE001  a failed export must not lose the trained seeds' summary
        summary["export"] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        log(f"export failed ({summary['export']['error']}); the summary is kept, nothing was exported")
    else:
        log(f"exported seed {first['seed']} to {out / 'export'} (max |logit difference| "
            f"{summary['export']['max_abs_diff']:.1e})")
    write_json_atomic(out / "summary.json", summary)


def _seed_dir(seed: int, epochs: int, search_epochs: int) -> str:
    # Another budget gets its own folders, so a --epochs run never overwrites the search-budget seeds.
    return f"seed_{seed}" if epochs == search_epochs else f"seed_{seed}_e{epochs}"


def _export(out: Path, summary: dict, base: TrialConfig, ds, seed: int, seed_dir: Path) -> dict:
    from study.measure.export import export_model, model_card
    from study.models.checkpoint import load_model

    model, _ = load_model(seed_dir / "model.pt")
    metrics = json.loads((seed_dir / "metrics.json").read_text())
    meta = {"dataset": ds.name, "num_classes": ds.num_classes, "input_shape": list(ds.input_shape),
            "mean": list(ds.mean), "std": list(ds.std), "input": "float32 (N, C, H, W), (pixels/255 - mean) / std",
            "normalize": base.normalize,  # the teacher's input normalisation, which the student was trained with
            "run": summary["run_name"], "trial": summary["trial"], "seed": seed,
            "test_acc": metrics["test_acc"], "val_acc": metrics["val_acc"],
            "test_acc_mean": summary["test_acc_mean"], "test_acc_std": summary["test_acc_std"],
            "seeds": summary["seeds"], "params": metrics["params"], "nonzero_params": metrics["nonzero_params"],
            "macs": metrics["macs"], "config": base.replace(seed=seed, split_seed=base.val_split_seed).to_dict()}
    export_dir = out / "export"

    def build(work: Path) -> dict:
        int8 = seed_dir / "model_int8.onnx"
        info = export_model(model, work, meta=meta, example_images=ds.test_x[:16],
                            int8_file=int8 if int8.is_file() else None, threads=base.threads or None)
        info["seed"] = seed
        info["dir"] = str(export_dir)
        write_text_atomic(work / "model_card.md", model_card(summary, meta, base.to_dict(), seed, metrics, info))
        return info

    return replace_dir_atomic(export_dir, build)  # built aside, swapped in whole: never a mix of runs


def _f(v: Any, fmt: str = ".2f") -> str:
    return fmt_value(v, fmt)

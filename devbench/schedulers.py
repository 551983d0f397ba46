"""`python -m devbench.schedulers SPACE`: does early stopping keep the Pareto front? none vs asha vs mo_asha.

For one search space, the same study (same sampler, same sampler seed, same trial count) is run once per
(scheduler, seed) with the real runner (`study.search.driver.run_search`), from a copy of the space whose
`search.scheduler` and `search.seed` are replaced; each run is `RUNS_DIR/sched-<scheduler>-s<seed>/`. A run whose
study.json says it finished is read, not rerun (delete the folder to rerun it).

Per run, from its Optuna study:
- the objective values of the COMPLETE trials (the only ones that can be on the front);
- counts of complete / pruned (early stopped) / infeasible / failed trials;
- epochs trained: a COMPLETE trial trained all its epochs, a PRUNED one `early_stopped_at_epoch`, an infeasible or
  failed one 0 (a trial that fails mid-training is counted 0: a small undercount, shown by the `failed` column);
- wall seconds of the study: first Optuna trial start to last trial end (the teacher and the reference models
  before/beside the trials are not counted);
- a leak check: every COMPLETE trial must have status "complete" and have trained every epoch, and every trial
  that Ray shows stopped before its last epoch (RUNS_DIR/NAME/ray/tune/*/result.json) must not be COMPLETE.

Hypervolumes use ONE normalisation per space, `benchmarks.pareto.normalization` over the union of the COMPLETE
values of all runs (accuracies 0..100 %, costs 0..1.1 x the largest value seen in any run), so they compare
across schedulers and seeds. `hv_per_kepoch` is hypervolume per 1000 epochs trained.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import pareto
from benchmarks.collect import mean_std, nonfinite_to_none

SCHEDULERS = ("none", "asha", "mo_asha")
DEFAULT_SPACE = "search_spaces/demo.yaml"
METRIC_KEYS = ("hypervolume", "complete", "pruned", "infeasible", "failed", "epochs", "wall_s", "hv_per_kepoch")


def run_name(scheduler: str, seed: int) -> str:
    return f"sched-{scheduler}-s{seed}"


def write_variant(space_file: str | Path, scheduler: str, seed: int, out_dir: Path) -> Path:
    """A copy of the space with search.scheduler and search.seed replaced (same text for the same inputs, so a
    rerun resumes the same study)."""
    import yaml

    raw = yaml.safe_load(Path(space_file).read_text())
    raw.setdefault("search", {})
    raw["search"]["scheduler"] = scheduler
    raw["search"]["seed"] = int(seed)
    return write_space_copy(raw, out_dir / f"{run_name(scheduler, seed)}.yaml")


def write_space_copy(raw: dict, path: Path) -> Path:
    """Write a changed copy of a space as YAML, only when its text differs (same text for the same inputs, so a
    rerun resumes the same study)."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(raw, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------- reading one run

def _total_epochs(meta: dict, trial: Any) -> int | None:
    base = dict(meta.get("base_config") or {})
    base.update({k: v for k, v in trial.params.items() if k in ("epochs", "finetune_epochs")})
    if "epochs" in base and "finetune_epochs" in base:
        return int(base["epochs"]) + int(base["finetune_epochs"])
    return None


def trial_epochs(trial: Any, total: int | None) -> int:
    """Epochs a finished Optuna trial trained, from what the runner stored in its user_attrs."""
    attrs = trial.user_attrs
    metrics = attrs.get("metrics") or {}
    state = trial.state.name
    if state == "COMPLETE":
        for key in ("epochs_done", "epoch"):
            if metrics.get(key) is not None:
                return int(metrics[key])
        return int(total or 0)
    if state == "PRUNED":
        at = attrs.get("early_stopped_at_epoch", metrics.get("epoch"))
        return int(at or 0)
    return 0


def ray_last_results(run_dir: Path) -> dict[int, dict]:
    """Optuna trial number -> the last result Ray recorded for it (result.json of each Tune trial folder)."""
    out: dict[int, dict] = {}
    for path in sorted((Path(run_dir) / "ray" / "tune").glob("*/result.json")):
        last = None
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    last = json.loads(line)
                except json.JSONDecodeError:
                    continue
        if last is None:
            continue
        number = last.get("trial_number", (last.get("config") or {}).get("trial_number"))
        if number is not None:
            out[int(number)] = last
    return out


def leak_check(trials: Sequence[Any], meta: dict, ray_last: dict[int, dict] | None = None) -> list[str]:
    """Problems where an early-stopped (partially trained) trial reached Optuna as COMPLETE; [] when clean."""
    problems = []
    for t in trials:
        if t.state.name != "COMPLETE":
            continue
        total = _total_epochs(meta, t)
        status = t.user_attrs.get("status")
        done = trial_epochs(t, total)
        if status != "complete":
            problems.append(f"trial {t.number}: Optuna COMPLETE but status {status!r}")
        elif "early_stopped_at_epoch" in t.user_attrs:
            problems.append(f"trial {t.number}: Optuna COMPLETE but early_stopped_at_epoch is set")
        elif total is not None and done < total:
            problems.append(f"trial {t.number}: Optuna COMPLETE after {done} of {total} epochs")
        last = (ray_last or {}).get(t.number)
        if last is not None and last.get("status") == "running":
            problems.append(f"trial {t.number}: Optuna COMPLETE but Ray stopped it at epoch {last.get('epoch')}")
    return problems


def read_run(run_dir: str | Path, *, scheduler: str | None = None, seed: int | None = None) -> dict:
    """Everything the comparison needs from one finished run directory (raw values; no hypervolume yet)."""
    from benchmarks.collect import objectives_of
    from study.search.results import load_study_meta, load_study_plan, open_study

    run_dir = Path(run_dir)
    meta = load_study_meta(run_dir)
    plan = load_study_plan(run_dir)
    study = open_study(run_dir, plan)
    objectives = objectives_of(plan, study)
    trials = study.get_trials(deepcopy=False)
    values, counts, epochs = [], {"complete": 0, "pruned": 0, "infeasible": 0, "failed": 0, "other": 0}, 0
    for t in trials:
        state, status = t.state.name, t.user_attrs.get("status")
        if state == "COMPLETE":
            counts["complete"] += 1
            if t.values is not None and len(t.values) == len(objectives):
                values.append([float(v) for v in t.values])
        elif state == "PRUNED":
            counts["pruned"] += 1
        elif state == "FAIL":
            counts["infeasible" if status == "infeasible" else "failed"] += 1
        else:
            counts["other"] += 1
        epochs += trial_epochs(t, _total_epochs(meta, t))
    finished = sorted((t for t in trials if t.datetime_complete is not None), key=lambda t: t.datetime_complete)
    timeline = [{"epochs": trial_epochs(t, _total_epochs(meta, t)),
                 "values": [float(v) for v in t.values] if t.state.name == "COMPLETE" and t.values else None}
                for t in finished]
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan")
    return {
        "name": meta.get("name", run_dir.name), "run_dir": str(run_dir),
        "scheduler": scheduler if scheduler is not None else meta.get("scheduler"),
        "seed": seed if seed is not None else meta.get("seed"),
        "objectives": objectives, "n_trials": len(trials), "values": values,
        **counts, "epochs": epochs, "wall_s": wall, "timeline": timeline,
        "leaks": leak_check(trials, meta, ray_last_results(run_dir)),
    }


# ------------------------------------------------------------------------------------------- comparing runs

def summarize(records: Sequence[dict]) -> dict:
    """Hypervolume of every run under one common normalisation, and per-scheduler means over seeds."""
    if not records:
        raise ValueError("no runs to summarise")
    objectives = records[0]["objectives"]
    for r in records[1:]:
        if r["objectives"] != objectives:
            raise ValueError(f"run {r['name']} has objectives {r['objectives']}, expected {objectives}: "
                             "only runs of the same space compare")
    names = [o["name"] for o in objectives]
    dirs = [o["direction"] for o in objectives]
    union = np.array([v for r in records for v in r["values"]], dtype=float).reshape(-1, len(names))
    norm = pareto.normalization(names, dirs, union)
    runs = []
    for r in records:
        vals = np.array(r["values"], dtype=float).reshape(-1, len(names))
        hv = pareto.normalized_hypervolume(vals, norm) if len(vals) else 0.0
        per_k = 1000.0 * hv / r["epochs"] if r["epochs"] else float("nan")
        front = int(pareto.pareto_mask(vals, dirs).sum()) if len(vals) else 0
        runs.append({k: v for k, v in r.items() if k not in ("objectives", "values", "timeline")}
                    | {"hypervolume": hv, "hv_per_kepoch": per_k, "front_size": front})
    order = [s for s in SCHEDULERS if any(r["scheduler"] == s for r in runs)]
    order += sorted({r["scheduler"] for r in runs} - set(order), key=str)
    schedulers = {}
    for s in order:
        mine = sorted((r for r in runs if r["scheduler"] == s), key=lambda r: (r["seed"] is None, r["seed"]))
        agg = {}
        for k in METRIC_KEYS:
            mean, std = mean_std([r[k] for r in mine])
            agg[k] = {"mean": mean, "std": std}
        schedulers[s] = {"seeds": [r["seed"] for r in mine], "mean": agg,
                         "per_seed": {str(r["seed"]): {k: r[k] for k in METRIC_KEYS} for r in mine},
                         "leaks": [f"{r['name']}: {p}" for r in mine for p in r["leaks"]]}
    return {"objectives": objectives, "normalization": norm.to_json(),
            "none_at_equal_epochs": equal_budget(records, norm),
            "hypervolume_rule": "one normalisation over the union of every run's COMPLETE values "
                                "(benchmarks.pareto.normalization), reference point (1, ..., 1)",
            "runs": runs, "schedulers": schedulers}


def budget_hypervolume(timeline: Sequence[dict], budget: float, norm: pareto.Normalization) -> tuple[float, int]:
    """Hypervolume of the COMPLETE trials among those that finished first while the epochs trained stay within
    `budget` (the study stopped early at that many epochs); returns (hypervolume, trials counted)."""
    spent, vals, n = 0, [], 0
    for t in timeline:
        if spent + t["epochs"] > budget:
            break
        spent += t["epochs"]
        n += 1
        if t["values"] is not None:
            vals.append(t["values"])
    values = np.array(vals, dtype=float).reshape(-1, len(norm.names))
    return (pareto.normalized_hypervolume(values, norm) if len(values) else 0.0), n


def equal_budget(records: Sequence[dict], norm: pareto.Normalization) -> list[dict]:
    """For every early-stopping run: the `none` run of the same seed cut at the same number of epochs (its first
    trials to finish), i.e. what spending that budget on fewer, fully trained trials would have given."""
    out = []
    for r in records:
        if r["scheduler"] == "none":
            continue
        for base in (b for b in records if b["scheduler"] == "none" and b["seed"] == r["seed"]):
            hv, n = budget_hypervolume(base.get("timeline") or [], r["epochs"], norm)
            out.append({"scheduler": r["scheduler"], "seed": r["seed"], "epochs": r["epochs"],
                        "none_trials": n, "none_hypervolume": hv})
    return out


def _num(v: Any, digits: int) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def format_table(summary: dict) -> str:
    """Per scheduler: one line per seed, then the mean (+- std over seeds)."""
    cols = ["scheduler", "seed", "HV", "complete", "pruned", "infeas", "failed", "epochs", "wall_s", "HV/1k ep",
            "leaks"]
    seed_digits = {"hypervolume": 4, "complete": 0, "pruned": 0, "infeasible": 0, "failed": 0, "epochs": 0,
                   "wall_s": 1, "hv_per_kepoch": 4}
    mean_digits = {**seed_digits, "complete": 1, "pruned": 1, "infeasible": 1, "failed": 1}
    rows = []
    for s, block in summary["schedulers"].items():
        for seed, m in block["per_seed"].items():
            rows.append([s, seed, *[_num(m[k], d) for k, d in seed_digits.items()], ""])
        mean = block["mean"]
        cells = []
        for k, d in mean_digits.items():
            cell = _num(mean[k]["mean"], d)
            if k in ("hypervolume", "epochs", "hv_per_kepoch") and len(block["per_seed"]) > 1:
                cell += f" +-{_num(mean[k]['std'], d)}"
            cells.append(cell)
        rows.append([s, "mean", *cells, str(len(block["leaks"]))])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    cut = summary.get("none_at_equal_epochs") or []
    if cut:
        lines.append("")
        lines.append("none cut at the same epochs (its first trials to finish), same seed:")
        for c in cut:
            lines.append(f"  {c['scheduler']} s{c['seed']}: {c['epochs']} epochs -> none's first {c['none_trials']} "
                         f"trials, HV {c['none_hypervolume']:.4f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- running

def _init_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 object_store_memory=200 * 2**20, log_to_driver=False)


def run_all(space_file: str, schedulers: Sequence[str], seeds: Sequence[int], trials: int | None,
            runs_dir: Path, log=print) -> list[dict]:
    from study.core.errors import UserError
    from study.search.driver import run_search
    from study.search.results import load_study_meta
    from study.search.space import load_space

    space = load_space(space_file)  # a wrong path or a malformed space: one sentence before anything runs
    want_trials = trials if trials is not None else space.trials
    records = []
    for seed in seeds:
        for sched in schedulers:
            name = run_name(sched, seed)
            run_dir = runs_dir / name
            variant = write_variant(space_file, sched, seed, runs_dir / "spaces")
            meta_path = run_dir / "study.json"
            meta = load_study_meta(run_dir) if meta_path.exists() else {}  # unreadable: one UserError naming it
            same = (meta.get("trials") == want_trials and (run_dir / "space.yaml").exists()
                    and (run_dir / "space.yaml").read_text() == variant.read_text())
            if meta and not same:
                raise UserError(f"{run_dir} holds a study of another space or trial count than this command asks "
                                f"for; pass another --runs-dir, or delete {run_dir} to run it again.")
            if "finished" in meta:
                log(f"== {name}: finished earlier, read from {run_dir}")
            else:
                _init_ray()
                log(f"== {name}: running {variant}")
                t0 = time.time()
                run_search(str(variant), name=name, runs_dir=str(runs_dir), trials=trials, log=log)
                log(f"== {name}: done in {time.time() - t0:.0f}s")
            records.append(read_run(run_dir, scheduler=sched, seed=seed))
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devbench.schedulers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("space", nargs="?", default=DEFAULT_SPACE, help=f"search space YAML (default {DEFAULT_SPACE})")
    p.add_argument("--trials", type=int, default=None, help="trials per study (default: the space's search.trials)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="sampler seeds (search.seed), one study each")
    p.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=SCHEDULERS)
    p.add_argument("--runs-dir", default="runs/schedulers", help="parent folder of the runs (default runs/schedulers)")
    p.add_argument("--json", default=None, help="write the summary here")
    args = p.parse_args(argv)

    from study.core.errors import UserError

    try:
        records = run_all(args.space, args.schedulers, args.seeds, args.trials, Path(args.runs_dir))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = summarize(records)
    summary = {"space": args.space, "trials": args.trials, "seeds": args.seeds,
               "command": "python -m devbench.schedulers " + " ".join(sys.argv[1:] if argv is None else argv),
               **summary}
    print()
    print(format_table(summary))
    leaks = [x for b in summary["schedulers"].values() for x in b["leaks"]]
    print("leak check: " + ("no early-stopped trial reached Optuna as COMPLETE" if not leaks
                            else f"{len(leaks)} problem(s): " + "; ".join(leaks)))
    if args.json:
        from study.core.io import write_json_atomic

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.json), nonfinite_to_none(summary))
        print(f"summary: {args.json}")
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())

"""The application layer: a whole study as `python -m study run` / `kdstudy run` and `from study import run_study`
run it. It composes the engine (study.search.run_study: the search itself) with the product's result pipeline
(benchmarks: results.csv, pareto.csv, benchmark.json, the front's latency re-measured with no trial training) and
the HTML report (reports).

This is the one module of study/ that imports benchmarks and reports (tests/test_layering.py checks that no other
does): the engine runs and resumes studies without them.
"""

from __future__ import annotations

from pathlib import Path


def run_trial(cfg, *, out_dir: str | Path | None = None, teacher_path: str | Path | None = None,
              hooks=None, cache_dir: str | Path | None = None):
    """Run one trial (no Ray): study.trial.run_trial, its metrics returned as a typed TrialResult."""
    from study.results import TrialResult
    from study.trial import run_trial as run

    metrics = run(cfg, out_dir=Path(out_dir) if out_dir is not None else None,
                  teacher_path=Path(teacher_path) if teacher_path is not None else None, hooks=hooks,
                  cache_dir=Path(cache_dir) if cache_dir is not None else None)
    return TrialResult(cfg, metrics, out_dir)


def run_study(space_file, *, name: str | None = None, trials: int | None = None, concurrent: int | None = None,
              storage: str | None = None, address: str | None = None, runs_dir: str = "runs",
              gpus_per_trial: float | None = None, cpus_per_trial: float | None = None, report: bool = True,
              log=print) -> Path:
    """Run (or resume) a study, then (report=True) write results.csv, pareto.csv and benchmark.json with the
    front's latency re-measured, print the Pareto table with those latencies, and write report.html. report=False
    (`--no-report`): the search and its Pareto table only. `space_file`: a path, a shipped space's name or a
    SearchSpace (load_space's, possibly changed with dataclasses.replace). Returns the StudyResult."""
    from study import search
    from study.results import StudyResult

    run_dir = search.run_study(space_file, name=name, trials=trials, concurrent=concurrent, storage=storage,
                               address=address, runs_dir=runs_dir, gpus_per_trial=gpus_per_trial,
                               cpus_per_trial=cpus_per_trial, summary=not report, log=log)
    if not report:
        return StudyResult(run_dir)
    from study.results import load_study_meta

    meta = load_study_meta(run_dir)
    confirm_front(run_dir, meta, log)
    # the front's latency measured again now that no trial trains (the search's values can carry a busy moment)
    quiet = remeasured_results(run_dir, log)
    objectives = [(o["name"], o["direction"]) for o in meta["objectives"]]
    search.print_summary(run_dir, meta["storage"], meta["study_name"], objectives, log, quiet_latency=quiet)
    write_report(run_dir, log)
    return StudyResult(run_dir)


def confirm_front(run_dir: Path, meta: dict, log=print) -> None:
    """Re-train the models a user would pick (knee, most accurate, those that beat a baseline) and the baselines
    with `confirm_seeds` more seeds (study.confirm). The choice is made once, from the search's own values, and
    kept in confirm/plan.json, so a resumed study finishes the same plan."""
    from benchmarks.collect import (
        analyse,
        collect_results,
        compare_baselines,
        confirm_candidates,
        knee,
        objectives_of,
        outside_baselines,
        read_confirm_plan,
    )
    from study.confirm import extra_seeds, run_confirmation
    from study.io import write_json_atomic
    from study.results import open_study

    n = int(meta.get("confirm_seeds") or 0)
    if n < 1:
        return
    plan = read_confirm_plan(run_dir)
    if not plan:
        study = open_study(run_dir, meta)
        objectives = objectives_of(meta, study)
        df, _ = analyse(collect_results(run_dir, study, objectives, lambda m: None,
                                        baselines=outside_baselines(meta)), objectives)
        k = knee(df, objectives)
        cands = confirm_candidates(df, objectives, k["trial"] if k else None, compare_baselines(df, objectives))
        plan = {"seeds": extra_seeds(int((meta.get("base_config") or {}).get("seed", 0)), n),
                "candidates": cands, "chosen_on": "the search's own values (one seed, search latency)"}
        write_json_atomic(run_dir / "confirm" / "plan.json", plan)
    run_confirmation(run_dir, plan, meta, log)


def remeasured_results(run_dir: Path, log=print) -> dict:
    """results.csv, pareto.csv and benchmark.json, the front's latency re-measured; returns trial number (and
    "baseline NAME") -> quiet ms."""
    from benchmarks.collect import read_results, run_benchmarks
    from benchmarks.latency import LATENCY_COL

    run_benchmarks(run_dir, remeasure=True, log=log)
    df = read_results(run_dir)
    if LATENCY_COL not in df.columns:
        return {}
    done = df[LATENCY_COL].notna()
    quiet: dict = {int(n): float(v) for n, v in zip(df.loc[done & df["number"].notna(), "number"],
                                                    df.loc[done & df["number"].notna(), LATENCY_COL], strict=True)}
    if "baseline" in df.columns:
        part = df[done & df["baseline"].notna()]
        quiet.update({f"baseline {b}": float(v) for b, v in zip(part["baseline"], part[LATENCY_COL], strict=True)})
    return quiet


def write_report(run_dir: Path, log=print) -> Path:
    from reports import build_report

    path = build_report(run_dir)
    log(f"report: {path}")
    return path

"""The application layer: a whole study as `python -m study run` / `kdstudy run` and `from study import run_study`
run it. It composes the engine (study.search.driver.run_search: the search itself) with the product's result pipeline
(benchmarks: results.csv, pareto.csv, benchmark.json, the front's latency re-measured with no trial training) and
the HTML report (reports).

This is the one module of study/ that imports benchmarks and reports (tests/test_layering.py checks that no other
does): the engine runs and resumes studies without them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from study.core.run_dir import RunDir

if TYPE_CHECKING:
    from study.search.plan import StudyPlan
    from study.search.results import StudyResult


def run_trial(cfg, *, out_dir: str | Path | None = None, teacher_path: str | Path | None = None,
              hooks=None, cache_dir: str | Path | None = None):
    """Run one trial (no Ray): study.trial.run.execute_trial, its metrics returned as a typed TrialResult. Staged:
    a failed trial leaves out_dir as it was."""
    from study.search.results import TrialResult
    from study.trial.run import execute_trial

    out = Path(out_dir) if out_dir is not None else None
    metrics = execute_trial(cfg, out_dir=out, teacher_path=Path(teacher_path) if teacher_path is not None else None,
                            hooks=hooks, cache_dir=Path(cache_dir) if cache_dir is not None else None, stage=True)
    return TrialResult(cfg, metrics, out)


def run_study(space_file, *, name: str | None = None, trials: int | None = None, concurrent: int | None = None,
              storage: str | None = None, address: str | None = None, runs_dir: str = "runs",
              gpus_per_trial: float | None = None, cpus_per_trial: float | None = None, report: bool = True,
              live_report_s: float = 30.0, log=print) -> StudyResult:
    """Run (or resume) a study, then (report=True) write results.csv, pareto.csv and benchmark.json with the
    front's latency re-measured, print the Pareto table with those latencies, write report.html and say which
    model to take. While it runs, report.html is rewritten as trials end, at most every `live_report_s` seconds
    (LiveReport). report=False (`--no-report`): the search and its Pareto table only. `space_file`: a path, a
    shipped space's name or a SearchSpace (load_space's, possibly changed with dataclasses.replace). Returns the
    StudyResult."""
    from study.search import driver as search
    from study.search.results import StudyResult

    run_dir = search.run_search(space_file, name=name, trials=trials, concurrent=concurrent, storage=storage,
                               address=address, runs_dir=runs_dir, gpus_per_trial=gpus_per_trial,
                               cpus_per_trial=cpus_per_trial, summary=not report, log=log,
                               on_trial_end=LiveReport(live_report_s) if report else None)
    if not report:
        return StudyResult(run_dir)
    from study.search.results import load_study_plan
    from study.search.summary import print_summary

    plan = load_study_plan(run_dir)
    confirm_front(run_dir, plan, log)
    # the front's latency measured again now that no trial trains (the search's values can carry a busy moment)
    quiet = remeasured_results(run_dir, log)
    print_summary(run_dir, str(plan.storage), plan.study_name, plan.objective_pairs, log, quiet_latency=quiet)
    write_report(run_dir, log)
    for line in which_model_lines(run_dir):
        log(line)
    return StudyResult(run_dir)


class LiveReport:
    """The study's on_trial_end hook: RUN_DIR/report.html rewritten from what the study holds so far (results
    collected without the latency re-measurement, then the report; both written atomically, so an open report is
    never half-written) after the first ended trial and then at most every `every_s` seconds. Tune pickles it
    with the study's state, so it holds only plain values."""

    def __init__(self, every_s: float = 30.0):
        self.every_s = float(every_s)  # seconds between two rewrites, at least
        self.last = 0.0  # time.time() of the last rewrite (0: none yet)
        self.took = 0.0  # seconds the last rewrite took

    def __call__(self, run_dir: Path, so_far) -> None:
        from study.core.errors import UserError

        # it runs in Tune's event loop: a big study's report (seconds to build) is rewritten at most 1/10 of the time
        if self.last and time.time() - self.last < max(self.every_s, 10 * getattr(self, "took", 0.0)):
            return
        first = not self.last
        self.last = time.time()
        try:
            path = write_live_report(run_dir)
        except (UserError, OSError) as exc:  # the search goes on; the report at the end says what is wrong
            print(f"live report not rewritten: {exc}", flush=True)
            return
        finally:
            self.took = time.time() - self.last
        if first:
            when = f"at most every {self.every_s:g} s" if self.every_s > 0 else "after each one"
            print(f"report: {path} (rewritten as trials end, {when}; open it any time)", flush=True)


def write_live_report(run_dir: Path) -> Path:
    """report.html of a study still running: results.csv, pareto.csv and benchmark.json collected now, without
    the latency re-measurement or the confirmation seeds (the end of the study adds those)."""
    from benchmarks.collect import run_benchmarks
    from reports import build_report

    def quiet(msg: str) -> None:  # notes about trials still running or baselines not trained yet
        pass

    run_benchmarks(run_dir, remeasure=False, log=quiet)
    return build_report(run_dir, log=quiet)


def which_model_lines(run_dir: Path) -> list[str]:
    """"Which model to take", as the report's answer says it (benchmarks.recommend: the knee, the most accurate
    searched trial, the best under each constraint; seed means where confirmed), each with its export command."""
    import json

    from benchmarks.collect import read_results
    from benchmarks.recommend import answer_lines, recommendations
    from study.search.results import load_study_plan

    try:
        bench = json.loads(RunDir(run_dir).benchmark_json.read_text())
        df = read_results(run_dir)
    except (OSError, ValueError, KeyError):
        return []
    objectives = [{"name": o["name"], "direction": o["direction"]} for o in bench.get("objectives") or []]
    if not objectives:
        return []
    plan = load_study_plan(run_dir)
    recs = recommendations(df, objectives, bench, plan.constraints, run_dir=_shown(run_dir))
    return answer_lines(recs, [])  # the baselines' verdicts were printed with the Pareto table


def _shown(run_dir: Path) -> str:
    """The run folder as a user typed it: relative to the working directory where it lies below it."""
    try:
        return str(Path(run_dir).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(run_dir)


def confirm_front(run_dir: Path, plan: StudyPlan, log=print) -> None:
    """Re-train the models a user would pick (knee, most accurate, those that beat a baseline) and the baselines
    with `confirm_seeds` more seeds (reproduce.confirm). The choice is made once, from the search's own values, and
    kept in confirm/plan.json, so a resumed study finishes the same plan."""
    from benchmarks.collect import (
        analyse,
        collect_results,
        compare_baselines,
        confirm_candidates,
        knee,
        objectives_of,
        read_confirm_plan,
    )
    from study.core.io import write_json_atomic
    from study.reproduce.confirm import extra_seeds, run_confirmation
    from study.search.results import open_study

    n = plan.confirm_seeds
    if n < 1:
        return
    confirm = read_confirm_plan(run_dir)
    if not confirm:
        study = open_study(run_dir, plan)
        objectives = objectives_of(plan, study)
        df, _ = analyse(collect_results(run_dir, study, objectives, lambda m: None,
                                        baselines=plan.outside_baselines()), objectives)
        k = knee(df, objectives)
        cands = confirm_candidates(df, objectives, k["trial"] if k else None, compare_baselines(df, objectives))
        confirm = {"seeds": extra_seeds(int(plan.base_config.get("seed", 0)), n),
                   "candidates": cands, "chosen_on": "the search's own values (one seed, search latency)"}
        write_json_atomic(RunDir(run_dir).confirm_plan, confirm)
    run_confirmation(run_dir, confirm, plan, log)


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
    """Write RUN_DIR/report.html and say where it is."""
    from reports import build_report

    path = build_report(run_dir)
    log(f"report: {path}")
    return path

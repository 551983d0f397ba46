"""What a study prints at its end: trial counts, failed trials, and the Pareto / baseline table.

`table_lines` is the one printer of a Pareto table (this summary, and `python -m benchmarks` through
benchmarks.collect.front_lines): a header and right-aligned columns, the baselines below the front.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from study.core.errors import UserError
from study.core.fmt import fmt_value
from study.core.run_dir import RunDir
from study.search.plan import StudyPlan
from study.search.results import load_study_plan

BASELINES_HEADING = ("baselines (configurations picked by hand, trained by the trial rules; those in the space are "
                     "enqueued search trials):")
REMEASURED_NOTE = ("* re-measured after the search with no trial training (interleaved, median of rounds; "
                   "benchmarks.latency); the search's own values are in results.csv")


def table_lines(cols: Sequence[str], rows: Sequence[Sequence[str]],
                baseline_rows: Sequence[Sequence[str]] = ()) -> list[str]:
    """A Pareto table as lines: the header, one line per front row, then (when there are any) the baselines
    under their heading; every column right-aligned to its widest cell."""
    cells = [*rows, *baseline_rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) for v, w in zip(values, widths))

    out = [line(cols), *(line(r) for r in rows)]
    if baseline_rows:
        out += [BASELINES_HEADING, *(line(r) for r in baseline_rows)]
    return out


def print_summary(run_dir: Path, storage_url: str, study_name: str, objectives: list[tuple[str, str]],
                  log: Callable[[str], None] = print, quiet_latency: dict | None = None) -> None:
    """Trial counts, failed trials with their reasons, and the Pareto table. quiet_latency (trial number -> ms):
    the front's batch-1 latency re-measured after the search; shown instead of the search's values."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage_url)
    _print_counts(study.get_trials(deepcopy=False), log)
    from study.search.results import front_trials

    front = front_trials(study)  # the one front rule (study.core.dominance), as reproduce ranks it
    front.sort(key=lambda t: -t.values[0])
    cols = ["trial", *[m for m, _ in objectives], "test_acc", "width_mult", "prune_method", "prune_ratio",
            "kd_loss", "temperature", "alpha"]
    quiet = quiet_latency or {}
    swap = [m == "latency_ms_bs1" and any(t.number in quiet for t in front) for m, _ in objectives]
    cols = [f"{c}*" if i and swap[i - 1] else c for i, c in enumerate(cols[:len(objectives) + 1])] + \
        cols[len(objectives) + 1:]
    rows = []
    for t in front:
        m = t.user_attrs.get("metrics", {})
        values = [quiet.get(t.number, v) if sw else v for v, sw in zip(t.values, swap, strict=True)]
        label = str(t.number) + (f" ({t.user_attrs['baseline']})" if "baseline" in t.user_attrs else "")
        rows.append([label, *[fmt_value(v) for v in values], fmt_value(m.get("test_acc")),
                     *[fmt_value(t.params.get(k, m.get(k))) for k in cols[len(objectives) + 2:]]])
    log(f"Pareto-optimal trials ({len(front)}), objectives on the validation split; test_acc for reference only:")
    for line in table_lines(cols, rows, baseline_table_rows(RunDir(run_dir), objectives, swap, quiet, cols)):
        log(line)
    if any(swap):
        log(REMEASURED_NOTE)
    _print_baselines(RunDir(run_dir), log)
    log(f"results: {run_dir}  (Optuna: {storage_url}, study '{study_name}'; "
        f"optuna-dashboard {storage_url})")


def _print_counts(trials: list[Any], log: Callable[[str], None]) -> None:
    """The trials by search status, and each failed trial with its reason."""
    from optuna.trial import TrialState

    counts: dict[str, int] = {}
    for t in trials:
        s = t.user_attrs.get("status") or t.state.name.lower()
        counts[s] = counts.get(s, 0) + 1
    log("trials: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    for t in trials:
        if t.user_attrs.get("status") == "failed" or (t.state == TrialState.FAIL and "status" not in t.user_attrs):
            log(f"  trial {t.number} failed: {t.user_attrs.get('error') or 'no reason recorded'}")


def baseline_table_rows(run: RunDir, objectives: list[tuple[str, str]], swap: list[bool], quiet: dict,
                        cols: list[str]) -> list[list[str]]:
    """The baselines as rows of the Pareto table (from their metrics.json), labelled by name."""
    try:
        plan: StudyPlan = load_study_plan(run.root)
    except UserError:  # no readable study.json: no baseline rows
        return []
    rows = []
    for name, entry in plan.baselines.items():
        number = entry.trial
        try:
            m = json.loads((run.model_folder(number, name) / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        key = number if number is not None else f"baseline {name}"
        values = [quiet.get(key, m.get(k)) if sw else m.get(k) for (k, _), sw in zip(objectives, swap, strict=True)]
        label = f"{name} (trial {number})" if number is not None else name
        rows.append([label, *[fmt_value(v) for v in values], fmt_value(m.get("test_acc")),
                     *[fmt_value(m.get(k)) for k in cols[len(objectives) + 2:]]])
    return rows


def _print_baselines(run: RunDir, log: Callable[[str], None]) -> None:
    """The baselines' one-line comparisons with the front and the knee, from benchmark.json (when written)."""
    try:
        bench = json.loads(run.benchmark_json.read_text())
    except (OSError, ValueError):
        return
    for b in bench.get("baselines") or []:
        log(f"baseline {b['line']}" + (f" [{b['latency']} latency]" if b.get("latency") else ""))
    confirmed = bench.get("confirmed") or {}
    if confirmed.get("baselines"):
        log(f"confirmed with seeds {confirmed['seeds']} beside the search's own run ({confirmed['accuracy']}, "
            f"{confirmed['latency']} latency):")
        for v in confirmed["baselines"]:
            log(f"  {v['line']}")
    if bench.get("compute"):
        log(bench["compute"]["line"])
    if bench.get("knee"):
        log(f"knee of the front: trial {bench['knee']['trial']} ({bench['knee']['rule']})")

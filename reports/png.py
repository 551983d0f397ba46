"""`python -m reports RUN_DIR --png`: RUN_DIR/front.png, a static figure of the front against baselines and references.

One panel per minimised objective of the study: validation accuracy against that cost, every fully trained trial
(grey), the study's Pareto trials (coloured by prune kind, black outline), int8 models as triangles and fp32 ones as
circles, the front of that 2-D projection as a dotted step line, each baseline and reference model as its own
legend entry (no text labels, which collide where models coincide), and the knee (benchmark.json) ringed. The
latency panel uses the re-measured latency where the run has it, and then shows only the models re-measured, so
that every point of a panel comes from one measurement. Axes spanning more than about half a decade are
logarithmic. Drawn with matplotlib's Agg backend (no display needed) from results.csv and benchmark.json, which
`build_report` collects first when they are missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import pareto
from benchmarks.collect import is_baseline
from reports.html import (  # the HTML report's colours and parsing: one look for both
    ACC,
    BASELINE_COLORS,
    KIND_COLORS,
    LATENCY_RE,
    LOG_SPAN,
    REFERENCE_COLORS,
    _front_mask,
    _num,
    _precision,
)
from study.core.io import write_path_atomic
from study.search.plan import StudyPlan

MARKERS = {"fp32": "o", "int8": "^"}
NAMED_MARKERS = ("D", "s", "P", "X", "h")  # baselines; references are stars of their own colour


def _x_col(results: pd.DataFrame, cost: str) -> tuple[str, str]:
    """The column a panel plots and its axis label: the re-measured latency where the run has it."""
    if cost == "latency_ms_bs1" and LATENCY_RE in results.columns and np.isfinite(_num(results, LATENCY_RE)).any():
        return LATENCY_RE, "latency, batch 1 (ms, re-measured; models not re-measured left out)"
    return cost, f"{cost} (ms, as timed in the search)" if cost == "latency_ms_bs1" else cost


def _trials(ax: Any, done: pd.DataFrame, x: str) -> None:
    """Every fully trained trial in grey, then the study's Pareto trials by prune kind; int8 as triangles."""
    prec = _precision(done)
    front = _front_mask(done)
    for p in sorted(set(prec)):
        part = done[(prec == p).to_numpy()]
        ax.scatter(_num(part, x), _num(part, ACC), s=18, color="#c7c7c7", marker=MARKERS.get(p, "o"),
                   label=f"trials, {p}", zorder=1)
    for (kind, p), part in done[front].groupby([done["prune_kind"].fillna("unknown")[front], prec[front]]):
        ax.scatter(_num(part, x), _num(part, ACC), s=46, color=KIND_COLORS.get(kind, "#7f7f7f"),
                   marker=MARKERS.get(p, "o"), edgecolors="black", linewidths=1.2,
                   label=f"study's Pareto trials ({kind}, {p})", zorder=3)
    pts = np.column_stack([_num(done, x), _num(done, ACC)])
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts):
        mask = pareto.pareto_mask(pts, ["minimize", "maximize"])
        step = pts[mask][np.lexsort((-pts[mask][:, 1], pts[mask][:, 0]))]
        ax.step(step[:, 0], step[:, 1], where="post", color="#444444", linestyle=":", linewidth=1,
                label="front of the panel's 2 objectives alone", zorder=2)


def _named(ax: Any, results: pd.DataFrame, x: str) -> None:
    """One legend entry per baseline and reference model."""
    base = results[is_baseline(results)]
    for i, (_, r) in enumerate(base.iterrows()):
        ax.scatter(_num(base.loc[[r.name]], x), _num(base.loc[[r.name]], ACC), s=60,
                   marker=NAMED_MARKERS[i % len(NAMED_MARKERS)], color=BASELINE_COLORS[i % len(BASELINE_COLORS)],
                   edgecolors="black", linewidths=0.8, label=f"baseline {r['baseline']}", zorder=5)
    refs = results[results["state"] == "REFERENCE"]
    for i, (_, r) in enumerate(refs.iterrows()):
        ax.scatter(_num(refs.loc[[r.name]], x), _num(refs.loc[[r.name]], ACC), s=110 - 25 * i, marker="*",
                   color=REFERENCE_COLORS[i % len(REFERENCE_COLORS)], edgecolors="black", linewidths=0.6,
                   label=f"reference {r['reference']}", zorder=6)


def front_png(run_dir: str | Path, results: pd.DataFrame, benchmark: dict, plan: StudyPlan) -> Path:
    """Write RUN_DIR/front.png (atomically) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    run_dir = Path(run_dir)
    objectives = [o for o in benchmark.get("objectives", []) if o["name"] in results.columns]
    costs = [o["name"] for o in objectives if o["direction"] == "minimize"] or ["params"]
    knee = (benchmark.get("knee") or {}).get("trial")
    fig, axes = plt.subplots(1, len(costs), figsize=(6.2 * len(costs), 5.6), squeeze=False, layout="constrained")
    for ax, cost in zip(axes[0], costs, strict=True):
        x, label = _x_col(results, cost)
        done = results[(results["state"] == "COMPLETE") & np.isfinite(_num(results, x))]
        _trials(ax, done, x)
        if knee is not None and (done["number"] == knee).any():
            k = done[done["number"] == knee]
            ax.scatter(_num(k, x), _num(k, ACC), s=260, facecolors="none", edgecolors="#d62728",
                       linewidths=1.5, label=f"knee (trial {knee})", zorder=4)
        _named(ax, results, x)
        shown = _num(results, x)
        shown = shown[np.isfinite(shown) & (shown > 0) & np.isfinite(_num(results, ACC))]
        if len(shown) > 1 and shown.max() / shown.min() > LOG_SPAN:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(label + (" (log scale)" if ax.get_xscale() == "log" else ""))
        ax.set_ylabel(f"{ACC} (%, validation split)")
        ax.grid(True, alpha=0.3)
    entries = {lab: h for ax in axes[0] for h, lab in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncol=4, fontsize=8)
    counts = ", ".join(f"{k} {v}" for k, v in (benchmark.get("counts") or {}).items())
    fig.suptitle(f"study {plan.study_name or plan.name}: {benchmark.get('n_trials', 0)} trials "
                 f"({counts}); objectives " + ", ".join(f"{o['name']} ({o['direction']})" for o in objectives),
                 fontsize=10)
    out = run_dir / "front.png"
    write_path_atomic(out, lambda p: fig.savefig(p, dpi=130, format="png"))
    plt.close(fig)
    return out


def write_png(run_dir: str | Path) -> Path:
    """Collect results first where needed (as the HTML report does), then draw front.png."""
    from benchmarks.collect import read_results, run_benchmarks
    from study.search.results import load_study_plan

    run_dir = Path(run_dir)
    plan = load_study_plan(run_dir)
    if not all((run_dir / n).is_file() for n in ("results.csv", "benchmark.json")):
        run_benchmarks(run_dir, remeasure=False)
    return front_png(run_dir, read_results(run_dir), json.loads((run_dir / "benchmark.json").read_text()), plan)

"""`python -m reports RUN_DIR --png`: RUN_DIR/front.png, a static figure of the front against baselines and references.

One panel per minimised objective of the study: validation accuracy against that cost, every fully trained trial
(grey), the study's Pareto trials (coloured by prune kind, black outline), the front of that 2-D projection as a
dotted step line, the baselines (purple diamonds) and references (red stars) labelled by name, and the knee
(benchmark.json) ringed. Drawn with matplotlib's Agg backend (no display needed) from results.csv and
benchmark.json, which `build_report` collects first when they are missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import pareto
from reports.html import ACC, KIND_COLORS, _num  # the HTML report's colours and parsing: one look for both
from study.io import write_path_atomic


def front_png(run_dir: str | Path, results: pd.DataFrame, benchmark: dict, meta: dict) -> Path:
    """Write RUN_DIR/front.png (atomically) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    objectives = [o for o in benchmark.get("objectives", []) if o["name"] in results.columns]
    costs = [o["name"] for o in objectives if o["direction"] == "minimize"] or ["params"]
    knee = (benchmark.get("knee") or {}).get("trial")
    fig, axes = plt.subplots(1, len(costs), figsize=(6.2 * len(costs), 5.0), squeeze=False)
    on_front = results["on_front"].astype(str).str.lower().isin(["true", "1"])
    done = results[(results["state"] == "COMPLETE")]
    for ax, cost in zip(axes[0], costs, strict=True):
        x_all, y_all = _num(done, cost), _num(done, ACC)
        ax.scatter(x_all, y_all, s=18, color="#c7c7c7", label="trials (fully trained)", zorder=1)
        front = results[on_front & (results["state"] == "COMPLETE")]
        for kind, part in front.groupby(front["prune_kind"].fillna("unknown")):
            ax.scatter(_num(part, cost), _num(part, ACC), s=46, color=KIND_COLORS.get(kind, "#7f7f7f"),
                       edgecolors="black", linewidths=1.2, label=f"Pareto trials ({kind})", zorder=3)
        pts = np.column_stack([x_all, y_all])
        pts = pts[np.all(np.isfinite(pts), axis=1)]
        if len(pts):
            mask = pareto.pareto_mask(pts, ["minimize", "maximize"])
            step = pts[mask][np.lexsort((-pts[mask][:, 1], pts[mask][:, 0]))]
            ax.step(step[:, 0], step[:, 1], where="post", color="#444444", linestyle=":", linewidth=1,
                    label=f"front of {ACC} vs {cost} alone", zorder=2)
        if knee is not None and (results["number"] == knee).any():
            k = results[results["number"] == knee]
            ax.scatter(_num(k, cost), _num(k, ACC), s=260, facecolors="none", edgecolors="#d62728",
                       linewidths=1.5, label=f"knee (trial {knee})", zorder=4)
        for state, col, marker, color, name in (("BASELINE", "baseline", "D", "#9467bd", "baselines"),
                                               ("REFERENCE", "reference", "*", "#d62728", "references")):
            rows = results[results["state"] == state] if col in results.columns else results.iloc[:0]
            if rows.empty:
                continue
            xs, ys = _num(rows, cost), _num(rows, ACC)
            ax.scatter(xs, ys, s=90 if marker == "*" else 60, marker=marker, color=color, edgecolors="black",
                       linewidths=0.8, label=name, zorder=5)
            for x, y, label in zip(xs, ys, rows[col], strict=True):
                if np.isfinite(x) and np.isfinite(y):
                    ax.annotate(str(label), (x, y), textcoords="offset points", xytext=(5, -11), fontsize=8,
                                color=color)
        finite = x_all[np.isfinite(x_all) & (x_all > 0)]
        if len(finite) > 1 and finite.max() / finite.min() > 20:
            ax.set_xscale("log")
        ax.set_xlabel(cost)
        ax.set_ylabel(f"{ACC} (%, validation split)")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    counts = ", ".join(f"{k} {v}" for k, v in (benchmark.get("counts") or {}).items())
    fig.suptitle(f"study {meta.get('study_name') or meta.get('name')}: {benchmark.get('n_trials', 0)} trials "
                 f"({counts}); objectives " + ", ".join(f"{o['name']} ({o['direction']})" for o in objectives),
                 fontsize=10)
    fig.tight_layout()
    out = run_dir / "front.png"
    write_path_atomic(out, lambda p: fig.savefig(p, dpi=130, format="png"))
    plt.close(fig)
    return out


def write_png(run_dir: str | Path) -> Path:
    """Collect results first where needed (as the HTML report does), then draw front.png."""
    from benchmarks.collect import read_results, run_benchmarks
    from study.results import load_study_meta

    run_dir = Path(run_dir)
    meta = load_study_meta(run_dir)
    if not all((run_dir / n).is_file() for n in ("results.csv", "benchmark.json")):
        run_benchmarks(run_dir, remeasure=False)
    return front_png(run_dir, read_results(run_dir), json.loads((run_dir / "benchmark.json").read_text()), meta)

"""One self-contained HTML report of a study: plotly.js inlined once, no network access, every text escaped.

The page answers first which model to take (benchmarks.recommend: the knee, the most accurate searched trial, the
best under each constraint, with seed means, reproduce verdicts and the `kdstudy reproduce` command that exports
each; then the baselines' verdicts), then the front as a compact table, then the plots (one front per legend
entry; every point of a plot from one latency measurement) and the details.

`render_report` is a pure function of the results table, the front, benchmark.json, study.json and the reproduce
summaries; `build_report` is the edge that reads them from RUN_DIR (running the benchmark collection without
latency re-measurement when results.csv / pareto.csv / benchmark.json are missing) and writes RUN_DIR/report.html.
Nothing here imports training code (torch, study.training.loop, ...).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.utils import PlotlyJSONEncoder

from benchmarks import pareto
from benchmarks.collect import EARLY_STOPPED, MEASURED, is_baseline, row_label
from benchmarks.latency import LATENCY_COL
from benchmarks.recommend import (
    CONFIG_LEGEND,
    baseline_verdicts,
    export_command,
    recommendations,
    reproduce_verdict,
    short_config,
)
from study.core.errors import UserError
from study.core.fmt import fmt_value
from study.core.io import write_text_atomic
from study.measure.export import KD_CONVENTION, KD_TERMS, UNSTRUCTURED_NOTE
from study.search.plan import StudyPlan

ACC = "val_acc"
COSTS = (("params", "parameters (count, dense)"), ("nonzero_params", "non-zero parameters (count)"),
         ("macs", "MACs per image"),
         ("latency_ms_bs1", "latency, batch 1 (ms, as timed in the search, on its latency_backend)"))
LATENCY_RE_LABEL = "latency, batch 1 (ms, re-measured after the study: one process, interleaved rounds)"
SHORT = {"params": "params", "nonzero_params": "non-zero params", "macs": "MACs",
         "latency_ms_bs1": "latency (as timed in the search)", "latency_ms_bs1_remeasured": "latency (re-measured)"}
LOG_SPAN = 4.0  # max / min of an axis beyond which it is drawn on a log scale
AXIS_3D = {"params": "params", "nonzero_params": "non-zero params", "macs": "MACs",
           "latency_ms_bs1": "latency (ms, search)", "val_acc": "val_acc (%)"}
MIN_IMPORTANCE_TRIALS = 20  # below this, importances move with every added trial: a sentence instead of bars
# Settings that shape training only: they cannot change a model's size or latency.
TRAINING_ONLY = frozenset({"kd_loss", "temperature", "alpha", "dkd_beta", "lr", "weight_decay", "label_smoothing",
                           "epochs", "batch_size", "finetune_lr", "finetune_epochs", "seed"})
PRECISION_SYMBOLS = {"fp32": "circle", "int8": "triangle-up"}  # colour says the prune kind, symbol the precision
PRECISION_SYMBOLS_3D = {"fp32": "circle", "int8": "square"}  # what Scatter3d offers
BASELINE_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
REFERENCE_COLORS = ("#d62728", "#a50f15", "#fb6a4a")
REFERENCE_SYMBOLS = ("star", "star-triangle-up", "star-square")
KIND_COLORS = {"unpruned": "#1f77b4", "structured": "#2ca02c", "unstructured": "#ff7f0e", "unknown": "#7f7f7f"}
PLOTTED_STATES = ("COMPLETE", "INFEASIBLE")  # fully trained models; early-stopped ones have partial metrics
PROBLEM_STATES = ("FAIL", "INFEASIBLE", EARLY_STOPPED)
LATENCY_RE = LATENCY_COL  # latency_ms_bs1 re-measured with nothing training
# The report's notes around the engine's texts (study.measure.export).
KD_NOTE = (f"KD loss convention: {KD_CONVENTION}, D being the kd_loss's distillation term ({KD_TERMS['kd']} for "
           "kd); alpha weighs the cross-entropy term, T is the temperature.")
UNSTRUCTURED_PRUNING_NOTE = (
    f"Unstructured pruning zeroes weights inside dense tensors (the note column: \"{UNSTRUCTURED_NOTE}\"): its "
    "sparsity shows in nonzero_params only. The model keeps its dense shapes and runs on dense kernels (PyTorch's "
    "and ONNX Runtime's alike, measured: devbench.onnx_runtimes), so only structured pruning (removed channels) "
    "brings a latency gain.")
CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:; worker-src blob:")

esc = html.escape


# ------------------------------------------------------------------------------------------------------- helpers

def html_table(rows: Sequence[Sequence[Any]], header: Sequence[str], table_id: str,
               raw_cols: Sequence[int] = ()) -> str:
    """A table in a box that scrolls it sideways if it must (the page never does); every cell is escaped except
    pre-built markup in `raw_cols` (built from escaped text)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(f"<td>{v if i in raw_cols else fmt_value(v, html=True)}</td>" for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return (f'<div class="wide"><table id="{esc(table_id)}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _param_cols(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("param_")]


def _finite_rows(df: pd.DataFrame, cols: Sequence[str]) -> pd.Series:
    """Mask of the rows whose values in every one of `cols` are finite numbers."""
    ok = pd.Series(True, index=df.index)
    for c in cols:
        ok &= pd.to_numeric(df[c], errors="coerce").apply(lambda v: v is not None and np.isfinite(v))
    return ok


def _hover(row: pd.Series, params: Sequence[str], extra: Sequence[str]) -> str:
    # Plotly renders a few tags in hover text and decodes entities into text nodes: escape everything we insert.
    label = row_label(row)
    lines = [f"<b>{esc(label)}</b> ({esc(str(row.get('prune_kind', '')))}, {esc(str(row.get('state', '')))})"]
    lines += [f"{esc(c)} = {fmt_value(row.get(c), html=True)}" for c in extra if c in row.index]
    lines += [f"{esc(c[len('param_'):])} = {text}" for c in params if (text := fmt_value(row.get(c), html=True))]
    return "<br>".join(lines)


def _direction(objectives: Sequence[dict], name: str) -> str:
    for o in objectives:
        if o["name"] == name:
            return o["direction"]
    return "maximize" if pareto.is_accuracy(name) else "minimize"


def _num(df: pd.DataFrame, col: str) -> np.ndarray:
    return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)


def _front_mask(df: pd.DataFrame) -> np.ndarray:
    if "on_front" not in df.columns:
        return np.zeros(len(df), dtype=bool)
    return df["on_front"].astype(str).str.lower().isin(["true", "1"]).to_numpy()


# ------------------------------------------------------------------------------------------------------- figures

def _precision(df: pd.DataFrame) -> pd.Series:
    """fp32 or int8 per row (the resolved `quantize`, else the sampled one; fp32 where neither says)."""
    q = pd.Series(None, index=df.index, dtype=object)
    for col in ("quantize", "param_quantize"):
        if col in df.columns:
            q = q.fillna(df[col])
    return q.fillna("none").astype(str).replace({"none": "fp32"})


def _hover_cols(df: pd.DataFrame) -> list[str]:
    return [c for c in (ACC, "test_acc", "params", "nonzero_params", "macs", "latency_ms_bs1", LATENCY_RE)
            if c in df.columns]


def _xyz(part: pd.DataFrame, cols: Sequence[str]) -> dict[str, list[float]]:
    return {axis: _num(part, c).tolist() for axis, c in zip(("x", "y", "z"), cols, strict=False)}


def _trial_traces(df: pd.DataFrame, cols: Sequence[str], scatter: Callable[..., Any]) -> list[Any]:
    """One trace per (prune kind, precision) of the fully trained trials: colour = prune kind, symbol = fp32 or
    int8; infeasible trials (over a constraint) as grey crosses."""
    three_d = len(cols) == 3
    params, extra = _param_cols(df), _hover_cols(df)
    pts = df[df["state"].isin(PLOTTED_STATES) & _finite_rows(df, cols)]
    prec, kinds = _precision(pts), pts["prune_kind"].fillna("unknown")
    groups = [(f"{kind}, {p}", (pts["state"] == "COMPLETE") & (kinds == kind) & (prec == p),
               (PRECISION_SYMBOLS_3D if three_d else PRECISION_SYMBOLS)[p], KIND_COLORS[kind])
              for kind in KIND_COLORS for p in PRECISION_SYMBOLS]
    groups.append(("infeasible (over a constraint)", pts["state"] == "INFEASIBLE", "x", "#bbbbbb"))
    traces = []
    for name, mask, symbol, color in groups:
        part = pts[mask]
        if part.empty:
            continue
        traces.append(scatter(
            **_xyz(part, cols), mode="markers", name=name, meta="trials",
            marker={"symbol": symbol, "color": color, "size": 5 if three_d else 9,
                    "line": {"width": 0 if three_d else 0.5, "color": "#333333"}},
            hovertext=[_hover(r, params, extra) for _, r in part.iterrows()], hoverinfo="text",
            customdata=[int(n) for n in part["number"]]))
    return traces


def _ring_traces(df: pd.DataFrame, cols: Sequence[str], scatter: Callable[..., Any], n_obj: int,
                 knee_trial: int | None) -> list[Any]:
    """Rings around the members of the study's front of all its objectives, and a larger one around the knee."""
    three_d = len(cols) == 3
    shown = df[(df["state"] == "COMPLETE") & _finite_rows(df, cols)]
    out = []
    front = shown[_front_mask(shown)]
    if len(front):
        out.append(scatter(**_xyz(front, cols), mode="markers", meta="study-front", hoverinfo="skip",
                           name=f"on the study's front of all {n_obj} objectives" if n_obj != 2 else
                           "on the study's front",
                           marker={"symbol": "circle-open", "size": 9 if three_d else 16, "color": "#000000",
                                   "line": {"width": 1.5, "color": "#000000"}}))
    knee = shown[shown["number"] == knee_trial] if knee_trial is not None else shown.iloc[:0]
    if len(knee):
        out.append(scatter(**_xyz(knee, cols), mode="markers", meta="knee", hoverinfo="skip",
                           name=f"knee (trial {knee_trial})",
                           marker={"symbol": "circle-open", "size": 14 if three_d else 26, "color": "#d62728",
                                   "line": {"width": 2.5, "color": "#d62728"}}))
    return out


def _named_traces(df: pd.DataFrame, cols: Sequence[str], scatter: Callable[..., Any]) -> list[Any]:
    """One trace, hence one legend entry, per reference model and per baseline: no text labels to collide. The
    baselines come last and smaller, so that one on top of a reference (no_kd is student_ce's recipe) shows."""
    three_d, extra = len(cols) == 3, _hover_cols(df)
    out = []
    refs = df[(df["state"] == "REFERENCE") & _finite_rows(df, cols)]
    for i, (_, r) in enumerate(refs.iterrows()):
        out.append(scatter(
            **_xyz(refs.loc[[r.name]], cols), mode="markers", name=f"reference {r['reference']}", meta="reference",
            marker={"symbol": "cross" if three_d else REFERENCE_SYMBOLS[i % len(REFERENCE_SYMBOLS)],
                    "size": 7 if three_d else 16, "color": REFERENCE_COLORS[i % len(REFERENCE_COLORS)],
                    "line": {"width": 1, "color": "#000000"}},
            hovertext=[_hover(r, [], extra)], hoverinfo="text"))
    rows = df[is_baseline(df) & _finite_rows(df, cols)]
    for i, (_, r) in enumerate(rows.iterrows()):
        out.append(scatter(
            **_xyz(rows.loc[[r.name]], cols), mode="markers", name=f"baseline {_baseline_label(r)}", meta="baseline",
            marker={"symbol": "diamond" if three_d else "diamond-wide", "size": 6 if three_d else 11,
                    "color": BASELINE_COLORS[i % len(BASELINE_COLORS)], "line": {"width": 1, "color": "#000000"}},
            hovertext=[_hover(r, [], extra)], hoverinfo="text"))
    return out


def _baseline_label(r: Any) -> str:
    return f"{r['baseline']} (trial {int(r['number'])})" if pd.notna(r.get("number")) else str(r["baseline"])


def _axis(df: pd.DataFrame, col: str) -> dict:
    """Axis settings for `col`: logarithmic where the shown values span more than about half a decade (a linear
    axis would squeeze the trials into a corner beside the teacher), ticked at 1, 2 and 5 x 10^k written out."""
    xs = _num(df, col)
    xs = xs[np.isfinite(xs) & (xs > 0)]
    if len(xs) < 2 or xs.max() / xs.min() <= LOG_SPAN:
        return {"type": "linear"}
    lo, hi = xs.min() / 1.05, xs.max() * 1.05
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    return {"type": "log", **({"tickvals": ticks, "ticktext": [f"{t:,.6g}" for t in ticks]} if len(ticks) > 1
                              else {})}


def _staircase(df: pd.DataFrame, x: str, objectives: Sequence[dict]) -> list[Any]:
    """The front of the two objectives of this plot alone, over the complete trials drawn in it."""
    complete = df[(df["state"] == "COMPLETE") & _finite_rows(df, [x, ACC])]
    if complete.empty:
        return []
    vals = np.column_stack([_num(complete, x), _num(complete, ACC)])
    front = vals[pareto.pareto_mask(vals, [_direction(objectives, x), _direction(objectives, ACC)])]
    front = front[np.lexsort((-front[:, 1], front[:, 0]))]
    return [go.Scatter(x=front[:, 0].tolist(), y=front[:, 1].tolist(), mode="lines", meta="front",
                       line={"shape": "hv", "color": "#444444", "dash": "dot"}, hoverinfo="skip",
                       name="front of this plot's 2 objectives alone")]


def pareto_figure(df: pd.DataFrame, x: str, x_label: str, objectives: Sequence[dict],
                  knee_trial: int | None = None) -> go.Figure:
    """val_acc against one cost: trials (colour = prune kind, symbol = fp32 / int8), the front of this pair as a
    dotted step line, rings on the study's front of all objectives and on the knee, one legend entry per
    baseline and reference."""
    n_obj = len(objectives) or 2
    fig = go.Figure(_trial_traces(df, [x, ACC], go.Scatter) + _staircase(df, x, objectives)
                    + _ring_traces(df, [x, ACC], go.Scatter, n_obj, knee_trial)
                    + _named_traces(df, [x, ACC], go.Scatter))
    shown = df[df["state"].isin((*PLOTTED_STATES, *MEASURED)) & _finite_rows(df, [x, ACC])]
    x_axis = _axis(shown, x)
    fig.update_layout(
        title={"text": f"{ACC} vs {SHORT.get(x, x)}"}, height=480, margin={"t": 50, "r": 10},
        xaxis={"title": {"text": x_label + (" (log scale)" if x_axis["type"] == "log" else "")}, **x_axis},
        yaxis={"title": {"text": f"{ACC} (%)"}}, legend={"font": {"size": 11}},
    )
    return fig


def scatter3d_figure(df: pd.DataFrame, cols: Sequence[str], objectives: Sequence[dict] = (),
                     knee_trial: int | None = None) -> go.Figure:
    """The objectives in 3-D (latency as timed in the search, like the front): log axes where values span
    decades, rings on the study's front and the knee."""
    fig = go.Figure(_trial_traces(df, cols, go.Scatter3d)
                    + _ring_traces(df, cols, go.Scatter3d, len(objectives) or 3, knee_trial)
                    + _named_traces(df, cols, go.Scatter3d))
    shown = df[df["state"].isin((*PLOTTED_STATES, *MEASURED)) & _finite_rows(df, cols)]
    axes = {}
    for axis, c in zip(("xaxis", "yaxis", "zaxis"), cols, strict=True):
        ax = _axis(shown, c)
        # objective names come from study.json: text, not markup
        axes[axis] = {"title": {"text": esc(AXIS_3D.get(c, c)) + (" (log)" if ax["type"] == "log" else "")}, **ax}
    fig.update_layout(title={"text": "The objectives in 3-D (drag to rotate; latency as timed in the search)"},
                      height=720, margin={"l": 0, "r": 0, "t": 50, "b": 0}, legend={"font": {"size": 11}},
                      scene={**axes, "aspectmode": "cube",
                             "camera": {"eye": {"x": 1.6, "y": -1.6, "z": 0.9}}})
    return fig


def parcoords_figure(df: pd.DataFrame) -> go.Figure | None:
    """Parallel coordinates of the parameters of COMPLETE trials, coloured by val_acc."""
    done = df[(df["state"] == "COMPLETE") & _finite_rows(df, [ACC])]
    params = [c for c in _param_cols(df) if done[c].notna().any()]
    if done.empty or not params:
        return None
    dims = []
    for c in params:
        num = pd.to_numeric(done[c], errors="coerce")
        label = esc(c[len("param_"):])
        if num.notna().sum() == done[c].notna().sum():
            vals = num.to_numpy(dtype=float)
            if np.isnan(vals).any():  # conditional parameter: absent in some trials, drawn below the range as n/a
                lo, hi = np.nanmin(vals), np.nanmax(vals)
                span = (hi - lo) or 1.0
                ticks = np.linspace(lo, hi, 4)
                vals = np.where(np.isnan(vals), lo - 0.15 * span, vals)
                dims.append({"label": label, "values": vals.tolist(), "tickvals": [lo - 0.15 * span, *ticks],
                             "ticktext": ["n/a", *(f"{t:.3g}" for t in ticks)]})
            else:
                dims.append({"label": label, "values": vals.tolist()})
        else:
            cats = sorted({str(v) for v in done[c].fillna("n/a")})
            code = {v: i for i, v in enumerate(cats)}
            dims.append({"label": label, "values": [code[str(v)] for v in done[c].fillna("n/a")],
                         "tickvals": list(range(len(cats))), "ticktext": [esc(v) for v in cats]})
    acc = _num(done, ACC)
    dims.append({"label": f"{ACC} (%)", "values": acc.tolist()})
    fig = go.Figure(go.Parcoords(line={"color": acc.tolist(), "colorscale": "Viridis", "showscale": True,
                                       "colorbar": {"title": {"text": ACC}}}, dimensions=dims))
    fig.update_layout(title=f"Parameters of complete trials, coloured by {ACC}", height=450)
    return fig


def hypervolume_figure(benchmark: dict) -> go.Figure | None:
    """The normalised hypervolume of the complete trials after each trial (a step line); None for no trials."""
    series = benchmark.get("hypervolume_over_trials") or []
    if not series:
        return None
    fig = go.Figure(go.Scatter(x=[s["trial"] for s in series], y=[s["hypervolume"] for s in series],
                               mode="lines+markers", line={"shape": "hv"}, name="hypervolume", meta="hv"))
    fig.update_layout(title="Hypervolume of the complete trials so far (normalised, reference point (1,...,1))",
                      xaxis={"title": {"text": "trial number"}}, yaxis={"title": {"text": "hypervolume"}},
                      height=380)
    return fig


def importance_figure(benchmark: dict) -> go.Figure | None:
    """Optuna's importances per objective; for size and latency objectives the training-only settings are left
    out (they cannot change either: whatever Optuna gave them there is noise)."""
    imps = benchmark.get("importances") or {}
    if not imps:
        return None
    params = sorted({p for v in imps.values() for p in v})
    bars = []
    for obj, v in imps.items():
        keep = params if pareto.is_accuracy(obj) else [p for p in params if p not in TRAINING_ONLY]
        bars.append(go.Bar(x=[esc(p) for p in keep], y=[v.get(p, 0.0) for p in keep], name=esc(obj)))
    fig = go.Figure(bars)
    fig.update_layout(barmode="group", title={"text": "Parameter importance per objective (Optuna default evaluator)"},
                      yaxis={"title": {"text": "importance (normalised per objective)"}}, height=420)
    return fig


def importance_html(benchmark: dict) -> str:
    """The importance figure with its trial count and caveats, or a sentence where too few trials were complete."""
    n = int((benchmark.get("counts") or {}).get("COMPLETE", 0))
    note = benchmark.get("importances_note")
    fig = importance_figure(benchmark)
    if fig is None or n < MIN_IMPORTANCE_TRIALS:
        why = (f"Not shown: {n} complete trials are too few for parameter importance to mean anything (this "
               f"report shows it from {MIN_IMPORTANCE_TRIALS} on)." if fig is not None
               else str(note or "No importances computed."))
        return f'<p class="note" id="importance-note">{esc(why)}</p>'
    imps = benchmark.get("importances") or {}
    noise = {obj: sum(v.get(p, 0.0) for p in TRAINING_ONLY) for obj, v in imps.items() if not pareto.is_accuracy(obj)}
    dropped = sorted({p for obj in noise for p in imps[obj] if p in TRAINING_ONLY})
    caveat = (f"From {n} complete trials: a rough ranking that can change as trials are added."
              + (f" For {', '.join(noise)} the training settings ({', '.join(dropped)}) are left out: they cannot "
                 "change a model's size or latency, yet Optuna gave them "
                 + ", ".join(f"{v:.2f} ({o})" for o, v in noise.items())
                 + " of the importance there, a measure of how noisy these estimates are." if dropped else "")
              + (f" {note}" if note else ""))
    return figure_html(fig, "plot-importance") + f'<p class="note" id="importance-note">{esc(caveat)}</p>'


def figure_html(fig: go.Figure, div_id: str) -> str:
    """A div and the script that draws `fig` into it; the JSON cannot close the script element."""
    spec = json.dumps(fig.to_plotly_json(), cls=PlotlyJSONEncoder)
    for ch, code in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                     ("\u2029", "\\u2029")):
        spec = spec.replace(ch, code)
    return (f'<div id="{div_id}" class="plot"></div>\n<script>(function () {{ var f = {spec}; '
            f'Plotly.newPlot("{div_id}", f.data, f.layout, {{"responsive": true, "displaylogo": false}}); }})();'
            "</script>")


# -------------------------------------------------------------------------------------------------------- tables

def backend_cols(df: pd.DataFrame) -> list[str]:
    """Per-runtime columns, shown where ONNX Runtime timed some models (latency_ms_bs1 is then the backend's):
    which backend, both latencies, and the fp32 accuracy beside an int8 model's."""
    if "latency_ms_bs1_onnxruntime" not in df.columns or not df["latency_ms_bs1_onnxruntime"].notna().any():
        return []
    cols = ["latency_backend_used", "latency_ms_bs1_torch", "latency_ms_bs1_onnxruntime"]
    if "quantize" in df.columns and (df["quantize"].astype(str) == "int8").any():
        cols += ["val_acc_fp32"]
    return [c for c in cols if c in df.columns]


def _code(cmd: str) -> str:
    """A command; it may wrap inside its path, never between a flag and its value."""
    head, sep, flag = cmd.rpartition(" --")
    if not sep:
        return f'<code class="cmd">{esc(cmd)}</code>'
    return f'<code class="cmd">{esc(head)} <span class="nw">--{esc(flag)}</span></code>'


def pareto_table(front: pd.DataFrame, objectives: Sequence[dict], run_dir_label: str,
                 knee_trial: int | None = None) -> str:
    """The front, compact: trial, the command that exports it, the objectives (the re-measured latency and the
    search's test accuracy beside them) and a one-line configuration; every column in a collapsed table below."""
    names = [o["name"] for o in objectives]
    extra = [c for c in (LATENCY_RE, "test_acc") if c in front.columns and c not in names]
    heads = {LATENCY_RE: "latency re-measured (ms)", "test_acc": "test_acc (%, one seed)"}
    rows = []
    for _, r in front.iterrows():
        n = int(r["number"])
        label = f"{n}" + (" knee" if n == knee_trial else "") + (f" (baseline {r['baseline']})"
                                                                  if isinstance(r.get("baseline"), str) else "")
        rows.append([label, _code(export_command(run_dir_label, trial=n)), *(r[c] for c in names),
                     *(r[c] for c in extra), short_config(r)])
    table = html_table(rows, ["trial", "export it", *names, *(heads[c] for c in extra), "configuration"],
                       "table-pareto", raw_cols=(1,))
    return (table + '<details id="pareto-details"><summary>Every column of the front trials (full configuration, '
            "runtimes, re-measurement)</summary>" + pareto_table_full(front, objectives) + "</details>")


def pareto_table_full(front: pd.DataFrame, objectives: Sequence[dict]) -> str:
    """Every column worth reading of the front trials: prune kind, objectives, costs, runtimes, re-measurement,
    the sampled parameters and the note."""
    names = [o["name"] for o in objectives]
    extra = [c for c in ("params", "nonzero_params", "macs", "latency_ms_bs1", *backend_cols(front), LATENCY_RE,
                         "latency_iqr_ms_bs1_remeasured", "throughput_ips_remeasured", "test_acc")
             if c in front.columns and c not in names]
    params = _param_cols(front)
    header = ["trial", "prune kind", *names, *extra, "parameters", "note"]
    rows = []
    for _, r in front.iterrows():
        p = "; ".join(f"{c[len('param_'):]}={text}" for c in params if (text := fmt_value(r[c], html=True)))
        rows.append([r["number"], r["prune_kind"], *(r[n] for n in names), *(r[c] for c in extra), p, r.get("note")])
    # `p` holds already escaped text: mark it raw.
    return html_table(rows, header, "table-pareto-full", raw_cols=(len(header) - 2,))


def baselines_table(df: pd.DataFrame, compared: Sequence[dict], objectives: Sequence[dict]) -> str:
    """One row per baseline: its objectives, its config (what differs from the space), and the verdict line."""
    rows_df = df[is_baseline(df)]
    lines = {b.get("name"): b.get("line", "") for b in compared}
    names = [o["name"] for o in objectives]
    extra = [c for c in ("test_acc", "params", "macs") if c in rows_df.columns and c not in names]
    cfg = [c for c in ("kd_loss", "temperature", "alpha", "width_mult", "prune_method", "prune_ratio",
                       "finetune_epochs", "quantize") if c in rows_df.columns]
    rows = []
    for _, r in rows_df.iterrows():
        recipe = "; ".join(f"{c}={text}" for c in cfg if (text := fmt_value(r[c], html=True)))
        rows.append([_baseline_label(r), *(r[n] for n in names), *(r[c] for c in extra), recipe,
                     lines.get(r["baseline"], "")])
    return html_table(rows, ["baseline", *names, *extra, "configuration", "against the searched trials"],
                      "table-baselines")


def verdict_html(benchmark: dict, run_dir_label: str = "RUN_DIR") -> str:
    """The search against the baselines, in words, each with the command that exports the baseline: on seed means
    where the study confirmed them (the search's own run plus the confirmation seeds, test accuracy, re-measured
    latency), else on the search's values; and the compute it took."""
    verdicts = baseline_verdicts(benchmark, run_dir=run_dir_label)
    if not verdicts:
        return ""
    confirmed = benchmark.get("confirmed") or {}
    if all(v["seed_means"] for v in verdicts):
        head = (f"The baselines (configurations picked by hand) against the searched trials, on seed means (the "
                f"search's own run and seeds {', '.join(map(str, confirmed.get('seeds') or []))}; "
                f"{str(confirmed.get('accuracy')).replace('+-', '±')}; {confirmed.get('latency')} latency):")
    else:
        head = ("The baselines (configurations picked by hand) against the searched trials, on the search's own "
                "values (one run each; no confirmation seeds):")
    out = [f"<p>{esc(head)}</p><ul id=\"verdicts\">"]
    out += [f"<li>{esc(v['line']).replace('+-', '±')} &nbsp;Export: {_code(v['command'])}</li>" for v in verdicts]
    out.append("</ul>")
    if benchmark.get("compute"):
        out.append(f'<p class="note" id="compute">{esc(benchmark["compute"]["line"])}</p>')
    return "".join(out)


def references_table(df: pd.DataFrame) -> str:
    """One row per reference model (teacher, student_ce, student_kd): accuracies, costs and latencies."""
    refs = df[df["state"] == "REFERENCE"]
    cols = [c for c in (ACC, "test_acc", "params", "nonzero_params", "macs", "latency_ms_bs1", *backend_cols(refs),
                        LATENCY_RE, "latency_iqr_ms_bs1_remeasured", "throughput_ips_remeasured")
            if c in refs.columns]
    rows = [[r["reference"], *(r[c] for c in cols)] for _, r in refs.iterrows()]
    return html_table(rows, ["reference", *cols], "table-references")


def teacher_note(plan: StudyPlan) -> str:
    """The teacher's accuracy with its input normalisation, and the warnings of a teacher that looks wrong."""
    t = plan.teacher or {}
    if not t:
        return ""
    norm = plan.normalization or t.get("normalization") or {}
    how = (f"; input normalisation <code>{esc(str(norm.get('normalize')))}</code> (mean {esc(str(norm.get('mean')))}, "
           f"std {esc(str(norm.get('std')))}; {esc(str(norm.get('chosen_by', '')))})" if norm else "")
    out = [f'<p id="teacher-note">Teacher {esc(str(t.get("arch", "")))}: '
           f'val_acc {fmt_value(t.get("val_acc"), html=True)} %, test_acc {fmt_value(t.get("test_acc"), html=True)} '
           f'%{how}.</p>']
    out += [f'<p class="warning"><strong>{esc(w)}</strong></p>' for w in t.get("warnings") or []]
    return "\n".join(out)


def problems_table(df: pd.DataFrame) -> str:
    """The failed, infeasible and early-stopped trials, each with its reason, the epochs it trained and its
    partial validation accuracy."""
    bad = df[df["state"].isin(PROBLEM_STATES)].sort_values("number")
    default = {EARLY_STOPPED: "early stopped by the scheduler", "FAIL": "failed (no reason recorded)",
               "INFEASIBLE": "infeasible (no reason recorded)"}
    rows = []
    for _, r in bad.iterrows():
        reason = r.get("error")
        if reason is None or (isinstance(reason, float) and math.isnan(reason)) or str(reason) == "":
            reason = default[r["state"]]
        epochs = r.get("epochs_done")
        if epochs is None or pd.isna(epochs):
            epochs = r.get("epoch")  # an early-stopped trial reports the epoch it had reached
        rows.append([r["number"], r["state"], reason, epochs, r.get(ACC)])
    return html_table(rows, ["trial", "state", "reason", "epochs done", f"{ACC} (partial)"], "table-problems")


def reproduce_table(summaries: Sequence[dict]) -> str:
    """One row per `kdstudy reproduce` run: its seeds' test accuracy against the search's, and the verdict."""
    rows = []
    for s in summaries:
        seeds = s.get("seeds")
        epochs = s.get("epochs")  # a --epochs run trains longer than the search did: say so beside its numbers
        budget = f"{epochs} (search: {s.get('epochs_search')})" if s.get("budget_changed") else epochs
        v = reproduce_verdict([s], trial=s.get("trial"), baseline=s.get("baseline")) or {}
        within = v.get("within_one_std")
        verdict = "" if within is None else (f"yes ({v['difference']:+.2f})" if within
                                             else f"no ({v['difference']:+.2f})")
        rows.append([s.get("baseline") or s.get("trial"),
                     ", ".join(str(x) for x in seeds) if isinstance(seeds, list) else seeds, budget,
                     *(_pct(x) for x in (s.get("test_acc_mean"), s.get("test_acc_std"), v.get("test_acc_search"))),
                     verdict, _pct(s.get("val_acc_search")), s.get("params"), s.get("latency_ms_bs1")])
    header = ["trial", "seeds", "distillation epochs", "test_acc mean (%)", "test_acc std",
              "test_acc in search (%)", "search within one std?", "val_acc in search (%)", "params",
              "latency_ms_bs1"]
    return html_table(rows, header, "table-reproduce")


def _pct(v: Any) -> str:
    """An accuracy (or its std) to 2 decimals, as the verdict lines print them."""
    try:
        return f"{float(v):.2f}"
    except (TypeError, ValueError):
        return ""


def _acc_cell(e: dict) -> str:
    if e.get("test_acc_mean") is not None:
        return (f"{e['test_acc_mean']:.2f} ± {e['test_acc_std'] or 0.0:.2f} <span class=\"note\">"
                f"({e['n_seeds']} seeds)</span>")
    return "" if e.get("test_acc") is None else f"{e['test_acc']:.2f} <span class=\"note\">(one seed)</span>"


def _reproduced_cell(v: dict | None) -> str:
    if not v:
        return '<span class="note">not run</span>'
    if v.get("within_one_std") is None:
        return esc(f"{v['test_acc_mean']:.2f} ± {v['test_acc_std'] or 0.0:.2f} ({v['n_seeds']} seeds)")
    verdict = ("within one std of the search" if v["within_one_std"]
               else '<strong class="warning">not within one std of the search</strong>')
    return (f"{v['test_acc_mean']:.2f} ± {v['test_acc_std'] or 0.0:.2f} ({v['n_seeds']} seeds) against "
            f"{v['test_acc_search']:.2f}: {verdict} ({v['difference']:+.2f})")


def recommendations_table(recs: Sequence[dict], objectives: Sequence[dict]) -> str:
    """The recommended models: role, command, test accuracy (seed mean where confirmed), objectives, config."""
    costs = [o["name"] for o in objectives if o["direction"] == "minimize"]
    lat = " (re-measured)" if recs and all(e["latency"] == "re-measured" for e in recs) else ""
    rows = []
    for e in recs:
        who = f"<strong>{esc(e['role'])}</strong><br>trial {e['trial']}" + (
            f" (baseline {esc(e['baseline'])})" if e.get("baseline") else "") + (
            "" if e["on_front"] else '<br><span class="note">not on the front</span>')
        rows.append([who, _code(e["command"]), _acc_cell(e), e.get("val_acc"),
                     *(e["values"].get(c) for c in costs), e["config"], _reproduced_cell(e.get("reproduced"))])
    header = ["model", "export it", "test_acc (%)", "val_acc in search (%)",
              *(c + (lat if c == "latency_ms_bs1" else "") for c in costs), "configuration", "reproduced"]
    return html_table(rows, header, "table-recommend", raw_cols=(0, 1, 2, len(header) - 1))


def answer_html(recs: Sequence[dict], objectives: Sequence[dict], benchmark: dict, reproduce: Sequence[dict],
                run_dir_label: str) -> str:
    """The top of the report: which model to take, the baselines' verdicts, the reproduce runs' verdicts."""
    parts = ['<section id="answer"><h2>Which model to take</h2>']
    if recs:
        parts.append(recommendations_table(recs, objectives))
        parts.append(f'<p class="note">test_acc: mean ± sample std over seeds where the study confirmed the model '
                     f'with more seeds, else the search\'s single run. {esc(CONFIG_LEGEND)}. '
                     "<code>kdstudy reproduce</code> retrains with 3 seeds and exports model.pt2 and model.onnx.</p>")
    else:
        parts.append('<p class="note">No complete searched trial yet: nothing to recommend.</p>')
    parts.append(verdict_html(benchmark, run_dir_label))
    if reproduce:
        parts.append("<p>Reproduced with more seeds (<code>kdstudy reproduce</code>; is the search's test accuracy "
                     "within one std of the seeds' mean?):</p>")
        parts.append(reproduce_table(reproduce))
    parts.append("</section>")
    return "\n".join(parts)


def _json_cell(v: Any) -> Any:
    return json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else v


def settings_table(plan: StudyPlan, benchmark: dict) -> str:
    """study.json's settings, then the hypervolume with its reference rule, the counts by state and the latency
    re-measurement's protocol."""
    rows = [[k, _json_cell(v)] for k, v in plan.to_json().items()]
    rm = benchmark.get("remeasure")
    rows += [
        ["hypervolume", benchmark.get("hypervolume")],
        ["hypervolume reference rule", benchmark.get("hypervolume_rule")],
        ["hypervolume reference point (raw)", _json_cell(
            {o["name"]: o["reference"] for o in benchmark.get("objectives", [])})],
        ["trial counts by state", _json_cell(benchmark.get("counts"))],
        ["latency re-measurement", _json_cell(
            {k: rm.get(k) for k in ("device", "threads", "batch_sizes", "rounds", "repeats_per_round", "method")}
            if rm else "not done (python -m benchmarks RUN_DIR re-measures)")],
        ["benchmark generated at", benchmark.get("generated_at")],
    ]
    return html_table(rows, ["setting", "value"], "table-settings")


# ---------------------------------------------------------------------------------------------------------- page

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em auto; max-width: 1300px; padding: 0 1em; color: #222; }
h1 { margin: 0.2em 0; font-size: 1.6em; } h2 { margin: 1.2em 0 0.4em; font-size: 1.3em; }
table { border-collapse: collapse; margin: 0.3em 0 0.8em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } code { font-size: 0.95em; } .note { color: #555; font-style: italic; }
.plot { margin-bottom: 1em; } .warning { color: #a00; } .wide { max-width: 100%; overflow-x: auto; }
code.cmd { background: #eef2f8; padding: 0 3px; overflow-wrap: anywhere; } .nw { white-space: nowrap; }
#answer code.cmd { font-size: 1.05em; }
#table-recommend td:nth-child(2), #table-pareto td:nth-child(2) { min-width: 19em; }  /* a command on one line */
#answer { background: #f7f9fc; border: 1px solid #c9d5e8; border-radius: 6px; padding: 0 1em 0.3em; }
#answer h2 { margin-top: 0.4em; } #answer p { margin: 0.4em 0; } #answer ul { margin: 0.2em 0 0.4em; }
#answer li { margin-bottom: 0.2em; } #table-settings td { overflow-wrap: anywhere; }
details { margin: 0.3em 0 1em; } summary { cursor: pointer; color: #335; }
"""
# A plot drawn inside a closed <details> has no width yet: redraw it at its real size when opened.
RESIZE_ON_OPEN = ("<script>document.querySelectorAll('details').forEach(function (d) { d.addEventListener('toggle', "
                  "function () { d.querySelectorAll('.js-plotly-plot').forEach(function (p) { "
                  "Plotly.Plots.resize(p); }); }); });</script>")


def _knee_trial(benchmark: dict) -> int | None:
    k = (benchmark.get("knee") or {}).get("trial")
    return None if k is None else int(k)


def _summary_html(results: pd.DataFrame, benchmark: dict, objectives: Sequence[dict]) -> str:
    counts = ", ".join(f"{esc(k)}: {v}" for k, v in (benchmark.get("counts") or {}).items())
    return (f"<p>{int(benchmark.get('n_trials', 0))} trials ({counts}). Objectives: "
            + ", ".join(f"{esc(o['name'])} ({esc(o['direction'])})" for o in objectives)
            + f". Hypervolume {fmt_value(benchmark.get('hypervolume'), html=True)} (normalised; see settings for the "
            "rule).</p>")


def _pair_plot(results: pd.DataFrame, col: str, label: str, objectives: Sequence[dict], knee: int | None) -> str:
    return figure_html(pareto_figure(results, col, label, objectives, knee), f"plot-pareto-{col}")


def plots_html(results: pd.DataFrame, objectives: Sequence[dict], knee: int | None) -> list[str]:
    """The 2-D plots (the objectives' costs open, the other costs collapsed) and the 3-D view."""
    names = [o["name"] for o in objectives]
    drawn = [(c, label) for c, label in COSTS if c in results.columns and ACC in results.columns
             and _finite_rows(results, [c, ACC]).any()]
    parts = ["<h2>Accuracy against each cost</h2>",
             '<p class="note">Each plot: colour = prune kind, symbol = fp32 (circle) or int8 (triangle); the dotted '
             "step line is the front of that plot's two objectives alone; black rings mark the study's front over "
             "all its objectives (a ring below the line is better in another objective); the red ring is the knee. "
             "Hover a point for its trial, configuration and numbers.</p>"]
    if not drawn:
        parts.append(f'<p class="note">No trial has both {ACC} and a cost metric yet.</p>')
    remeasured = LATENCY_RE in results.columns and _finite_rows(results, [LATENCY_RE, ACC]).any()
    more = []
    for col, label in drawn:
        if col == "latency_ms_bs1" and remeasured:
            parts.append(_pair_plot(results, LATENCY_RE, LATENCY_RE_LABEL, objectives, knee))
            n_re = int(_finite_rows(results, [LATENCY_RE, ACC]).sum())
            parts.append(f'<p class="note">Latency plot: only the {n_re} models whose latency was re-measured '
                         "(the front, confirmed trials, baselines, references), all from that one measurement; "
                         "every trial at its search-time latency is in the collapsed plot below.</p>")
            more.append(("latency as timed during the search, every trial (noisier: timed while other trials "
                         "trained)", _pair_plot(results, col, label, objectives, knee)))
        elif col in names:
            parts.append(_pair_plot(results, col, label, objectives, knee))
        else:
            more.append((f"{label} (not an objective of this study)", _pair_plot(results, col, label, objectives,
                                                                                 knee)))
    parts += [f"<details><summary>{esc(title)}</summary>{plot}</details>" for title, plot in more]
    cols3 = [n for n in names if n != ACC] + [ACC] if len(names) == 3 and ACC in names \
        else ["params", "latency_ms_bs1", ACC]
    cols3 = [c for c in cols3 if c in results.columns]
    if len(cols3) == 3 and _finite_rows(results, cols3).any():
        parts.append("<h2>The objectives in 3-D</h2>")
        parts.append(figure_html(scatter3d_figure(results, cols3, objectives, knee), "plot-3d"))
    return parts


def _front_html(front: pd.DataFrame, objectives: Sequence[dict], run_dir_label: str, knee: int | None) -> list[str]:
    return ["<h2>The Pareto front</h2>",
            pareto_table(front, objectives, run_dir_label, knee) if len(front)
            else '<p class="note">No complete trial: the front is empty.</p>']


def _details_html(results: pd.DataFrame, benchmark: dict, plan: StudyPlan, objectives: Sequence[dict]) -> list[str]:
    """Baselines, references, parameters, hypervolume, importance, failures and settings."""
    parts = ["<h2>Baselines: the configurations picked by hand</h2>"]
    parts.append(baselines_table(results, benchmark.get("baselines") or [], objectives)
                 if is_baseline(results).any()
                 else '<p class="note">No baseline results in this run directory: its space lists '
                      '<code>baselines: []</code>, the baselines failed or have not finished (see the study\'s '
                      'output), or the study was run before baselines existed.</p>')
    parts.append("<h2>Reference models</h2>")
    parts.append(teacher_note(plan))
    parts.append(references_table(results) if (results["state"] == "REFERENCE").any()
                 else '<p class="note">No reference models found under RUN_DIR/references/.</p>')
    parts.append("<h2>Parameters</h2>")
    pc = parcoords_figure(results)
    parts.append(figure_html(pc, "plot-parcoords") if pc is not None
                 else '<p class="note">No complete trial with parameters.</p>')
    parts.append("<h2>Hypervolume over trials</h2>")
    hv = hypervolume_figure(benchmark)
    parts.append(figure_html(hv, "plot-hv") if hv is not None else '<p class="note">No trials.</p>')
    parts.append("<h2>Parameter importance</h2>")
    parts.append(importance_html(benchmark))
    parts.append("<h2>Failed, infeasible and early-stopped trials</h2>")
    parts.append(problems_table(results))
    parts.append("<h2>Settings</h2>")
    parts.append(settings_table(plan, benchmark))
    return parts


def render_report(results: pd.DataFrame, front: pd.DataFrame, benchmark: dict, plan: StudyPlan, *,
                  run_dir_label: str, reproduce: Sequence[dict] = ()) -> str:
    """The whole page as a string (pure: no file access): the answer first, then the front, plots and details."""
    objectives = [{"name": o["name"], "direction": o["direction"]} for o in benchmark.get("objectives", [])]
    title = f"Study {plan.study_name or plan.name or ''}"
    knee = _knee_trial(benchmark)
    recs = recommendations(results, objectives, benchmark, plan.constraints or {}, run_dir=run_dir_label,
                           reproduce=reproduce) if objectives else []
    parts = [f"<h1>{esc(title)}</h1>", _summary_html(results, benchmark, objectives),
             answer_html(recs, objectives, benchmark, reproduce, run_dir_label)]
    parts += _front_html(front, objectives, run_dir_label, knee)
    parts.append(f'<p class="note">{esc(UNSTRUCTURED_PRUNING_NOTE)} {esc(KD_NOTE)} "Early stopped" (state '
                 'EARLY_STOPPED; PRUNED in Optuna) means the trial scheduler stopped the trial; "pruning" always '
                 'means weights.</p>')
    parts += plots_html(results, objectives, knee)
    parts += _details_html(results, benchmark, plan, objectives)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{esc(title)}</title><style>{STYLE}</style>"
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
        f"<script>{get_plotlyjs()}</script>\n</head><body>\n" + "\n".join(parts)
        + f"\n{RESIZE_ON_OPEN}\n</body></html>\n"
    )


def _read_reproduce(run_dir: Path, log: Callable[[str], None]) -> list[dict]:
    out = []
    for path in sorted((run_dir / "reproduce").glob("*/summary.json")):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            log(f"note: {path} skipped ({type(e).__name__})")
            continue
        if isinstance(data, dict):
            out.append(data)
    return sorted(out, key=lambda s: (str(type(s.get("trial"))), s.get("trial") or 0))


def build_report(run_dir: str | Path, *, log: Callable[[str], None] = print) -> Path:
    """Write RUN_DIR/report.html from results.csv, pareto.csv and benchmark.json (collected first if missing)."""
    from benchmarks.collect import read_results, run_benchmarks
    from study.search.results import load_study_plan

    label = str(run_dir)
    run_dir = Path(run_dir)
    plan = load_study_plan(run_dir)
    needed = [run_dir / n for n in ("results.csv", "pareto.csv", "benchmark.json")]
    db = run_dir / "optuna.db"
    if not all(p.is_file() for p in needed):
        log("collecting results first (python -m benchmarks RUN_DIR --no-remeasure)")
        run_benchmarks(run_dir, remeasure=False, log=log)
    elif db.is_file() and db.stat().st_mtime > min(p.stat().st_mtime for p in needed):
        log(f"note: {db} changed after results.csv was written (a resumed or extended study): the report shows "
            f"the results as collected then; run `python -m benchmarks {label}` to collect them again")
    try:
        results = read_results(run_dir)
        front = pd.read_csv(run_dir / "pareto.csv")
        benchmark = json.loads((run_dir / "benchmark.json").read_text())
    except (pd.errors.ParserError, pd.errors.EmptyDataError, json.JSONDecodeError, KeyError) as e:
        raise UserError(f"{run_dir}: results.csv / pareto.csv / benchmark.json are unreadable ({e}); "
                        "delete them and run `python -m benchmarks RUN_DIR` again.") from e
    page = render_report(results, front, benchmark, plan, run_dir_label=label,
                         reproduce=_read_reproduce(run_dir, log))
    out = run_dir / "report.html"
    write_text_atomic(out, page)
    return out

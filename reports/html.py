"""One self-contained HTML report of a study: plotly.js inlined once, no network access, every text escaped.

`render_report` is a pure function of the results table, the front, benchmark.json, study.json and the reproduce
summaries; `build_report` is the edge that reads them from RUN_DIR (running the benchmark collection without
latency re-measurement when results.csv / pareto.csv / benchmark.json are missing) and writes RUN_DIR/report.html.
Nothing here imports training code (torch, study.train, ...).
"""

from __future__ import annotations

import html
import json
import math
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.utils import PlotlyJSONEncoder

from benchmarks import pareto
from benchmarks.collect import is_baseline, row_label
from study.errors import UserError
from study.io import write_text_atomic

ACC = "val_acc"
COSTS = (("params", "parameters (count, dense)"), ("nonzero_params", "non-zero parameters (count)"),
         ("macs", "MACs per image"),
         ("latency_ms_bs1", "latency, batch 1 (ms, as measured in the trial, on its latency_backend)"))
SYMBOLS = {"unpruned": "circle", "structured": "square", "unstructured": "diamond", "unknown": "circle-open"}
KIND_COLORS = {"unpruned": "#1f77b4", "structured": "#2ca02c", "unstructured": "#ff7f0e", "unknown": "#7f7f7f"}
PLOTTED_STATES = ("COMPLETE", "INFEASIBLE")  # fully trained models; early-stopped ones have partial metrics
PROBLEM_STATES = ("FAIL", "INFEASIBLE", "PRUNED")
LATENCY_RE = "latency_ms_bs1_remeasured"
KD_CONVENTION = ("KD loss convention: L = alpha * CE(student, y) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || "
                 "softmax(student/T)); alpha weighs the cross-entropy term, T is the temperature.")
UNSTRUCTURED_NOTE = ("Unstructured pruning zeroes weights inside dense tensors: its sparsity shows in nonzero_params "
                     "only. The model keeps its dense shapes and runs on dense kernels (PyTorch's and ONNX Runtime's "
                     "alike, measured: devbench.onnx_runtimes), so it brings no latency gain; "
                     "only structured pruning (removed channels) can.")
CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:; worker-src blob:")

esc = html.escape


# ------------------------------------------------------------------------------------------------------- helpers

def fmt(value: Any) -> str:
    """A cell's text: counts with thousands separators, other numbers to 4 significant digits, escaped."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return esc(str(bool(value)))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return esc(str(v))
        if v.is_integer() and abs(v) >= 1000:
            return f"{int(v):,}"
        return f"{v:.4g}"
    return esc(str(value))


def html_table(rows: Sequence[Sequence[Any]], header: Sequence[str], table_id: str,
               raw_cols: Sequence[int] = ()) -> str:
    """A table; every cell is escaped except pre-built markup in `raw_cols` (built from escaped text)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(f"<td>{v if i in raw_cols else fmt(v)}</td>" for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return (f'<table id="{esc(table_id)}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _param_cols(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("param_")]


def _finite(df: pd.DataFrame, cols: Sequence[str]) -> pd.Series:
    ok = pd.Series(True, index=df.index)
    for c in cols:
        ok &= pd.to_numeric(df[c], errors="coerce").apply(lambda v: v is not None and np.isfinite(v))
    return ok


def _hover(row: pd.Series, params: Sequence[str], extra: Sequence[str]) -> str:
    # Plotly renders a few tags in hover text and decodes entities into text nodes: escape everything we insert.
    label = row_label(row)
    lines = [f"<b>{esc(label)}</b> ({esc(str(row.get('prune_kind', '')))}, {esc(str(row.get('state', '')))})"]
    lines += [f"{esc(c)} = {fmt(row.get(c))}" for c in extra if c in row.index]
    lines += [f"{esc(c[len('param_'):])} = {fmt(row.get(c))}" for c in params if fmt(row.get(c)) != ""]
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

def _trial_traces(df: pd.DataFrame, cols: Sequence[str], scatter: Callable[..., Any]) -> list[Any]:
    """One trace per (state, prune kind) of the plotted trials, with Pareto trials outlined."""
    params = _param_cols(df)
    pts = df[df["state"].isin(PLOTTED_STATES) & _finite(df, cols)]
    traces = []
    for state in PLOTTED_STATES:
        for kind in SYMBOLS:
            part = pts[(pts["state"] == state) & (pts["prune_kind"].fillna("unknown") == kind)]
            if part.empty:
                continue
            on_front = _front_mask(part)
            marker = {
                "symbol": SYMBOLS[kind] if state == "COMPLETE" else "x",
                "color": KIND_COLORS[kind] if state == "COMPLETE" else "#bbbbbb",
                "size": np.where(on_front, 11, 8).tolist(),
                "line": {"width": np.where(on_front, 2.5, 0.5).tolist(), "color": "#000000"},
            }
            if len(cols) == 3:  # 3-D markers take one outline width only: size alone marks the front there
                marker["line"] = {"width": 0}
            extra = [c for c in (ACC, "params", "nonzero_params", "macs", "latency_ms_bs1", LATENCY_RE)
                     if c in part.columns]
            text = [_hover(r, params, extra) for _, r in part.iterrows()]
            name = f"{kind}" if state == "COMPLETE" else f"infeasible ({kind})"
            traces.append(scatter(
                **{axis: _num(part, c).tolist() for axis, c in zip(("x", "y", "z"), cols, strict=False)},
                mode="markers", name=name, marker=marker, hovertext=text, hoverinfo="text",
                customdata=[int(n) for n in part["number"]], meta="trials",
            ))
    return traces


def _reference_trace(df: pd.DataFrame, cols: Sequence[str], scatter: Callable[..., Any]) -> list[Any]:
    refs = df[(df["state"] == "REFERENCE") & _finite(df, cols)]
    if refs.empty:
        return []
    extra = [c for c in (ACC, "params", "macs", "latency_ms_bs1", LATENCY_RE) if c in refs.columns]
    return [scatter(
        **{axis: _num(refs, c).tolist() for axis, c in zip(("x", "y", "z"), cols, strict=False)},
        mode="markers+text", name="references", text=[esc(str(r)) for r in refs["reference"]],
        textposition="top center",
        marker={"symbol": "star" if len(cols) == 2 else "cross", "size": 14 if len(cols) == 2 else 7,
                "color": "#d62728"},
        hovertext=[_hover(r, [], extra) for _, r in refs.iterrows()], hoverinfo="text", meta="reference",
    )]


def _baseline_label(r: Any) -> str:
    return f"{r['baseline']} (trial {int(r['number'])})" if pd.notna(r.get("number")) else str(r["baseline"])


def _baseline_trace(df: pd.DataFrame, cols: Sequence[str], scatter: Callable[..., Any]) -> list[Any]:
    """The baselines (configurations picked by hand), labelled by name."""
    if "baseline" not in df.columns:
        return []
    rows = df[is_baseline(df) & _finite(df, cols)]
    if rows.empty:
        return []
    extra = [c for c in (ACC, "params", "nonzero_params", "macs", "latency_ms_bs1", LATENCY_RE) if c in rows.columns]
    return [scatter(
        **{axis: _num(rows, c).tolist() for axis, c in zip(("x", "y", "z"), cols, strict=False)},
        mode="markers+text", name="baselines", text=[esc(_baseline_label(r)) for _, r in rows.iterrows()],
        textposition="bottom center",
        marker={"symbol": "diamond-wide" if len(cols) == 2 else "diamond", "size": 14 if len(cols) == 2 else 7,
                "color": "#9467bd", "line": {"width": 1, "color": "#000000"}},
        hovertext=[_hover(r, [], extra) for _, r in rows.iterrows()], hoverinfo="text", meta="baseline",
    )]


def pareto_figure(df: pd.DataFrame, x: str, x_label: str, objectives: Sequence[dict]) -> go.Figure:
    """val_acc against one cost: trials by prune kind, the 2-D front as a step line, references as stars."""
    fig = go.Figure(_trial_traces(df, [x, ACC], go.Scatter))
    complete = df[(df["state"] == "COMPLETE") & _finite(df, [x, ACC])]
    if len(complete):
        vals = np.column_stack([_num(complete, x), _num(complete, ACC)])
        mask = pareto.pareto_mask(vals, [_direction(objectives, x), _direction(objectives, ACC)])
        front = vals[mask]
        front = front[np.lexsort((-front[:, 1], front[:, 0]))]
        fig.add_trace(go.Scatter(x=front[:, 0].tolist(), y=front[:, 1].tolist(), mode="lines",
                                 line={"shape": "hv", "color": "#444444", "dash": "dot"},
                                 name=f"front ({ACC} vs {x})", hoverinfo="skip", meta="front"))
    for t in _reference_trace(df, [x, ACC], go.Scatter) + _baseline_trace(df, [x, ACC], go.Scatter):
        fig.add_trace(t)
    shown = df[df["state"].isin((*PLOTTED_STATES, "REFERENCE", "BASELINE")) & _finite(df, [x, ACC])]
    xs = _num(shown, x)
    xs = xs[xs > 0]
    log_x = len(xs) > 1 and xs.max() / xs.min() > 20
    fig.update_layout(
        title=f"{ACC} (%) vs {x_label}; outlined: on the study's Pareto front",
        xaxis={"title": {"text": x_label}, "type": "log" if log_x else "linear"},
        yaxis={"title": {"text": f"{ACC} (%)"}}, height=480, legend={"title": {"text": "prune kind"}},
    )
    return fig


def scatter3d_figure(df: pd.DataFrame, cols: Sequence[str]) -> go.Figure:
    fig = go.Figure(_trial_traces(df, cols, go.Scatter3d) + _reference_trace(df, cols, go.Scatter3d)
                    + _baseline_trace(df, cols, go.Scatter3d))
    names = [esc(c) for c in cols]  # objective names come from study.json: text, not markup
    fig.update_layout(title=f"3 objectives: {', '.join(names)}", height=600,
                      scene={"xaxis": {"title": {"text": names[0]}}, "yaxis": {"title": {"text": names[1]}},
                             "zaxis": {"title": {"text": names[2]}}})
    return fig


def parcoords_figure(df: pd.DataFrame) -> go.Figure | None:
    """Parallel coordinates of the parameters of COMPLETE trials, coloured by val_acc."""
    done = df[(df["state"] == "COMPLETE") & _finite(df, [ACC])]
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
    imps = benchmark.get("importances") or {}
    if not imps:
        return None
    params = sorted({p for v in imps.values() for p in v})
    fig = go.Figure([go.Bar(x=[esc(p) for p in params], y=[v.get(p, 0.0) for p in params], name=esc(obj))
                     for obj, v in imps.items()])
    fig.update_layout(barmode="group", title="Parameter importance per objective (Optuna default evaluator)",
                      yaxis={"title": {"text": "importance (normalised)"}}, height=420)
    return fig


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


def pareto_table(front: pd.DataFrame, objectives: Sequence[dict], run_dir_label: str) -> str:
    names = [o["name"] for o in objectives]
    extra = [c for c in ("params", "nonzero_params", "macs", "latency_ms_bs1", *backend_cols(front), LATENCY_RE,
                         "latency_iqr_ms_bs1_remeasured", "throughput_ips_remeasured", "test_acc")
             if c in front.columns and c not in names]
    params = _param_cols(front)
    header = ["trial", "prune kind", *names, *extra, "parameters", "note", "reproduce"]
    rows = []
    for _, r in front.iterrows():
        p = "; ".join(f"{c[len('param_'):]}={fmt(r[c])}" for c in params if fmt(r[c]) != "")
        cmd = f"python -m study reproduce {shlex.quote(run_dir_label)} --trial {int(r['number'])}"
        rows.append([r["number"], r["prune_kind"], *(r[n] for n in names), *(r[c] for c in extra),
                     p, r.get("note"), f"<code>{esc(cmd)}</code>"])
    # `p` holds already escaped text: mark it raw, like the command.
    return html_table(rows, header, "table-pareto", raw_cols=(len(header) - 3, len(header) - 1))


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
        recipe = "; ".join(f"{c}={fmt(r[c])}" for c in cfg if fmt(r[c]) != "")
        rows.append([_baseline_label(r), *(r[n] for n in names), *(r[c] for c in extra), recipe,
                     lines.get(r["baseline"], "")])
    return html_table(rows, ["baseline", *names, *extra, "configuration", "against the searched trials"],
                      "table-baselines")


def verdict_html(benchmark: dict) -> str:
    """The search against the baselines, in words: on seed means where the study confirmed them (the search's
    own run plus the confirmation seeds, test accuracy, re-measured latency), else on the search's values; and
    the compute it took."""
    confirmed = benchmark.get("confirmed") or {}
    items = []
    if confirmed.get("baselines"):
        items = [v["line"] for v in confirmed["baselines"]]
        head = (f"Confirmed on seed means (the search's own run and seeds {', '.join(map(str, confirmed['seeds']))}; "
                f"{confirmed['accuracy']}; {confirmed['latency']} latency):")
    elif benchmark.get("baselines"):
        items = [b["line"] for b in benchmark["baselines"]]
        head = "On the search's own values (one run each; no confirmation seeds):"
    else:
        return ""
    out = [f"<p>{esc(head)}</p><ul id=\"verdicts\">"] + [f"<li>{esc(x)}</li>" for x in items] + ["</ul>"]
    if benchmark.get("compute"):
        out.append(f'<p class="note" id="compute">{esc(benchmark["compute"]["line"])}</p>')
    return "".join(out)


def references_table(df: pd.DataFrame) -> str:
    refs = df[df["state"] == "REFERENCE"]
    cols = [c for c in (ACC, "test_acc", "params", "nonzero_params", "macs", "latency_ms_bs1", *backend_cols(refs),
                        LATENCY_RE, "latency_iqr_ms_bs1_remeasured", "throughput_ips_remeasured")
            if c in refs.columns]
    rows = [[r["reference"], *(r[c] for c in cols)] for _, r in refs.iterrows()]
    return html_table(rows, ["reference", *cols], "table-references")


def teacher_note(meta: dict) -> str:
    """The teacher's accuracy with its input normalisation, and the warnings of a teacher that looks wrong."""
    t = meta.get("teacher") or {}
    if not t:
        return ""
    norm = meta.get("normalization") or t.get("normalization") or {}
    how = (f"; input normalisation <code>{esc(str(norm.get('normalize')))}</code> (mean {esc(str(norm.get('mean')))}, "
           f"std {esc(str(norm.get('std')))}; {esc(str(norm.get('chosen_by', '')))})" if norm else "")
    out = [f'<p id="teacher-note">Teacher {esc(str(t.get("arch", "")))}: val_acc {fmt(t.get("val_acc"))} %, '
           f'test_acc {fmt(t.get("test_acc"))} %{how}.</p>']
    out += [f'<p class="warning"><strong>{esc(w)}</strong></p>' for w in t.get("warnings") or []]
    return "\n".join(out)


def problems_table(df: pd.DataFrame) -> str:
    bad = df[df["state"].isin(PROBLEM_STATES)].sort_values("number")
    default = {"PRUNED": "early stopped by the scheduler", "FAIL": "failed (no reason recorded)",
               "INFEASIBLE": "infeasible (no reason recorded)"}
    rows = []
    for _, r in bad.iterrows():
        reason = r.get("error")
        if reason is None or (isinstance(reason, float) and math.isnan(reason)) or str(reason) == "":
            reason = default[r["state"]]
        state = "PRUNED (early stopped)" if r["state"] == "PRUNED" else r["state"]
        epochs = r.get("epochs_done")
        if epochs is None or pd.isna(epochs):
            epochs = r.get("epoch")  # an early-stopped trial reports the epoch it had reached
        rows.append([r["number"], state, reason, epochs, r.get(ACC)])
    return html_table(rows, ["trial", "state", "reason", "epochs done", f"{ACC} (partial)"], "table-problems")


def reproduce_table(summaries: Sequence[dict]) -> str:
    rows = []
    for s in summaries:
        seeds = s.get("seeds")
        epochs = s.get("epochs")  # a --epochs run trains longer than the search did: say so beside its numbers
        budget = f"{epochs} (search: {s.get('epochs_search')})" if s.get("budget_changed") else epochs
        rows.append([s.get("trial"), ", ".join(str(x) for x in seeds) if isinstance(seeds, list) else seeds,
                     budget, s.get("test_acc_mean"), s.get("test_acc_std"), s.get("val_acc_search"), s.get("params"),
                     s.get("macs"), s.get("latency_ms_bs1")])
    header = ["trial", "seeds", "distillation epochs", "test_acc mean (%)", "test_acc std", "val_acc in search (%)",
              "params", "macs", "latency_ms_bs1"]
    return html_table(rows, header, "table-reproduce")


def _json_cell(v: Any) -> Any:
    return json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else v


def settings_table(meta: dict, benchmark: dict) -> str:
    rows = [[k, _json_cell(v)] for k, v in meta.items()]
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
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1300px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } code { font-size: 0.95em; } .note { color: #555; font-style: italic; }
.plot { margin-bottom: 1em; } .warning { color: #a00; }
"""


def render_report(results: pd.DataFrame, front: pd.DataFrame, benchmark: dict, meta: dict, *,
                  run_dir_label: str, reproduce: Sequence[dict] = ()) -> str:
    """The whole page as a string (pure: no file access)."""
    objectives = [{"name": o["name"], "direction": o["direction"]} for o in benchmark.get("objectives", [])]
    title = f"Study {meta.get('study_name') or meta.get('name') or ''}"
    parts = [f"<h1>{esc(title)}</h1>"]
    counts = ", ".join(f"{esc(k)}: {v}" for k, v in (benchmark.get("counts") or {}).items())
    parts.append(f"<p>{int(benchmark.get('n_trials', 0))} trials ({counts}). Objectives: "
                 + ", ".join(f"{esc(o['name'])} ({esc(o['direction'])})" for o in objectives)
                 + f". Hypervolume {fmt(benchmark.get('hypervolume'))} (normalised; see settings for the rule).</p>")
    parts.append(f'<p class="note">{esc(UNSTRUCTURED_NOTE)} {esc(KD_CONVENTION)} "Early stopped" (state PRUNED '
                 'in Optuna) means the trial scheduler stopped the trial; "pruning" always means weights.</p>')

    verdict = verdict_html(benchmark)
    if verdict:
        parts.append("<h2>The search against the configurations picked by hand</h2>")
        parts.append(verdict)
    parts.append("<h2>Pareto plots</h2>")
    plots = 0
    for col, label in COSTS:
        if col in results.columns and ACC in results.columns and _finite(results, [col, ACC]).any():
            parts.append(figure_html(pareto_figure(results, col, label, objectives), f"plot-pareto-{col}"))
            plots += 1
    if not plots:
        parts.append(f'<p class="note">No trial has both {ACC} and a cost metric yet.</p>')
    names = [o["name"] for o in objectives]
    cols3 = [n for n in names if n != ACC] + [ACC] if len(names) == 3 and ACC in names \
        else ["params", "latency_ms_bs1", ACC]
    cols3 = [c for c in cols3 if c in results.columns]
    if len(cols3) == 3 and _finite(results, cols3).any():
        parts.append("<h2>Three objectives</h2>")
        parts.append(figure_html(scatter3d_figure(results, cols3), "plot-3d"))

    parts.append("<h2>Pareto trials</h2>")
    parts.append(pareto_table(front, objectives, run_dir_label) if len(front)
                 else '<p class="note">No complete trial: the front is empty.</p>')
    parts.append("<h2>Baselines: the configurations picked by hand</h2>")
    parts.append(baselines_table(results, benchmark.get("baselines") or [], objectives)
                 if is_baseline(results).any()
                 else '<p class="note">No baseline results in this run directory: its space lists '
                      '<code>baselines: []</code>, the baselines failed or have not finished (see the study\'s '
                      'output), or the study was run before baselines existed.</p>')
    parts.append("<h2>Reference models</h2>")
    parts.append(teacher_note(meta))
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
    imp = importance_figure(benchmark)
    if imp is not None:
        parts.append(figure_html(imp, "plot-importance"))
    note = benchmark.get("importances_note")
    if note or imp is None:
        parts.append(f'<p class="note" id="importance-note">{esc(str(note or "No importances computed."))}</p>')

    parts.append("<h2>Failed, infeasible and early-stopped trials</h2>")
    parts.append(problems_table(results))
    if reproduce:
        parts.append("<h2>Reproduced trials</h2>")
        parts.append(reproduce_table(reproduce))
    parts.append("<h2>Settings</h2>")
    parts.append(settings_table(meta, benchmark))

    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{esc(title)}</title><style>{STYLE}</style>"
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
        f"<script>{get_plotlyjs()}</script>\n</head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
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
    from study.results import load_study_meta

    label = str(run_dir)
    run_dir = Path(run_dir)
    meta = load_study_meta(run_dir)
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
    page = render_report(results, front, benchmark, meta, run_dir_label=label,
                         reproduce=_read_reproduce(run_dir, log))
    out = run_dir / "report.html"
    write_text_atomic(out, page)
    return out

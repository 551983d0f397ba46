"""Gather a study's trials and reference models into one results table, and analyse it.

Edges (disk, Optuna storage): `collect_results`, `run_benchmarks` (the run folder's readers `load_study_meta`,
`open_study` are study.results').
Pure functions over the table: `prune_kind`, `analyse`, `front_table`.

Table columns: `number` (Optuna trial number; empty for references and baselines), `reference` (teacher /
student_ce / student_kd, else empty), `baseline` (the baseline's name, else empty), `state` (COMPLETE, PRUNED =
early stopped, INFEASIBLE, FAIL, REFERENCE, BASELINE, or Optuna's RUNNING/WAITING), `prune_kind` (unpruned /
structured / unstructured), `note`, `error`, `wall_s`, `param_<name>` for every sampled parameter, every metric
(metrics.json updated with user_attrs["metrics"]), `trial_dir`, `on_front`, and after re-measurement
`latency_ms_bs1_remeasured`, `latency_iqr_ms_bs1_remeasured`, `throughput_ips_remeasured`.

Baselines (`compare_baselines`): for each, in one line, whether a front trial dominates it (which), how much more
validation accuracy the front reaches at no more than its cost in every cost objective, and which front trials
it dominates itself.

Only COMPLETE trials can be on the front. A trial counts as COMPLETE only when Optuna says COMPLETE *and* its
user_attrs status (if any) is "complete": an early-stopped trial that reached Optuna as COMPLETE is PRUNED here.
The hypervolume rule is in `benchmarks.pareto` (fixed 0..100 % for accuracies, 0..1.1 x max for costs,
reference point (1, ..., 1) of the normalised minimisation problem).
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import latency, pareto
from study.errors import UserError
from study.io import write_json_atomic, write_text_atomic
from study.references import REFERENCES
from study.results import load_study_meta, open_study

STATUS_TO_STATE = {"complete": "COMPLETE", "early_stopped": "PRUNED", "infeasible": "INFEASIBLE", "failed": "FAIL"}
STATES = ("COMPLETE", "PRUNED", "INFEASIBLE", "FAIL", "RUNNING", "WAITING", "REFERENCE", "BASELINE")
MEASURED = ("REFERENCE", "BASELINE")  # rows that are not Optuna trials: trained once per study beside them
BASE_COLUMNS = ["number", "reference", "baseline", "state", "prune_kind", "note", "error", "wall_s"]
UNSTRUCTURED_NOTE = ("unstructured sparsity: fewer nonzero_params, same dense shapes and kernels; "
                     "no latency gain")
HV_RULE = (
    "objectives are normalised to losses in [0, 1]: accuracies (name ending in 'acc') over the fixed range "
    "0..100 %, every other objective over min(0, smallest)..1.1 x largest value of all COMPLETE trials, "
    "reference models and baselines; hypervolume of the normalised minimisation problem w.r.t. the reference "
    "point (1, ..., 1) (the fraction of the unit box dominated); the raw reference point is the worst end of "
    "every range"
)

Log = Callable[[str], None]


# ----------------------------------------------------------------------------------------------- disk and storage

def objectives_of(meta: dict, study: Any = None) -> list[dict]:
    """[{"name", "direction"}] from study.json, else from the Optuna study's directions and metric names."""
    objs = meta.get("objectives")
    if objs:
        return [{"name": str(o["name"]), "direction": str(o["direction"]).lower()} for o in objs]
    if study is None:
        raise UserError("study.json has no \"objectives\" list; add [{\"name\": ..., \"direction\": ...}].")
    names = study.metric_names or [f"value_{i}" for i in range(len(study.directions))]
    return [{"name": n, "direction": d.name.lower()} for n, d in zip(names, study.directions, strict=True)]


def _read_json(path: Path, log: Log) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        log(f"note: {path} is unreadable ({type(e).__name__}); its values are left out")
        return {}
    return data if isinstance(data, dict) else {}


def _scalar(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return value


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _prune_method(params: dict, config: dict, metrics: dict) -> str | None:
    for source in (params, _flat(config), metrics):
        for key, value in source.items():
            if key.split(".")[-1] == "prune_method" or key in ("prune.method", "pruning.method"):
                return None if value is None else str(value)
    return None


def prune_kind(method: str | None) -> str:
    """unpruned (none), structured / unstructured as the prune-method registry says (its `structured` property:
    channels removed, or zeros kept in dense tensors), unknown for a name it does not know (e.g. an old study's)."""
    if method is None or (isinstance(method, float) and math.isnan(method)):
        return "unknown"
    m = str(method).strip()
    if m.lower() in ("none", "", "unpruned"):
        return "unpruned"
    from study.pruning import get_prune_method  # here, so that importing this module (reports) loads no torch

    try:
        return "structured" if get_prune_method(m).structured else "unstructured"
    except UserError:
        return "unknown"


def _trial_row(t: Any, run_dir: Path, objectives: list[dict], log: Log) -> dict:
    attrs = t.user_attrs
    status = attrs.get("status")
    state = STATUS_TO_STATE.get(status, t.state.name) if status else t.state.name
    if state == "COMPLETE" and t.state.name != "COMPLETE":
        state = t.state.name
    trial_dir = attrs.get("trial_dir") or f"trials/{t.number}"
    metrics = _read_json(run_dir / trial_dir / "metrics.json", log)
    metrics.update(attrs.get("metrics") or {})
    if t.values is not None and len(t.values) == len(objectives):
        for obj, v in zip(objectives, t.values, strict=True):
            if metrics.get(obj["name"]) is None:
                metrics[obj["name"]] = v
    config = attrs.get("config") or {}
    kind = prune_kind(_prune_method(t.params, config if isinstance(config, dict) else {}, metrics))
    error = attrs.get("error") or t.system_attrs.get("fail_reason")
    wall = metrics.pop("wall_s", None)
    if wall is None and t.datetime_start is not None and t.datetime_complete is not None:
        wall = (t.datetime_complete - t.datetime_start).total_seconds()
    row = {
        "number": t.number, "reference": None, "baseline": None, "state": state, "prune_kind": kind,
        "note": UNSTRUCTURED_NOTE if kind == "unstructured" else None, "error": error, "wall_s": wall,
    }
    row.update({f"param_{k}": _scalar(v) for k, v in t.params.items()})
    row.update({k: _scalar(v) for k, v in metrics.items() if k not in row})
    row["trial_dir"] = trial_dir
    return row


def _measured_row(path: Path, label: dict, state: str, trial_dir: str, log: Log) -> dict | None:
    metrics = _read_json(path, log)
    if not metrics:
        return None
    method = _prune_method({}, {}, metrics)
    kind = "unpruned" if method is None else prune_kind(method)
    row = {"number": None, "reference": None, "baseline": None, **label, "state": state, "prune_kind": kind,
           "note": UNSTRUCTURED_NOTE if kind == "unstructured" else None, "error": None,
           "wall_s": metrics.pop("wall_s", None)}
    row.update({k: _scalar(v) for k, v in metrics.items() if k not in row})
    row["trial_dir"] = trial_dir
    return row


def _reference_rows(run_dir: Path, log: Log) -> list[dict]:
    rows = []
    for name in REFERENCES:
        path = run_dir / "references" / name / "metrics.json"
        if not path.is_file():
            log(f"note: reference {name!r} skipped: {path} not found")
            continue
        row = _measured_row(path, {"reference": name}, "REFERENCE", f"references/{name}", log)
        if row:
            rows.append(row)
    return rows


def _baseline_rows(run_dir: Path, names: list[str], log: Log) -> list[dict]:
    """The baselines study.json names (a run from before baselines has none), in its order."""
    rows = []
    for name in names:
        path = run_dir / "baselines" / name / "metrics.json"
        if not path.is_file():
            log(f"note: baseline {name!r} skipped: {path} not found (it failed, or the study is still running)")
            continue
        row = _measured_row(path, {"baseline": name}, "BASELINE", f"baselines/{name}", log)
        if row:
            rows.append(row)
    return rows


def collect_results(run_dir: Path, study: Any, objectives: list[dict], log: Log = print,
                    baselines: list[str] | None = None) -> pd.DataFrame:
    """One row per Optuna trial plus one per reference model found under RUN_DIR/references/ and one per
    baseline (names from study.json) under RUN_DIR/baselines/."""
    run_dir = Path(run_dir)
    rows = [_trial_row(t, run_dir, objectives, log) for t in study.get_trials(deepcopy=False)]
    rows += _reference_rows(run_dir, log)
    rows += _baseline_rows(run_dir, list(baselines or []), log)
    df = pd.DataFrame(rows)
    for col in df.columns:  # counts (params, macs, ...) stay integers although other rows lack them
        vals = [r[col] for r in rows if r.get(col) is not None]
        if col != "number" and vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            df[col] = df[col].astype("Int64")
    for col in BASE_COLUMNS + ["trial_dir"] + [o["name"] for o in objectives]:
        if col not in df.columns:
            df[col] = None
    params = [c for c in df.columns if c.startswith("param_")]
    rest = [c for c in df.columns if c not in BASE_COLUMNS and c not in params and c != "trial_dir"]
    df = df[BASE_COLUMNS + params + rest + ["trial_dir"]]
    df["number"] = df["number"].astype("Int64")
    for o in objectives:
        df[o["name"]] = pd.to_numeric(df[o["name"]], errors="coerce")
    return df


def param_importances(study: Any, objectives: list[dict]) -> tuple[dict[str, dict[str, float]], str | None]:
    """Optuna's default importances per objective ({objective: {param: importance}}), or a note why not."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, f"parameter importances need at least 2 complete trials; this study has {len(complete)}"
    out: dict[str, dict[str, float]] = {}
    notes = []
    for i, obj in enumerate(objectives):
        # PED-ANOVA ranks parameters by how they reach LOW target values: negate maximised objectives.
        sign = -1.0 if obj["direction"] == "maximize" else 1.0
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*low `target` values.*")
                # small studies: PED-ANOVA warns per parameter; the report notes importances are rough
                warnings.filterwarnings("ignore", message=".*regimes for parameter.*")
                imp = optuna.importance.get_param_importances(study, target=lambda t, i=i, s=sign: s * t.values[i])
        except (ValueError, RuntimeError, TypeError, ZeroDivisionError) as e:
            notes.append(f"{obj['name']}: {e}")
            continue
        out[obj["name"]] = {k: float(v) for k, v in imp.items()}
    return out, ("; ".join(notes) or None)


# ------------------------------------------------------------------------------------ pure analysis of the table

def analyse(df: pd.DataFrame, objectives: list[dict]) -> tuple[pd.DataFrame, dict]:
    """Mark the Pareto front (`on_front`) and compute hypervolume and its series; returns (table, summary)."""
    names = [o["name"] for o in objectives]
    dirs = [o["direction"] for o in objectives]
    df = df.copy()
    complete = (df["state"] == "COMPLETE").to_numpy()
    values = df[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    front = np.zeros(len(df), dtype=bool)
    idx = np.flatnonzero(complete)
    if len(idx):
        front[idx] = pareto.pareto_mask(values[idx], dirs)
    df["on_front"] = front

    observed = complete | df["state"].isin(MEASURED).to_numpy()
    norm = pareto.normalization(names, dirs, values[observed])
    hv = pareto.normalized_hypervolume(values[front], norm) if front.any() else 0.0

    trials = df[~df["state"].isin(MEASURED)].sort_values("number")
    series_vals = trials[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float, copy=True)
    series_vals[(trials["state"] != "COMPLETE").to_numpy()] = np.nan
    series = pareto.hypervolume_series(series_vals, norm)
    counts = {s: int((df["state"] == s).sum()) for s in STATES if (df["state"] == s).any()}
    summary = {
        "objectives": norm.to_json(),
        "hypervolume": hv,
        "hypervolume_rule": HV_RULE,
        "reference_point_normalized": [1.0] * len(names),
        "reference_point_raw": norm.reference_raw,
        "counts": counts,
        "n_trials": len(trials),
        "pareto_trials": [int(n) for n in df.loc[front, "number"]],
        "hypervolume_over_trials": [
            {"trial": int(n), "hypervolume": float(v)} for n, v in zip(trials["number"], series, strict=True)
        ],
    }
    return df, summary


def pareto_rows(df: pd.DataFrame, objectives: list[dict]) -> pd.DataFrame:
    """All columns of the front's rows, best first by the first objective."""
    first = objectives[0]
    front = df[df["on_front"].astype(bool)]
    return front.sort_values([first["name"], "number"], ascending=[first["direction"] == "minimize", True])


def front_table(df: pd.DataFrame, objectives: list[dict]) -> pd.DataFrame:
    """The front's rows, best first by the first objective, with the columns worth printing."""
    front = pareto_rows(df, objectives)
    cols = ["number", "prune_kind"] + [o["name"] for o in objectives]
    cols += [c for c in (latency.LATENCY_COL, latency.IQR_COL, "nonzero_params") if c in df.columns
             and c not in cols]
    cols += [c for c in df.columns if c.startswith("param_")]
    out = front[cols].copy()
    for c in cols:  # counts read as floats when other rows lack them: print them as integers
        num = pd.to_numeric(out[c], errors="coerce")
        if out[c].notna().all() and num.notna().all() and len(num) and (num % 1 == 0).all() \
                and c not in [o["name"] for o in objectives if pareto.is_accuracy(o["name"])]:
            out[c] = num.astype("Int64")
    return out


KNEE_RULE = ("knee = the front trial nearest (Euclidean) to the ideal point once every objective is scaled to "
             "[0, 1] over the front (0 = the front's best value); ties go to the lower trial number")


def knee(df: pd.DataFrame, objectives: list[dict]) -> dict | None:
    """The front's knee (KNEE_RULE) as {"trial", "distance", "rule"}; None for an empty front."""
    front = df[df["on_front"].astype(bool)]
    if front.empty:
        return None
    names, dirs = [o["name"] for o in objectives], [o["direction"] for o in objectives]
    loss = pareto.to_minimization(front[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float), dirs)
    lo, hi = loss.min(axis=0), loss.max(axis=0)
    scaled = (loss - lo) / np.where(hi > lo, hi - lo, 1.0)
    dist = np.sqrt((scaled ** 2).sum(axis=1))
    order = sorted(range(len(front)), key=lambda i: (dist[i], int(front.iloc[i]["number"])))
    return {"trial": int(front.iloc[order[0]]["number"]), "distance": float(dist[order[0]]), "rule": KNEE_RULE}


def row_label(row: Any) -> str:
    """'trial N', 'reference KIND' or 'baseline NAME': how a row is named in logs, benchmark.json and the report."""
    if row.get("state") == "REFERENCE":
        return f"reference {row['reference']}"
    if row.get("state") == "BASELINE":
        return f"baseline {row['baseline']}"
    return f"trial {row['number']}"


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"


def compare_baselines(df: pd.DataFrame, objectives: list[dict]) -> list[dict]:
    """Each baseline against the front (df must carry `on_front`), on the study's objectives as the search measured
    them. `dominated_by`: front trials that dominate it; `gain`: of the COMPLETE trials at no more than its value in
    every minimised objective, the one with the highest value of the first maximised objective, and by how much it
    beats the baseline there (negative: none reaches it); `dominates`: front trials the baseline dominates."""
    from study.dominance import dominates

    names = [o["name"] for o in objectives]
    dirs = [o["direction"] for o in objectives]
    gain_obj = next((o["name"] for o in objectives if o["direction"] == "maximize"), None)
    costs = [o["name"] for o in objectives if o["direction"] == "minimize"]
    values = df[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    loss = pareto.to_minimization(values, dirs)
    front = np.flatnonzero(df["on_front"].to_numpy(dtype=bool))
    complete = np.flatnonzero((df["state"] == "COMPLETE").to_numpy())
    out = []
    for b in np.flatnonzero((df["state"] == "BASELINE").to_numpy()):
        row = df.iloc[b]
        entry: dict[str, Any] = {"name": row["baseline"], "values": {n: _num_or_none(values[b, k])
                                                                     for k, n in enumerate(names)}}
        if not np.all(np.isfinite(loss[b])):
            entry.update(dominated_by=[], dominates=[], gain=None,
                         line=f"{row['baseline']}: not compared (an objective is missing from its metrics)")
            out.append(entry)
            continue
        by = [int(df.iloc[i]["number"]) for i in front if dominates(loss[i], loss[b])]
        mine = [int(df.iloc[i]["number"]) for i in front if dominates(loss[b], loss[i])]
        gain = None
        if gain_obj is not None:
            j, c = names.index(gain_obj), [names.index(n) for n in costs]
            cheap = [i for i in complete if np.all(np.isfinite(values[i])) and np.all(values[i, c] <= values[b, c])]
            if cheap:
                best = max(cheap, key=lambda i: (values[i, j], -int(df.iloc[i]["number"])))
                gain = {"objective": gain_obj, "trial": int(df.iloc[best]["number"]),
                        "value": float(values[best, j]), "baseline_value": float(values[b, j]),
                        "difference": float(values[best, j] - values[b, j]), "at_no_more": costs}
        entry.update(dominated_by=by, dominates=mine, gain=gain, line=_baseline_line(row["baseline"], by, mine,
                                                                                     gain, costs))
        out.append(entry)
    return out


def _num_or_none(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _baseline_line(name: str, by: list[int], mine: list[int], gain: dict | None, costs: list[str]) -> str:
    parts = [f"dominated by front trial(s) {', '.join(map(str, by))}" if by else "not dominated by any front trial"]
    if not costs:
        parts.append("the study has no cost objective to compare at")
    elif gain is None:
        parts.append(f"no trial finished at no more than its {' and '.join(costs)}")
    else:
        unit = " points" if pareto.is_accuracy(gain["objective"]) else ""
        parts.append(f"at no more than its {' and '.join(costs)} the best trial ({gain['trial']}) reaches "
                     f"{gain['objective']} {_fmt(gain['value'])} against {_fmt(gain['baseline_value'])} "
                     f"({gain['difference']:+.2f}{unit})")
    parts.append(f"it dominates front trial(s) {', '.join(map(str, mine))}" if mine
                 else "it dominates no front trial")
    return f"{name}: " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------------- orchestration

def _finite(obj: Any) -> Any:
    """NaN/inf -> None, so that benchmark.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    write_text_atomic(path, df.to_csv(index=False))


def study_latency_threads(meta: dict) -> int | None:
    """The trials' configured torch thread count (`threads`; None where 0: the worker's default)."""
    threads = (meta.get("base_config") or {}).get("threads")
    return int(threads) if isinstance(threads, (int, float)) and threads > 0 else None


def timed_threads(df: pd.DataFrame, meta: dict) -> int | None:
    """The torch thread count the search timed latency with: what the trials recorded (`latency_threads`; with
    `threads: 0` that is what Ray gave each worker, e.g. cpus_per_trial), else the configured count."""
    if "latency_threads" in df.columns:
        recorded = pd.to_numeric(df.loc[~df["state"].isin(MEASURED), "latency_threads"], errors="coerce").dropna()
        recorded = recorded[recorded > 0]
        if len(recorded):
            return int(recorded.mode().iloc[0])
    return study_latency_threads(meta)


def study_backend(meta: dict) -> str:
    """The runtime the search timed latency on (the trials' latency_backend; torch for studies before it)."""
    return (meta.get("base_config") or {}).get("latency_backend") or "torch"


def run_benchmarks(run_dir: str | Path, *, remeasure: bool = True, log: Log = print,
                   remeasure_kwargs: dict | None = None, backend: str | None = None) -> dict:
    """Write RUN_DIR/results.csv, pareto.csv and benchmark.json; returns the benchmark summary.

    backend (torch | onnxruntime; default the study's latency_backend): the runtime of the re-measurement. With
    onnxruntime each model's deployed ONNX file is timed (model_int8.onnx, else model.onnx; a trial timed with
    torch is exported from its model.pt first)."""
    import optuna

    run_dir = Path(run_dir)
    meta = load_study_meta(run_dir)
    study = open_study(run_dir, meta)
    objectives = objectives_of(meta, study)
    df = collect_results(run_dir, study, objectives, log, baselines=list(meta.get("baselines") or {}))
    df, summary = analyse(df, objectives)
    summary["baselines"] = compare_baselines(df, objectives)
    summary["knee"] = knee(df, objectives)

    best = []
    try:
        best = sorted(t.number for t in study.best_trials)
    except (RuntimeError, ValueError) as e:
        log(f"note: optuna best_trials unavailable ({e})")
    summary["optuna_best_trials"] = best
    summary["front_matches_optuna"] = best == sorted(summary["pareto_trials"])
    if not summary["front_matches_optuna"]:
        log("note: the front differs from optuna's best_trials (trials whose status is not 'complete' are "
            f"excluded here): front {sorted(summary['pareto_trials'])}, optuna {best}")

    summary["remeasure"] = None
    if remeasure:
        keys = {}
        for i, row in df.iterrows():
            if row["on_front"] or row["state"] in MEASURED:
                label = row_label(row)
                keys[label] = (i, run_dir / str(row["trial_dir"]) / "model.pt")
        kwargs = {"threads": timed_threads(df, meta), **(remeasure_kwargs or {})}  # as the search timed them
        if (meta.get("base_config") or {}).get("latency_device") == "trial" and meta.get("device") == "cuda":
            log("note: the search timed latency on the GPU (latency_device: trial); the re-measurement is on the CPU")
        backend = backend or study_backend(meta)
        with tempfile.TemporaryDirectory(prefix="kdstudy-remeasure-") as tmp:
            if backend == "onnxruntime":
                from study import onnx_backend

                kwargs.update(load_model=lambda p: onnx_backend.open_for_remeasure(Path(p), Path(tmp)),
                              measure_latency=onnx_backend.remeasure_latency,
                              measure_throughput=onnx_backend.remeasure_throughput)
            elif backend != "torch":
                raise UserError(f"backend must be torch or onnxruntime (got '{backend}').")
            results, info = latency.remeasure({k: p for k, (_, p) in keys.items()}, log=log, **kwargs)
        info["backend"] = backend
        for col in (latency.LATENCY_COL, latency.IQR_COL, latency.THROUGHPUT_COL):
            df[col] = np.nan
        for key, res in results.items():
            for col, v in res.items():
                df.loc[keys[key][0], col] = v
        summary["remeasure"] = info

    summary["importances"], summary["importances_note"] = param_importances(study, objectives)
    summary = {
        "study_name": meta.get("study_name") or meta.get("name"),
        "run_dir": str(run_dir),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "optuna_version": optuna.__version__,
        **summary,
    }
    _write_csv(df, run_dir / "results.csv")
    _write_csv(pareto_rows(df, objectives), run_dir / "pareto.csv")
    write_json_atomic(run_dir / "benchmark.json", _finite(summary))
    return summary


def read_results(run_dir: str | Path) -> pd.DataFrame:
    """results.csv as written by `run_benchmarks` (number as nullable integers)."""
    df = pd.read_csv(Path(run_dir) / "results.csv")
    df["number"] = df["number"].astype("Int64")
    return df

"""Gather a study's trials and reference models into one results table, and analyse it.

Edges (disk, Optuna storage): `collect_results`, `run_benchmarks` (the run folder's readers `load_study_plan`,
`open_study` are study.search.results').
Pure functions over the table: `prune_kind`, `analyse`, `front_table`, `front_lines` (the front printed by the
engine's one table printer, study.search.summary.table_lines).

Table columns: `number` (Optuna trial number; empty for references and baselines), `reference` (teacher /
student_ce / student_kd, else empty), `baseline` (the baseline's name, else empty), `state` (COMPLETE,
EARLY_STOPPED (Optuna's PRUNED: stopped by the trial scheduler), INFEASIBLE, FAIL, REFERENCE, BASELINE, or Optuna's
RUNNING/WAITING), `prune_kind` (unpruned /
structured / unstructured), `note`, `error`, `wall_s`, `param_<name>` for every sampled parameter, every metric
(metrics.json updated with user_attrs["metrics"]), `trial_dir`, `on_front`, and after re-measurement
`latency_ms_bs1_remeasured`, `latency_iqr_ms_bs1_remeasured`, `throughput_ips_remeasured`.

Baselines (`compare_baselines`): for each, in one line, whether a front trial dominates it (which), how much more
validation accuracy the front reaches at no more than its cost in every cost objective, and which front trials
it dominates itself.

Only COMPLETE trials can be on the front. A trial counts as COMPLETE only when Optuna says COMPLETE *and* its
user_attrs status (if any) is "complete": an early-stopped trial that reached Optuna as COMPLETE is EARLY_STOPPED
here. Our tables say EARLY_STOPPED where Optuna says PRUNED ("pruning" always means weights here); a results.csv
written before this name reads back with PRUNED mapped to it (`read_results`).
The hypervolume rule is in `benchmarks.pareto` (fixed 0..100 % for accuracies, 0..1.1 x max for costs,
reference point (1, ..., 1) of the normalised minimisation problem).
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import latency, pareto
from study.core.errors import UserError
from study.core.fmt import fmt_value
from study.core.io import portable_path, write_json_atomic, write_text_atomic
from study.core.run_dir import RunDir, trial_name
from study.measure.export import UNSTRUCTURED_NOTE
from study.search.plan import StudyPlan
from study.search.references import REFERENCES
from study.search.results import load_study_plan, open_study
from study.search.summary import table_lines

EARLY_STOPPED = "EARLY_STOPPED"  # the table's name for a trial the scheduler stopped (Optuna's TrialState.PRUNED)
STATUS_TO_STATE = {"complete": "COMPLETE", "early_stopped": EARLY_STOPPED, "infeasible": "INFEASIBLE",
                   "failed": "FAIL"}
OPTUNA_TO_STATE = {"PRUNED": EARLY_STOPPED}  # Optuna state names that our tables spell otherwise
STATES = ("COMPLETE", EARLY_STOPPED, "INFEASIBLE", "FAIL", "RUNNING", "WAITING", "REFERENCE", "BASELINE")
MEASURED = ("REFERENCE", "BASELINE")  # rows that are not Optuna trials: trained once per study beside them
BASE_COLUMNS = ["number", "reference", "baseline", "state", "prune_kind", "note", "error", "wall_s"]
HV_RULE = (
    "objectives are normalised to losses in [0, 1]: accuracies (name ending in 'acc') over the fixed range "
    "0..100 %, every other objective over min(0, smallest)..1.1 x largest value of all COMPLETE trials, "
    "reference models and baselines; hypervolume of the normalised minimisation problem w.r.t. the reference "
    "point (1, ..., 1) (the fraction of the unit box dominated); the raw reference point is the worst end of "
    "every range"
)

Log = Callable[[str], None]


# ----------------------------------------------------------------------------------------------- disk and storage

def objectives_of(plan: StudyPlan, study: Any = None) -> list[dict]:
    """[{"name", "direction"}] from study.json, else from the Optuna study's directions and metric names."""
    if plan.objectives:
        return [{"name": o.name, "direction": o.direction} for o in plan.objectives]
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
    from study.models.pruning import get_prune_method  # here, so that importing this module (reports) loads no torch

    try:
        return "structured" if get_prune_method(m).structured else "unstructured"
    except UserError:
        return "unknown"


def _trial_row(t: Any, run_dir: Path, objectives: list[dict], log: Log) -> dict:
    attrs = t.user_attrs
    status = attrs.get("status")
    optuna_state = OPTUNA_TO_STATE.get(t.state.name, t.state.name)
    state = STATUS_TO_STATE.get(status, optuna_state) if status else optuna_state
    if state == "COMPLETE" and t.state.name != "COMPLETE":
        state = optuna_state
    trial_dir = attrs.get("trial_dir") or trial_name(t.number)
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
        # an enqueued baseline is a search trial labelled with its name (study.search.driver.enqueue_baselines)
        "number": t.number, "reference": None, "baseline": attrs.get("baseline"), "state": state, "prune_kind": kind,
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


def _measured_rows(run_dir: Path, kind: str, names: list[str], log: Log) -> list[dict]:
    """The rows of the models trained beside the search, in `names`' order: kind "reference" (teacher,
    student_ce, student_kd: state REFERENCE) or "baseline" (the baselines outside the space that study.json names;
    a run from before baselines has none: state BASELINE). A model without its metrics.json is skipped, said."""
    run = RunDir(run_dir)
    rows = []
    for name in names:
        folder = run.reference(name) if kind == "reference" else run.baseline(name)
        path = folder / "metrics.json"
        if not path.is_file():
            why = "" if kind == "reference" else " (it failed, or the study is still running)"
            log(f"note: {kind} {name!r} skipped: {path} not found{why}")
            continue
        row = _measured_row(path, {kind: name}, kind.upper(), folder.relative_to(run.root).as_posix(), log)
        if row:
            rows.append(row)
    return rows


def collect_results(run_dir: Path, study: Any, objectives: list[dict], log: Log = print,
                    baselines: list[str] | None = None) -> pd.DataFrame:
    """One row per Optuna trial plus one per reference model found under RUN_DIR/references/ and one per
    baseline (names from study.json) under RUN_DIR/baselines/."""
    run_dir = Path(run_dir)
    rows = [_trial_row(t, run_dir, objectives, log) for t in study.get_trials(deepcopy=False)]
    rows += _measured_rows(run_dir, "reference", list(REFERENCES), log)
    rows += _measured_rows(run_dir, "baseline", list(baselines or []), log)
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
                imp = optuna.importance.get_param_importances(study, target=partial(_signed_value, index=i,
                                                                                    sign=sign))
        except (ValueError, RuntimeError, TypeError, ZeroDivisionError) as e:
            notes.append(f"{obj['name']}: {e}")
            continue
        out[obj["name"]] = {k: float(v) for k, v in imp.items()}
    return out, ("; ".join(notes) or None)


def _signed_value(trial: Any, index: int, sign: float) -> float:
    """The trial's value of objective `index`, times `sign` (-1 turns a maximised objective into a minimised one)."""
    return sign * trial.values[index]


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


def front_lines(df: pd.DataFrame, objectives: list[dict]) -> list[str]:
    """The front (front_table) as printed lines, by the engine's one Pareto table printer."""
    front = front_table(df, objectives)
    def cell(v: Any) -> str:
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            return fmt_value(None)
        return fmt_value(v.item() if isinstance(v, np.generic) else v)

    rows = [[cell(v) for v in row] for row in front.itertuples(index=False)]
    return table_lines([str(c) for c in front.columns], rows)


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
    if isinstance(row.get("baseline"), str):
        return f"trial {row['number']} (baseline {row['baseline']})"
    return f"trial {row['number']}"


def is_baseline(df: pd.DataFrame) -> np.ndarray:
    """Rows that are baselines: trained beside the search (state BASELINE) or enqueued as a search trial."""
    if "baseline" not in df.columns:  # a table read from an older results.csv
        return np.zeros(len(df), dtype=bool)
    return df["baseline"].notna().to_numpy() & (df["baseline"].astype(str) != "").to_numpy()


def searched_front(df: pd.DataFrame, objectives: list[dict], values: np.ndarray | None = None) -> np.ndarray:
    """Mask of the front of the *searched* trials: COMPLETE trials the sampler proposed (enqueued baselines
    excluded), non-dominated among themselves. `values`: the objective values to use (default: the table's)."""
    names, dirs = [o["name"] for o in objectives], [o["direction"] for o in objectives]
    if values is None:
        values = df[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    searched = np.flatnonzero((df["state"] == "COMPLETE").to_numpy() & ~is_baseline(df))
    mask = np.zeros(len(df), dtype=bool)
    if len(searched):
        mask[searched] = pareto.pareto_mask(values[searched], dirs)
    return mask


def most_accurate(rows: pd.DataFrame, acc: str) -> int | None:
    """The trial number of the most accurate row (by `acc`), None for no rows. Ties: a front trial first (an
    equally accurate one off the front costs more), then the lower number."""
    if rows.empty:
        return None
    front = (rows["on_front"].astype(str).str.lower().isin(["true", "1"]) if "on_front" in rows.columns
             else pd.Series(False, index=rows.index))
    ranked = rows.assign(_acc=pd.to_numeric(rows[acc], errors="coerce"), _front=front)
    return int(ranked.sort_values(["_acc", "_front", "number"], ascending=[False, False, True]).iloc[0]["number"])


def quiet_latency(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per row, latency_ms_bs1 re-measured with nothing training where that exists (the search's elsewhere), and
    whether it was re-measured."""
    nan = pd.Series(np.nan, index=df.index)
    search = pd.to_numeric(df.get("latency_ms_bs1", nan), errors="coerce").to_numpy(dtype=float)
    quiet = pd.to_numeric(df.get(latency.LATENCY_COL, nan), errors="coerce").to_numpy(dtype=float)
    remeasured = np.isfinite(quiet)
    return np.where(remeasured, quiet, search), remeasured


def objective_values(df: pd.DataFrame, objectives: list[dict]) -> tuple[np.ndarray, list[str]]:
    """The objectives' values with the quiet re-measured latency where it exists (the search's elsewhere,
    `quiet_latency`), and the names of the objectives that were swapped that way."""
    names = [o["name"] for o in objectives]
    values = df[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float, copy=True)
    swapped = []
    if "latency_ms_bs1" in names and latency.LATENCY_COL in df.columns:
        values[:, names.index("latency_ms_bs1")], remeasured = quiet_latency(df)
        if remeasured.any():
            swapped.append("latency_ms_bs1")
    return values, swapped


def compare_baselines(df: pd.DataFrame, objectives: list[dict]) -> list[dict]:
    """Each baseline (beside the search, or enqueued as a trial) against the *searched* trials' front (enqueued
    baselines excluded: the question is whether the search found something better than the hand-picked
    configurations), with the quiet re-measured latency where the table has it (`objective_values`).
    `dominated_by`: searched front trials that dominate it; `gain`: of the searched front trials at no more than
    its value in every minimised objective, the one with the highest value of the first maximised objective, and
    by how much it beats the baseline there (negative: none reaches it); `dominates`: searched front trials the
    baseline dominates."""
    from study.core.dominance import dominates

    names = [o["name"] for o in objectives]
    dirs = [o["direction"] for o in objectives]
    gain_obj = next((o["name"] for o in objectives if o["direction"] == "maximize"), None)
    costs = [o["name"] for o in objectives if o["direction"] == "minimize"]
    values, swapped = objective_values(df, objectives)
    loss = pareto.to_minimization(values, dirs)
    front = np.flatnonzero(searched_front(df, objectives, values))
    out = []
    for b in np.flatnonzero(is_baseline(df)):
        row = df.iloc[b]
        entry: dict[str, Any] = {"name": row["baseline"], "trial": None if row["state"] == "BASELINE"
                                 else int(row["number"]), "latency": "re-measured" if swapped else "search",
                                 "values": {n: _num_or_none(values[b, k]) for k, n in enumerate(names)}}
        if row["state"] not in ("BASELINE", "COMPLETE") or not np.all(np.isfinite(loss[b])):
            entry.update(dominated_by=[], dominates=[], gain=None, compared=False,
                         line=f"{row['baseline']}: not compared (it did not finish, or an objective is missing)")
            out.append(entry)
            continue
        by = [int(df.iloc[i]["number"]) for i in front if dominates(loss[i], loss[b])]
        mine = [int(df.iloc[i]["number"]) for i in front if dominates(loss[b], loss[i])]
        gain = None
        if gain_obj is not None:
            j, c = names.index(gain_obj), [names.index(n) for n in costs]
            cheap = [i for i in front if np.all(np.isfinite(values[i])) and np.all(values[i, c] <= values[b, c])]
            if cheap:
                best = max(cheap, key=lambda i: (values[i, j], -int(df.iloc[i]["number"])))
                gain = {"objective": gain_obj, "trial": int(df.iloc[best]["number"]),
                        "value": float(values[best, j]), "baseline_value": float(values[b, j]),
                        "difference": float(values[best, j] - values[b, j]), "at_no_more": costs}
        entry.update(dominated_by=by, dominates=mine, gain=gain, compared=True,
                     line=_baseline_line(row["baseline"], by, mine, gain, costs))
        out.append(entry)
    return out


def _num_or_none(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _baseline_line(name: str, by: list[int], mine: list[int], gain: dict | None, costs: list[str]) -> str:
    parts = [f"dominated by searched trial(s) {', '.join(map(str, by))}" if by
             else "not dominated by any searched trial"]
    if not costs:
        parts.append("the study has no cost objective to compare at")
    elif gain is None:
        parts.append(f"no trial finished at no more than its {' and '.join(costs)}")
    else:
        unit = " points" if pareto.is_accuracy(gain["objective"]) else ""
        parts.append(f"at no more than its {' and '.join(costs)} the best searched trial ({gain['trial']}) reaches "
                     f"{gain['objective']} {fmt_value(gain['value'])} against {fmt_value(gain['baseline_value'])} "
                     f"({gain['difference']:+.2f}{unit})")
    parts.append(f"it dominates searched front trial(s) {', '.join(map(str, mine))}" if mine
                 else "it dominates no searched front trial")
    return f"{name}: " + "; ".join(parts)


# ------------------------------------------------------------------------------ confirmation seeds and compute

def read_confirm_plan(run_dir: Path) -> dict:
    """confirm/plan.json ({} when the study confirmed nothing, or ran before confirmation seeds existed)."""
    try:
        plan = json.loads(RunDir(run_dir).confirm_plan.read_text())
    except (OSError, ValueError):
        return {}
    return plan if isinstance(plan, dict) else {}


def confirm_candidates(df: pd.DataFrame, objectives: list[dict], knee_trial: int | None,
                       baselines: list[dict]) -> list[dict]:
    """The models a user would pick, to be re-trained with more seeds: the knee of the front, the most accurate
    searched trial, for each baseline the searched trial that beats it by the most at no more cost (its `gain`
    trial) and the first searched trial that dominates it, and every baseline itself. Chosen on the search's own
    values; each as {"label", "trial" or "baseline", "why": [...]}, without repeats."""
    out: dict[str, dict] = {}

    def add(label: str, why: str, **ident: Any) -> None:
        out.setdefault(label, {"label": label, "trial": None, "baseline": None, "why": [], **ident})["why"].append(why)

    acc = next((o["name"] for o in objectives if o["direction"] == "maximize"), None)
    by_number = {int(r["number"]): r for _, r in df[df["number"].notna()].iterrows()}

    def add_trial(n: int, why: str) -> None:
        row = by_number.get(int(n))
        name = row["baseline"] if row is not None and isinstance(row.get("baseline"), str) else None
        add(f"trial {int(n)}" + (f" (baseline {name})" if name else ""), why, trial=int(n), baseline=name)

    if knee_trial is not None:
        add_trial(knee_trial, "knee")
    searched = df[(df["state"] == "COMPLETE") & ~is_baseline(df)]
    best = most_accurate(searched, acc) if acc is not None else None
    if best is not None:  # the rule benchmarks.recommend uses: the model confirmed is the one recommended
        add_trial(best, "most accurate searched trial")
    for b in baselines:
        if not b.get("compared", True):  # it did not finish: nothing to confirm
            continue
        if b.get("gain") and b["gain"]["difference"] is not None:
            add_trial(b["gain"]["trial"], f"best at no more cost than {b['name']}")
        if b.get("dominated_by"):
            add_trial(b["dominated_by"][0], f"dominates {b['name']}")
        if b.get("trial") is not None:
            add_trial(b["trial"], "baseline")
        else:
            add(f"baseline {b['name']}", "baseline", baseline=b["name"])
    return list(out.values())


def study_compute(df: pd.DataFrame, study: StudyPlan, plan: dict, run_dir: Path) -> dict:
    """What the study spent: epochs trained by the search trials (a complete trial all its epochs, an early-stopped
    one up to its stop, infeasible and failed ones 0), by the baselines and references beside it, and by the
    confirmation seeds; the study's wall time; and the search's epochs as a multiple of one baseline training."""
    def total(row: Any) -> int:
        e, f = pd.to_numeric(row.get("epochs"), errors="coerce"), pd.to_numeric(row.get("finetune_epochs"),
                                                                               errors="coerce")
        return int((0 if pd.isna(e) else e) + (0 if pd.isna(f) else f))

    trial_epochs = 0
    for _, row in df[~df["state"].isin(MEASURED)].iterrows():
        if row["state"] == "COMPLETE":
            trial_epochs += total(row)
        elif row["state"] == EARLY_STOPPED:
            stopped = pd.to_numeric(row.get("epoch"), errors="coerce")
            trial_epochs += 0 if pd.isna(stopped) else int(stopped)
    side = int(sum(total(r) for _, r in df[df["state"].isin(MEASURED)].iterrows() if r.get("reference") != "teacher"))
    recipe = study.baselines.get("seed_recipe") or next(iter(study.baselines.values()), None)
    ref_cfg = (recipe.config if recipe is not None else None) or study.base_config
    one = int(ref_cfg.get("epochs", 0)) + int(ref_cfg.get("finetune_epochs", 0))
    done = {}
    try:
        done = json.loads(RunDir(run_dir).confirm_done.read_text())
    except (OSError, ValueError):
        pass
    wall = None
    try:
        if study.finished and study.started:  # a study still running (or from before these) has no wall time
            fmt = "%Y-%m-%d %H:%M:%S"
            wall = (datetime.strptime(study.finished, fmt) - datetime.strptime(study.started, fmt)).total_seconds()
    except ValueError:
        pass
    out = {"trial_epochs": trial_epochs, "side_epochs": side, "confirm_epochs": int(done.get("epochs") or 0),
           "one_baseline_epochs": one, "search_wall_s": wall, "confirm_wall_s": done.get("wall_s"),
           "trials": int((~df["state"].isin(MEASURED)).sum())}
    out["trial_epochs_in_baselines"] = round(trial_epochs / one, 1) if one else None
    out["line"] = (f"search compute: {trial_epochs} trial-epochs over {out['trials']} trials "
                   f"= {out['trial_epochs_in_baselines']}x one baseline training ({one} epochs)"
                   + (f", search wall {wall:.0f} s" if wall is not None else "")
                   + (f"; confirmation {out['confirm_epochs']} epochs, {done['wall_s']:.0f} s" if done else "")
                   + (f"; baselines and references beside it {side} epochs" if side else ""))
    return out


def mean_std(xs: Sequence[Any]) -> tuple[float, float]:
    """Mean and sample std (n - 1) of the finite values in xs: (nan, nan) for none, std 0.0 for one."""
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def confirmed_verdicts(df: pd.DataFrame, objectives: list[dict], plan: dict, run_dir: Path,
                       compute: dict) -> dict:
    """The confirmed candidates on seed means (the search's own run plus the confirmation seeds): test and
    validation accuracy mean +- sample std, costs with the quiet re-measured latency; and for each baseline,
    whether a confirmed searched trial dominates it on the means (test accuracy no lower, no cost higher, one of
    them strictly better) and the best confirmed searched trial at no more than its cost."""
    from study.core.dominance import dominates
    from study.reproduce.confirm import read_seed_metrics

    names = [o["name"] for o in objectives]
    costs = [o["name"] for o in objectives if o["direction"] == "minimize"]
    values, _ = objective_values(df, objectives)
    rows = []
    for cand in plan.get("candidates", []):
        if cand.get("trial") is not None:
            idx = df.index[(df["number"] == cand["trial"]) & ~df["state"].isin(MEASURED)]
        else:
            idx = df.index[(df["state"] == "BASELINE") & (df["baseline"] == cand["baseline"])]
        if not len(idx):
            continue
        i = df.index.get_loc(idx[0])
        own = df.iloc[i]
        seeds = [{"seed": int(own.get("seed")) if pd.notna(own.get("seed")) else None,
                  "val_acc": own.get("val_acc"), "test_acc": own.get("test_acc")}]
        seeds += [{k: m.get(k) for k in ("seed", "val_acc", "test_acc")}
                  for m in read_seed_metrics(run_dir, cand, plan.get("seeds", []))]
        tests = [pd.to_numeric(s["test_acc"], errors="coerce") for s in seeds]
        tm, ts = mean_std(tests)
        vm, vs = mean_std([pd.to_numeric(s["val_acc"], errors="coerce") for s in seeds])
        n_seeds = sum(1 for x in tests if np.isfinite(x))
        rows.append({**cand, "n_seeds": n_seeds, "seeds": seeds, "test_acc_mean": tm, "test_acc_std": ts,
                     "val_acc_mean": vm, "val_acc_std": vs,
                     "costs": {n: _num_or_none(values[i, names.index(n)]) for n in costs}})
    verdicts = []
    searched = [r for r in rows if r.get("trial") is not None and not r.get("baseline")]
    for b in [r for r in rows if r.get("baseline")]:
        if not np.isfinite(b["test_acc_mean"]) or any(b["costs"][c] is None for c in costs):
            continue

        def point(r: dict) -> np.ndarray:
            return np.array([-r["test_acc_mean"], *[r["costs"][c] for c in costs]], dtype=float)

        by = [r for r in searched if np.all(np.isfinite(point(r))) and dominates(point(r), point(b))]
        cheap = [r for r in searched if all(r["costs"][c] is not None and r["costs"][c] <= b["costs"][c]
                                            for c in costs) and np.isfinite(r["test_acc_mean"])]
        best = max(cheap, key=lambda r: r["test_acc_mean"]) if cheap else None
        line = (f"{b['baseline']} ({b['n_seeds']} seeds: test {b['test_acc_mean']:.2f} +- {b['test_acc_std']:.2f} %): "
                + (f"dominated on seed means by searched trial(s) {', '.join(str(r['trial']) for r in by)} "
                   f"(trial {by[0]['trial']}: test {by[0]['test_acc_mean']:.2f} +- {by[0]['test_acc_std']:.2f} %)"
                   if by else "not dominated on seed means by a confirmed searched trial")
                + (f"; at no more than its {' and '.join(costs)} the best confirmed searched trial "
                   f"({best['trial']}) tests {best['test_acc_mean']:.2f} +- {best['test_acc_std']:.2f} % "
                   f"({best['test_acc_mean'] - b['test_acc_mean']:+.2f} points)" if best else
                   f"; no confirmed searched trial at no more than its {' and '.join(costs)}")
                + (f" (search: {compute['trial_epochs']} trial-epochs = {compute['trial_epochs_in_baselines']}x "
                   f"one baseline training)" if compute.get("trial_epochs_in_baselines") else ""))
        verdicts.append({"baseline": b["baseline"], "dominated_by": [r["trial"] for r in by],
                         "best_at_no_more_cost": best["trial"] if best else None,
                         "difference": (best["test_acc_mean"] - b["test_acc_mean"]) if best else None,
                         "line": line})
    return {"seeds": plan.get("seeds", []), "accuracy": "test_acc, mean +- sample std over seeds",
            "latency": "re-measured" if latency.LATENCY_COL in df.columns else "search",
            "candidates": rows, "baselines": verdicts}


# ---------------------------------------------------------------------------------------------------- orchestration

def nonfinite_to_none(obj: Any) -> Any:
    """`obj` with every NaN / inf (in nested dicts and lists too) replaced by None, so that benchmark.json is strict
    JSON."""
    if isinstance(obj, dict):
        return {k: nonfinite_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nonfinite_to_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    write_text_atomic(path, df.to_csv(index=False))


def study_latency_threads(plan: StudyPlan) -> int | None:
    """The trials' configured torch thread count (`threads`; None where 0: the worker's default)."""
    threads = plan.base_config.get("threads")
    return int(threads) if isinstance(threads, (int, float)) and threads > 0 else None


def timed_threads(df: pd.DataFrame, plan: StudyPlan) -> int | None:
    """The torch thread count the search timed latency with: what the trials recorded (`latency_threads`; with
    `threads: 0` that is what Ray gave each worker, e.g. cpus_per_trial), else the configured count."""
    if "latency_threads" in df.columns:
        recorded = pd.to_numeric(df.loc[~df["state"].isin(MEASURED), "latency_threads"], errors="coerce").dropna()
        recorded = recorded[recorded > 0]
        if len(recorded):
            return int(recorded.mode().iloc[0])
    return study_latency_threads(plan)


def study_backend(plan: StudyPlan) -> str:
    """The runtime the search timed latency on (the trials' latency_backend; torch for studies before it)."""
    return plan.base_config.get("latency_backend") or "torch"


def run_benchmarks(run_dir: str | Path, *, remeasure: bool = True, log: Log = print,
                   remeasure_kwargs: dict | None = None, backend: str | None = None) -> dict:
    """Write RUN_DIR/results.csv, pareto.csv and benchmark.json; returns the benchmark summary.

    backend (torch | onnxruntime; default the study's latency_backend): the runtime of the re-measurement. With
    onnxruntime each model's deployed ONNX file is timed (model_int8.onnx, else model.onnx; a trial timed with
    torch is exported from its model.pt first)."""
    import optuna

    run_dir = Path(run_dir)
    study_plan = load_study_plan(run_dir)
    study = open_study(run_dir, study_plan)
    objectives = objectives_of(study_plan, study)
    df = collect_results(run_dir, study, objectives, log, baselines=study_plan.outside_baselines())
    df, summary = analyse(df, objectives)
    summary["knee"] = knee(df, objectives)
    summary.update(_compare_with_optuna(study, summary["pareto_trials"], log))

    summary["remeasure"] = None
    plan = read_confirm_plan(run_dir)
    if remeasure:
        summary["remeasure"] = _remeasure_latency(df, objectives, study_plan, plan, run_dir, log=log,
                                                  remeasure_kwargs=remeasure_kwargs, backend=backend)

    summary["baselines"] = compare_baselines(df, objectives)
    summary["compute"] = study_compute(df, study_plan, plan, run_dir)
    summary["confirmed"] = confirmed_verdicts(df, objectives, plan, run_dir, summary["compute"]) if plan else None
    summary["importances"], summary["importances_note"] = param_importances(study, objectives)
    summary = {
        "study_name": study_plan.optuna_name,
        "run_dir": portable_path(run_dir),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "optuna_version": optuna.__version__,
        **summary,
    }
    run = RunDir(run_dir)
    _write_csv(df, run.results_csv)
    _write_csv(pareto_rows(df, objectives), run.pareto_csv)
    write_json_atomic(run.benchmark_json, nonfinite_to_none(summary))
    return summary


def _compare_with_optuna(study: Any, front: list[int], log: Log) -> dict:
    """Optuna's own best trials beside our front (they differ where a trial's status is not 'complete'), noted
    through `log` when they differ."""
    best = []
    try:
        best = sorted(t.number for t in study.best_trials)
    except (RuntimeError, ValueError) as e:
        log(f"note: optuna best_trials unavailable ({e})")
    matches = best == sorted(front)
    if not matches:
        log("note: the front differs from optuna's best_trials (trials whose status is not 'complete' are "
            f"excluded here): front {sorted(front)}, optuna {best}")
    return {"optuna_best_trials": best, "front_matches_optuna": matches}


def _remeasure_targets(df: pd.DataFrame, objectives: list[dict], plan: dict, run_dir: Path) -> dict:
    """The rows whose latency is re-measured (the front, the searched front, baselines, references, confirmed
    trials), as {row label: (row index, model.pt path)}."""
    on_searched_front = searched_front(df, objectives)
    baseline_rows = is_baseline(df)
    confirmed = {c["trial"] for c in plan.get("candidates", []) if c.get("trial") is not None}
    keys = {}
    for i, row in df.iterrows():
        if row["on_front"] or row["state"] in MEASURED or on_searched_front[i] or baseline_rows[i] \
                or row["number"] in confirmed:
            label = row_label(row)
            keys[label] = (i, run_dir / str(row["trial_dir"]) / "model.pt")
    return keys


def _remeasure_latency(df: pd.DataFrame, objectives: list[dict], study_plan: StudyPlan, plan: dict, run_dir: Path, *,
                       log: Log, remeasure_kwargs: dict | None, backend: str | None) -> dict:
    """Re-measure the latency of `_remeasure_targets` side by side (benchmarks.latency) on `backend` (default the
    study's), with the thread count the search timed with; fills the re-measured columns of `df` in place and
    returns the protocol for benchmark.json."""
    keys = _remeasure_targets(df, objectives, plan, run_dir)
    kwargs = {"threads": timed_threads(df, study_plan), **(remeasure_kwargs or {})}  # as the search timed them
    if study_plan.base_config.get("latency_device") == "trial" and study_plan.device == "cuda":
        log("note: the search timed latency on the GPU (latency_device: trial); the re-measurement is on the CPU")
    backend = backend or study_backend(study_plan)
    with tempfile.TemporaryDirectory(prefix="kdstudy-remeasure-") as tmp:
        if backend == "onnxruntime":
            from study.measure import onnx as onnx_backend

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
    return info


def read_results(run_dir: str | Path) -> pd.DataFrame:
    """results.csv as written by `run_benchmarks` (number as nullable integers; an older file's PRUNED state read
    as EARLY_STOPPED)."""
    df = pd.read_csv(RunDir(run_dir).results_csv)
    df["number"] = df["number"].astype("Int64")
    df["state"] = df["state"].replace(OPTUNA_TO_STATE)
    return df

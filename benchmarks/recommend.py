"""Which model to take: the knee, the most accurate searched trial and the best under each of the space's
constraints, each with its numbers, a one-line configuration, the command that exports it and, where
`kdstudy reproduce` ran, its verdict; and the baselines' verdicts with their own export commands.

Pure functions over the results table (benchmarks.collect's columns) and benchmark.json's dict: the report's
answer section and the CLI's end-of-run lines print the same lists (`recommendations`, `baseline_verdicts`,
`answer_lines`).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.collect import MEASURED, is_baseline, knee, most_accurate, objective_values, quiet_latency
from study.search.space import CONSTRAINTS

PRUNE_SHORT = {"none": "", "l1_structured": "l1s", "l2_structured": "l2s", "l1_unstructured": "l1u"}
CONFIG_LEGEND = ("configuration: w = width multiplier; the KD loss (ce = no distillation); T = temperature; "
                 "a = alpha, the weight of the cross-entropy term; l1s@r / l2s@r = L1 / L2 structured pruning of "
                 "ratio r, l1u@r = L1 unstructured (zeros in dense tensors); fp32 or int8 (quantised)")


def _val(row: Any, name: str) -> Any:
    """A configuration value: the resolved config column, else the sampled parameter; None when missing."""
    for col in (name, f"param_{name}"):
        v = row.get(col)
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and v is not pd.NA:
            return v
    return None


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def short_config(row: Any) -> str:
    """One line such as 'w0.5 kd T3.2 a0.4 l1s@0.3 int8' (CONFIG_LEGEND explains it); sampled parameters it
    does not know are appended as name=value."""
    out = []
    if row.get("param_student_arch") is not None and _val(row, "student_arch") is not None:
        out.append(str(_val(row, "student_arch")))
    if _num(_val(row, "width_mult")) is not None:
        out.append(f"w{_num(_val(row, 'width_mult')):g}")
    loss = _val(row, "kd_loss")
    if loss is not None:
        out.append(str(loss))
    if loss != "ce":
        for key, tag in (("temperature", "T"), ("alpha", "a")):
            if _num(_val(row, key)) is not None:
                out.append(f"{tag}{_num(_val(row, key)):.2g}")
    method = _val(row, "prune_method")
    if method is not None and str(method) != "none":
        short = PRUNE_SHORT.get(str(method)) or str(method)
        ratio = _num(_val(row, "prune_ratio"))
        out.append(short + (f"@{ratio:.2f}" if ratio is not None else ""))
    quant = _val(row, "quantize")
    if quant is not None:
        out.append("fp32" if str(quant) == "none" else str(quant))
    known = {"student_arch", "width_mult", "kd_loss", "temperature", "alpha", "prune_method", "prune_ratio",
             "quantize"}
    for col in row.index if hasattr(row, "index") else ():
        name = str(col)[len("param_"):]
        if str(col).startswith("param_") and name not in known and _val(row, name) is not None:
            v = _val(row, name)
            out.append(f"{name}={_num(v):.3g}" if _num(v) is not None else f"{name}={v}")
    return " ".join(out)


def export_command(run_dir: str, *, trial: int | None = None, baseline: str | None = None,
                   knee: bool = False) -> str:
    """`kdstudy reproduce RUN_DIR --knee | --trial N | --baseline NAME`: retrains with 3 seeds and exports."""
    which = "--knee" if knee else f"--baseline {shlex.quote(baseline)}" if baseline else f"--trial {trial}"
    return f"kdstudy reproduce {shlex.quote(str(run_dir))} {which}"


def reproduce_verdict(summaries: Sequence[dict], trial: int | None = None,
                      baseline: str | None = None) -> dict | None:
    """The reproduce run of one trial (or baseline) against the search: is the search's test accuracy within
    one sample std of the reproduced mean? A run at the search's budget wins over an --epochs one; None if none."""
    runs = [s for s in summaries if (baseline is not None and s.get("baseline") == baseline)
            or (trial is not None and s.get("trial") == trial)]
    runs = sorted(runs, key=lambda s: bool(s.get("budget_changed")))
    if not runs:
        return None
    s = runs[0]
    mean, std = _num(s.get("test_acc_mean")), _num(s.get("test_acc_std"))
    search = _num(s.get("test_acc_search"))
    if search is None:
        search = _num((s.get("search") or {}).get("test_acc"))
    n = s.get("n_seeds") or len(s.get("seeds") or [])
    if mean is None:
        return None
    diff = None if search is None else mean - search
    within = None if diff is None or std is None else abs(diff) <= std
    budget = f" at {s.get('epochs')} epochs (search: {s.get('epochs_search')})" if s.get("budget_changed") else ""
    line = (f"reproduced over {n} seeds{budget}: test {mean:.2f} +- {(std or 0.0):.2f} %"
            + ("" if diff is None else f" against {search:.2f} in the search ({diff:+.2f}): "
               + ("within one std" if within else "NOT within one std")))
    return {"n_seeds": n, "test_acc_mean": mean, "test_acc_std": std, "test_acc_search": search,
            "difference": diff, "within_one_std": within, "budget_changed": bool(s.get("budget_changed")),
            "line": line}


def _confirmed(benchmark: dict, trial: int | None = None, baseline: str | None = None) -> dict | None:
    for c in (benchmark.get("confirmed") or {}).get("candidates") or []:
        if (trial is not None and c.get("trial") == trial) or (baseline is not None and c.get("baseline") == baseline
                                                                and c.get("trial") is None):
            return c
    return None


def _picks(df: pd.DataFrame, objectives: Sequence[dict], benchmark: dict, constraints: dict) -> dict[int, list[str]]:
    """trial number -> its roles, in the order knee, most accurate, best under each constraint."""
    acc = next((o["name"] for o in objectives if o["direction"] == "maximize"), "val_acc")
    searched = ((df["state"] == "COMPLETE").to_numpy() & ~is_baseline(df)
                & pd.to_numeric(df[acc], errors="coerce").notna().to_numpy())
    picks: dict[int, list[str]] = {}
    complete = (df["state"] == "COMPLETE").to_numpy()
    k = (benchmark.get("knee") or {}).get("trial")
    if k is None and "on_front" in df.columns:  # a benchmark.json from before the knee
        front = df["on_front"].astype(str).str.lower().isin(["true", "1"]).to_numpy() & complete
        k = (knee(df.assign(on_front=front), list(objectives)) or {}).get("trial")
    if k is not None and (complete & (df["number"] == k).fillna(False).to_numpy()).any():
        picks.setdefault(int(k), []).append("knee")

    def best(mask: np.ndarray) -> int | None:
        return most_accurate(df[searched & mask], acc)

    first = best(np.ones(len(df), dtype=bool))
    if first is not None:
        picks.setdefault(first, []).append("most accurate")
    lat, _ = quiet_latency(df)
    for key, bound in (constraints or {}).items():
        metric = CONSTRAINTS.get(key)
        if metric is None or metric not in df.columns:
            continue
        vals = lat if metric == "latency_ms_bs1" else pd.to_numeric(df[metric], errors="coerce").to_numpy(float)
        n = best(np.nan_to_num(vals, nan=np.inf) <= float(bound))
        if n is not None:
            bound_text = f"{int(bound):,}" if float(bound).is_integer() else f"{float(bound):g}"
            picks.setdefault(n, []).append(f"best under {key} {bound_text}")
    return picks


def recommendations(df: pd.DataFrame, objectives: Sequence[dict], benchmark: dict, constraints: dict | None = None,
                    *, run_dir: str = "RUN_DIR", reproduce: Sequence[dict] = ()) -> list[dict]:
    """The models to take, one dict per trial (a trial picked for several roles appears once), in the order knee,
    most accurate searched trial (enqueued baselines excluded), best (most accurate) searched trial within each
    constraint of the space (study.json "constraints", e.g. {"max_params": 100000}; latency re-measured where it
    was). Inputs: results.csv as read by `collect.read_results`, [{"name", "direction"}], benchmark.json, and the
    reproduce summaries (RUN_DIR/reproduce/*/summary.json; optional). Keys of each dict:
      role (str, roles joined by ", "), roles (list[str]), trial (int), baseline (name if it is an enqueued
      baseline, else None), on_front (bool), config (str, `short_config`), command (str, `export_command`),
      val_acc, test_acc (the search's own run: one seed), confirmed (bool), n_seeds (int: seeds behind
      test_acc_mean; 1 when not confirmed), test_acc_mean / test_acc_std / val_acc_mean / val_acc_std (seed means
      from benchmark.json "confirmed"; None when not confirmed), params, nonzero_params, macs, latency_ms_bs1
      (re-measured where it was), latency ("re-measured" | "search"), values ({objective: value}, the same
      latency), reproduced (`reproduce_verdict` dict or None), line (the whole entry in one sentence).
    Numbers are floats or None (never NaN)."""
    lat, remeasured = quiet_latency(df)
    values, _ = objective_values(df, list(objectives))
    names = [o["name"] for o in objectives]
    out = []
    for n, roles in _picks(df, objectives, benchmark, constraints or {}).items():
        i = int(np.flatnonzero((df["number"] == n).to_numpy() & ~df["state"].isin(MEASURED).to_numpy())[0])
        row = df.iloc[i]
        conf = _confirmed(benchmark, trial=n) or {}
        name = row.get("baseline") if isinstance(row.get("baseline"), str) and row.get("baseline") else None
        e = {"role": ", ".join(roles), "roles": roles, "trial": n, "baseline": name,
             "on_front": str(row.get("on_front")).lower() in ("true", "1"), "config": short_config(row),
             "command": export_command(run_dir, trial=n, knee="knee" in roles),
             "val_acc": _num(row.get("val_acc")), "test_acc": _num(row.get("test_acc")), "confirmed": bool(conf),
             "n_seeds": int(conf.get("n_seeds") or 1)}
        e.update({k: _num(conf.get(k)) for k in ("test_acc_mean", "test_acc_std", "val_acc_mean", "val_acc_std")})
        e.update({k: _num(row.get(k)) for k in ("params", "nonzero_params", "macs")})
        e.update(latency_ms_bs1=_num(lat[i]), latency="re-measured" if remeasured[i] else "search",
                 values={k: _num(values[i, j]) for j, k in enumerate(names)},
                 reproduced=reproduce_verdict(reproduce, trial=n))
        e["line"] = recommendation_line(e)
        out.append(e)
    return out


def _count(v: float | None) -> str:
    return "?" if v is None else f"{v:,.0f}"


def accuracy_text(e: dict) -> str:
    """'test 94.52 +- 1.37 % (3 seeds)' where confirmed, else 'test 93.59 % (one seed)'; then the search's val_acc."""
    if e.get("test_acc_mean") is not None:
        test = f"test {e['test_acc_mean']:.2f} +- {e['test_acc_std'] or 0.0:.2f} % ({e['n_seeds']} seeds)"
    elif e.get("test_acc") is not None:
        test = f"test {e['test_acc']:.2f} % (one seed)"
    else:
        test = "test accuracy not measured"
    val = f", val {e['val_acc']:.2f} % in the search" if e.get("val_acc") is not None else ""
    return test + val


def recommendation_line(e: dict) -> str:
    """One recommendation in one sentence (what `answer_lines` prints)."""
    lat = e.get("latency_ms_bs1")
    return (f"{e['role']}: trial {e['trial']}" + (f" (baseline {e['baseline']})" if e.get("baseline") else "")
            + f" [{e['config']}]: {accuracy_text(e)}; {_count(e.get('nonzero_params'))} non-zero params"
            + ("" if lat is None else f", {lat:.3g} ms at batch 1 ({e['latency']})")
            + ("" if e.get("on_front") else "; not on the front")
            + (f"; {e['reproduced']['line']}" if e.get("reproduced") else ""))


def baseline_verdicts(benchmark: dict, *, run_dir: str = "RUN_DIR") -> list[dict]:
    """Each baseline's verdict against the searched trials: {"name", "trial" (int if enqueued as a search trial,
    else None), "seed_means" (bool: the line compares seed means of confirmed models, else the search's single
    runs), "dominated_by" (list of trial numbers), "line" (str), "command" (`export_command` --baseline)}."""
    confirmed = {v["baseline"]: v for v in (benchmark.get("confirmed") or {}).get("baselines") or []}
    out = []
    for b in benchmark.get("baselines") or []:
        c = confirmed.get(b.get("name"))
        out.append({"name": b.get("name"), "trial": b.get("trial"), "seed_means": c is not None,
                    "dominated_by": list((c or b).get("dominated_by") or []),
                    "line": (c or b).get("line", ""), "command": export_command(run_dir, baseline=b.get("name"))})
    return out


def answer_lines(recs: Sequence[dict], verdicts: Sequence[dict]) -> list[str]:
    """The answer as plain text lines: each recommendation and its export command, then each baseline's verdict."""
    lines = ["Which model to take:"] if recs else ["No complete searched trial: nothing to recommend yet."]
    for e in recs:
        lines += [f"  {e['line']}", f"      {e['command']}"]
    if verdicts:
        means = all(v["seed_means"] for v in verdicts)
        lines.append("The baselines against the search" + (" (seed means):" if means else " (the search's runs):"))
        lines += [f"  {v['line']}" for v in verdicts]
    return lines

"""benchmarks.recommend: which models the report and the CLI recommend, with which numbers and commands."""

from __future__ import annotations

import math

import pandas as pd

from benchmarks.recommend import answer_lines, baseline_verdicts, recommendations, short_config

OBJECTIVES = [{"name": "val_acc", "direction": "maximize"}, {"name": "params", "direction": "minimize"},
              {"name": "latency_ms_bs1", "direction": "minimize"}]
CONFIG = {"width_mult": 0.5, "kd_loss": "kd", "temperature": 3.21, "alpha": 0.4, "prune_method": "l1_structured",
          "prune_ratio": 0.3, "quantize": "none"}


def _row(number: float, state: str, val_acc: float, params: int, lat: float, *, front: bool = False,
         baseline: str | None = None, remeasured: float = math.nan) -> dict:
    return {"number": number, "state": state, "baseline": baseline, "on_front": front, "val_acc": val_acc,
            "test_acc": val_acc - 1, "params": params, "nonzero_params": params, "latency_ms_bs1": lat,
            "latency_ms_bs1_remeasured": remeasured, **CONFIG}


def table() -> pd.DataFrame:
    rows = [
        _row(0, "COMPLETE", 99.0, 90_000, 2.0, baseline="seed_recipe"),  # most accurate, but picked by hand
        _row(1, "COMPLETE", 95.0, 80_000, 2.0, front=True, remeasured=1.4),  # 1.5 ms only once re-measured
        _row(2, "COMPLETE", 95.0, 90_000, 1.0),  # as accurate as 1, off the front
        _row(3, "COMPLETE", 90.0, 20_000, 0.5, front=True),  # the knee
        _row(4, "EARLY_STOPPED", 99.5, 10_000, 0.5),  # early stopped: never recommended
        _row(6, "COMPLETE", 92.0, 45_000, 0.9, front=True),
        _row(math.nan, "REFERENCE", 99.9, 300_000, 5.0),
    ]
    df = pd.DataFrame(rows)
    df["number"] = df["number"].astype("Int64")
    return df


BENCHMARK = {
    "knee": {"trial": 3},
    "baselines": [{"name": "seed_recipe", "trial": 0, "dominated_by": [], "line": "seed_recipe: search line"}],
    "confirmed": {
        "seeds": [1, 2],
        "candidates": [{"trial": 3, "baseline": None, "n_seeds": 3, "test_acc_mean": 89.0, "test_acc_std": 0.5,
                        "val_acc_mean": 90.1, "val_acc_std": 0.3}],
        "baselines": [{"baseline": "seed_recipe", "dominated_by": [1], "line": "seed_recipe: seed-mean line"}],
    },
}
REPRODUCE = [
    {"trial": 1, "n_seeds": 3, "test_acc_mean": 99.0, "test_acc_std": 0.1, "test_acc_search": 94.0,
     "budget_changed": True, "epochs": 60, "epochs_search": 15},  # a longer budget: the same-budget run wins
    {"trial": 1, "n_seeds": 3, "test_acc_mean": 93.0, "test_acc_std": 0.5, "test_acc_search": 94.0,
     "budget_changed": False},
]


def test_short_config_is_one_line_a_reader_can_decode() -> None:
    assert short_config(pd.Series({**CONFIG, "quantize": "int8"})) == "w0.5 kd T3.2 a0.4 l1s@0.30 int8"
    ce = short_config(pd.Series({**CONFIG, "kd_loss": "ce", "prune_method": "none", "param_lr": 0.05}))
    assert ce == "w0.5 ce fp32 lr=0.05"  # no T / alpha without distillation; unknown sampled parameters kept


def test_recommendations_pick_knee_most_accurate_and_best_under_each_constraint() -> None:
    recs = recommendations(table(), OBJECTIVES, BENCHMARK, {"max_params": 50_000, "max_latency_ms": 1.5},
                           run_dir="runs/my run", reproduce=REPRODUCE)
    assert [(e["trial"], e["roles"]) for e in recs] == [
        (3, ["knee"]),
        (1, ["most accurate", "best under max_latency_ms 1.5"]),  # the front trial wins the tie with trial 2
        (6, ["best under max_params 50,000"]),
    ]
    knee, best, small = recs
    assert knee["command"] == "kdstudy reproduce 'runs/my run' --knee"
    assert best["command"] == "kdstudy reproduce 'runs/my run' --trial 1"
    assert (knee["confirmed"], knee["n_seeds"], knee["test_acc_mean"], knee["test_acc_std"]) == (True, 3, 89.0, 0.5)
    assert (best["confirmed"], best["n_seeds"], best["test_acc_mean"], best["test_acc"]) == (False, 1, None, 94.0)
    assert (best["latency_ms_bs1"], best["latency"], best["values"]["latency_ms_bs1"]) == (1.4, "re-measured", 1.4)
    assert (small["latency_ms_bs1"], small["latency"]) == (0.9, "search")
    assert best["reproduced"]["within_one_std"] is False and best["reproduced"]["difference"] == -1.0
    assert knee["reproduced"] is None and knee["config"] == "w0.5 kd T3.2 a0.4 l1s@0.30 fp32"
    assert "(3 seeds)" in knee["line"] and "(one seed)" in best["line"] and "NOT within one std" in best["line"]
    for e in recs:
        assert not any(isinstance(v, float) and math.isnan(v) for v in e.values())


def test_no_complete_trial_recommends_nothing() -> None:
    df = table()
    df["state"] = df["state"].replace({"COMPLETE": "EARLY_STOPPED"})
    assert recommendations(df, OBJECTIVES, {}, {}) == []
    assert answer_lines([], [])[0].startswith("No complete searched trial")


def test_baseline_verdicts_prefer_seed_means_and_carry_the_export_command() -> None:
    verdicts = baseline_verdicts(BENCHMARK, run_dir="runs/demo")
    assert verdicts == [{"name": "seed_recipe", "trial": 0, "seed_means": True, "dominated_by": [1],
                         "line": "seed_recipe: seed-mean line",
                         "command": "kdstudy reproduce runs/demo --baseline seed_recipe"}]
    unconfirmed = baseline_verdicts({**BENCHMARK, "confirmed": None})
    assert unconfirmed[0]["line"] == "seed_recipe: search line" and not unconfirmed[0]["seed_means"]
    recs = recommendations(table(), OBJECTIVES, BENCHMARK, {}, run_dir="runs/demo")
    text = "\n".join(answer_lines(recs, verdicts))
    assert "kdstudy reproduce runs/demo --knee" in text and "seed-mean line" in text

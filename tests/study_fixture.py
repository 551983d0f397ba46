"""A small synthetic run directory with a REAL Optuna SQLite study, laid out as in docs/ARCHITECTURE.md.

Objectives: val_acc (maximize), params (minimize), latency_ms_bs1 (minimize). Trials, by number:
  0 none            90 % 100k params 2.0 ms  front
  1 l1_structured   88 %  50k        1.2 ms  front
  2 l1_structured   85 %  25k        0.8 ms  front
  3 l1_unstructured 87 % 100k (50k nonzero) 2.1 ms  dominated by 0
  4 l1_structured   84 %  60k        1.3 ms  dominated by 1
  5 none            90 % 100k        2.0 ms  duplicate of 0: on the front too
  6 early stopped (PRUNED), partial val_acc 95
  7 failed, error `<script>alert(1)</script>`
  8 infeasible (Optuna FAIL), params over the limit
References: teacher, student_ce, student_kd.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

OBJECTIVES = [{"name": "val_acc", "direction": "maximize"}, {"name": "params", "direction": "minimize"},
              {"name": "latency_ms_bs1", "direction": "minimize"}]
XSS = "<script>alert(1)</script>"
INFEASIBLE_REASON = "params 2,100,000 > max_params 1,000,000 (constraint from space.yaml)"
# number -> (prune_method, prune_ratio, val_acc, params, nonzero_params, latency_ms_bs1)
COMPLETE = {
    0: ("none", None, 90.0, 100_000, 100_000, 2.0),
    1: ("l1_structured", 0.3, 88.0, 50_000, 50_000, 1.2),
    2: ("l1_structured", 0.5, 85.0, 25_000, 25_000, 0.8),
    3: ("l1_unstructured", 0.5, 87.0, 100_000, 50_000, 2.1),
    4: ("l1_structured", 0.3, 84.0, 60_000, 60_000, 1.3),
    5: ("none", None, 90.0, 100_000, 100_000, 2.0),
}
FRONT = [0, 1, 2, 5]
REFERENCE_METRICS = {
    "teacher": (93.0, 270_000, 3.0),
    "student_ce": (86.0, 100_000, 2.0),
    "student_kd": (88.5, 100_000, 2.0),
}
DISTRIBUTIONS = {
    "temperature": FloatDistribution(1.0, 10.0),
    "alpha": FloatDistribution(0.0, 1.0),
    "prune_method": CategoricalDistribution(["none", "l1_structured", "l1_unstructured"]),
    "prune_ratio": FloatDistribution(0.1, 0.8),
}


def _metrics(val_acc: float, params: int, nonzero: int, latency: float, config: dict) -> dict:
    return {
        "val_acc": val_acc, "test_acc": val_acc - 0.5, "params": params, "nonzero_params": nonzero,
        "macs": params * 40, "latency_ms_bs1": latency, "latency_iqr_ms_bs1": latency / 20, "latency_threads": 2,
        "throughput_ips": 1000.0 / latency, "throughput_batch": 256, "size_bytes": params * 4,
        "teacher_params": 270_000, "compression": 270_000 / nonzero, "params_reduction": 1 - params / 100_000,
        "macs_reduction": 1 - params / 100_000, "wall_s": 12.5, "epochs_done": 9, "device": "cpu", **config,
    }


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def make_run_dir(root: Path, *, n_complete: int = 6, references: bool = True, leaked_early_stop: bool = False,
                 reproduce: bool = False) -> Path:
    """Build RUN_DIR under `root` and return it. `n_complete` keeps only the first n complete trials.

    `leaked_early_stop` adds trial 9: Optuna COMPLETE but user_attrs status early_stopped, with the best values of
    all (what a scheduler that reports stopped trials as complete leaves behind).
    """
    run_dir = Path(root) / "run"
    run_dir.mkdir(parents=True)
    url = f"sqlite:///{run_dir / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="fixture-study", storage=url,
                                directions=[o["direction"] for o in OBJECTIVES])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o["name"] for o in OBJECTIVES])

    def add(number: int, state: TrialState, params: dict, status: str, metrics: dict | None,
            values: list[float] | None = None, error: str | None = None) -> None:
        config = {"temperature": params["temperature"], "alpha": params["alpha"],
                  "prune_method": params["prune_method"], "prune_ratio": params.get("prune_ratio", 0.0),
                  "student_arch": "resnet8"}
        attrs = {"status": status, "trial_dir": f"trials/{number}", "config": config}
        if metrics is not None:
            attrs["metrics"] = metrics
            _write_json(run_dir / "trials" / str(number) / "metrics.json", metrics)
        if error is not None:
            attrs["error"] = error
        dists = {k: DISTRIBUTIONS[k] for k in params}
        study.add_trial(create_trial(state=state, params=params, distributions=dists, user_attrs=attrs,
                                     values=values))

    number = 0
    for n, (method, ratio, acc, params, nonzero, lat) in list(COMPLETE.items())[:n_complete]:
        p = {"temperature": 1.0 + n, "alpha": 0.1 * (n + 1), "prune_method": method}
        if ratio is not None:
            p["prune_ratio"] = ratio
        add(n, TrialState.COMPLETE, p, "complete", _metrics(acc, params, nonzero, lat, {"prune_method": method}),
            values=[acc, params, lat])
        number = n + 1
    add(number, TrialState.PRUNED, {"temperature": 2.5, "alpha": 0.5, "prune_method": "none"}, "early_stopped",
        {**_metrics(95.0, 100_000, 100_000, 2.0, {"prune_method": "none"}), "epochs_done": 2})
    add(number + 1, TrialState.FAIL, {"temperature": 3.5, "alpha": 0.3, "prune_method": "l1_structured",
                                      "prune_ratio": 0.7}, "failed", None, error=XSS)
    add(number + 2, TrialState.FAIL, {"temperature": 4.5, "alpha": 0.9, "prune_method": "none"}, "infeasible",
        {"params": 2_100_000, "prune_method": "none"}, error=INFEASIBLE_REASON)
    if leaked_early_stop:
        add(number + 3, TrialState.COMPLETE, {"temperature": 5.5, "alpha": 0.2, "prune_method": "none"},
            "early_stopped", _metrics(99.0, 10_000, 10_000, 0.1, {"prune_method": "none"}),
            values=[99.0, 10_000, 0.1])

    if references:
        for name, (acc, params, lat) in REFERENCE_METRICS.items():
            _write_json(run_dir / "references" / name / "metrics.json",
                        _metrics(acc, params, params, lat, {"prune_method": "none"}))
    if reproduce:
        _write_json(run_dir / "reproduce" / "1" / "summary.json", {
            "trial": 1, "seeds": [0, 1, 2], "test_acc_mean": 87.4, "test_acc_std": 0.3, "val_acc_search": 88.0,
            "params": 50_000, "macs": 2_000_000, "latency_ms_bs1": 1.2})

    (run_dir / "space.yaml").write_text("# fixture space\ntemperature: {low: 1, high: 10}\n")
    _write_json(run_dir / "study.json", {
        "name": "fixture", "study_name": "fixture-study", "storage": url, "space_file": "search_spaces/<fixture>.yaml",
        "objectives": OBJECTIVES, "constraints": {"max_params": 1_000_000}, "sampler": "TPESampler", "seed": 0,
        "scheduler": "fifo", "dataset": "digits", "device": "cpu", "threads": 2,
        "versions": {"optuna": optuna.__version__, "python": "3.11"},
        "teacher": {"arch": "resnet20", "val_acc": 93.0, "path": "references/teacher/model.pt"},
    })
    return run_dir

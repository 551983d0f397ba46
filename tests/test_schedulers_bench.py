"""`devbench.schedulers`: reading runs and the common-normalisation comparison, on synthetic Optuna studies
in real SQLite storage laid out like the runner's (no Ray run here)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from benchmarks import pareto
from devbench.schedulers import format_table, read_run, summarize, write_variant

OBJECTIVES = [{"name": "val_acc", "direction": "maximize"}, {"name": "nonzero_params", "direction": "minimize"},
              {"name": "latency_ms_bs1", "direction": "minimize"}]
T0 = datetime(2026, 1, 1, 12, 0, 0)
TOTAL = 20  # epochs 15 + finetune_epochs 5
DIST = {"width_mult": CategoricalDistribution([0.25, 0.5, 1.0])}


def _trial(kind: str, start_s: float, end_s: float, values=None, at: int | None = None, leak: bool = False):
    """One finished trial that started and ended start_s / end_s seconds after T0 (create_trial stamps "now";
    add_trial stores the template's times)."""
    t = _make_trial(kind, values, at, leak)
    t.datetime_start, t.datetime_complete = T0 + timedelta(seconds=start_s), T0 + timedelta(seconds=end_s)
    return t


def _make_trial(kind: str, values, at: int | None, leak: bool):
    """A finished trial with the user_attrs the runner's searcher writes."""
    common = {"params": {"width_mult": 0.5}, "distributions": DIST}
    if kind == "complete":
        metrics = dict(zip([o["name"] for o in OBJECTIVES], values, strict=True))
        metrics.update(epoch=TOTAL, epochs_done=TOTAL, status="complete")
        return create_trial(state=TrialState.COMPLETE, values=values, **common,
                            user_attrs={"status": "complete", "metrics": metrics, "trial_dir": "trials/x"})
    if kind == "pruned":
        attrs = {"status": "early_stopped", "metrics": {"val_acc": 50.0, "epoch": at}, "early_stopped_at_epoch": at}
        if leak:  # what a searcher that reports stopped trials as finished would leave: COMPLETE, partial values
            return create_trial(state=TrialState.COMPLETE, values=[99.0, 10.0, 0.1], **common, user_attrs=attrs)
        return create_trial(state=TrialState.PRUNED, **common, user_attrs=attrs)
    status = "infeasible" if kind == "infeasible" else "failed"
    return create_trial(state=TrialState.FAIL, **common,
                        user_attrs={"status": status, "error": "x", "metrics": {"nonzero_params": 1}})


def _run(root: Path, name: str, scheduler: str, seed: int, trials: list) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    url = f"sqlite:///{run_dir / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=url, directions=[o["direction"] for o in OBJECTIVES])
    for t in trials:
        study.add_trial(t)
    meta = {"name": name, "study_name": name, "storage": url, "objectives": OBJECTIVES, "scheduler": scheduler,
            "seed": seed, "trials": len(trials), "base_config": {"epochs": 15, "finetune_epochs": 5},
            "finished": "2026-01-01 12:10:00"}
    (run_dir / "study.json").write_text(json.dumps(meta))
    return run_dir


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    a = [80.0, 1000.0, 1.0]
    b = [90.0, 4000.0, 2.0]
    big = [95.0, 20000.0, 4.0]  # the largest cost of all runs: sets the common range
    return {
        "none": _run(tmp_path, "sched-none-s0", "none", 0, [
            _trial("complete", 0, 10, a), _trial("complete", 1, 12, b), _trial("complete", 10, 30, big),
            _trial("infeasible", 12, 12.5)]),
        "asha": _run(tmp_path, "sched-asha-s0", "asha", 0, [
            _trial("complete", 0, 10, b), _trial("pruned", 1, 3, at=4), _trial("pruned", 3, 6, at=12),
            _trial("failed", 6, 7)]),
        "mo_asha": _run(tmp_path, "sched-mo_asha-s0", "mo_asha", 0, [
            _trial("complete", 5, 15, a), _trial("complete", 6, 16, b), _trial("pruned", 15, 16, at=4)]),
    }


def test_read_run_counts_epochs_wall_time(runs: dict[str, Path]) -> None:
    r = read_run(runs["asha"])
    assert (r["complete"], r["pruned"], r["infeasible"], r["failed"]) == (1, 2, 0, 1)
    assert r["epochs"] == TOTAL + 4 + 12 + 0
    assert r["wall_s"] == pytest.approx(10.0)  # first start 0 s, last end 10 s
    assert r["values"] == [[90.0, 4000.0, 2.0]] and r["leaks"] == []
    none = read_run(runs["none"])
    assert none["epochs"] == 3 * TOTAL and none["infeasible"] == 1 and none["wall_s"] == pytest.approx(30.0)
    mo = read_run(runs["mo_asha"])
    assert mo["epochs"] == 2 * TOTAL + 4 and mo["wall_s"] == pytest.approx(11.0)


def test_common_normalisation_makes_hypervolumes_comparable(runs: dict[str, Path]) -> None:
    records = [read_run(p, scheduler=s, seed=0) for s, p in runs.items()]
    summary = summarize(records)
    names = [o["name"] for o in OBJECTIVES]
    dirs = [o["direction"] for o in OBJECTIVES]
    union = np.array([v for r in records for v in r["values"]])
    norm = pareto.normalization(names, dirs, union)
    # the ranges come from all runs: the asha and mo_asha runs never saw the 20,000-parameter model
    assert summary["normalization"][1]["range"] == pytest.approx([0.0, 22000.0])
    hv = {r["scheduler"]: r["hypervolume"] for r in summary["runs"]}
    for r in records:
        assert hv[r["scheduler"]] == pytest.approx(pareto.normalized_hypervolume(np.array(r["values"]), norm))
    # asha's front {b} is a subset of mo_asha's {a, b}, itself a subset of none's {a, b, big}
    assert 0 < hv["asha"] < hv["mo_asha"] < hv["none"]
    # a run's own normalisation would give a different (incomparable) number
    own = pareto.normalization(names, dirs, np.array(records[1]["values"]))
    assert pareto.normalized_hypervolume(np.array(records[1]["values"]), own) != pytest.approx(hv["asha"])

    mo = summary["schedulers"]["mo_asha"]
    assert mo["per_seed"]["0"]["epochs"] == 44
    assert mo["per_seed"]["0"]["hv_per_kepoch"] == pytest.approx(1000 * hv["mo_asha"] / 44)
    assert list(summary["schedulers"]) == ["none", "asha", "mo_asha"]
    table = format_table(summary)
    assert "mo_asha" in table and "HV/1k ep" in table


def test_means_over_seeds(tmp_path: Path) -> None:
    a, b = [80.0, 1000.0, 1.0], [90.0, 4000.0, 2.0]
    r0 = read_run(_run(tmp_path, "s0", "none", 0, [_trial("complete", 0, 10, a)]))
    r1 = read_run(_run(tmp_path, "s1", "none", 1, [_trial("complete", 0, 20, a), _trial("complete", 0, 20, b)]))
    summary = summarize([r0, r1])
    block = summary["schedulers"]["none"]
    hvs = [r["hypervolume"] for r in summary["runs"]]
    assert block["mean"]["hypervolume"]["mean"] == pytest.approx(sum(hvs) / 2)
    assert block["mean"]["epochs"]["mean"] == pytest.approx(30.0)
    assert block["mean"]["wall_s"]["mean"] == pytest.approx(15.0)
    assert block["mean"]["complete"]["std"] == pytest.approx(np.std([1, 2], ddof=1))
    assert set(block["per_seed"]) == {"0", "1"}


def test_leak_check_flags_an_early_stopped_trial_told_complete(tmp_path: Path) -> None:
    leaky = read_run(_run(tmp_path, "sched-asha-s0", "asha", 0, [
        _trial("complete", 0, 10, [90.0, 4000.0, 2.0]), _trial("pruned", 1, 3, at=4, leak=True)]))
    assert len(leaky["leaks"]) == 1 and "trial 1" in leaky["leaks"][0]
    summary = summarize([leaky])
    assert summary["schedulers"]["asha"]["leaks"]

    # Ray's side: a trial whose last Ray result is still "running" (stopped) must not be COMPLETE in Optuna
    run = _run(tmp_path, "sched-asha-s1", "asha", 1, [_trial("complete", 0, 10, [90.0, 4000.0, 2.0])])
    tdir = run / "ray" / "tune" / "search_trainable_0"
    tdir.mkdir(parents=True)
    (tdir / "result.json").write_text(json.dumps({"trial_number": 0, "epoch": 4, "status": "running"}) + "\n")
    assert any("Ray stopped it at epoch 4" in p for p in read_run(run)["leaks"])


def test_write_variant_replaces_scheduler_and_seed_only(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    src = root / "search_spaces" / "demo.yaml"
    path = write_variant(src, "asha", 7, tmp_path)
    assert path.name == "sched-asha-s7.yaml"
    new, old = yaml.safe_load(path.read_text()), yaml.safe_load(src.read_text())
    assert new["search"]["scheduler"] == "asha" and new["search"]["seed"] == 7
    new["search"].update(scheduler=old["search"]["scheduler"], seed=old["search"]["seed"])
    assert new == old
    text = path.read_text()
    assert write_variant(src, "asha", 7, tmp_path).read_text() == text  # stable: a rerun resumes the same study


def test_none_cut_at_the_early_stopping_budget(runs: dict[str, Path]) -> None:
    records = [read_run(p, scheduler=s, seed=0) for s, p in runs.items()]
    summary = summarize(records)
    cut = {c["scheduler"]: c for c in summary["none_at_equal_epochs"]}
    hv = {r["scheduler"]: r["hypervolume"] for r in summary["runs"]}
    names = [o["name"] for o in OBJECTIVES]
    norm = pareto.normalization(names, [o["direction"] for o in OBJECTIVES],
                                np.array([v for r in records for v in r["values"]]))
    # asha trained 36 epochs: none's first trial to finish (a, 20 epochs) fits, the second would make 40
    assert (cut["asha"]["epochs"], cut["asha"]["none_trials"]) == (36, 1)
    assert cut["asha"]["none_hypervolume"] == pytest.approx(
        pareto.normalized_hypervolume(np.array([[80.0, 1000.0, 1.0]]), norm))
    # mo_asha trained 44: a, b and the infeasible trial (0 epochs) fit; its front is exactly {a, b}
    assert (cut["mo_asha"]["epochs"], cut["mo_asha"]["none_trials"]) == (44, 3)
    assert cut["mo_asha"]["none_hypervolume"] == pytest.approx(hv["mo_asha"])
    assert "none cut at the same epochs" in format_table(summary)


def test_cli_refuses_a_missing_space_and_a_runs_dir_of_another_study(tmp_path: Path, capsys) -> None:
    from conftest import write_space

    from devbench.schedulers import main, run_name

    assert main([str(tmp_path / "nope.yaml"), "--runs-dir", str(tmp_path / "r")]) == 2
    assert "no such search space file" in capsys.readouterr().err
    space = write_space(tmp_path / "s.yaml")
    run = tmp_path / "r" / run_name("none", 0)
    run.mkdir(parents=True)
    (run / "study.json").write_text(json.dumps({"trials": 999, "finished": "yesterday"}))  # another study
    (run / "space.yaml").write_text("name: other\n")
    assert main([str(space), "--runs-dir", str(tmp_path / "r"), "--schedulers", "none"]) == 2
    err = capsys.readouterr().err
    assert "holds a study of another space or trial count" in err and "Traceback" not in err

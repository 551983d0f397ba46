"""`python -m benchmarks`: results table, front, hypervolume and latency re-measurement on a real Optuna study."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from study_fixture import FRONT, INFEASIBLE_REASON, OBJECTIVES, XSS, make_run_dir

from benchmarks import latency, pareto
from benchmarks.__main__ import main
from benchmarks.collect import prune_kind, read_results, run_benchmarks
from study.core.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"log": lambda msg: None}


def test_results_table_states_references_and_kinds(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path)
    summary = run_benchmarks(run, remeasure=False, **QUIET)
    df = read_results(run)
    trials = df[df["state"] != "REFERENCE"].set_index("number")
    assert trials["state"].to_dict() == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE", 3: "COMPLETE", 4: "COMPLETE",
                                         5: "COMPLETE", 6: "EARLY_STOPPED", 7: "FAIL", 8: "INFEASIBLE"}
    assert trials.loc[7, "error"] == XSS and trials.loc[8, "error"] == INFEASIBLE_REASON
    assert trials.loc[3, "prune_kind"] == "unstructured" and "no latency gain" in trials.loc[3, "note"]
    assert trials.loc[1, "prune_kind"] == "structured" and trials.loc[0, "prune_kind"] == "unpruned"
    assert pd.isna(trials.loc[1, "note"])
    assert trials.loc[3, "nonzero_params"] == 50_000 and trials.loc[3, "params"] == 100_000
    assert {"param_temperature", "param_alpha", "param_prune_method", "param_prune_ratio", "wall_s"} <= set(df.columns)
    assert trials.loc[2, "param_prune_ratio"] == 0.5 and pd.isna(trials.loc[0, "param_prune_ratio"])
    refs = df[df["state"] == "REFERENCE"]
    assert sorted(refs["reference"]) == ["student_ce", "student_kd", "teacher"]
    assert refs["number"].isna().all() and not refs["on_front"].any()

    # Front: only COMPLETE trials; the duplicate trials 0 and 5 are both kept; early-stopped 95 % is not on it.
    assert sorted(trials.index[trials["on_front"]]) == FRONT
    front_csv = pd.read_csv(run / "pareto.csv")
    assert sorted(front_csv["number"]) == FRONT and list(front_csv.columns) == list(df.columns)

    bench = json.loads((run / "benchmark.json").read_text())
    assert bench["counts"] == {"COMPLETE": 6, "EARLY_STOPPED": 1, "INFEASIBLE": 1, "FAIL": 1, "REFERENCE": 3}
    assert bench["pareto_trials"] == summary["pareto_trials"] and sorted(bench["pareto_trials"]) == FRONT
    assert bench["front_matches_optuna"] and bench["optuna_best_trials"] == FRONT
    assert bench["remeasure"] is None
    assert [o["name"] for o in bench["objectives"]] == [o["name"] for o in OBJECTIVES]
    # Reference point: accuracy 0 %, costs 1.1 x the largest over COMPLETE trials and references (teacher).
    assert bench["reference_point_raw"] == pytest.approx([0.0, 1.1 * 270_000, 1.1 * 3.0])
    assert bench["reference_point_normalized"] == [1.0, 1.0, 1.0]
    # Hypervolume by hand: normalise the front and compare with Optuna's WFG (or our own, already tested).
    pts = np.array([[90, 100_000, 2.0], [88, 50_000, 1.2], [85, 25_000, 0.8]], dtype=float)
    loss = np.column_stack([1 - pts[:, 0] / 100, pts[:, 1] / 297_000, pts[:, 2] / 3.3])
    assert bench["hypervolume"] == pytest.approx(pareto.hypervolume(loss, np.ones(3)))
    series = bench["hypervolume_over_trials"]
    assert [s["trial"] for s in series] == list(range(9))
    assert series[-1]["hypervolume"] == pytest.approx(bench["hypervolume"])
    assert set(bench["importances"]) == {"val_acc", "params", "latency_ms_bs1"}


def test_leaked_early_stop_is_not_on_front(tmp_path: Path) -> None:
    """A trial Optuna holds as COMPLETE whose status says early_stopped must not pollute the front."""
    run = make_run_dir(tmp_path, leaked_early_stop=True)
    notes: list[str] = []
    bench = run_benchmarks(run, remeasure=False, log=notes.append)
    df = read_results(run).set_index("number")
    assert df.loc[9, "state"] == "EARLY_STOPPED" and not df.loc[9, "on_front"]
    assert sorted(bench["pareto_trials"]) == FRONT
    assert 9 in bench["optuna_best_trials"] and not bench["front_matches_optuna"]
    assert any("best_trials" in n for n in notes)


def test_optuna_pruned_reads_as_early_stopped_in_old_studies_and_old_tables(tmp_path: Path) -> None:
    """Optuna keeps PRUNED; our tables say EARLY_STOPPED, also for a trial told before the status attribute existed
    and for a results.csv written before the name changed."""
    from benchmarks.collect import _trial_row

    old = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={}, distributions={})
    assert _trial_row(old, tmp_path, OBJECTIVES, QUIET["log"])["state"] == "EARLY_STOPPED"
    run = make_run_dir(tmp_path / "run")
    run_benchmarks(run, remeasure=False, **QUIET)
    table = (run / "results.csv").read_text()
    (run / "results.csv").write_text(table.replace("EARLY_STOPPED", "PRUNED"))
    assert read_results(run).set_index("number").loc[6, "state"] == "EARLY_STOPPED"


def test_missing_references_are_skipped_with_a_note(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, references=False, n_complete=1)
    notes: list[str] = []
    bench = run_benchmarks(run, remeasure=False, log=notes.append)
    assert "REFERENCE" not in bench["counts"]
    assert sum("reference" in n and "skipped" in n for n in notes) == 3
    assert bench["importances"] == {} and "at least 2 complete trials" in bench["importances_note"]


@pytest.mark.parametrize(("method", "kind"), [("none", "unpruned"), ("l1_structured", "structured"),
                                              ("l2_structured", "structured"), ("l1_unstructured", "unstructured"),
                                              (None, "unknown"), ("magic", "unknown")])
def test_prune_kind(method: str | None, kind: str) -> None:
    assert prune_kind(method) == kind


class FakeModel:
    def __init__(self, name: str, ms: float) -> None:
        self.name, self.ms = name, ms


def test_remeasure_interleaves_front_and_references(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path)
    (run / "trials" / "2" / "model.pt").write_text("broken")  # trial 2's checkpoint cannot be loaded
    calls: list[tuple[str, int, int]] = []

    def load(path: Path) -> tuple[FakeModel, dict]:
        path = Path(path)
        if path.parent.name == "2":
            raise CheckpointError(f"{path}: not a readable kdstudy checkpoint")
        ms = {"teacher": 3.0}.get(path.parent.name, 1.0)
        return FakeModel(f"{path.parent.parent.name}/{path.parent.name}", ms), {"input_shape": [1, 8, 8]}

    def measure(model: FakeModel, shape: tuple, batch_size: int = 1, threads: int | None = None, warmup: int = 10,
                repeats: int = 50) -> dict:
        assert shape == (1, 8, 8) and batch_size == 1 and threads == 3
        calls.append((model.name, warmup, repeats))
        return {"median_ms": model.ms, "iqr_ms": 0.1, "threads": 3, "batch_size": 1, "device": "cpu"}

    def throughput(model: FakeModel, shape: tuple, batch_size: int = 256, threads: int | None = None,
                   repeats: int = 5) -> dict:
        assert batch_size == 32
        return {"images_per_s": 1000.0 / model.ms, "batch_size": batch_size, "threads": 3}

    notes: list[str] = []
    bench = run_benchmarks(run, log=notes.append, remeasure_kwargs={
        "rounds": 3, "repeats": 4, "threads": 3, "throughput_batch": 32,
        "load_model": load, "measure_latency": measure, "measure_throughput": throughput})
    models = ["trials/0", "trials/1", "trials/5", "references/teacher", "references/student_ce",
              "references/student_kd"]
    # One warm-up call per model, then 3 rounds in which every model runs once, in rotating order.
    assert [c[0] for c in calls[:6]] == models and all(c[2] == 1 for c in calls[:6])
    timed = [c[0] for c in calls[6:]]
    assert len(timed) == 18 and all(sorted(timed[k:k + 6]) == sorted(models) for k in (0, 6, 12))
    assert timed[:6] != timed[6:12]
    assert any("trial 2" in n and "not re-measured" in n for n in notes)

    df = read_results(run)
    done = df[df[latency.LATENCY_COL].notna()]
    assert sorted(done["trial_dir"]) == sorted(models)
    teacher = df[df["reference"] == "teacher"].iloc[0]
    assert teacher[latency.LATENCY_COL] == 3.0 and teacher[latency.IQR_COL] == pytest.approx(0.1)
    assert teacher[latency.THROUGHPUT_COL] == pytest.approx(1000 / 3)
    assert pd.isna(df.set_index("number").loc[2, latency.LATENCY_COL])  # on the front, but unreadable
    rm = json.loads((run / "benchmark.json").read_text())["remeasure"]
    assert rm["device"] == "cpu" and rm["threads"] == 3 and rm["batch_sizes"] == [1, 32]
    assert bench["remeasure"]["rounds"] == 3


def test_remeasure_with_real_study_models(tmp_path: Path) -> None:
    """Real checkpoints through study.models.checkpoint / study.measure.timing."""
    import torch

    from study.models import checkpoint
    from study.models import families as models
    paths = {}
    for name, width in (("small", 0.25), ("wide", 0.5)):
        torch.manual_seed(0)
        model = models.build_model("resnet8", num_classes=10, in_channels=1, width_mult=width)
        paths[name] = tmp_path / name / "model.pt"
        checkpoint.save_model(paths[name], model, {"arch": "resnet8", "num_classes": 10, "in_channels": 1,
                                                   "width_mult": width, "input_shape": [1, 8, 8]})
    res, info = latency.remeasure(paths, rounds=2, warmup=1, repeats=3, threads=1, throughput_batch=4, **QUIET)
    assert set(res) == {"small", "wide"} and info["threads"] == 1 and info["device"] == "cpu"
    for r in res.values():
        assert r[latency.LATENCY_COL] > 0 and r[latency.IQR_COL] >= 0 and r[latency.THROUGHPUT_COL] > 0


def test_cli_prints_front_and_reference_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run_dir(tmp_path)
    assert main([str(run), "--no-remeasure"]) == 0
    out = capsys.readouterr().out
    assert "Pareto front (4 trials)" in out and "raw reference val_acc=0, params=297000" in out
    front_lines = [ln.split() for ln in out.splitlines() if ln.strip()[:1].isdigit()]
    assert sorted(int(ln[0]) for ln in front_lines) == FRONT


def test_cli_user_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", str(tmp_path / "nope")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "study.json not found" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_moved_database_is_found_and_wrong_study_name_is_a_user_error(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path)
    meta = json.loads((run / "study.json").read_text())
    meta["storage"] = "sqlite:////elsewhere/optuna.db"  # the run directory was copied from another machine
    (run / "study.json").write_text(json.dumps(meta))
    assert main([str(run), "--no-remeasure"]) == 0
    assert not Path("/elsewhere/optuna.db").exists()
    meta["study_name"] = "other"
    (run / "study.json").write_text(json.dumps(meta))
    assert main([str(run), "--no-remeasure"]) == 2
    assert len(optuna.get_all_study_summaries(f"sqlite:///{run / 'optuna.db'}")) == 1


def test_remeasure_uses_the_thread_count_the_search_timed_with(tmp_path: Path) -> None:
    from benchmarks.collect import study_latency_threads, timed_threads
    from study.search.plan import StudyPlan

    def plan(**keys):
        return StudyPlan.from_json(keys)

    assert study_latency_threads(plan(base_config={"threads": 1})) == 1
    assert study_latency_threads(plan(base_config={"threads": 0})) is None
    assert study_latency_threads(plan()) is None
    trials = pd.DataFrame({"state": ["COMPLETE", "COMPLETE", "EARLY_STOPPED", "REFERENCE"],
                           "latency_threads": [2, 2, 2, 16]})
    # threads: 0 in the config: what the trials recorded (Ray's per-worker thread count), not the driver's
    assert timed_threads(trials, plan(base_config={"threads": 0})) == 2
    assert timed_threads(pd.DataFrame({"state": ["COMPLETE"]}), plan(base_config={"threads": 1})) == 1
    run = make_run_dir(tmp_path)  # its trials recorded latency_threads 2
    meta = json.loads((run / "study.json").read_text())
    (run / "study.json").write_text(json.dumps({**meta, "base_config": {"threads": 0}}))
    seen: set = set()

    def load(path: Path) -> tuple[FakeModel, dict]:
        return FakeModel(str(path), 1.0), {"input_shape": [1, 8, 8]}

    def measure(model, shape, batch_size=1, threads=None, warmup=10, repeats=50) -> dict:
        seen.add(threads)
        return {"median_ms": 1.0, "iqr_ms": 0.1, "threads": threads, "batch_size": 1, "device": "cpu"}

    def throughput(model, shape, batch_size=256, threads=None, repeats=5) -> dict:
        seen.add(threads)
        return {"images_per_s": 10.0, "batch_size": batch_size, "threads": threads}

    run_benchmarks(run, log=lambda m: None, remeasure_kwargs={
        "rounds": 1, "repeats": 1, "load_model": load, "measure_latency": measure, "measure_throughput": throughput})
    assert seen == {2}

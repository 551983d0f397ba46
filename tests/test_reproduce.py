"""`python -m study reproduce`: the rank rule on a synthetic study, then a real tiny study reproduced and exported."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_TRIAL, write_space
from study_fixture import make_run_dir

from study.core.errors import UserError
from study.core.io import code_version
from study.reproduce.rerun import check_against_study, choose, pareto_front, reproduce, select_trial, trial_config
from study.search.plan import StudyPlan
from study.search.results import load_study_meta, load_study_plan, open_study

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- rank rule
@pytest.fixture
def synthetic(tmp_path):
    """Fixture study: front 0, 1, 2, 5 (0 and 5 tie); 9 is COMPLETE in Optuna but was early-stopped."""
    run = make_run_dir(tmp_path, leaked_early_stop=True)
    return run, pareto_front(open_study(run, load_study_plan(run)), run)


def test_front_excludes_unfinished_trials_and_follows_the_rank_rule(synthetic):
    run, front = synthetic
    # 9 dominates everything with partial values; Optuna's best_trials would be [9] alone.
    assert [t.number for t in front] == [0, 5, 1, 2]  # val_acc 90, 90 (tie -> lower number), 88, 85
    assert [select_trial(front, run, rank=k).number for k in (1, 2, 3, 4)] == [0, 5, 1, 2]


def test_budget_filters_use_the_search_measurements(synthetic):
    run, front = synthetic
    assert select_trial(front, run, rank=1, max_latency_ms=1.5).number == 1
    assert select_trial(front, run, rank=2, max_latency_ms=1.5).number == 2
    assert select_trial(front, run, rank=1, max_params=30_000).number == 2
    with pytest.raises(UserError, match=r"no trial of the Pareto front .* latency_ms_bs1 <= 0.5"):
        select_trial(front, run, rank=1, max_latency_ms=0.5)


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 5}, r"--rank 5 is out of range.*--rank 1 to 4"),
    ({"rank": 0}, r"--rank 0 is out of range"),
    ({"trial": 3}, r"trial 3 is not on the Pareto front.*0, 5, 1, 2"),
    ({"trial": 6}, r"trial 6 is not on the Pareto front"),  # early stopped (PRUNED)
    ({"trial": 99}, r"trial 99 is not a trial of this study"),
    ({"trial": 1, "max_params": 1e5}, r"drop them when you give --trial"),
])
def test_bad_selection_names_the_run_and_the_fix(synthetic, kwargs, message):
    run, front = synthetic
    with pytest.raises(UserError, match=message) as exc:
        select_trial(front, run, all_numbers=set(range(10)), **kwargs)
    assert str(run) in str(exc.value) or "--trial" in str(exc.value)


def test_missing_config_is_never_resampled(synthetic):
    run, front = synthetic
    # The fixture's user_attrs["config"] is partial: filling the rest with defaults would be a different trial.
    with pytest.raises(UserError, match=r"trials/1/config.yaml is missing"):
        trial_config(run, front[2])


@pytest.mark.parametrize("args, message", [
    (["--trial", "999"], "trial 999 is not a trial of this study"),
    (["--trial", "7"], "trial 7 did not finish training (failed)"),
    (["--baseline", "nope"], "--baseline nope: no such baseline in this study; its baselines: none"),
    (["--knee"], "benchmark.json names no knee"),
])
def test_cli_error_is_one_line_without_traceback(synthetic, args, message):
    run, _ = synthetic
    p = subprocess.run([sys.executable, "-m", "study", "reproduce", str(run), *args], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and "Traceback" not in p.stderr and p.stdout == ""
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_selection_flags_are_mutually_exclusive(synthetic):
    run, _ = synthetic
    p = subprocess.run([sys.executable, "-m", "study", "reproduce", str(run), "--knee", "--trial", "1"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "not allowed with argument" in p.stderr


def _choose(run, **kwargs):
    lines: list[str] = []
    plan = load_study_plan(run)
    chosen, _ = choose(open_study(run, plan), run, plan, log=lines.append, **kwargs)
    return chosen, lines


def test_knee_is_the_trial_benchmark_json_names(synthetic):
    run, _ = synthetic
    (run / "benchmark.json").write_text(json.dumps({"knee": {"trial": 1, "distance": 0.3}}))
    chosen, lines = _choose(run, knee=True)
    assert (chosen.number, chosen.key, chosen.folder, lines) == (1, "1", "trials/1", [])
    (run / "benchmark.json").write_text(json.dumps({"knee": None}))
    with pytest.raises(UserError, match=r"names no knee.*python -m benchmarks"):
        _choose(run, knee=True)


def test_a_complete_trial_off_the_front_is_chosen_with_one_line(synthetic):
    run, _ = synthetic
    chosen, lines = _choose(run, trial=3)
    assert chosen.number == 3 and chosen.get("val_acc") == 87.0
    assert lines == ["trial 3 is not on the Pareto front (front: 0, 5, 1, 2); reproducing and exporting it anyway"]
    chosen, lines = _choose(run, trial=1)  # on the front: no line
    assert chosen.number == 1 and lines == []
    for number, how in ((6, "early_stopped"), (8, "infeasible"), (9, "early_stopped")):
        with pytest.raises(UserError, match=rf"trial {number} did not finish training \({how}\).*0, 1, 2, 3, 4, 5\."):
            _choose(run, trial=number)


def test_baselines_enqueued_and_beside_the_search(synthetic):
    from study.config import TrialConfig, save_config

    run, _ = synthetic
    meta = json.loads((run / "study.json").read_text())
    meta["baselines"] = {"seed_recipe": {"values": {}, "trial": 2},
                         "no_kd": {"values": {}, "outside_space": "width_mult 1.0 outside [0.25, 0.5]"}}
    (run / "study.json").write_text(json.dumps(meta))
    chosen, lines = _choose(run, baseline="seed_recipe")  # enqueued: the search trial it became
    assert chosen.number == 2 and lines == []
    with pytest.raises(UserError, match=r"baselines/no_kd/metrics.json is missing or unreadable: baseline no_kd did "
                                        r"not finish training beside the search"):
        _choose(run, baseline="no_kd")
    (run / "baselines" / "no_kd").mkdir(parents=True)
    (run / "baselines" / "no_kd" / "metrics.json").write_text(json.dumps({"val_acc": 86.0, "test_acc": 85.0}))
    chosen, lines = _choose(run, baseline="no_kd")
    assert (chosen.number, chosen.baseline, chosen.key, chosen.label) == (None, "no_kd", "baseline-no_kd",
                                                                          "baseline no_kd")
    with pytest.raises(UserError, match=r"baselines/no_kd/config.yaml is missing"):
        trial_config(run, chosen)
    save_config(TrialConfig(kd_loss="ce", width_mult=1.0), run / "baselines" / "no_kd" / "config.yaml")
    assert trial_config(run, chosen).kd_loss == "ce"
    with pytest.raises(UserError, match=r"--baseline nope: no such baseline in this study; its baselines: "
                                        r"seed_recipe, no_kd\."):
        _choose(run, baseline="nope")


# ---------------------------------------------------------------------------------------------- real study
@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, ray_session):
    """A 2-trial study on digits (real Ray and Optuna), its rank-1 trial reproduced with 2 seeds. Its trials are
    int8-quantized and timed on ONNX Runtime, so the export has model.onnx and model_int8.onnx."""
    from study.search.driver import run_search

    root = tmp_path_factory.mktemp("reproduce")
    space = write_space(root / "tiny.yaml", search={"sampler": "tpe", "seed": 0, "trials": 2, "concurrent": 2,
                                                    "scheduler": "none"},
                        trial={**TINY_TRIAL, "latency_backend": "onnxruntime", "quantize": "int8",
                               "calibration_images": 64})
    run_dir = run_search(str(space), name="tiny", runs_dir=str(root / "runs"), log=lambda *_: None)
    lines: list[str] = []
    summary = reproduce(run_dir, rank=1, seeds=2, log=lines.append)
    return run_dir, summary, lines


@pytest.mark.slow
def test_summary_has_both_seeds_with_mean_and_std(reproduced):
    run_dir, summary, lines = reproduced
    out = run_dir / "reproduce" / str(summary["trial"])
    assert summary["seeds"] == [TINY_TRIAL["seed"], TINY_TRIAL["seed"] + 1]
    accs = [r["test_acc"] for r in summary["per_seed"]]
    assert [r["seed"] for r in summary["per_seed"]] == summary["seeds"]
    assert summary["test_acc_mean"] == pytest.approx(statistics.fmean(accs))
    assert summary["test_acc_std"] == pytest.approx(statistics.stdev(accs))
    for key in ("trial", "seeds", "test_acc_mean", "test_acc_std", "val_acc_search", "params", "macs",
                "latency_ms_bs1", "diff_test_acc", "warnings"):
        assert summary[key] is not None, key
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    for s in summary["seeds"]:
        for name in ("config.yaml", "metrics.json", "model.pt", "reproduce.json"):
            assert (out / f"seed_{s}" / name).is_file(), (s, name)
    # Every seed keeps the study's train/validation split (the teacher never saw those validation images).
    for s in summary["seeds"]:
        seed_cfg = yaml.safe_load((out / f"seed_{s}" / "config.yaml").read_text())
        assert seed_cfg["seed"] == s and seed_cfg["split_seed"] == TINY_TRIAL["seed"]
    # Seed 0 is the search's own seed and budget: on the same machine it gives the search's numbers.
    assert summary["same_seed_val_acc_diff"] == pytest.approx(0.0, abs=1e-6)
    assert summary["per_seed"][0]["test_acc"] == pytest.approx(summary["test_acc_search"], abs=1e-6)
    # The study recorded its code version, data fingerprint and teacher sha256: same code, same data, same
    # teacher gives no data/teacher/code warning (differences are tested in test_differences_to_the_study_...).
    first_seed = next(i for i, line in enumerate(lines) if line.startswith("seed "))
    assert not [ln for ln in lines[:first_seed] if ln.startswith(("WARNING: data:", "WARNING: teacher:"))]
    meta = load_study_meta(run_dir)
    assert meta["data_fingerprint"] and meta["teacher"]["sha256"] and meta["versions"]["code_sha256"]


@pytest.mark.slow
def test_export_runs_in_a_fresh_process_with_torch_only(reproduced, tmp_path):
    from study.data.datasets import load_dataset
    from study.measure.export import normalise
    from study.models.checkpoint import load_model

    run_dir, summary, _ = reproduced
    out = run_dir / "reproduce" / str(summary["trial"])
    trained, _ = load_model(out / f"seed_{summary['seeds'][0]}" / "model.pt")
    ds = load_dataset("digits", "data")
    x = normalise(ds.test_x[-64:], ds.mean, ds.std)  # not the export's own example images
    with torch.inference_mode():
        expected = trained(x)
    torch.save(x, tmp_path / "inputs.pt")
    code = (
        "import sys, torch\n"
        f"m = torch.export.load({str(out / 'export' / 'model.pt2')!r}).module()\n"
        f"x = torch.load({str(tmp_path / 'inputs.pt')!r}, weights_only=True)\n"
        "with torch.no_grad():\n"
        f"    torch.save(m(x), {str(tmp_path / 'logits.pt')!r})\n"
        "assert not [k for k in sys.modules if k == 'study' or k.startswith(('study.', 'search_spaces'))]\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    got = torch.load(tmp_path / "logits.pt", weights_only=True)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.argmax(1), expected.argmax(1))

    # The bundled script works from anywhere, also with only torch.
    p = subprocess.run([sys.executable, str(out / "export" / "predict.py")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "OK" in p.stdout, p.stdout + p.stderr


@pytest.mark.slow
def test_onnx_export_runs_with_onnxruntime_and_numpy_only(reproduced, tmp_path):
    """model.onnx and model_int8.onnx with predict_onnx.py, run in a fresh process where importing torch fails."""
    import numpy as np

    from study.data.datasets import load_dataset

    run_dir, summary, _ = reproduced
    export = run_dir / "reproduce" / str(summary["trial"]) / "export"
    for name in ("model.onnx", "model_int8.onnx", "predict_onnx.py", "example_images.npy", "example_logits.npy",
                 "example_logits_int8.npy"):
        assert (export / name).is_file(), name
    onnx_info = summary["export"]["onnx"]
    assert onnx_info["max_abs_diff"] <= 1e-3 and set(onnx_info["latency_ms_bs1"]) == {"onnxruntime",
                                                                                       "onnxruntime-int8"}
    np.save(tmp_path / "images.npy", load_dataset("digits", "data").test_x[-20:].numpy())
    no_torch = ("import runpy, sys\nsys.modules['torch'] = None  # any `import torch` raises ImportError\n"
                "sys.argv = [sys.argv[1], *sys.argv[2:]]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = str(export / "predict_onnx.py")
    for args in ([], ["--int8"]):
        p = subprocess.run([sys.executable, "-c", no_torch, script, *args], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "OK" in p.stdout, p.stdout + p.stderr
    p = subprocess.run([sys.executable, "-c", no_torch, script, str(tmp_path / "images.npy"), "--int8"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    labels = [int(v) for v in p.stdout.split()]
    assert p.returncode == 0 and len(labels) == 20 and all(0 <= v < 10 for v in labels), p.stderr
    # the int8 predictions are the trial's own quantized model's: the same classes as the seed's model_int8.onnx
    from study.measure import onnx as onnx_backend
    from study.measure.export import normalise

    seed_dir = run_dir / "reproduce" / str(summary["trial"]) / f"seed_{summary['seeds'][0]}"
    ds = load_dataset("digits", "data")
    x = normalise(ds.test_x[-20:], ds.mean, ds.std)
    expected = onnx_backend.predict(onnx_backend.session(seed_dir / "model_int8.onnx", 1), x).argmax(1)
    assert labels == expected.tolist()


@pytest.mark.slow
def test_model_card_states_data_metrics_and_recipe(reproduced):
    run_dir, summary, _ = reproduced
    export = run_dir / "reproduce" / str(summary["trial"]) / "export"
    card = (export / "model_card.md").read_text()
    assert f"{summary['test_acc_mean']:.2f}% +- {summary['test_acc_std']:.2f}% (n=2)" in card
    for text in ("`digits`", "(pixels / 255 - mean) / std", "alpha * CE(student, y) + (1 - alpha) * D(student, teacher)",
                 "D = T^2 * KL",
                 "prune_ratio", "--rank 1 --seeds 2", "MACs (multiply-accumulates", "thread(s)",
                 "Latency per runtime, batch 1: PyTorch eager", "ONNX Runtime 1.", "ONNX Runtime int8",
                 "predict_onnx.py", "Accuracies are the int8 model's"):
        assert text in card, text
    meta = json.loads((export / "meta.json").read_text())
    assert meta["num_classes"] == 10 and meta["input_shape"] == [1, 8, 8] and len(meta["mean"]) == 1
    assert summary["export"]["max_abs_diff"] <= 1e-5 and summary["export"]["batch1_ok"]


@pytest.mark.slow
def test_differences_to_the_study_are_reported(reproduced):
    from study.data.datasets import load_dataset

    run_dir, summary, _ = reproduced
    meta = load_study_meta(run_dir)
    front = pareto_front(open_study(run_dir, StudyPlan.from_json(meta)), run_dir)
    chosen = next(t for t in front if t.number == summary["trial"])
    cfg = trial_config(run_dir, chosen)
    ds = load_dataset(cfg.dataset, cfg.data_root)
    code = code_version()
    teacher = Path(summary["teacher"]["path"])
    from study.teacher.model import load_teacher

    _, embedded = load_teacher(teacher, torch.device("cpu"))
    same = dict(meta, versions={**meta["versions"], "code_sha256": code["code_sha256"]})
    assert check_against_study(run_dir, StudyPlan.from_json(same), cfg, ds, chosen.metrics, teacher, embedded, code, "cpu") == []

    changed = dict(meta, num_classes=100, data_fingerprint="0" * 16, device="cuda",
                   teacher={**meta["teacher"], "val_acc": 12.5, "sha256": "f" * 64},
                   versions={**meta["versions"], "torch": "1.0.0", "code_sha256": "0" * 16})
    found = " ".join(check_against_study(run_dir, StudyPlan.from_json(changed), cfg, ds, chosen.metrics, teacher, embedded, code, "cpu"))
    for text in ("data: num_classes is 10 now but 100", "data: the data set's fingerprint", "teacher: ",
                 "was replaced", "sha256 differs", "code: torch is", "code: the project's source", "device: "):
        assert text in found, text
    missing = dict(meta, teacher={**meta["teacher"], "path": str(run_dir / "no-teacher.pt")})
    found = " ".join(check_against_study(run_dir, StudyPlan.from_json(missing), cfg, ds, chosen.metrics, None, None, code, "cpu"))
    assert "is missing; it will be retrained" in found


@pytest.mark.slow
def test_rerun_reuses_finished_seeds(reproduced):
    # Last in the module: it rewrites summary.json with one seed.
    run_dir, summary, _ = reproduced
    lines: list[str] = []
    again = reproduce(run_dir, trial=summary["trial"], seeds=1, export=False, log=lines.append)
    assert any(line.startswith(f"seed {summary['seeds'][0]} (1/1) reused") for line in lines)
    assert again["per_seed"][0] == summary["per_seed"][0]
    assert again["test_acc_std"] == 0.0 and again["std"].startswith("n=1")


def test_config_fields_added_since_the_study_are_named(tmp_path):
    from study.config import TrialConfig, save_config
    from study.reproduce.rerun import _unset_fields

    path = tmp_path / "config.yaml"
    save_config(TrialConfig(), path)
    assert _unset_fields(path) == []
    path.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith("precision:")))
    assert _unset_fields(path) == ["precision"]


@pytest.mark.parametrize("content", [b"[1, 2]", b"\xff{",  # not an object; not UTF-8
                                     b'{"storage": "postgresql://nobody@127.0.0.1:1/none", "study_name": "x"}'])
def test_reproduce_on_a_broken_run_dir_is_one_sentence(tmp_path, capsys, content):
    from study.cli import main

    (tmp_path / "study.json").write_bytes(content)
    assert main(["reproduce", str(tmp_path), "--rank", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "study.json" in err and "Traceback" not in err, err


@pytest.mark.slow
def test_a_failing_export_keeps_the_summary_and_the_earlier_export(reproduced, monkeypatch):
    import study.measure.export

    run_dir, summary, _ = reproduced
    out = run_dir / "reproduce" / str(summary["trial"])
    card = (out / "export" / "model_card.md").read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("torch.export could not trace this model")

    monkeypatch.setattr(study.measure.export, "export_model", broken)
    lines: list[str] = []
    try:
        again = reproduce(run_dir, rank=1, seeds=2, log=lines.append)  # seeds reused: only the export reruns
        on_disk = json.loads((out / "summary.json").read_text())
        assert again["export"] == on_disk["export"] == {"error": "RuntimeError: torch.export could not trace this "
                                                                 "model"}
        assert on_disk["test_acc_mean"] == summary["test_acc_mean"]
        assert any(line.startswith("export failed") for line in lines)
        assert (out / "export" / "model_card.md").read_text() == card  # the earlier export is untouched
        assert not list(out.glob(".export-*"))
    finally:  # leave the fixture's files as the other tests expect them
        (out / "summary.json").write_text(json.dumps(summary))


@pytest.mark.slow
def test_knee_reruns_the_trial_benchmark_json_names(reproduced):
    run_dir, summary, _ = reproduced
    out = run_dir / "reproduce" / str(summary["trial"])
    before = (out / "summary.json").read_text()
    (run_dir / "benchmark.json").write_text(json.dumps({"knee": {"trial": summary["trial"]}}))
    lines: list[str] = []
    try:
        again = reproduce(run_dir, knee=True, seeds=1, export=False, log=lines.append)  # its seed is reused
        assert again["trial"] == summary["trial"] and again["selected_by"] == "--knee" and again["on_front"]
        assert again["command"].startswith(f"kdstudy reproduce {run_dir} --knee --seeds 1")
        assert any(line.startswith(f"seed {summary['seeds'][0]} (1/1) reused") for line in lines)
    finally:  # leave the fixture's files as the other tests expect them
        (out / "summary.json").write_text(before)
        (run_dir / "benchmark.json").unlink()

"""One trial end to end on digits (real data, tiny budget), through the function and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_TRIAL

from study.config import make_config
from study.core.errors import UserError
from study.models.checkpoint import load_model
from study.trial.run import TrialHooks, execute_trial

REPO = Path(__file__).resolve().parents[1]
METRIC_KEYS = ("val_acc", "test_acc", "params", "nonzero_params", "macs", "latency_ms_bs1", "latency_iqr_ms_bs1",
               "latency_threads", "throughput_ips", "size_bytes", "teacher_params", "compression", "wall_s",
               "params_reduction", "macs_reduction")


class Watch(TrialHooks):
    """Records what each epoch's hook call got (default wants_checkpoint: never)."""

    def __init__(self):
        self.checkpoints: list = []

    def on_epoch(self, epoch, total, val_acc, log, ckpt):
        self.checkpoints.append(ckpt)


@pytest.fixture(scope="module")
def trials(tmp_path_factory):
    out = tmp_path_factory.mktemp("trials")
    watch = Watch()
    dense = execute_trial(make_config(TINY_TRIAL), out_dir=out / "dense", hooks=watch)
    pruned = execute_trial(make_config(TINY_TRIAL, {"prune_method": "l1_structured", "prune_ratio": 0.5}),
                       out_dir=out / "pruned")
    dense["_checkpoints_seen"] = watch.checkpoints
    return out, dense, pruned


def test_no_checkpoint_is_written_unless_the_hooks_ask(trials):
    _, dense, _ = trials
    assert dense["_checkpoints_seen"] == [None] * (TINY_TRIAL["epochs"] + TINY_TRIAL["finetune_epochs"])


def test_trial_writes_files_with_sane_values(trials):
    out, dense, _ = trials
    for name in ("config.yaml", "metrics.json", "model.pt", "epochs.csv"):
        assert (out / "dense" / name).exists(), name
    metrics = json.loads((out / "dense" / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in metrics, key
    assert metrics["val_acc"] > 50 and metrics["test_acc"] > 50  # 10 classes: chance is 10 %
    assert metrics["params"] == metrics["nonzero_params"] > 0
    assert metrics["compression"] > 1  # student smaller than the teacher
    assert metrics["latency_ms_bs1"] > 0 and metrics["latency_iqr_ms_bs1"] >= 0
    cfg = yaml.safe_load((out / "dense" / "config.yaml").read_text())
    # the saved config holds the resolved normalisation (auto without a teacher checkpoint: the data's own)
    assert make_config(cfg) == make_config(TINY_TRIAL, {"normalize": "dataset"})


def test_structured_pruning_shrinks_params_and_macs(trials):
    _, dense, pruned = trials
    assert pruned["params"] < 0.6 * dense["params"]
    assert pruned["macs"] < 0.6 * dense["macs"]
    assert pruned["params_reduction"] > 0.4
    assert pruned["val_acc"] > 30


def test_pruned_checkpoint_loads_with_its_shape_and_same_outputs(trials):
    out, _, pruned = trials
    model, meta = load_model(out / "pruned" / "model.pt")
    assert sum(p.numel() for p in model.parameters()) == pruned["params"]
    x = torch.randn(4, *meta["input_shape"])
    model2, _ = load_model(out / "pruned" / "model.pt")
    assert torch.equal(model(x), model2(x))


def test_resume_from_a_checkpoint_gives_the_same_result(tmp_path):
    cfg = make_config(TINY_TRIAL, {"prune_method": "l1_unstructured", "prune_ratio": 0.5, "epochs": 2})
    saved = {}

    class Keep(TrialHooks):
        def wants_checkpoint(self, epoch, total):
            return True

        def on_epoch(self, epoch, total, val_acc, log, ckpt):
            if epoch == 2:  # the first fine-tuning epoch: after pruning
                saved["dir"] = tmp_path / "ckpt"
                import shutil
                shutil.copytree(ckpt, saved["dir"])

    cfg2 = cfg.replace(finetune_epochs=2)
    full = execute_trial(cfg2, hooks=Keep())  # checkpoint after the first of two fine-tuning epochs

    class Resume(TrialHooks):
        def resume_dir(self):
            return saved["dir"]

    resumed = execute_trial(cfg2, hooks=Resume())
    assert full["nonzero_params"] == resumed["nonzero_params"]
    assert resumed["val_acc"] == pytest.approx(full["val_acc"], abs=1e-9)
    assert resumed["test_acc"] == pytest.approx(full["test_acc"], abs=1e-9)


def test_cli_trial_structured_vs_dense(tmp_path):
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({"trial": TINY_TRIAL}))
    def run(*sets, out):
        args = [sys.executable, "-m", "study", "trial", str(space), "--out", str(out)]
        for s in sets:
            args += ["--set", s]
        r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return json.loads((out / "metrics.json").read_text())
    dense = run(out=tmp_path / "d")
    pruned = run("prune_method=l2_structured", "prune_ratio=0.5", out=tmp_path / "p")
    assert pruned["params"] < dense["params"] and pruned["macs"] < dense["macs"]
    assert pruned["val_acc"] > 30


@pytest.mark.parametrize("space", ["cifar10.yaml", "cifar100.yaml", "tinyimagenet.yaml"])
def test_missing_data_is_one_clear_sentence(tmp_path, space):
    raw = yaml.safe_load((REPO / "search_spaces" / space).read_text())
    raw["trial"]["data_root"] = str(tmp_path / "nodata")
    p = tmp_path / space
    p.write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "study", "trial", str(p), "--out", str(tmp_path / "o")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and str(tmp_path / "nodata") in r.stderr
    assert "python -m study data" in r.stderr
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_bad_set_value_is_a_user_error():
    with pytest.raises(UserError, match="prune_ratio must be in"):
        make_config(TINY_TRIAL, {"prune_ratio": 1.5})


def test_per_epoch_validation_in_the_training_precision_agrees_with_fp32(trials):
    """train_phase validates each epoch under bf16 autocast + channels_last (when it trains that way); the final
    metrics use fp32. On a trained model the two agree to a few images."""
    from study.data.datasets import load_dataset
    from study.data.streaming import make_resident
    from study.training.loop import evaluate

    out, dense, _ = trials
    model, _ = load_model(out / "dense" / "model.pt")
    cfg = make_config(TINY_TRIAL)
    data = make_resident(load_dataset(cfg.dataset, cfg.data_root), cfg.val_size, cfg.val_split_seed,
                         torch.device("cpu"))
    fp32 = evaluate(model, data.val_x, data.val_y)
    assert fp32 == pytest.approx(dense["val_acc"])
    model.train().to(memory_format=torch.channels_last)
    bf16 = evaluate(model, data.val_x, data.val_y, dtype="bf16", channels_last=True)
    assert model.training  # mode restored
    assert abs(bf16 - fp32) <= 100 * 3 / len(data.val_y)  # at most 3 validation images change


def test_execute_trial_gives_the_caller_its_thread_count_back(tmp_path):
    from study.trial.run import execute_trial

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = make_config({**TINY_TRIAL, "kd_loss": "ce", "epochs": 1, "finetune_epochs": 0, "threads": 1})
        metrics = execute_trial(cfg, cache_dir=tmp_path)
        assert metrics["latency_threads"] == 1  # the trial ran with its own count
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_non_finite_weight_behind_a_finite_loss_stops_training(one_thread):
    """The loss of an epoch can be finite while a step left a weight nan (the last step, or a kernel writing
    garbage gradients: study.training.kernels); train_phase names the parameter instead of handing back a chance model."""
    from study.data.datasets import load_dataset
    from study.data.streaming import make_resident
    from study.models.families import build_model
    from study.training.loop import train_phase

    data = make_resident(load_dataset("digits", "data"), 0.2, 0, torch.device("cpu"))
    model = build_model("resnet8", 10, 1, 0.25)
    steps = []

    def poison() -> None:  # after the epoch's last step, as the bf16 defect did
        steps.append(1)
        if len(steps) == -(-data.train_x.shape[0] // 128):
            with torch.no_grad():
                model.layers[2][0].conv1.weight[0, 0, 0, 0] = float("nan")

    with pytest.raises(FloatingPointError, match=r"parameter layers\.2\.0\.conv1\.weight became non-finite in epoch 0"):
        train_phase(model, data, epochs=2, first_epoch=0, seed=0, lr=0.1, batch_size=128, weight_decay=5e-4,
                    teacher=None, temperature=1.0, alpha=1.0, after_step=poison)


def test_a_width_no_family_can_take_is_refused_before_anything_runs(tmp_path, capsys):
    """width_mult > 1 for a family whose width is scaled by pruning: one sentence from the config check, before the
    data, the teacher or the out folder (it used to fail after the teacher had trained)."""
    from conftest import write_space

    from study.cli import main

    space = write_space(tmp_path / "s.yaml", trial=TINY_TRIAL)
    out = tmp_path / "out"
    args = ["trial", str(space), "--set", "width_mult=5", "--set", "student_arch=torchvision:resnet18",
            "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "width_mult 5: student 'torchvision:resnet18' has no width knob" in err and "Traceback" not in err
    assert "must be <= 1" in err and sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_a_trial_that_fails_while_it_runs_leaves_its_out_folder_as_it_was(tmp_path):
    """execute_trial(stage=True) (the trial command): a failure after the config and epochs were written leaves an
    older run's folder exactly as it was, and no staging folder."""
    from study.trial.run import staged

    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("older\n")
    (out / "metrics.json").write_text("{}\n")

    def run(work: Path) -> None:
        (work / "config.yaml").write_text("new")
        (work / "epochs.csv").write_text("epoch\n0\n")
        raise RuntimeError("pruning failed half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        staged(out, run)
    assert {p.name: p.read_text() for p in out.iterdir()} == {"config.yaml": "older\n", "metrics.json": "{}\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staged_outputs_replace_an_older_run_whole(tmp_path):
    from study.trial.run import staged

    out = tmp_path / "t"
    out.mkdir()
    for name, text in (("config.yaml", "old"), ("model_int8.onnx", "old"), ("notes.txt", "mine")):
        (out / name).write_text(text)

    def run(work: Path) -> int:
        assert not (out / "metrics.json").exists()  # nothing moved before the run succeeds
        for name in ("config.yaml", "metrics.json", "model.pt"):
            (work / name).write_text("new")
        return 7

    assert staged(out, run) == 7
    assert {p.name: p.read_text() for p in out.iterdir()} == {  # the older run's int8 model is gone; others kept
        "config.yaml": "new", "metrics.json": "new", "model.pt": "new", "notes.txt": "mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]

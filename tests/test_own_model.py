"""Compress your own model: an ImageFolder of real JPEG / PNG files, the user's teacher (.pt2, state_dict),
torchvision and python: student families, and every bad input ending in one sentence with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from study.cli import main
from study.core.errors import DataError

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "owl")


def write_folder(root: Path, train: int = 12, test: int = 4, size: int = 32) -> Path:
    """3 classes, each image mostly its class's colour plus noise; JPEG and PNG; one grey PNG."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.full((size, size, 3), 40, np.uint8)
                img[..., c] = 200
                img = np.clip(img.astype(int) + rng.integers(-30, 30, img.shape), 0, 255).astype(np.uint8)
                if split == "train" and c == 0 and i == 0:
                    Image.fromarray(img[..., 0], "L").save(d / "grey.png")
                elif i % 2:
                    Image.fromarray(img).save(d / f"{i}.png")
                else:
                    Image.fromarray(img).save(d / f"{i}.jpg", quality=92)
    return root


def _space(path: Path, trial: dict, params: dict | None = None, **search) -> Path:
    space = {
        "name": path.stem,
        "trial": {"dataset": "imagefolder", "val_size": 6, "seed": 0, "epochs": 1, "finetune_epochs": 1,
                  "batch_size": 12, "device": "cpu", "threads": 1, "latency_repeats": 5, "throughput_batch": 8,
                  "teacher_epochs": 1, **trial},
        "params": params or {},
        "objectives": {"val_acc": "maximize", "params": "minimize"},
        "search": {"sampler": "random", "seed": 0, "trials": 2, "concurrent": 1, "scheduler": "none", **search},
        "resources": {"cpus_per_trial": 1},
        "baselines": [],
    }
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def teachers(folder, tmp_path_factory) -> dict[str, Path]:
    """A tiny torchvision:resnet18 teacher trained on the folder, saved as a state_dict and as a .pt2."""
    import torchvision

    from study.data.datasets import load_dataset
    from study.data.streaming import make_resident
    from study.training.loop import train_phase

    out = tmp_path_factory.mktemp("teachers")
    ds = load_dataset("imagefolder", folder, image_size=16)
    data = make_resident(ds, 6, 0, torch.device("cpu"))
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    train_phase(model, data, epochs=2, first_epoch=0, seed=0, lr=0.05, batch_size=12, weight_decay=5e-4,
                teacher=None, temperature=1.0, alpha=1.0, label_smoothing=0.0, precision="fp32")
    model.eval()
    torch.save(model.state_dict(), out / "teacher_sd.pt")
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, out / "teacher.pt2")
    five = torchvision.models.resnet18(num_classes=5)
    torch.save(five.state_dict(), out / "five_classes.pt")
    (out / "notes.pt").write_text("not a checkpoint\n")
    return {"state_dict": out / "teacher_sd.pt", "pt2": out / "teacher.pt2", "five": out / "five_classes.pt",
            "text": out / "notes.pt"}


# ------------------------------------------------------------------------------------------------- data

def test_imagefolder_classes_grey_images_and_cache(tmp_path):
    from study.data.datasets import load_dataset

    root = write_folder(tmp_path / "imgs", train=4, test=2)
    logs: list[str] = []
    ds = load_dataset("imagefolder", root, cache_dir=tmp_path / "cache", log=logs.append)
    assert ds.classes == CLASSES and ds.num_classes == 3
    assert tuple(ds.train_x.shape[1:]) == (3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert sorted(ds.train_y.tolist()) == sorted([0] * 4 + [1] * 4 + [2] * 4) and len(ds.test_y) == 6
    # the grey image (cat/grey.png sorts after 1.png, 2.jpg, 3.png) became 3 equal channels
    grey = ds.train_x[3]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert any("decoding 18 images" in m for m in logs)
    logs.clear()
    again = load_dataset("imagefolder", root, cache_dir=tmp_path / "cache", log=logs.append)
    assert not logs and torch.equal(again.train_x, ds.train_x)  # the cache, not a decode
    time.sleep(0.01)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "train" / "dog" / "new.png")
    changed = load_dataset("imagefolder", root, cache_dir=tmp_path / "cache", log=logs.append)
    assert any("decoding 19 images" in m for m in logs) and len(changed.train_y) == 13
    resized = load_dataset("imagefolder", root, image_size=16, cache_dir=tmp_path / "cache")
    assert tuple(resized.train_x.shape[1:]) == (3, 16, 16)


def test_imagefolder_val_folder_is_the_validation_split(tmp_path):
    from study.data.datasets import load_dataset, split_train_val

    root = write_folder(tmp_path / "imgs", train=4, test=2)
    for c in CLASSES:
        (root / "val" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "val" / c / "a.png")
    ds = load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")
    tr_x, _, va_x, va_y = split_train_val(ds, 0.5, 0)
    assert len(tr_x) == 12 and va_y.tolist() == [0, 1, 2] and int(va_x.sum()) == 0
    # study.json's data_fingerprint: hashed once when decoded (stored with the cache), equal to hashing what was
    # loaded, val/ included (a changed val/ image is another data set)
    from study.core.io import arrays_sha256, dataset_arrays, dataset_sha256

    assert ds.info["sha256"] == dataset_sha256(ds) == arrays_sha256(dataset_arrays(ds))
    time.sleep(0.01)
    Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(root / "val" / CLASSES[0] / "a.png")
    again = load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")
    assert dataset_sha256(again) == arrays_sha256(dataset_arrays(again)) != dataset_sha256(ds)


@pytest.mark.parametrize("damage,message", [
    ("unreadable", "cannot read this image"),
    ("empty_class", "empty class folder"),
    ("missing_in_test", "lacks class folder(s) owl"),
    ("no_train", "no train/ folder"),
])
def test_imagefolder_errors_name_the_file(tmp_path, damage, message):
    from study.data.datasets import load_dataset

    root = write_folder(tmp_path / "imgs", train=3, test=2)
    if damage == "unreadable":
        (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    elif damage == "empty_class":
        for f in (root / "train" / "owl").iterdir():
            f.unlink()
    elif damage == "missing_in_test":
        for f in (root / "test" / "owl").iterdir():
            f.unlink()
        (root / "test" / "owl").rmdir()
    else:
        root = tmp_path / "elsewhere"
        root.mkdir()
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")
    assert message in str(err.value)
    if damage == "unreadable":
        assert "broken.jpg" in str(err.value)
        ds = load_dataset("imagefolder", root, skip_bad_images=True, cache_dir=tmp_path / "cache")
        assert ds.info["skipped_images"] == 1 and len(ds.train_y) == 9


def test_streaming_serves_the_same_batches_as_memory(folder):
    from study.data.datasets import load_dataset
    from study.data.streaming import StreamingData, make_data, make_resident
    from study.models.families import build_model
    from study.training.loop import epoch_schedule, evaluate

    ds = load_dataset("imagefolder", folder, image_size=16)
    for train_size in (0, 20):
        mem = make_resident(ds, 6, 0, torch.device("cpu"), train_size)
        disk = make_data(ds, 6, 0, torch.device("cpu"), train_size, max_resident_mb=0.01)
        assert isinstance(disk, StreamingData) and disk.train_x.shape == mem.train_x.shape
        n = mem.train_x.shape[0]
        _, dy, dx, flip = epoch_schedule(n, 1, 0, mem.pad, mem.hflip)
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:9]
        assert torch.equal(mem.views(idx, dy, dx, flip), disk.views(idx, dy, dx, flip))
        assert torch.equal(mem.val_x, disk.val_x[:]) and torch.equal(mem.test_x, disk.test_x[:])
        assert torch.equal(mem.train_y, disk.train_y)
        model = build_model("resnet8", 3, 3).eval()
        assert evaluate(model, mem.val_x, mem.val_y) == evaluate(model, disk.val_x, disk.val_y, batch_size=4)
    assert not isinstance(make_data(ds, 6, 0, torch.device("cpu"), max_resident_mb=100), StreamingData)


def test_python_dataset_from_an_import_string(tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(
        "import numpy as np\n"
        "def load(root):\n"
        "    rng = np.random.default_rng(0)\n"
        "    x = rng.integers(0, 255, (40, 12, 12), dtype=np.uint8)\n"
        "    y = np.arange(40) % 4\n"
        "    return x[:30], y[:30], x[30:], y[30:]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from study.data.datasets import load_dataset

    ds = load_dataset("python:my_data:load", tmp_path)
    assert ds.num_classes == 4 and tuple(ds.train_x.shape) == (30, 1, 12, 12) and len(ds.test_y) == 10


# ------------------------------------------------------------------------------------------------- models

@pytest.mark.parametrize("arch,width", [("torchvision:mobilenet_v3_small", 0.5), ("torchvision:resnet18", 0.5),
                                        ("torchvision:mobilenet_v2", 0.5), ("resnet8", 0.5)])
def test_families_scale_prune_count_and_reload(tmp_path, arch, width):
    from study.models.checkpoint import load_model, save_model
    from study.models.costs import count_params
    from study.models.families import build_model, model_spec
    from study.models.pruning import prune_model

    torch.manual_seed(0)
    full = build_model(arch, 3, 1, 1.0, (1, 16, 16))
    model = build_model(arch, 3, 1, width, (1, 16, 16))
    assert count_params(model) < 0.6 * count_params(full)  # width scales the model (knob or pruning)
    prune_model(model.eval(), "l1_structured", 0.3, torch.randn(1, 1, 16, 16))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3)
    meta = {"arch": arch, "num_classes": 3, "in_channels": 1, "width_mult": width, "input_shape": [1, 16, 16]}
    save_model(tmp_path / "m.pt", model, meta)
    back, _ = load_model(tmp_path / "m.pt")
    with torch.no_grad():
        assert torch.allclose(back(x), out, atol=1e-5)
    assert model_spec(arch).width == ("knob" if arch in ("resnet8", "torchvision:mobilenet_v2") else "prune")


def test_untraceable_family_is_one_sentence():
    from study.models.families import build_model
    from study.models.pruning import PruneError

    with pytest.raises(PruneError) as err:
        build_model("torchvision:shufflenet_v2_x1_0", 3, 3, 0.5, (3, 16, 16))
    assert "torch-pruning cannot follow" in str(err.value)



def test_an_untraceable_trial_fails_before_any_training_epoch(tmp_path):
    """The search prunes an untrained copy in architecture_costs before every trial (and its hooks say so);
    execute_trial called on its own (CLI, references, reproduce) checks by itself: both before the first epoch."""
    from study.config import TrialConfig
    from study.models.pruning import PruneError
    from study.search.trainable import RayHooks
    from study.trial.run import TrialHooks, architecture_costs, execute_trial

    cfg = TrialConfig(dataset="digits", student_arch="torchvision:shufflenet_v2_x1_0", width_mult=1.0,
                      prune_method="l1_structured", prune_ratio=0.3, kd_loss="ce", epochs=1, finetune_epochs=0,
                      threads=1, latency_backend="torch")
    with pytest.raises(PruneError, match="torch-pruning cannot follow"):
        architecture_costs(cfg, 10, (1, 8, 8), latency=False)
    assert RayHooks({"params": 1, "nonzero_params": 1, "macs": 1, "latency_ms_bs1": 1.0}).architecture_checked
    assert not TrialHooks.architecture_checked

    class Epochs(TrialHooks):
        seen: list = []

        def on_epoch(self, epoch, total_epochs, val_acc, log, checkpoint_dir):
            self.seen.append(epoch)

    hooks = Epochs()
    with pytest.raises(PruneError, match="torch-pruning cannot follow"):
        execute_trial(cfg, out_dir=tmp_path / "t", hooks=hooks)
    assert hooks.seen == []

# ------------------------------------------------------------------------------------------------- the study

def test_study_with_your_teacher_torchvision_student_report_and_reproduce(folder, teachers, tmp_path, ray_session):
    from study import run_study

    space = _space(tmp_path / "own.yaml", {
        "data_root": str(folder), "image_size": 16, "teacher_checkpoint": str(teachers["pt2"]),
        "student_arch": "torchvision:mobilenet_v3_small", "prune_method": "l1_structured", "prune_ratio": 0.3},
        params={"width_mult": {"type": "categorical", "choices": [0.5, 1.0]}})
    run_dir = run_study(str(space), name="own", runs_dir=str(tmp_path / "runs"), report=True, log=lambda m: None).run_dir
    meta = json.loads((run_dir / "study.json").read_text())
    assert meta["teacher"]["checkpoint"] == str(teachers["pt2"]) and len(meta["teacher"]["sha256"]) == 64
    assert meta["teacher"]["checkpoint_format"] == "export" and meta["num_classes"] == 3
    assert 0 <= meta["teacher"]["val_acc"] <= 100 and 0 <= meta["teacher"]["test_acc"] <= 100
    assert meta["checks"]["student_archs"] == ["torchvision:mobilenet_v3_small"]
    metrics = [json.loads(p.read_text()) for p in sorted((run_dir / "trials").glob("*/metrics.json"))]
    assert len(metrics) == 2 and all(m["prune_method"] == "l1_structured" for m in metrics)
    assert all(m["params_reduction"] > 0.2 for m in metrics)  # channels really removed
    assert (run_dir / "report.html").is_file() and (run_dir / "benchmark.json").is_file()
    assert json.loads((run_dir / "references" / "teacher" / "metrics.json").read_text())["val_acc"] == \
        meta["teacher"]["val_acc"]
    # the teacher reference of a .pt2 teacher: its model.pt names the program, so it loads (and is re-timed)
    from benchmarks.collect import run_benchmarks
    from study.models.checkpoint import load_model

    ref, ref_meta = load_model(run_dir / "references" / "teacher" / "model.pt")
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(ref(x), torch.export.load(str(teachers["pt2"])).module()(x))
    assert ref_meta["program"]["format"] == "export"
    for backend in ("onnxruntime", "torch"):
        run_benchmarks(run_dir, backend=backend, log=lambda m: None,
                       remeasure_kwargs={"rounds": 1, "repeats": 3, "throughput_batch": 8})
        rows = pd.read_csv(run_dir / "results.csv")
        assert rows.loc[rows["reference"] == "teacher", "latency_ms_bs1_remeasured"].notna().all(), backend

    assert main(["reproduce", str(run_dir), "--rank", "1", "--seeds", "2"]) == 0
    summary = json.loads(next((run_dir / "reproduce").glob("*/summary.json")).read_text())
    assert "error" not in summary["export"], summary["export"]
    export = next((run_dir / "reproduce").glob("*/export"))
    # the export needs torch alone: a fresh, isolated interpreter outside the repository runs predict.py
    done = subprocess.run([sys.executable, "-I", str(export / "predict.py")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr



def test_a_program_model_pt_refuses_a_changed_or_missing_program(teachers, tmp_path):
    import shutil

    from study.core.errors import CheckpointError
    from study.core.io import sha256_file
    from study.models.checkpoint import load_model, load_program, save_model

    prog = tmp_path / "teacher.pt2"
    shutil.copy(teachers["pt2"], prog)
    meta = {"arch": "export", "num_classes": 3, "in_channels": 3, "width_mult": 1.0, "input_shape": [3, 16, 16],
            "program": {"path": str(prog), "format": "export", "sha256": sha256_file(prog)}}
    save_model(tmp_path / "model.pt", load_program(prog, "export"), meta)
    assert load_model(tmp_path / "model.pt")[1]["program"]["path"] == str(prog)
    with open(prog, "ab") as f:
        f.write(b"x")
    with pytest.raises(CheckpointError, match="has changed since it was measured"):
        load_model(tmp_path / "model.pt")
    prog.unlink()
    with pytest.raises(CheckpointError, match="no longer exists"):
        load_model(tmp_path / "model.pt")

def test_state_dict_teacher_and_student_checkpoint_with_no_distillation_epochs(folder, teachers, tmp_path):
    space = _space(tmp_path / "sd.yaml", {
        "data_root": str(folder), "image_size": 16, "teacher_checkpoint": str(teachers["state_dict"]),
        "teacher_arch": "torchvision:resnet18", "student_arch": "resnet8", "prune_method": "none"})
    first = tmp_path / "first"
    assert main(["trial", str(space), "--out", str(first)]) == 0
    m = json.loads((first / "metrics.json").read_text())
    assert m["teacher_path"].endswith(".json") and m["student_init"] == "random"
    # distill-then-prune: start from that trained student, no distillation epochs, prune and fine-tune with KD
    second = tmp_path / "second"
    assert main(["trial", str(space), "--set", f"student_checkpoint={first / 'model.pt'}", "--set", "epochs=0",
                 "--set", "prune_method=l1_structured", "--set", "prune_ratio=0.5", "--out", str(second)]) == 0
    m2 = json.loads((second / "metrics.json").read_text())
    assert m2["student_init"] == "checkpoint" and m2["epochs_done"] == 1 and m2["params"] < m["params"]
    assert m2["params_dense"] == m["params"]  # pruned from the trained student's own shapes


def test_python_student_from_an_import_string_runs_in_ray_workers(folder, tmp_path):
    (tmp_path / "my_models.py").write_text(
        "import torch.nn as nn\n"
        "def build_student(num_classes, in_channels, width_mult):\n"
        "    c = max(4, int(16 * width_mult))\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))\n")
    # a plugin module registers a KD loss at import; `imports:` makes every process (Ray's workers) import it
    (tmp_path / "my_plugins.py").write_text(
        "from study import register_kd_loss\n"
        "from study.training.losses import kd_term\n"
        "@register_kd_loss('half_kd')\n"
        "def half_kd(s, t, y, temperature, **kw):\n"
        "    return 0.5 * kd_term(s, t, y, temperature)\n")
    space = _space(tmp_path / "py.yaml", {
        "data_root": str(folder), "image_size": 16, "imports": "my_plugins", "kd_loss": "half_kd",
        "teacher_arch": "resnet8", "student_arch": "python:my_models:build_student", "prune_method": "l1_structured",
        "prune_ratio": 0.25}, trials=1)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "study", "run", str(space), "--runs-dir", "runs", "--no-report"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    m = json.loads(next((tmp_path / "runs" / "py" / "trials").glob("*/metrics.json")).read_text())
    assert m["student_arch"] == "python:my_models:build_student" and m["params_reduction"] > 0
    assert m["kd_loss"] == "half_kd" and m["teacher_mode"] == "cache"  # the plugin's loss, with a teacher


@pytest.mark.parametrize("case,message", [
    ("wrong_classes", "the data set has 3 classes"),
    ("missing_checkpoint", "no such file"),
    ("not_a_model", "not a PyTorch checkpoint"),
    ("unreadable_image", "cannot read this image"),
    ("empty_class", "empty class folder"),
    ("untraceable", "torch-pruning cannot follow"),
    ("bad_import", "cannot import module 'no_such_pkg.models'"),
    ("bad_attribute", "has no attribute 'nothing_here'"),
    ("bad_signature", "model 'python:study.models.families:build_model': it takes (name, num_classes, in_channels, width_mult, input_shape) (missing a required argument: 'name')"),
])
def test_bad_inputs_are_one_sentence_exit_2_nothing_written(folder, teachers, tmp_path, capsys, case, message):
    root = folder
    trial = {"data_root": str(root), "image_size": 16, "teacher_checkpoint": str(teachers["pt2"]),
             "student_arch": "resnet8", "prune_method": "l1_structured", "prune_ratio": 0.3}
    if case == "wrong_classes":
        trial.update(teacher_checkpoint=str(teachers["five"]), teacher_arch="torchvision:resnet18")
    elif case == "missing_checkpoint":
        trial["teacher_checkpoint"] = str(tmp_path / "nowhere.pt2")
    elif case == "not_a_model":
        trial["teacher_checkpoint"] = str(teachers["text"])
    elif case in ("unreadable_image", "empty_class"):
        root = write_folder(tmp_path / "imgs", train=3, test=2)
        if case == "unreadable_image":
            (root / "train" / "cat" / "zz.png").write_bytes(b"\x89PNG truncated")
        else:
            (root / "train" / "zebra").mkdir()
        trial["data_root"] = str(root)
    elif case == "untraceable":
        trial["student_arch"] = "torchvision:shufflenet_v2_x1_0"
    elif case == "bad_import":
        trial["student_arch"] = "python:no_such_pkg.models:build"
    elif case == "bad_signature":  # a callable of another signature
        trial["student_arch"] = "python:study.models.families:build_model"
    else:
        trial["student_arch"] = "python:study.models.families:nothing_here"
    space = _space(tmp_path / "bad.yaml", trial)
    runs = tmp_path / "runs"
    assert main(["run", str(space), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert len([ln for ln in err.strip().splitlines() if ln.startswith("error:")]) == 1
    assert not runs.exists() or not any(runs.iterdir())


def test_timm_family_scales_prunes_and_reloads(tmp_path):
    """timm is optional: where it is installed, timm:NAME families work as torchvision's do."""
    pytest.importorskip("timm")
    from study.models.checkpoint import load_model, save_model
    from study.models.families import build_model, model_spec
    from study.models.pruning import prune_model

    model = build_model("timm:resnet18", 3, 1, 0.5, (1, 16, 16)).eval()
    prune_model(model, "l1_structured", 0.3, torch.randn(1, 1, 16, 16))
    meta = {"arch": "timm:resnet18", "num_classes": 3, "in_channels": 1, "width_mult": 0.5, "input_shape": [1, 16, 16]}
    save_model(tmp_path / "m.pt", model, meta)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(load_model(tmp_path / "m.pt")[0](x), model(x), atol=1e-5)
    assert model_spec("timm:resnet18").width == "prune"

"""Issue #22: the teacher sees the inputs it was trained on. A folder of grey photos written as RGB PNGs (classes
told apart by brightness, so a wrong normalisation costs the teacher most of its accuracy), a torchvision resnet18
trained on it OUTSIDE the project with torchvision's usual preprocessing (ToTensor + Normalize with ImageNet's
statistics), and studies that do not state the normalisation, state it, or state a wrong one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from study.cli import main
from study.data.datasets import IMAGENET_MEAN, IMAGENET_STD
from study.teacher.inputs import NEAR_CHANCE_SHARE

CLASSES = ("boot", "coat", "sandal", "shirt")
LEVELS = (30, 70, 110, 150)  # each class's mean grey level: dark photos, far from ImageNet's mean (0.485)
N_TEST = 10  # per class: one test image is 100 / 40 = 2.5 points


def write_grey_folder(root: Path, train: int = 30, test: int = N_TEST, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                grey = np.clip(LEVELS[c] + rng.normal(0, 25, (size, size)), 0, 255).astype(np.uint8)
                Image.fromarray(np.stack([grey] * 3, -1)).save(d / f"{i}.png")  # grey, written as RGB
    return root


def read_split(root: Path, split: str) -> tuple[list[Path], torch.Tensor]:
    files = [p for name in CLASSES for p in sorted((root / split / name).glob("*.png"))]
    labels = [c for c, name in enumerate(CLASSES) for _ in sorted((root / split / name).glob("*.png"))]
    return files, torch.tensor(labels)


def raw_uint8(files: list[Path]) -> torch.Tensor:
    """The images as a user has them: uint8 (N, 3, H, W), nothing applied."""
    return torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in files])


def torchvision_preprocess(files: list[Path]) -> torch.Tensor:
    import torchvision.transforms as T

    tf = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])  # torchvision's usual recipe
    return torch.stack([tf(Image.open(p).convert("RGB")) for p in files])


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One torch thread in this process (teacher training, scoring, the driver's cache pass): on a loaded 2-core
    machine two threads made the teacher's training here 9x slower (62 s instead of 7 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_grey_folder(tmp_path_factory.mktemp("grey"))


@pytest.fixture(scope="module")
def teacher(folder, tmp_path_factory) -> dict:
    """resnet18 trained outside the project (its own loop and preprocessing), saved as a state_dict; with its
    test accuracy under its own preprocessing."""
    import torchvision

    files, y = read_split(folder, "train")
    x = torchvision_preprocess(files)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=len(CLASSES))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(3):
        model.train()
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 16):
            idx = perm[i:i + 16]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    test_files, test_y = read_split(folder, "test")
    with torch.no_grad():
        pred = model(torchvision_preprocess(test_files)).argmax(1)
    path = tmp_path_factory.mktemp("teacher") / "resnet18_imagenet_norm.pt"
    torch.save(model.state_dict(), path)
    return {"path": path, "model": model, "test_acc": 100.0 * float((pred == test_y).float().mean()),
            "test_pred": pred}


def _space(path: Path, folder: Path, teacher: dict, **trial) -> Path:
    space = {
        "name": path.stem,
        "trial": {"dataset": "imagefolder", "data_root": str(folder), "image_size": 16, "val_size": 20, "seed": 0,
                  "teacher_checkpoint": str(teacher["path"]), "teacher_arch": "torchvision:resnet18",
                  "student_arch": "resnet8", "width_mult": 0.25, "epochs": 1, "finetune_epochs": 0,
                  "batch_size": 16, "device": "cpu", "threads": 1, "latency_repeats": 5, "throughput_batch": 8,
                  **trial},
        "params": {"alpha": {"type": "float", "low": 0.2, "high": 0.8}},
        "objectives": {"val_acc": "maximize", "params": "minimize"},
        "search": {"sampler": "random", "seed": 0, "trials": 1, "concurrent": 1, "scheduler": "none"},
        "resources": {"cpus_per_trial": 1},
        "baselines": [],
    }
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def _within_one_image(study_acc: float, own_acc: float) -> bool:
    return abs(study_acc - own_acc) <= 100.0 / (len(CLASSES) * N_TEST) + 1e-9


# ------------------------------------------------------------------------------------------------- studies

@pytest.mark.slow
def test_study_without_normalize_finds_the_teachers_own(folder, teacher, tmp_path, ray_session):
    from study import run_study

    assert teacher["test_acc"] >= 90  # the teacher is good under its own preprocessing: the test can fail
    logs: list[str] = []
    run_dir = run_study(str(_space(tmp_path / "auto.yaml", folder, teacher)), name="auto",
                        runs_dir=str(tmp_path / "runs"), report=False, log=logs.append).run_dir
    chosen = [m for m in logs if m.startswith("teacher normalisation: ")]
    assert len(chosen) == 1 and chosen[0].startswith("teacher normalisation: imagenet (val "), chosen
    assert "picked the best of 3" in chosen[0] and "dataset" in chosen[0] and "none" in chosen[0]
    # the folder's own statistics cost this teacher many points: said loudly
    assert any(m.startswith("WARNING: THE TEACHER'S ACCURACY DEPENDS ON ITS INPUT NORMALISATION") for m in logs)
    meta = json.loads((run_dir / "study.json").read_text())
    norm = meta["normalization"]
    assert norm["normalize"] == "imagenet" and norm["mean"] == list(IMAGENET_MEAN) and norm["chosen_by"].startswith(
        "auto")
    scores = norm["val_acc_by_candidate"]
    assert scores["imagenet"] > scores["dataset"] + 3 and scores["imagenet"] > scores["none"] + 3
    # what the study reports for the teacher = the teacher's own preprocessing on the same images
    assert _within_one_image(meta["teacher"]["test_acc"], teacher["test_acc"]), (meta["teacher"], teacher["test_acc"])
    assert meta["teacher"]["warnings"] == [] and meta["base_config"]["normalize"] == "imagenet"
    # students saw the same inputs: each trial's config, its metrics and the teacher-logit cache say so
    trial = next((run_dir / "trials").glob("*"))
    assert yaml.safe_load((trial / "config.yaml").read_text())["normalize"] == "imagenet"
    assert json.loads((trial / "metrics.json").read_text())["input_mean"] == pytest.approx(IMAGENET_MEAN)
    manifest = json.loads(Path(meta["teacher"]["logit_cache"]).with_suffix(".json").read_text())
    assert manifest["identity"]["input_mean"] == pytest.approx(IMAGENET_MEAN)
    ref = json.loads((run_dir / "references" / "student_ce" / "metrics.json").read_text())
    assert ref["normalize"] == "imagenet"


@pytest.mark.slow
def test_explicit_mean_std_study_and_its_export_predict_raw_images_alike(folder, teacher, tmp_path, ray_session):
    from study import run_study
    from study.measure.export import normalise
    from study.models.checkpoint import load_model
    from study.teacher.model import load_teacher

    stated = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    logs: list[str] = []
    run_dir = run_study(str(_space(tmp_path / "explicit.yaml", folder, teacher, normalize=stated)),
                        name="explicit", runs_dir=str(tmp_path / "runs"), report=False, log=logs.append).run_dir
    line = [m for m in logs if m.startswith("input normalisation: ")]
    assert len(line) == 1 and "stated in the space" in line[0] and "0.485" in line[0], line
    assert not any(m.startswith("teacher normalisation: ") for m in logs)  # stated: no scoring
    meta = json.loads((run_dir / "study.json").read_text())
    assert _within_one_image(meta["teacher"]["test_acc"], teacher["test_acc"]) and meta["teacher"]["warnings"] == []

    test_files, _ = read_split(folder, "test")
    images = raw_uint8(test_files)  # (40, 3, 16, 16) uint8, as the user has them
    # the teacher as the study loads it, fed these values, predicts what its own preprocessing predicts
    model, _ = load_teacher(meta["teacher"]["path"], torch.device("cpu"))
    with torch.no_grad():
        assert torch.equal(model(normalise(images, IMAGENET_MEAN, IMAGENET_STD)).argmax(1), teacher["test_pred"])

    assert main(["reproduce", str(run_dir), "--rank", "1", "--seeds", "1"]) == 0
    export = next((run_dir / "reproduce").glob("*/export"))
    export_meta = json.loads((export / "meta.json").read_text())
    assert export_meta["mean"] == pytest.approx(IMAGENET_MEAN) and export_meta["std"] == pytest.approx(IMAGENET_STD)
    assert "0.485,0.456,0.406/0.229,0.224,0.225" in export_meta["normalize"]
    assert "Input normalisation: 0.485,0.456,0.406/0.229,0.224,0.225" in (export / "model_card.md").read_text()
    for script in ("predict.py", "predict_onnx.py"):
        assert "Input normalisation: 0.485,0.456,0.406/0.229,0.224,0.225" in (export / script).read_text()
    student, _ = load_model(next((run_dir / "reproduce").glob("*/seed_*")) / "model.pt")
    with torch.no_grad():
        expected = student.eval()(normalise(images, IMAGENET_MEAN, IMAGENET_STD)).argmax(1).tolist()
    torch.save(images, tmp_path / "images.pt")
    np.save(tmp_path / "images.npy", images.numpy())
    for script, arg in (("predict.py", "images.pt"), ("predict_onnx.py", "images.npy")):
        done = subprocess.run([sys.executable, "-I", str(export / script), str(tmp_path / arg)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert [int(v) for v in done.stdout.split()] == expected, script


@pytest.mark.slow
def test_a_wrong_stated_normalisation_is_said_out_loud(folder, teacher, tmp_path, ray_session):
    from study import run_study

    logs: list[str] = []
    wrong = {"mean": [0.0, 0.0, 0.0], "std": [0.05, 0.05, 0.05]}  # not how this teacher was trained
    run_dir = run_study(str(_space(tmp_path / "wrong.yaml", folder, teacher, normalize=wrong)), name="wrong",
                        runs_dir=str(tmp_path / "runs"), report=True, log=logs.append).run_dir
    meta = json.loads((run_dir / "study.json").read_text())
    assert meta["teacher"]["val_acc"] < 35  # near chance (25 % for 4 classes)
    warned = [m for m in logs if m.startswith("WARNING: the teacher scores")]
    assert warned and "near chance" in warned[0], logs
    for cause in ("input normalisation", "input size", "class order", "boot, coat, sandal, shirt", "4 scores"):
        assert cause in warned[0], cause
    assert meta["teacher"]["warnings"] and meta["teacher"]["warnings"][0] == warned[0]
    report = (run_dir / "report.html").read_text()
    assert 'id="teacher-note"' in report and "near chance" in report
    assert report.index('id="teacher-note"') < report.index("near chance")  # beside the teacher's accuracy


# ------------------------------------------------------------------------------------------------- no Ray

def test_teacher_command_prints_the_accuracy_under_the_stated_normalisation(folder, teacher, tmp_path, capsys):
    space = _space(tmp_path / "t.yaml", folder, teacher, normalize="imagenet")
    assert main(["teacher", str(space)]) == 0
    out = capsys.readouterr().out
    test_acc = float(out.split("test_acc ")[1].split("%")[0])
    assert _within_one_image(test_acc, teacher["test_acc"]), out
    assert "input normalisation: imagenet (mean [0.485, 0.456, 0.406]" in out and "WARNING" not in out
    # raw 0-1 values: this teacher loses most of its accuracy, and where that puts it near chance the command says
    # so with the likely causes. How far it falls depends on the kernels that trained it: near chance (25-37.5 %
    # of 4 classes) natively, 50 % under the AVX2 caps here, so the warning is checked against the rule.
    assert main(["teacher", str(space), "--set", "normalize=none"]) == 0
    out = capsys.readouterr().out
    assert "input normalisation: none" in out, out
    val = float(out.split("val_acc ")[1].split("%")[0])
    assert val <= teacher["test_acc"] - 25, out
    near = val < 25.0 + NEAR_CHANCE_SHARE * 75.0
    assert ("WARNING: the teacher scores" in out and "near chance" in out) == near, out


def test_a_trial_run_alone_finds_the_normalisation_and_saves_it(folder, teacher, tmp_path, capsys):
    space = _space(tmp_path / "t.yaml", folder, teacher)
    assert main(["trial", str(space), "--out", str(tmp_path / "trial")]) == 0
    out = capsys.readouterr().out
    assert "teacher normalisation: imagenet (val " in out, out
    assert yaml.safe_load((tmp_path / "trial" / "config.yaml").read_text())["normalize"] == "imagenet"
    m = json.loads((tmp_path / "trial" / "metrics.json").read_text())
    assert m["input_std"] == pytest.approx(IMAGENET_STD) and _within_one_image(m["teacher_test_acc"],
                                                                               teacher["test_acc"])


@pytest.mark.parametrize("value,message", [
    ("imagenet_ish", "is not a normalisation"),
    ("{mean: [0.5, 0.5, 0.5]}", "needs exactly the keys mean and std"),
    ("{mean: [0.5, 0.5], std: [0.2]}", "2 mean value(s) but 1 std value(s)"),
    ("{mean: [0.5], std: [0]}", "std values must be > 0"),
])
def test_bad_normalize_values_are_one_sentence(tmp_path, capsys, value, message):
    from conftest import write_space

    space = write_space(tmp_path / "s.yaml")
    assert main(["teacher", str(space), "--set", f"normalize={value}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("error:") == 1, err


def test_normalisation_that_does_not_fit_the_channels_is_one_sentence(tmp_path, capsys):
    from conftest import write_space

    space = write_space(tmp_path / "s.yaml")  # digits: 1 channel
    assert main(["trial", str(space), "--set", "normalize=imagenet", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "1 channel(s)" in err and "Traceback" not in err, err
    # a study stops before it writes anything
    trial = yaml.safe_load(space.read_text())["trial"]
    study = write_space(tmp_path / "study.yaml", trial={**trial, "normalize": "imagenet"})
    runs = tmp_path / "runs"
    assert main(["run", str(study), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "1 channel(s)" in err and err.count("error:") == 1 and not (runs.exists() and any(runs.iterdir())), err


def test_normalisation_keys_the_teacher_and_its_logit_cache(folder, teacher):
    from study.config import make_config
    from study.data.datasets import load_dataset_for
    from study.data.streaming import make_resident
    from study.teacher.cache import cache_identity
    from study.teacher.model import teacher_key

    base = make_config({"dataset": "imagefolder", "data_root": str(folder), "image_size": 16, "val_size": 20,
                        "teacher_checkpoint": str(teacher["path"]), "teacher_arch": "torchvision:resnet18"})
    keys = {n: teacher_key(base.replace(normalize=n)) for n in ("dataset", "imagenet", "none")}
    assert len(set(keys.values())) == 3 and keys["dataset"] == teacher_key(base)  # auto keys as dataset did
    idents = []
    for n in ("dataset", "imagenet"):
        cfg = base.replace(normalize=n)
        data = make_resident(load_dataset_for(cfg), cfg.val_size, cfg.seed, torch.device("cpu"))
        idents.append(cache_identity(teacher["path"], data, dataset=cfg.dataset, val_size=cfg.val_size,
                                     seed=cfg.seed))
    assert idents[0] != idents[1] and idents[1]["input_mean"] == pytest.approx(IMAGENET_MEAN)


def test_configs_written_before_normalize_read_as_the_datas_own(tmp_path):
    from study.config import TrialConfig, load_config

    old = TrialConfig().to_dict()
    del old["normalize"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert load_config(tmp_path / "config.yaml").normalize == "dataset"
    assert TrialConfig().normalize == "auto"


def test_teacher_below_the_plain_student_is_warned_about():
    from reports.html import teacher_note
    from study.search.plan import StudyPlan
    from study.teacher.inputs import teacher_warnings

    info = {"val_acc": 60.0, "test_acc": 58.0, "num_classes": 4, "input_shape": [3, 16, 16],
            "normalization": {"normalize": "imagenet", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                              "chosen_by": "stated in the space (normalize)"}}
    assert teacher_warnings(info, classes=CLASSES) == []  # 60 % of 4 classes: not near chance
    assert teacher_warnings(info, classes=CLASSES, reference_val_acc=55.0) == []
    [w] = teacher_warnings(info, classes=CLASSES, image_size=16, reference_val_acc=70.0)
    assert "below the plain student" in w and "70.0 %" in w and "image_size 16" in w and "boot, coat" in w
    html = teacher_note(StudyPlan.from_json({"teacher": {**info, "arch": "torchvision:resnet18", "warnings": [w]}}))
    assert "val_acc 60 %" in html and "below the plain student" in html and "imagenet" in html


def test_a_resumed_study_keeps_the_normalisation_it_started_with(folder, teacher, tmp_path):
    from study.config import make_config
    from study.data.datasets import load_dataset_for
    from study.search.driver import _resolve_normalization
    from study.search.plan import StudyPlan

    trial = yaml.safe_load(_space(tmp_path / "r.yaml", folder, teacher).read_text())["trial"]
    base = make_config(trial)
    assert base.normalize == "auto"
    ds = load_dataset_for(base)
    logs: list[str] = []
    # started before normalize existed: its trials saw the data's own statistics, and the rest will too
    cfg, data, record = _resolve_normalization(base, ds, StudyPlan.from_json({}), logs.append)
    assert cfg.normalize == "dataset" and data.mean == ds.mean and record["chosen_by"].startswith("kept")
    old = StudyPlan.from_json({"normalization": {"normalize": "imagenet"}})
    cfg, data, record = _resolve_normalization(base, ds, old, logs.append)
    assert cfg.normalize == "imagenet" and data.mean == IMAGENET_MEAN and record["chosen_by"].startswith("kept")
    assert not any(m.startswith("teacher normalisation: ") for m in logs)  # no re-scoring on resume

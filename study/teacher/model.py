"""The teacher: trained once per (data set, split, architecture, budget, seed), cached on disk, loaded later."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
from filelock import FileLock

from study.config import TrialConfig
from study.core.errors import CheckpointError
from study.core.io import default_cache_dir, write_json_atomic
from study.data.datasets import load_dataset_for
from study.data.streaming import ResidentData, data_for
from study.models.checkpoint import load_model, save_model
from study.models.costs import count_params
from study.models.families import build_model
from study.training.loop import evaluate, train_phase

TEACHER_CODE_VERSION = 3  # bump when the teacher's training recipe changes, so old cached teachers are not reused

# Config fields that determine the teacher; anything else (student, KD, pruning) shares the same teacher.
TEACHER_KEY_FIELDS = ("dataset", "val_size", "seed", "teacher_precision", "teacher_arch", "teacher_width",
                      "teacher_epochs", "teacher_lr", "batch_size", "weight_decay", "label_smoothing")


def _resolved_precision(cfg: TrialConfig) -> str:
    from study.core.device import resolve_device
    from study.training.loop import resolve_precision

    try:
        return resolve_precision(cfg.teacher_precision, resolve_device(cfg.device))[0]
    except Exception:  # noqa: BLE001  an unavailable device fails later with its own clear message
        return cfg.teacher_precision


# Data sets the name alone identifies; any other (imagefolder, python:...) adds its folder and options to the key.
NAMED_DATASETS = ("digits", "fashion_mnist", "cifar10", "cifar100", "tinyimagenet")
SPLIT_KEY_FIELDS = ("dataset", "val_size", "seed")  # what a user teacher's record (its val/test accuracy) depends on


def _data_parts(cfg: TrialConfig) -> dict:
    parts: dict = {}
    if cfg.split_seed >= 0 and cfg.split_seed != cfg.seed:
        parts["split_seed"] = cfg.split_seed  # absent otherwise, so existing teacher keys stay valid
    if cfg.train_size:
        parts["train_size"] = cfg.train_size  # likewise: the teacher learns from the same subset as the students
    if cfg.dataset not in NAMED_DATASETS:
        parts.update(data_root=str(Path(cfg.data_root).expanduser().resolve()), image_size=cfg.image_size,
                     skip_bad_images=cfg.skip_bad_images)
    if cfg.normalize not in ("auto", "dataset"):  # absent for the data's own statistics: older keys stay valid
        parts["normalize"] = cfg.normalize
    return parts


def teacher_key(cfg: TrialConfig) -> str:
    """The cached teacher's file stem: readable parts (data set, architecture, width, epochs, seed) and a hash of
    every setting that changes the teacher, or, for the user's teacher, of its file and the split it is scored on."""
    if cfg.teacher_checkpoint:  # the user's teacher: named by its file's content and the split it is scored on
        from study.teacher.user import checkpoint_file, checkpoint_sha256

        sha = checkpoint_sha256(checkpoint_file(cfg.teacher_checkpoint))
        parts = {**{k: getattr(cfg, k) for k in SPLIT_KEY_FIELDS}, **_data_parts(cfg), "sha256": sha,
                 "arch": cfg.teacher_arch, "width": cfg.teacher_width}
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
        return f"{cfg.dataset.replace(':', '_')}-checkpoint-{sha[:12]}-{digest}"
    parts = {k: getattr(cfg, k) for k in TEACHER_KEY_FIELDS}
    parts["teacher_precision"] = _resolved_precision(cfg)  # "auto" and what it picks name the same teacher
    parts.update(_data_parts(cfg))
    parts["code"] = TEACHER_CODE_VERSION
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{cfg.dataset}-{cfg.teacher_arch}".replace(":", "_")
    return f"{name}-w{cfg.teacher_width:g}-e{cfg.teacher_epochs}-s{cfg.seed}-{digest}"


def teacher_path(cfg: TrialConfig, cache_dir: Path | None = None) -> Path:
    """The file a trial receives as its teacher: a trained teacher's .pt, or a user teacher's record (.json)."""
    suffix = ".json" if cfg.teacher_checkpoint else ".pt"
    return (cache_dir or default_cache_dir()) / "teachers" / f"{teacher_key(cfg)}{suffix}"


def train_teacher(cfg: TrialConfig, data: ResidentData, log=print) -> nn.Module:
    """Train cfg's teacher (teacher_arch, teacher_width, teacher_epochs, teacher_lr, teacher_precision) on data
    with cross-entropy, seeded by cfg.seed; return it in eval mode."""
    torch.manual_seed(cfg.seed)
    c = data.input_shape[0]
    model = build_model(cfg.teacher_arch, data.num_classes, c, cfg.teacher_width).to(data.train_x.device)

    def progress(epoch: int, val_acc: float, row: dict, _state: dict) -> None:
        log(f"  teacher epoch {epoch + 1}/{cfg.teacher_epochs}: loss {row['loss']:.3f}  val_acc {val_acc:.2f}%")

    train_phase(model, data, epochs=cfg.teacher_epochs, first_epoch=0, seed=cfg.seed, lr=cfg.teacher_lr,
                batch_size=cfg.batch_size, weight_decay=cfg.weight_decay, teacher=None, temperature=1.0,
                alpha=1.0, label_smoothing=cfg.label_smoothing, precision=cfg.teacher_precision, on_epoch=progress)
    model.eval()
    return model


def get_teacher(cfg: TrialConfig, device: torch.device, cache_dir: Path | None = None,
                data: ResidentData | None = None, log=print) -> tuple[nn.Module, dict]:
    """Load the cached teacher for cfg, training (and caching) it first if needed. Returns (model, info).
    normalize: auto is resolved first (study.teacher.inputs.resolve; callers that resolved it pass data)."""
    if cfg.normalize == "auto" and data is None:
        from study.teacher.inputs import resolve

        cfg, ds, _ = resolve(cfg, load_dataset_for(cfg, log), device, log)
        data = data_for(cfg, ds, device, log)
    path = teacher_path(cfg, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):  # concurrent trials wait for one training run
        if path.exists():
            return load_teacher(path, device)
        if data is None:
            ds = load_dataset_for(cfg, log)
            data = data_for(cfg, ds, device, log)
        if cfg.teacher_checkpoint:
            return _check_user_teacher(cfg, path, data, device, log)
        log(f"training teacher {cfg.teacher_arch} on {cfg.dataset} ({cfg.teacher_epochs} epochs) -> {path}")
        t0 = time.time()
        model = train_teacher(cfg, data, log)
        info = {
            "path": str(path), "key": teacher_key(cfg), "arch": cfg.teacher_arch, "width_mult": cfg.teacher_width,
            "dataset": cfg.dataset, "val_acc": evaluate(model, data.val_x, data.val_y),
            "test_acc": evaluate(model, data.test_x, data.test_y), "params": count_params(model),
            "train_s": round(time.time() - t0, 2), **{k: getattr(cfg, k) for k in TEACHER_KEY_FIELDS},
            "normalization": _normalization(cfg, data),
        }
        meta = {"arch": cfg.teacher_arch, "num_classes": data.num_classes, "in_channels": data.input_shape[0],
                "width_mult": cfg.teacher_width, "input_shape": list(data.input_shape), "teacher": info}
        save_model(path, model, meta)
        write_json_atomic(path.with_suffix(".json"), info)
        return model, info


def _normalization(cfg: TrialConfig, data: ResidentData) -> dict:
    """The input normalisation the teacher was scored (or trained) with."""
    return {"normalize": "dataset" if cfg.normalize == "auto" else cfg.normalize,
            "mean": [float(v) for v in data.mean.view(-1)], "std": [float(v) for v in data.std.view(-1)]}


def _check_user_teacher(cfg: TrialConfig, record: Path, data: ResidentData, device: torch.device,
                        log) -> tuple[nn.Module, dict]:
    """Load the user's teacher, check it fits the data, score it on the study's splits (with the normalisation
    the data carries), write its record."""
    from study.teacher import user as user_teacher

    ckpt = user_teacher.checkpoint_file(cfg.teacher_checkpoint)
    model, fmt = user_teacher.load_checkpoint(ckpt, cfg.teacher_arch, cfg.teacher_width, data.num_classes,
                                              data.input_shape, device)
    log(f"teacher: {ckpt} ({fmt}), checked on the data's shape; scoring it on the validation and test splits")
    info = {
        "path": str(record), "key": record.stem, "checkpoint": str(ckpt), "checkpoint_format": fmt,
        "sha256": user_teacher.checkpoint_sha256(ckpt), "arch": cfg.teacher_arch if fmt == "state_dict" else fmt,
        "width_mult": cfg.teacher_width, "dataset": cfg.dataset, "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
        "val_acc": evaluate(model, data.val_x, data.val_y), "test_acc": evaluate(model, data.test_x, data.test_y),
        "params": count_params(model), "train_s": 0.0,
        "normalization": _normalization(cfg, data),
    }
    user_teacher.write_record(record, ckpt, fmt, info)
    return model, info


def load_teacher(path: Path | str, device: torch.device) -> tuple[nn.Module, dict]:
    """(model in eval mode on `device`, its teacher info) from a teacher file: a trained teacher's .pt, or a user
    teacher's record (.json) whose checkpoint is loaded; CheckpointError for a file that is neither."""
    rec = None
    if Path(path).suffix == ".json":  # a user teacher's record (study.teacher.user); a trained teacher is a .pt
        from study.teacher import user as user_teacher

        rec = user_teacher.read_record(Path(path))
    if rec is not None:
        info = rec["teacher"]
        model, _ = user_teacher.load_checkpoint(Path(rec["checkpoint"]), info["arch"], info["width_mult"],
                                                info["num_classes"], tuple(info["input_shape"]), device)
        return model, info
    model, meta = load_model(path)
    if "teacher" not in meta:
        raise CheckpointError(f"{path}: this checkpoint is not a teacher written by `python -m study teacher`; "
                              "delete it or point to a teacher checkpoint.")
    return model.to(device).eval(), meta["teacher"]

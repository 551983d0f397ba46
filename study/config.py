"""The fully resolved configuration of one trial: a frozen dataclass that round-trips through YAML."""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from study.core.errors import UserError


@dataclass(frozen=True)
class TrialConfig:
    """Every setting of one trial, validated (make_config) and frozen; config.yaml holds it (save_config,
    load_config). The comment beside each field says what it means."""

    # modules to import before any name is resolved (comma-separated): their register_* calls then run in every
    # process, Ray workers included (study/core/registry.py)
    imports: str = ""
    # --- data ---
    # registry name: digits, fashion_mnist, cifar10, cifar100, tinyimagenet, imagefolder (data_root/train/<class>/),
    # or python:pkg.module:load (study/data/datasets.py)
    dataset: str = "digits"
    data_root: str = "data"  # folder holding the data set files (relative paths resolve against the CWD)
    image_size: int = 0  # imagefolder: resize every image to image_size x image_size on decode (0: keep; one size)
    skip_bad_images: bool = False  # imagefolder: skip (and count) unreadable images instead of stopping
    # the input normalisation every network sees, x = (pixels/255 - mean) / std: the teacher's (teacher/inputs.py).
    # auto: with teacher_checkpoint the best of dataset / imagenet / none for the teacher on the validation split,
    # else dataset; dataset: the data's own statistics; imagenet; none (0-1 values); or "m1,m2,m3/s1,s2,s3" (in
    # YAML also {mean: [...], std: [...]}, 0-1 scale). A trial's saved config holds the resolved value, never auto
    normalize: str = "auto"
    # training data kept in memory up to this many MB; above it batches stream from the decoded cache on disk
    # (study/data/streaming.py). 0: half of the memory available when the trial starts
    max_resident_mb: float = 0.0
    download: bool = False  # fetch a missing data set (cifar10/100, fashion_mnist, tinyimagenet; needs internet)
    val_size: float = 0.15  # validation split held out from the training set: fraction (<1) or count (>=1)
    seed: int = 0  # seeds the init, augmentation schedule and batch order (and the split, unless split_seed is set)
    split_seed: int = -1  # seed of the train/validation split; -1 uses `seed` (reproduce keeps the study's split)
    # training images used after the validation holdout: 0 all of them; N a stratified subset of N, drawn with the
    # split seed, the same for every trial, baseline, reference and the teacher (a study sized for a CPU budget)
    train_size: int = 0
    # --- teacher (trained once per key and cached on disk, unless teacher_checkpoint gives one) ---
    # a trained teacher: a torch.export program (.pt2), a TorchScript file, or a state_dict of teacher_arch
    # (loaded with weights_only=True); no teacher is trained (study/teacher/model.py)
    teacher_checkpoint: str = ""
    teacher_arch: str = "resnet20"  # model family (models/families.py): a name, torchvision:NAME, timm:NAME, python:...
    teacher_width: float = 1.0  # width multiplier of the teacher
    teacher_epochs: int = 15  # teacher training budget in epochs
    teacher_lr: float = 0.1  # teacher peak SGD learning rate (per batch of batch_size)
    # Teacher training precision: fp32 by default. The teacher is trained once and every trial learns from it;
    # on digits (`python -m devbench.precision`, 3 seeds) students of bf16-trained teachers tested 0.5 and 1.1
    # points lower in two runs (lower in every seed), while bf16 students of an fp32 teacher stayed within the
    # seed spread of fp32 students. bf16 / auto: faster.
    teacher_precision: str = "fp32"
    # --- student ---
    student_arch: str = "resnet8"  # model family (models/families.py): a name, torchvision:NAME, timm:NAME, python:...
    width_mult: float = 1.0  # scales the student's channels (a builder's knob, or uniform pruning: README)
    student_weights: str = ""  # initial weights for the student family: a state_dict file (matching names/shapes)
    # start from a trained student (a model.pt written by a trial or reproduce, pruned shapes kept); with
    # epochs 0 a trial only prunes and fine-tunes (the original project's distill-then-prune)
    student_checkpoint: str = ""
    # --- distillation ---
    kd_loss: str = "kd"  # alpha*CE + (1-alpha)*D; D = kd (T^2*KL), kd_ls (on standardised logits), dkd; ce: no teacher
    dkd_beta: float = 8.0  # dkd only: weight of the non-target-class term (DKD paper: 8 on CIFAR)
    temperature: float = 4.0  # KD softmax temperature T
    alpha: float = 0.5  # weight on the CE term; (1 - alpha) weighs the T^2-scaled KL term
    epochs: int = 6  # distillation epochs before pruning
    batch_size: int = 128  # training batch size
    lr: float = 0.1  # peak SGD learning rate (nesterov, momentum 0.9), warm-up then linear decay to 0
    weight_decay: float = 5e-4  # L2 weight decay on conv/linear weights (not on BN or biases)
    label_smoothing: float = 0.0  # label smoothing on the CE term
    # read the teacher's logits per (epoch, image) view from a study-wide fp16 cache, built once
    # (study/teacher/cache.py); false runs the teacher live on every batch (fresh views per trial)
    teacher_cache: bool = True
    # --- pruning (after distillation) ---
    prune_method: str = "none"  # none, l1_structured, l2_structured (torch-pruning), l1_unstructured (global magnitude)
    prune_ratio: float = 0.0  # structured: fraction of CHANNELS removed per layer; unstructured: of weights zeroed
    round_to: int = 1  # structured: keep channel counts a multiple of this (8 helps GPU kernels)
    # --- fine-tuning (after pruning, with KD from the teacher unless kd_loss == ce) ---
    finetune_epochs: int = 3  # fine-tuning epochs after pruning (0 skips; used also when prune_method == none)
    finetune_lr: float = 0.02  # peak learning rate of the fine-tuning schedule
    # --- execution and measurement ---
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda, cuda:N
    precision: str = "auto"  # student training: auto (bf16 + channels_last where measured faster:
    #                           train.resolve_precision), fp32, or bf16 (autocast); final metrics are always fp32
    threads: int = 0  # torch intra-op threads for this trial; 0 keeps torch's default
    latency_device: str = "cpu"  # where latency_ms_bs1 / throughput are measured: cpu, or trial (the training device)
    eval_batch_size: int = 1024  # batch size for validation/test evaluation
    latency_repeats: int = 30  # timed runs for batch-1 latency (median and IQR reported)
    throughput_batch: int = 256  # batch size for the throughput measurement
    # runtime that latency_ms_bs1 / throughput_ips are measured on: torch (eager) or onnxruntime (the final model
    # exported to ONNX, checked against PyTorch, timed by ONNX Runtime's CPU execution provider: study/measure/onnx.py)
    latency_backend: str = "torch"
    # int8: post-training static quantization in ONNX Runtime after fine-tuning (needs latency_backend onnxruntime);
    # val_acc, test_acc, size_bytes and latency are then the quantized model's (fp32 values kept beside them);
    # with latency_backend onnxruntime, size_bytes is always the deployed ONNX file's (model.onnx / model_int8.onnx)
    quantize: str = "none"
    calibration_images: int = 256  # int8 calibration: a seeded sample of this many training images

    @property
    def val_split_seed(self) -> int:
        """The seed of the train / validation split: split_seed, or the trial's seed where split_seed < 0."""
        return self.seed if self.split_seed < 0 else self.split_seed

    @property
    def uses_teacher(self) -> bool:
        """Whether this trial distils from a teacher: a KD loss (not ce) with some weight on it (alpha < 1)."""
        return self.kd_loss != "ce" and self.alpha < 1.0

    def to_dict(self) -> dict[str, Any]:
        """Every field by name, in declaration order (what config.yaml holds)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrialConfig:
        """A copy with `changes` applied, validated as make_config validates."""
        return make_config(self.to_dict(), changes)


CONFIG_FIELDS = {f.name: f for f in fields(TrialConfig)}
# what a config written before a field existed used (its default differs now): such files read as they ran
LEGACY_DEFAULTS = {"normalize": "dataset"}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Convert a value (from YAML or the command line) to the field's type, or explain what is wrong."""
    default = CONFIG_FIELDS[name].default
    kind = type(default)
    if name == "normalize":  # a name, "means/stds", or a {mean, std} mapping: stored as one text
        from study.data.datasets import canonical

        return canonical(value, source)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError  # `epochs: true` is a mistake, not 1
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise UserError(
            f"{source}: '{name}' must be {'an' if kind is int else 'a'} {kind.__name__} (got {value!r}); fix the value."
        ) from None


def unknown_key_error(key: str, valid: list[str], source: str) -> UserError:
    """The UserError for an unknown key in `source`: the closest valid key ("did you mean"), else all of them."""
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else f" Valid keys: {', '.join(valid)}."
    return UserError(f"{source}: unknown key '{key}'.{hint}")


def make_config(base: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                source: str = "config") -> TrialConfig:
    """Build a validated TrialConfig from a dict of values plus overrides."""
    values: dict[str, Any] = {}
    for part in (base or {}), (overrides or {}):
        for key, value in part.items():
            if key not in CONFIG_FIELDS:
                raise unknown_key_error(key, sorted(CONFIG_FIELDS), source)
            values[key] = _coerce(key, value, source)
    cfg = TrialConfig(**values)
    validate_config(cfg, source)
    return cfg


def validate_config(cfg: TrialConfig, source: str = "config") -> None:
    """Check value ranges that would otherwise fail deep inside a trial."""
    def bad(msg: str) -> UserError:
        return UserError(f"{source}: {msg}")

    if not 0.0 <= cfg.alpha <= 1.0:
        raise bad(f"alpha must be in [0, 1] (got {cfg.alpha}).")
    if cfg.temperature <= 0:
        raise bad(f"temperature must be > 0 (got {cfg.temperature}).")
    if not 0.0 <= cfg.prune_ratio < 1.0:
        raise bad(f"prune_ratio must be in [0, 1) (got {cfg.prune_ratio}).")
    if cfg.width_mult <= 0 or cfg.teacher_width <= 0:
        raise bad("width multipliers must be > 0.")
    if cfg.epochs < 0 or cfg.teacher_epochs < 1 or cfg.finetune_epochs < 0:
        raise bad("epochs and finetune_epochs must be >= 0 and teacher_epochs >= 1.")
    if cfg.epochs == 0 and not cfg.student_checkpoint:
        raise bad("epochs 0 trains nothing before pruning; it needs student_checkpoint (a trained student).")
    if cfg.epochs + cfg.finetune_epochs < 1:
        raise bad("epochs + finetune_epochs must be >= 1 (a trial trains at least one epoch).")
    if cfg.image_size < 0 or cfg.max_resident_mb < 0:
        raise bad("image_size and max_resident_mb must be >= 0.")
    if cfg.batch_size < 1 or cfg.eval_batch_size < 1:
        raise bad("batch sizes must be >= 1.")
    for name in ("precision", "teacher_precision"):
        if getattr(cfg, name) not in ("auto", "fp32", "bf16"):
            raise bad(f"{name} must be auto, fp32 or bf16 (got '{getattr(cfg, name)}').")
    if cfg.val_size <= 0 or (cfg.val_size >= 1 and not float(cfg.val_size).is_integer()):
        raise bad(f"val_size must be a fraction in (0, 1) or a whole number of images >= 1 (got {cfg.val_size}).")
    if cfg.val_size == 1:
        raise bad("val_size 1 would hold out one image; give a fraction in (0, 1) or a count >= 2.")
    for name in ("lr", "finetune_lr", "teacher_lr"):
        if getattr(cfg, name) <= 0:
            raise bad(f"{name} must be > 0 (got {getattr(cfg, name)}).")
    if cfg.weight_decay < 0:
        raise bad(f"weight_decay must be >= 0 (got {cfg.weight_decay}).")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise bad(f"label_smoothing must be in [0, 1) (got {cfg.label_smoothing}).")
    if cfg.train_size < 0:
        raise bad(f"train_size must be 0 (all training images) or a count >= 1 (got {cfg.train_size}).")
    if cfg.threads < 0 or cfg.latency_repeats < 1 or cfg.throughput_batch < 1 or cfg.round_to < 1:
        raise bad("threads must be >= 0, latency_repeats, throughput_batch and round_to >= 1.")
    if cfg.latency_device not in ("cpu", "trial"):
        raise bad(f"latency_device must be cpu or trial (got '{cfg.latency_device}').")
    if cfg.latency_backend not in ("torch", "onnxruntime"):
        raise bad(f"latency_backend must be torch or onnxruntime (got '{cfg.latency_backend}').")
    if cfg.quantize not in ("none", "int8"):
        raise bad(f"quantize must be none or int8 (got '{cfg.quantize}').")
    if cfg.quantize == "int8" and cfg.latency_backend != "onnxruntime":
        raise bad("quantize: int8 makes a model that only ONNX Runtime runs; set latency_backend: onnxruntime.")
    if cfg.latency_backend == "onnxruntime" and cfg.latency_device != "cpu":
        raise bad("latency_backend onnxruntime measures on the CPU execution provider; set latency_device: cpu.")
    if cfg.calibration_images < 1:
        raise bad(f"calibration_images must be >= 1 (got {cfg.calibration_images}).")
    if not (cfg.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", cfg.device)):
        raise bad(f"device must be auto, cpu, cuda or cuda:N (got '{cfg.device}').")
    check_names(cfg, source)


def check_names(cfg: TrialConfig, source: str = "config") -> None:
    """Import cfg.imports, then resolve every registry name the config uses (data set, models, prune method,
    KD loss): an unknown name or an import string that does not resolve is one sentence naming the field."""
    from study.core.registry import import_modules
    from study.data.datasets import DATASETS
    from study.models.families import MODELS
    from study.models.pruning import PRUNE_METHODS
    from study.training.losses import KD_LOSSES

    import_modules(cfg.imports, f"{source}: imports")
    for name, registry in (("dataset", DATASETS), ("student_arch", MODELS), ("teacher_arch", MODELS),
                           ("prune_method", PRUNE_METHODS), ("kd_loss", KD_LOSSES)):
        try:
            registry.resolve(getattr(cfg, name))
        except UserError as exc:
            raise UserError(f"{source}: {name}: {exc}") from None
    if cfg.width_mult > 1.0 and MODELS.resolve(cfg.student_arch).width == "prune":  # found now, not after the teacher
        raise UserError(f"{source}: width_mult {cfg.width_mult:g}: student {cfg.student_arch!r} has no width knob, so "
                        "its width is scaled by pruning channels and must be <= 1; use width_mult <= 1 or a family "
                        "with a width knob.")


def parse_set_args(items: list[str]) -> dict[str, Any]:
    """Parse ``--set name=value`` items; values are read as YAML scalars (so 0.5 is a float, none a string)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected name=value, e.g. --set prune_ratio=0.5.")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def save_config(cfg: TrialConfig, path: Path) -> None:
    """Write cfg to `path` as YAML (every field, in declaration order), atomically."""
    from study.core.io import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_config(path: Path) -> TrialConfig:
    """The validated TrialConfig of a config.yaml (fields it lacks take the defaults it ran with: LEGACY_DEFAULTS,
    then today's); UserError when the file cannot be read or is not a config."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read the trial config ({exc}); point to a config.yaml written by a "
                        "trial.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a trial config (expected a mapping); point to a config.yaml written by a trial.")
    return make_config({**LEGACY_DEFAULTS, **data}, source=str(path))

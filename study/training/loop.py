"""The training loop: whole data set resident as tensors on the device, augmentation per batch, no DataLoader.

The augmentation schedule (which crop and flip each image gets in each epoch, and the batch order) is a pure
function of (seed, epoch), so every trial of a study replays the same views; a teacher-output cache keyed by
(epoch, image index) is therefore exact.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from study.data.streaming import ResidentData
from study.training.kernels import ConvKernelGuard
from study.training.losses import kd_loss

# Called as teacher(x_aug, idx, epoch) -> logits (B, K) for the batch of augmented images x_aug (B, C, H, W)
# whose training-set indices are idx (B,), on the data's device, in schedule epoch `epoch`.
TeacherFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def epoch_schedule(n: int, epoch: int, seed: int, pad: int, hflip: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order, dy, dx, flip): batch order and the view of every image (indexed by image) in this epoch."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flip = torch.randint(0, 2, (n,), generator=g).bool() if hflip else torch.zeros(n, dtype=torch.bool)
    return order, dy, dx, flip


def augmented_batches(data: ResidentData, epoch: int, seed: int, batch_size: int):
    """Yield (x, y, idx) for one epoch of the seeded schedule, idx (training-set indices) on the data's device;
    the last partial batch is dropped if tiny (batches_per_epoch counts the same way)."""
    n = data.train_x.shape[0]
    dev = data.train_x.device
    order, dy, dx, flip = (t.to(dev) for t in epoch_schedule(n, epoch, seed, data.pad, data.hflip))  # once an epoch
    for b in range(batches_per_epoch(n, batch_size)):
        idx = order[b * batch_size:(b + 1) * batch_size]
        yield data.views(idx, dy, dx, flip), data.train_y[idx], idx


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Batches augmented_batches yields for n images: a last partial batch smaller than a quarter of batch_size
    (or than 2 images) is dropped when it is not the only one, as it gives noisy BN statistics."""
    full, tail = divmod(n, batch_size)
    return full + (1 if tail and (tail >= max(2, batch_size // 4) or full == 0) else 0)


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024, dtype: str = "fp32",
             channels_last: bool = False) -> float:
    """Top-1 accuracy in percent. fp32 by default (every reported metric); the per-epoch validation inside
    train_phase passes the training precision, which is faster (docs/PLATFORMS.md, "Precision and layout")."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=x.device)  # summed on the device: one sync at the end
    with autocast(dtype, x.device):
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            correct += (model(xb).argmax(1) == y[i:i + batch_size]).sum()
    model.train(was_training)
    return 100.0 * int(correct) / max(1, x.shape[0])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """SGD parameter groups: weight decay on the trainable weights (ndim > 1), none on biases and norm scales."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------------- precision
# "auto" trains in bf16 + channels_last where the hardware has native bf16 (CPU: avx512_bf16 / AMX; GPU: bf16
# tensor cores), else in fp32; final metrics are evaluated in fp32, the per-epoch validation in the training
# precision. Why: the measurements in docs/PLATFORMS.md, "Precision and layout".

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below which it has no native bf16 kernels
_ONEDNN_NO_BF16_ISAS = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


@functools.cache
def _cpu_has_native_bf16() -> bool:
    """bf16 units in the CPU (avx512_bf16 / AMX) that torch and oneDNN will use: not when their ISA is capped
    (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, as CI does to run the AVX2 code paths); there bf16 would
    be emulated, and the machine trains like an AVX2-only CPU, in fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if " avx512_bf16" not in flags and " amx_bf16" not in flags:
        return False
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return False
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() not in _ONEDNN_NO_BF16_ISAS


def resolve_precision(precision: str, device: torch.device) -> tuple[str, bool]:
    """(autocast dtype name "fp32" | "bf16", use channels_last) for a training precision setting on `device`.

    channels_last on the CPU in both precisions (fp32 NHWC was faster than NCHW in every shape measured), on a
    GPU with bf16 only (fp32 there keeps NCHW: not measured). The numbers: docs/PLATFORMS.md, "Precision and
    layout"."""
    if precision == "auto":
        if device.type == "cuda":
            fast = torch.cuda.is_bf16_supported() and torch.cuda.get_device_capability(device)[0] >= 8
        else:
            fast = device.type == "cpu" and _cpu_has_native_bf16()
        dtype = "bf16" if fast else "fp32"
    elif precision in ("fp32", "bf16"):
        dtype = precision
    else:
        raise ValueError(f"precision must be auto, fp32 or bf16 (got {precision!r})")
    return dtype, device.type == "cpu" or (device.type == "cuda" and dtype == "bf16")


def autocast(dtype: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` for dtype "bf16", a no-op context for "fp32"."""
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------- optimiser
def make_optimizer(model: nn.Module, lr: float, weight_decay: float, total: int, warm: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """torch.optim.SGD (nesterov, momentum 0.9, L2 decay on weights only) and its per-step LR schedule (lr_at).

    fused=True where the device has the fused kernel (several times faster than the foreach form). The first
    optimiser of a process imports torch._dynamo, once per Ray worker: trials reuse their actors. The numbers:
    docs/HOW_IT_RUNS.md, "Training speed"."""
    fused = model_device(model).type in ("cpu", "cuda")
    opt = torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=0.9, nesterov=True,
                          **({"fused": True} if fused else {"foreach": True}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(lr_at, lr=1.0, total=total, warm=warm))
    return opt, sched


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def lr_at(step: int, lr: float, total: int, warm: int) -> float:
    """Linear warm-up over `warm` steps to `lr`, then linear decay to 0 at `total` steps."""
    return lr * ((step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm)))


def train_phase(model: nn.Module, data: ResidentData, *, epochs: int, first_epoch: int, seed: int, lr: float,
                batch_size: int, weight_decay: float, teacher: TeacherFn | None, temperature: float, alpha: float,
                label_smoothing: float = 0.0, precision: str = "fp32", kd_kind: str = "kd",
                dkd_beta: float = 8.0, after_step: Callable[[], None] | None = None,
                on_epoch: Callable[[int, float, dict, dict], None] | None = None,
                skip_epochs: int = 0, resume_opt: dict | None = None) -> list[dict]:
    """Train `epochs` epochs (schedule epochs first_epoch .. first_epoch + epochs - 1); return per-epoch logs.

    LR: linear warm-up over the first 15% of steps to `lr`, then linear decay to 0 (SGD, nesterov, momentum 0.9).
    precision: fp32, bf16 (autocast) or auto (see resolve_precision); the loss is fp32, the per-epoch validation
    accuracy uses the training precision (evaluate() is fp32 for every final metric).
    on_epoch(schedule_epoch, val_acc, log, opt_state) is called after each epoch (the search layer reports and
    checkpoints from it). To resume, pass the epochs already done (skip_epochs) and the saved opt_state.
    The model is trained in channels_last where that is faster and handed back in the default layout.
    """
    device = data.train_x.device
    n = data.train_x.shape[0]
    steps_per_epoch = max(1, batches_per_epoch(n, batch_size))  # the LR reaches 0 at the last step taken
    total = max(1, epochs * steps_per_epoch)
    warm = max(1, int(0.15 * total))
    dtype, channels_last = resolve_precision(precision, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # in place: parameters keep their identity
    opt, sched = make_optimizer(model, lr, weight_decay, total, warm)
    if resume_opt is not None:
        opt.load_state_dict(resume_opt["opt"])
        sched.load_state_dict(resume_opt["sched"])
    logs = []
    guard = ConvKernelGuard(model, device, bf16=dtype == "bf16")  # oneDNN defects: see study.training.kernels
    try:
        for e in range(skip_epochs, epochs):
            epoch = first_epoch + e
            model.train()
            sums = torch.zeros(3, device=device)
            seen = 0
            for x, y, idx in augmented_batches(data, epoch, seed, batch_size):
                t_logits = teacher(x, idx, epoch) if teacher is not None and alpha < 1.0 else None
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with guard, autocast(dtype, device):
                    out = model(x)
                loss, ce, kd = kd_loss(out, t_logits, y, temperature, alpha, label_smoothing, kind=kd_kind,
                                       dkd_beta=dkd_beta)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # the graph recorded under the guard: no strided 1x1 weight-gradient kernel
                opt.step()
                sched.step()
                if after_step is not None:
                    after_step()
                sums += torch.stack([loss.detach(), ce.detach(), kd.detach()]) * len(y)
                seen += len(y)
            loss_m, ce_m, kd_m = _finite_means(model, sums, seen, epoch)
            # in the training precision: the per-epoch curve and the scheduler's rungs; final metrics are fp32
            val_acc = evaluate(model, data.val_x, data.val_y, dtype=dtype, channels_last=channels_last)
            log = {"epoch": epoch, "loss": loss_m, "ce": ce_m, "kd": kd_m, "val_acc": val_acc,
                   "lr": sched.get_last_lr()[0]}
            logs.append(log)
            if on_epoch is not None:
                on_epoch(epoch, val_acc, log, {"opt": opt.state_dict(), "sched": sched.state_dict()})
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
    return logs


def _finite_means(model: nn.Module, sums: torch.Tensor, seen: int, epoch: int) -> tuple[float, float, float]:
    """The epoch's mean (loss, ce, kd) from their image-weighted sums; FloatingPointError when the loss or a weight
    is not finite."""
    loss_m, ce_m, kd_m = (sums / max(1, seen)).tolist()
    if not math.isfinite(loss_m):
        raise FloatingPointError(f"training loss became {loss_m} in epoch {epoch}; lower the learning rate.")
    # a finite loss can hide a non-finite weight (its last step, or a kernel writing garbage gradients:
    # study.training.kernels); such a model scores chance accuracy and must not pass as a result
    bad = next((name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())), None)
    if bad is not None:
        raise FloatingPointError(f"parameter {bad} became non-finite in epoch {epoch} (mean loss {loss_m:.4g});"
                                 " lower the learning rate, or train with precision: fp32.")
    return loss_m, ce_m, kd_m


def live_teacher(teacher: nn.Module, precision: str = "fp32") -> TeacherFn:
    """Run the teacher on the exact augmented view the student sees (eval mode, no grad).

    precision as in train_phase: with bf16 the teacher runs under bf16 autocast (and channels_last), the same
    speed/accuracy trade the student makes. The teacher-output cache (study.teacher.cache) is always fp32-exact.
    """
    teacher.eval()
    device = next(teacher.parameters()).device
    dtype, channels_last = resolve_precision(precision, device)
    if channels_last:
        teacher.to(memory_format=torch.channels_last)

    def fn(x: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        with torch.no_grad(), autocast(dtype, device):  # not inference_mode: its tensors cannot be saved for backward
            return teacher(x).float()

    return fn

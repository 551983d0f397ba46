"""The training loop: whole data set resident as tensors on the device, augmentation per batch, no DataLoader.

The augmentation schedule (which crop and flip each image gets in each epoch, and the batch order) is a pure
function of (seed, epoch), so every trial of a study replays the same views; a teacher-output cache keyed by
(epoch, image index) is therefore exact.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from study.data import Dataset, split_train_val
from study.losses import kd_loss

# Called as teacher(x_aug, idx, epoch) -> logits (B, K) for the batch of augmented images x_aug (B, C, H, W)
# whose training-set indices are idx (B,) in schedule epoch `epoch`.
TeacherFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class ResidentData:
    """Normalised splits on one device. train_x is padded once by `pad` pixels for random crops."""

    train_x: torch.Tensor  # (N, C, H + 2*pad, W + 2*pad) float32, normalised, zero-padded
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor  # (M, C, H, W) float32, normalised
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    pad: int  # random-crop padding in pixels
    hflip: bool  # horizontal flips are label-preserving for this data set
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.val_x.shape[1:])  # type: ignore[return-value]


def make_resident(ds: Dataset, val_size: float, seed: int, device: torch.device) -> ResidentData:
    """Split off the validation set (seeded), normalise once and move everything to `device`."""
    tr_x, tr_y, va_x, va_y = split_train_val(ds, int(val_size) if val_size >= 1 else val_size, seed)
    mean = torch.tensor(ds.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, dtype=torch.float32).view(1, -1, 1, 1)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() / 255.0 - mean) / std).to(device)

    train = norm(tr_x)
    if ds.crop_pad:
        train = F.pad(train, (ds.crop_pad,) * 4)  # zero in normalised space = the data mean
    return ResidentData(train, tr_y.to(device), norm(va_x), va_y.to(device), norm(ds.test_x),
                        ds.test_y.to(device), ds.crop_pad, ds.hflip, ds.num_classes)


def epoch_schedule(n: int, epoch: int, seed: int, pad: int, hflip: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order, dy, dx, flip): batch order and the view of every image (indexed by image) in this epoch."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flip = torch.randint(0, 2, (n,), generator=g).bool() if hflip else torch.zeros(n, dtype=torch.bool)
    return order, dy, dx, flip


def crop_flip(xp: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Batched random crop (offsets dy, dx into the padded images) and horizontal flip, in one gather."""
    b, c, hp, wp = xp.shape
    h, w = hp - 2 * pad, wp - 2 * pad
    dev = xp.device
    rows = (dy.to(dev)[:, None] + torch.arange(h, device=dev))  # (B, H)
    cols = (dx.to(dev)[:, None] + torch.arange(w, device=dev))  # (B, W)
    cols = torch.where(flip.to(dev)[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def augmented_batches(data: ResidentData, epoch: int, seed: int, batch_size: int):
    """Yield (x, y, idx) for one epoch of the seeded schedule; the last partial batch is dropped if tiny."""
    n = data.train_x.shape[0]
    order, dy, dx, flip = epoch_schedule(n, epoch, seed, data.pad, data.hflip)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if len(idx) < max(2, batch_size // 4) and start > 0:
            break  # a tiny last batch gives noisy BN statistics
        dev_idx = idx.to(data.train_x.device)
        x = crop_flip(data.train_x[dev_idx], dy[idx], dx[idx], flip[idx], data.pad)
        yield x, data.train_y[dev_idx], idx


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy in percent."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return 100.0 * correct / max(1, x.shape[0])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_phase(model: nn.Module, data: ResidentData, *, epochs: int, first_epoch: int, seed: int, lr: float,
                batch_size: int, weight_decay: float, teacher: TeacherFn | None, temperature: float, alpha: float,
                label_smoothing: float = 0.0, precision: str = "fp32",
                after_step: Callable[[], None] | None = None,
                on_epoch: Callable[[int, float, dict, dict], None] | None = None,
                skip_epochs: int = 0, resume_opt: dict | None = None) -> list[dict]:
    """Train `epochs` epochs (schedule epochs first_epoch .. first_epoch + epochs - 1); return per-epoch logs.

    LR: linear warm-up over the first 15% of steps to `lr`, then linear decay to 0 (SGD, nesterov, momentum 0.9).
    on_epoch(schedule_epoch, val_acc, log, opt_state) is called after each epoch (the search layer reports and
    checkpoints from it). To resume, pass the epochs already done (skip_epochs) and the saved opt_state.
    """
    device = data.train_x.device
    n = data.train_x.shape[0]
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = max(1, epochs * steps_per_epoch)
    warm = max(1, int(0.15 * total))
    opt = torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    if resume_opt is not None:
        opt.load_state_dict(resume_opt["opt"])
        sched.load_state_dict(resume_opt["sched"])
    use_bf16 = precision == "bf16"
    logs = []
    for e in range(skip_epochs, epochs):
        epoch = first_epoch + e
        model.train()
        sums = torch.zeros(3, device=device)
        seen = 0
        for x, y, idx in augmented_batches(data, epoch, seed, batch_size):
            t_logits = teacher(x, idx, epoch) if teacher is not None and alpha < 1.0 else None
            ctx = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
            with ctx:
                out = model(x)
            loss, ce, kd = kd_loss(out, t_logits, y, temperature, alpha, label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step()
            sums += torch.stack([loss.detach(), ce.detach(), kd.detach()]) * len(y)
            seen += len(y)
        loss_m, ce_m, kd_m = (sums / max(1, seen)).tolist()
        if not math.isfinite(loss_m):
            raise FloatingPointError(f"training loss became {loss_m} in epoch {epoch}; lower the learning rate.")
        val_acc = evaluate(model, data.val_x, data.val_y)
        log = {"epoch": epoch, "loss": loss_m, "ce": ce_m, "kd": kd_m, "val_acc": val_acc,
               "lr": opt.param_groups[0]["lr"]}
        logs.append(log)
        if on_epoch is not None:
            on_epoch(epoch, val_acc, log, {"opt": opt.state_dict(), "sched": sched.state_dict()})
    return logs


def live_teacher(teacher: nn.Module) -> TeacherFn:
    """Run the teacher on the exact augmented view the student sees (eval mode, no grad)."""
    teacher.eval()

    def fn(x: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        with torch.no_grad():  # not inference_mode: its tensors cannot be saved for the student's backward
            return teacher(x)

    return fn

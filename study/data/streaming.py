"""The tensors a trial trains on: `ResidentData` (every split on one device) or, for data that does not fit in memory,
`StreamingData` (splits served batch by batch from the decoded cache on disk); `data_for` picks.

`make_resident` holds the padded training set (uint8) and the normalised validation / test sets (float32) in
memory. When those would take more than `max_resident_mb` (0: half the memory available when the trial starts),
`make_data` builds a `StreamingData` instead: the same splits (the rows of datasets.split_indices, as resident),
but each split is a `DiskRows` over the data set's memory-mapped uint8 array (imagefolder's cache; any tensor
works), and a batch is read, padded, moved and normalised only when it is indexed. The augmentation schedule
(`epoch_schedule`) and `crop_flip` are the same functions, so a streamed batch equals the resident one bit for
bit, and the teacher-logit cache built from either stays exact for both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from study.data.datasets import Dataset, count_or_fraction, holdout_count, split_indices


@dataclass
class ResidentData:
    """Splits on one device. The training images stay uint8 (4x less memory than fp32: Tiny-ImageNet's padded
    training set is 1.7 GB instead of 6.9 GB per trial), padded once by `pad` pixels with the mean colour, and are
    normalised per batch by `views`; validation and test images are normalised once."""

    train_x: torch.Tensor  # (N, C, H + 2*pad, W + 2*pad) uint8, padded with the data set's mean colour
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor  # (M, C, H, W) float32, normalised
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    pad: int  # random-crop padding in pixels
    hflip: bool  # horizontal flips are label-preserving for this data set
    num_classes: int
    mean: torch.Tensor  # (1, C, 1, 1) float32 on the device, 0-1 scale
    std: torch.Tensor  # (1, C, 1, 1)

    def views(self, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Normalised float32 crops/flips (B, C, H, W) of training images idx under an epoch's schedule (dy, dx,
        flip: per image). The schedule is indexed where it lives: augmented_batches moves it to the data's device
        once per epoch, as a copy to a GPU waits for the GPU's queued work (five small copies per batch would)."""
        dev = self.train_x.device

        def take(t: torch.Tensor) -> torch.Tensor:
            return t[idx.to(t.device)].to(dev)

        x = crop_flip(self.train_x[idx.to(dev)], take(dy), take(dx), take(flip), self.pad)
        return (x.float() / 255.0 - self.mean) / self.std

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one (unpadded) image."""
        return tuple(self.val_x.shape[1:])  # type: ignore[return-value]


def make_resident(ds: Dataset, val_size: float, seed: int, device: torch.device, train_size: int = 0) -> ResidentData:
    """Split off the validation set (seeded), keep a stratified `train_size` subset of the rest (0: all of it;
    seeded by the same seed), normalise once and move everything to `device` (the rows of split_indices)."""
    keep, held = split_indices(ds, count_or_fraction(val_size), seed, train_size)
    tr_x, tr_y = _rows(ds.train_x, keep), _rows(ds.train_y, keep)
    va_x, va_y = _val_source(ds)
    va_x, va_y = _rows(va_x, held), _rows(va_y, held)
    mean = torch.tensor(ds.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, dtype=torch.float32).view(1, -1, 1, 1)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() / 255.0 - mean) / std).to(device)

    p = ds.crop_pad
    n, c, h, w = tr_x.shape
    fill = (mean.view(-1) * 255).round().to(torch.uint8).view(1, c, 1, 1)  # normalises to ~0, as zero padding did
    train = fill.expand(n, c, h + 2 * p, w + 2 * p).clone()
    train[:, :, p:p + h, p:p + w] = tr_x
    return ResidentData(train.to(device), tr_y.to(device), norm(va_x), va_y.to(device), norm(ds.test_x),
                        ds.test_y.to(device), p, ds.hflip, ds.num_classes, mean.to(device), std.to(device))


def _val_source(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The (images, labels) split_indices' validation rows index: the data set's own validation split, else its
    training set."""
    return (ds.val_x, ds.val_y) if ds.val_x is not None and ds.val_y is not None else (ds.train_x, ds.train_y)


def _rows(x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """x's rows `rows` (sorted, distinct): x itself, uncopied, when they are all of it."""
    return x if len(rows) == len(x) else x[torch.from_numpy(rows)]


def crop_flip(xp: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Batched random crop (offsets dy, dx into the padded images) and horizontal flip, in one gather over the
    flattened pixels (faster on the CPU than indexing with four broadcast index tensors: docs/HOW_IT_RUNS.md,
    "Training speed")."""
    b, c, hp, wp = xp.shape
    h, w = hp - 2 * pad, wp - 2 * pad
    dev = xp.device
    rows = (dy.to(dev)[:, None] + torch.arange(h, device=dev))  # (B, H)
    cols = (dx.to(dev)[:, None] + torch.arange(w, device=dev))  # (B, W)
    cols = torch.where(flip.to(dev)[:, None], cols.flip(1), cols)
    pixel = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return torch.gather(xp.reshape(b, c, hp * wp), 2, pixel).view(b, c, h, w)  # (B, C, H, W)


class DiskRows:
    """Rows `index` of a uint8 (N, C, H, W) tensor (memory-mapped: read only when indexed), padded by `pad`
    pixels of `fill`, optionally normalised, served on `device`. Indexing (int tensor, slice) returns a tensor;
    `shape`, `device`, `dtype` and len() behave as the resident tensor's would."""

    def __init__(self, base: torch.Tensor, index: torch.Tensor, device: torch.device, pad: int = 0,
                 fill: torch.Tensor | None = None, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None) -> None:
        _, c, h, w = base.shape
        if pad and fill is None:
            raise ValueError("DiskRows: padding needs a fill colour")
        if (mean is None) != (std is None):
            raise ValueError("DiskRows: normalising needs both mean and std")
        self.base, self.index, self.pad = base, index, pad
        self.fill = fill if fill is not None else torch.zeros((1, c, 1, 1), dtype=torch.uint8)  # used when pad
        self.device = torch.device(device)
        self.mean, self.std = mean, std
        self.dtype = torch.float32 if mean is not None else torch.uint8
        self.shape = torch.Size((len(index), c, h + 2 * pad, w + 2 * pad))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            rows = self.index[key]
        elif isinstance(key, int):
            return self[torch.tensor([key])][0]
        else:
            rows = self.index[torch.as_tensor(key).cpu()]
        order = torch.argsort(rows)  # read the file front to back, then put the rows back in the asked order
        x = torch.empty((len(rows), *self.base.shape[1:]), dtype=torch.uint8)
        x[order] = self.base[rows[order]]
        if self.pad:
            p = self.pad
            padded = self.fill.expand(len(rows), -1, x.shape[2] + 2 * p, x.shape[3] + 2 * p).clone()
            padded[:, :, p:-p, p:-p] = x
            x = padded
        x = x.to(self.device, non_blocking=True)
        if self.mean is not None and self.std is not None:
            x = (x.float() / 255.0 - self.mean) / self.std
        return x


class StreamingData(ResidentData):
    """ResidentData whose splits are DiskRows (see the module docstring)."""

    streaming = True


def available_mb() -> float:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory, in MB."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return float("inf")


def resident_mb(ds: Dataset, n_val: int) -> float:
    """Memory make_resident would take: padded uint8 training images, float32 validation and test images."""
    _, c, h, w = ds.train_x.shape
    p = ds.crop_pad
    n_train = ds.train_x.shape[0] - (0 if ds.val_x is not None else n_val)
    n_val = ds.val_x.shape[0] if ds.val_x is not None else n_val
    return (n_train * c * (h + 2 * p) * (w + 2 * p) + 4 * (n_val + ds.test_x.shape[0]) * c * h * w) / 2**20


def make_data(ds: Dataset, val_size: float, seed: int, device: torch.device, train_size: int = 0,
              max_resident_mb: float = 0.0, log=None) -> ResidentData:
    """make_resident's splits, in memory when they fit the budget, else streamed from disk (StreamingData)."""
    budget = max_resident_mb or available_mb() / 2
    need = resident_mb(ds, 0 if ds.val_x is not None else holdout_count(ds, count_or_fraction(val_size)))
    if need <= budget:
        return make_resident(ds, val_size, seed, device, train_size)
    if log:
        log(f"data: {need:,.3g} MB would not fit the {budget:,.3g} MB budget (max_resident_mb): streaming batches "
            "from the decoded cache on disk")
    return make_streaming(ds, val_size, seed, device, train_size)


def data_for(cfg, ds: Dataset, device: torch.device, log=None) -> ResidentData:
    """The splits a trial config asks for (val_size, split seed, train_size, max_resident_mb)."""
    return make_data(ds, cfg.val_size, cfg.val_split_seed, device, cfg.train_size, cfg.max_resident_mb, log)


def make_streaming(ds: Dataset, val_size: float, seed: int, device: torch.device, train_size: int = 0
                   ) -> StreamingData:
    """make_resident's splits (the same rows of split_indices) as DiskRows, read from disk batch by batch."""
    keep, held = split_indices(ds, count_or_fraction(val_size), seed, train_size)
    mean = torch.tensor(ds.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, dtype=torch.float32).view(1, -1, 1, 1)
    c = ds.train_x.shape[1]
    fill = (mean.view(-1) * 255).round().to(torch.uint8).view(1, c, 1, 1)  # as make_resident pads
    keep_t, held_t = torch.from_numpy(np.asarray(keep)), torch.from_numpy(np.asarray(held))
    val_base, val_y = _val_source(ds)
    dev_mean, dev_std = mean.to(device), std.to(device)
    return StreamingData(
        _as_tensor(DiskRows(ds.train_x, keep_t, device, ds.crop_pad, fill)), ds.train_y[keep_t].to(device),
        _as_tensor(DiskRows(val_base, held_t, device, mean=dev_mean, std=dev_std)), val_y[held_t].to(device),
        _as_tensor(DiskRows(ds.test_x, torch.arange(len(ds.test_y)), device, mean=dev_mean, std=dev_std)),
        ds.test_y.to(device), ds.crop_pad, ds.hflip, ds.num_classes, dev_mean, dev_std)


def _as_tensor(rows: DiskRows) -> torch.Tensor:
    """DiskRows where ResidentData types a tensor: it answers what the trial asks of one (indexing, shape,
    device, dtype, len())."""
    return cast(torch.Tensor, rows)

"""Training on data that does not fit in memory: splits served batch by batch from the decoded cache on disk.

`make_resident` holds the padded training set (uint8) and the normalised validation / test sets (float32) in
memory. When those would take more than `max_resident_mb` (0: half the memory available when the trial starts),
`make_data` builds a `StreamingData` instead: the same splits (the same indices, drawn by the same seeded code),
but each split is a `DiskRows` over the data set's memory-mapped uint8 array (imagefolder's cache; any tensor
works), and a batch is read, padded, moved and normalised only when it is indexed. The augmentation schedule
(`epoch_schedule`) and `crop_flip` are the same functions, so a streamed batch equals the resident one bit for
bit, and the teacher-logit cache built from either stays exact for both.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from study.data.datasets import Dataset, holdout_count
from study.data.resident import ResidentData, make_resident


class DiskRows:
    """Rows `index` of a uint8 (N, C, H, W) tensor (memory-mapped: read only when indexed), padded by `pad`
    pixels of `fill`, optionally normalised, served on `device`. Indexing (int tensor, slice) returns a tensor;
    `shape`, `device`, `dtype` and len() behave as the resident tensor's would."""

    def __init__(self, base: torch.Tensor, index: torch.Tensor, device: torch.device, pad: int = 0,
                 fill: torch.Tensor | None = None, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None) -> None:
        self.base, self.index, self.pad, self.fill = base, index, pad, fill
        self.device = torch.device(device)
        self.mean, self.std = mean, std
        self.dtype = torch.float32 if mean is not None else torch.uint8
        _, c, h, w = base.shape
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
        if self.mean is not None:
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
    need = resident_mb(ds, 0 if ds.val_x is not None else holdout_count(ds, int(val_size) if val_size >= 1
                                                                      else val_size))
    if need <= budget:
        return make_resident(ds, val_size, seed, device, train_size)
    if log:
        log(f"data: {need:,.3g} MB would not fit the {budget:,.3g} MB budget (max_resident_mb): streaming batches "
            "from the decoded cache on disk")
    return make_streaming(ds, val_size, seed, device, train_size)


def data_for(cfg, ds: Dataset, device: torch.device, log=None) -> ResidentData:
    """The splits a trial config asks for (val_size, split seed, train_size, max_resident_mb)."""
    return make_data(ds, cfg.val_size, cfg.val_split_seed, device, cfg.train_size, cfg.max_resident_mb, log)


def split_indices(ds: Dataset, val_size: float, seed: int, train_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices into ds.train_x as make_resident draws them (an own val split: all of
    train, and the validation rows index ds.val_x)."""
    from study.data.datasets import holdout_indices, train_subset

    y = ds.train_y
    if ds.val_x is not None:
        keep, held = np.arange(len(y)), np.arange(len(ds.val_y))
    else:
        keep, held = holdout_indices(ds, int(val_size) if val_size >= 1 else val_size, seed)  # as make_resident
    if train_size and train_size < len(keep):
        sub_x, _ = train_subset(torch.from_numpy(keep)[:, None], y[torch.from_numpy(keep)], train_size, seed)
        keep = sub_x[:, 0].numpy()
    return keep, held


def make_streaming(ds: Dataset, val_size: float, seed: int, device: torch.device, train_size: int = 0
                   ) -> StreamingData:
    keep, held = split_indices(ds, val_size, seed, train_size)
    mean = torch.tensor(ds.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, dtype=torch.float32).view(1, -1, 1, 1)
    c = ds.train_x.shape[1]
    fill = (mean.view(-1) * 255).round().to(torch.uint8).view(1, c, 1, 1)  # as make_resident pads
    keep_t, held_t = torch.from_numpy(np.asarray(keep)), torch.from_numpy(np.asarray(held))
    val_base, val_y = (ds.val_x, ds.val_y) if ds.val_x is not None else (ds.train_x, ds.train_y)
    dev_mean, dev_std = mean.to(device), std.to(device)
    return StreamingData(
        DiskRows(ds.train_x, keep_t, device, ds.crop_pad, fill), ds.train_y[keep_t].to(device),
        DiskRows(val_base, held_t, device, mean=dev_mean, std=dev_std), val_y[held_t].to(device),
        DiskRows(ds.test_x, torch.arange(len(ds.test_y)), device, mean=dev_mean, std=dev_std), ds.test_y.to(device),
        ds.crop_pad, ds.hflip, ds.num_classes, dev_mean, dev_std)

"""Teacher-output cache shared by every trial of a study.

Every trial replays the same seeded augmentation schedule (study.training.loop.epoch_schedule: which crop and flip each
image gets in each epoch), so the teacher's logits for those exact views are the same in every trial. They are
computed once per (teacher checkpoint, data split, schedule) and stored as one raw array

    <cache_dir>/teacher_logits/<key>.npy    (E, N, K): schedule epoch, training-image index, class; fp16
    <cache_dir>/teacher_logits/<key>.json   manifest: identity, epochs, dtype, measured error, teacher info

that every trial memory-maps read-only (np.load(mmap_mode="r")): concurrent trials on one machine share the
page cache, one copy in memory. Raw logits are stored, so temperature and alpha (applied in the loss) do not
matter and one cache serves every trial. The key covers the teacher file's content hash, the data set, split
(val_size, seed), the training pixels, the input normalisation (mean, std), the schedule (seed, padding, flips;
fingerprinted from the schedule code's own output) and the format version; the number of epochs is in the
manifest, so a longer cache serves shorter trials and a longer trial extends it. Views the cache does not hold
(epochs beyond it) go to the live teacher.

Exactness: the cache pass runs the teacher in fp32 (eval, inference_mode, batches of 512); channels_last on CPU,
where it is faster and equal within 1e-4. Logits are stored as fp16 when every |logit| is
below 64, so rounding adds at most 2^-6 = 0.016 (half of fp16's step 2^-5 between 32 and 64; 0.008 below 32);
otherwise fp32. Each build checks a batch against a fresh fp32 NCHW teacher forward and fails if the difference
exceeds LOGIT_TOLERANCE (0.05). On GPUs where torch runs fp32 convolutions as TF32 (cuDNN's default on Ampere and
later) the pass, the check and a live teacher all do so: the cache equals the live teacher, TF32 included.
Not done, by measurement (docs/HOW_IT_RUNS.md, "Training speed"): bf16 autocast in the pass (over the
tolerance), torch.compile (slow to compile, then no faster on the CPU), top-k storage for many classes (full fp16
is exact and small enough: 2 bytes per logit). Caches are never deleted automatically: remove
<cache_dir>/teacher_logits.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from filelock import FileLock

from study.config import TrialConfig
from study.core.io import sha256_file, write_json_atomic
from study.data.streaming import ResidentData, crop_flip
from study.training.loop import TeacherFn, epoch_schedule, live_teacher

FORMAT_VERSION = 1  # bump when the file layout or the cache pass changes, so old caches are not read
LOGIT_TOLERANCE = 0.05  # max |cached logit - fresh fp32 teacher logit| a cache may have (checked at build)
FP16_MAX_ABS = 64.0  # fp16 storage only while every |logit| < 64 (rounding error <= 2^-6); fp32 otherwise
BUILD_BATCH = 512  # images per teacher forward in the cache pass


def default_logits_dir(cache_dir: Path | None = None) -> Path:
    """The folder of the logit caches: <cache_dir>/teacher_logits (default_cache_dir() when none is given)."""
    from study.core.io import default_cache_dir

    return (cache_dir or default_cache_dir()) / "teacher_logits"


def _sha256(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def train_sample_fingerprint(data: ResidentData) -> str:
    """Hash of the training labels and of up to 256 normalised (resident) training images, rounded to 1/256 so CPU
    and GPU agree: part of the cache key (not the whole-data-set sha256 study.json records)."""
    n = data.train_x.shape[0]
    sample = data.train_x[:: max(1, n // 256)].float().cpu()
    return _sha256(str(tuple(data.train_x.shape)).encode(), data.train_y.cpu().numpy().tobytes(),
                   (sample * 256).round().to(torch.int32).numpy().tobytes())


def schedule_fingerprint(n: int, seed: int, pad: int, hflip: bool) -> str:
    """Hash of what the schedule code produces (epochs 0 and 1, and the views it cuts from a probe image)."""
    parts = []
    for epoch in (0, 1):
        order, dy, dx, flip = epoch_schedule(n, epoch, seed, pad, hflip)
        parts += [order.numpy().tobytes(), dy.numpy().tobytes(), dx.numpy().tobytes(), flip.numpy().tobytes()]
        k = min(n, 4)
        probe = torch.arange(k * (4 + 2 * pad) ** 2, dtype=torch.float32).view(k, 1, 4 + 2 * pad, 4 + 2 * pad)
        parts.append(crop_flip(probe, dy[:k], dx[:k], flip[:k], pad).numpy().tobytes())
    return _sha256(*parts)


def cache_identity(teacher_path: Path | str, data: ResidentData, *, dataset: str, val_size: float,
                   seed: int) -> dict:
    """Everything that decides the cached values. Two trials share a cache only if this is equal."""
    n = data.train_x.shape[0]
    return {"format": FORMAT_VERSION, "teacher_sha256": sha256_file(teacher_path), "dataset": dataset,
            "val_size": val_size, "seed": seed, "n_images": n, "num_classes": data.num_classes,
            "padded_shape": list(data.train_x.shape[1:]), "pad": data.pad, "hflip": data.hflip,
            # the input normalisation (study.teacher.inputs): a cache made under one is never read under another
            "input_mean": [round(float(v), 6) for v in data.mean.view(-1)],
            "input_std": [round(float(v), 6) for v in data.std.view(-1)],
            "data_sha256": train_sample_fingerprint(data), "schedule_sha256": schedule_fingerprint(n, seed, data.pad,
                                                                                            data.hflip)}


def cache_key(identity: dict) -> str:
    """The cache's file stem: data set, seed and a 16-digit hash of the whole identity (cache_identity)."""
    digest = _sha256(json.dumps(identity, sort_keys=True).encode())[:16]
    return f"{identity['dataset']}-s{identity['seed']}-{digest}"


@dataclass
class TeacherCache:
    """An opened cache: logits[epoch, image] for the schedule epochs 0 .. epochs - 1."""

    path: Path  # the .npy file
    logits: np.ndarray  # (E, N, K) np.memmap, read-only, fp16 (or fp32)
    manifest: dict

    @property
    def epochs(self) -> int:
        """How many schedule epochs the cache holds."""
        return int(self.logits.shape[0])

    def lookup(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """fp32 logits (B, K) of images idx (training-set indices) in schedule epoch `epoch`, on the CPU."""
        rows = self.logits[epoch][idx.cpu().numpy()]  # copies only these B rows out of the mapped file
        return torch.from_numpy(rows.astype(np.float32, copy=False))

    def epoch_logits(self, epoch: int, device: torch.device) -> torch.Tensor:
        """All logits (N, K) of schedule epoch `epoch`, in the stored dtype, copied to `device`."""
        return torch.from_numpy(np.array(self.logits[epoch])).to(device)  # a writable copy of the mapped rows


def open_teacher_cache(identity: dict, cache_dir: Path | None = None) -> TeacherCache | None:
    """The cache for this identity, memory-mapped read-only; None if there is none (or it is unreadable)."""
    root = default_logits_dir(cache_dir)
    key = cache_key(identity)
    npy, manifest_path = root / f"{key}.npy", root / f"{key}.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        logits = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None
    n, k = identity["n_images"], identity["num_classes"]
    if manifest.get("identity") != identity or logits.ndim != 3 or logits.shape[1:] != (n, k):
        return None
    if manifest.get("epochs") != logits.shape[0] or manifest.get("dtype") != str(logits.dtype):
        return None  # a build killed between writing the array and its manifest: rebuilt, never half-described
    return TeacherCache(npy, logits, manifest)


@torch.inference_mode()
def _teacher_pass(teacher: nn.Module, data: ResidentData, seed: int, epochs: range, out: np.ndarray,
                  channels_last: bool, check_fp16: bool) -> float:
    """Fill out[e] with the teacher's logits for every image's view in schedule epoch e; return max |logit|."""
    n = data.train_x.shape[0]
    peak = 0.0
    for e in epochs:
        _, dy, dx, flip = epoch_schedule(n, e, seed, data.pad, data.hflip)
        for i in range(0, n, BUILD_BATCH):
            idx = torch.arange(i, min(n, i + BUILD_BATCH))
            x = data.views(idx, dy, dx, flip)  # (B, C, H, W) normalised
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = teacher(x).float()
            peak = max(peak, float(logits.abs().max()))
            if check_fp16 and peak >= FP16_MAX_ABS:
                return peak  # the caller restarts in fp32
            out[e, i:i + len(idx)] = logits.cpu().numpy()
    return peak


@torch.inference_mode()
def _check_against_fresh(teacher: nn.Module, data: ResidentData, seed: int, out: np.ndarray,
                         epoch: int) -> tuple[float, float]:
    """(max |stored - fresh fp32 NCHW forward|, the tolerance for it) over the first batch of `epoch`. The
    tolerance is LOGIT_TOLERANCE, or 1e-5 of the largest |logit| where logits are that large (fp32 stored: an
    NHWC and an NCHW forward differ by float rounding, relative to the logits' scale)."""
    n = data.train_x.shape[0]
    _, dy, dx, flip = epoch_schedule(n, epoch, seed, data.pad, data.hflip)
    idx = torch.arange(min(n, 256))
    x = data.views(idx, dy, dx, flip)
    fresh = teacher(x).float().cpu()
    err = float((torch.from_numpy(np.asarray(out[epoch, :len(idx)], dtype=np.float32)) - fresh).abs().max())
    return err, max(LOGIT_TOLERANCE, 1e-5 * float(fresh.abs().max()))


def build_teacher_cache(teacher: nn.Module, data: ResidentData, identity: dict, epochs: int, *,
                        cache_dir: Path | None = None, teacher_info: dict | None = None,
                        previous: TeacherCache | None = None, log: Callable[[str], None] = print) -> TeacherCache:
    """Run the teacher over every view of schedule epochs 0 .. epochs - 1 and write the cache atomically.

    Epochs already in `previous` are copied, not recomputed. Callers hold the cache's lock (teacher_cache_for).
    """
    root = default_logits_dir(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(identity)
    npy = root / f"{key}.npy"
    n, k, seed = identity["n_images"], identity["num_classes"], identity["seed"]
    start = previous.epochs if previous is not None else 0
    t0 = time.time()
    teacher.eval()
    dev = data.train_x.device
    channels_last = dev.type == "cpu"  # fp32 NHWC: faster on the CPU, equal within 1e-4 (docs/HOW_IT_RUNS.md)
    tmp = root / f".{key}.{os.getpid()}.tmp.npy"
    out: np.memmap | None = None
    log(f"caching teacher logits for schedule epochs {start}..{epochs - 1} ({n:,} images, {k} classes) -> {npy}")
    try:
        first = np.dtype(previous.logits.dtype) if previous is not None else np.dtype(np.float16)
        for dtype in [first, np.dtype(np.float32)] if first == np.float16 else [first]:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(epochs, n, k))
            if previous is not None:
                out[:start] = previous.logits[:start]
            if channels_last:
                teacher.to(memory_format=torch.channels_last)
            try:
                peak = _teacher_pass(teacher, data, seed, range(start, epochs), out, channels_last,
                                     check_fp16=dtype == np.float16)
            finally:
                teacher.to(memory_format=torch.contiguous_format)
            if dtype != np.float16 or peak < FP16_MAX_ABS:
                break
            log(f"  teacher logits reach {peak:.1f}: storing fp32 instead of fp16")
            out = None  # unmap before the file is recreated
        assert out is not None
        err, limit = _check_against_fresh(teacher, data, seed, out, epochs - 1)
        if err > limit:
            raise RuntimeError(f"teacher cache {npy}: cached logits differ from a fresh fp32 forward by {err:.4f} "
                               f"(> {limit:g}); not written.")
        out.flush()
        out = None
        os.replace(tmp, npy)  # readers that mapped an older file keep their (still valid) copy
    finally:
        tmp.unlink(missing_ok=True)
    manifest = {"identity": identity, "key": key, "epochs": epochs, "dtype": str(np.dtype(dtype)),
                "max_abs_logit": round(peak, 4), "max_abs_error_vs_fp32": err, "tolerance": LOGIT_TOLERANCE,
                "build_s": round(time.time() - t0, 3), "device": str(dev), "teacher": teacher_info or {}}
    write_json_atomic(root / f"{key}.json", manifest)
    log(f"  cached {epochs - start} epoch(s) in {manifest['build_s']:.1f}s ({manifest['dtype']}, "
        f"max error vs fp32 {err:.2g})")
    cache = open_teacher_cache(identity, cache_dir)
    assert cache is not None
    return cache


def teacher_cache_for(cfg: TrialConfig, teacher_path: Path | str, data: ResidentData, epochs: int, *,
                      cache_dir: Path | None = None, teacher: nn.Module | None = None,
                      teacher_info: dict | None = None, log: Callable[[str], None] = print) -> TeacherCache:
    """Open the cache for (teacher, data, cfg's schedule) holding >= `epochs` epochs, building or extending it
    first if needed. Concurrent callers build it once (file lock); the rest wait, then map the same file."""
    identity = cache_identity(teacher_path, data, dataset=cfg.dataset, val_size=cfg.val_size, seed=cfg.seed)
    cache = open_teacher_cache(identity, cache_dir)
    if cache is not None and cache.epochs >= epochs:
        return cache
    root = default_logits_dir(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(identity)
    with FileLock(str(root / f"{key}.lock")):
        cache = open_teacher_cache(identity, cache_dir)  # another process may have built it meanwhile
        if cache is not None and cache.epochs >= epochs:
            return cache
        for stale in root.glob(f".{key}.*.tmp.npy"):  # left by a build that was killed; no one else builds now
            stale.unlink(missing_ok=True)
        if teacher is None or not teacher_info:
            from study.teacher.model import load_teacher

            teacher, teacher_info = load_teacher(teacher_path, data.train_x.device)
        return build_teacher_cache(teacher, data, identity, epochs, cache_dir=cache_dir, teacher_info=teacher_info,
                                   previous=cache, log=log)


def ensure_teacher_cache(cfg: TrialConfig, teacher_path: Path | str, epochs: int | None = None, *,
                         cache_dir: Path | None = None, device: torch.device | str | None = None,
                         log: Callable[[str], None] = print) -> dict:
    """Build (once) the teacher-logit cache a study's trials will read; call it in the driver before trials start.

    epochs: schedule epochs to cache, default cfg.epochs + cfg.finetune_epochs (pass the largest any trial runs).
    Returns the manifest, with "path" (the .npy file). Does nothing but open it when it already exists.
    """
    from study.core.device import resolve_device
    from study.data.datasets import load_dataset_for
    from study.data.streaming import data_for

    dev = torch.device(device) if device is not None else resolve_device(cfg.device)
    ds = load_dataset_for(cfg)
    data = data_for(cfg, ds, dev)
    cache = teacher_cache_for(cfg, teacher_path, data, epochs or cfg.epochs + cfg.finetune_epochs,
                              cache_dir=cache_dir, log=log)
    return {**cache.manifest, "path": str(cache.path)}


class CachedTeacher:
    """A TeacherFn that reads cached logits, and runs the live teacher (fp32, like the cache) for views the cache
    does not hold. `live` makes that teacher on first need, so a trial fully served by the cache never loads it."""

    def __init__(self, cache: TeacherCache, live: Callable[[], nn.Module]):
        self.cache = cache
        self._make_live = live
        self._live: TeacherFn | None = None
        self.cached_batches = 0  # batches served from the cache
        self.live_batches = 0  # batches that ran the teacher
        self._on_device: tuple[int, torch.device, torch.Tensor] | None = None  # (epoch, device, its logits)

    def __call__(self, x: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        if 0 <= epoch < self.cache.epochs:
            self.cached_batches += 1
            if x.device.type == "cpu":  # rows straight from the shared memory map
                return self.cache.lookup(idx, epoch)
            # on an accelerator: the epoch's logits go over once (CIFAR-100 9 MB, Tiny-ImageNet 36 MB in fp16),
            # then batches index them there; a copy per batch would wait for the device's queued work each step
            if self._on_device is None or self._on_device[:2] != (epoch, x.device):
                self._on_device = (epoch, x.device, self.cache.epoch_logits(epoch, x.device))
            return self._on_device[2][idx.to(x.device)].float()
        if self._live is None:
            self._live = live_teacher(self._make_live(), "fp32")
        self.live_batches += 1
        return self._live(x, idx, epoch)

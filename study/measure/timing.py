"""Model speed: batch-1 latency (ms) and large-batch throughput (images/s) in PyTorch eager.

Units: latency is milliseconds, throughput images per second. Counts (params, MACs) are study.models.costs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[int]:
    """Temporarily set torch's intra-op thread count; yields the count actually in use."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block, then every module's own train/eval flag back."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def _example(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> torch.Tensor:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.randn((batch_size, *tuple(input_shape)[-3:]), device=device, dtype=dtype)


def time_calls(run: Callable[[], object], warmup: int, repeats: int,
               sync: Callable[[], None] | None = None) -> tuple[list[float], list[float]]:
    """(wall-clock seconds, this thread's CPU seconds) of `repeats` calls of `run` after `warmup` untimed ones.
    `sync` (e.g. torch.cuda.synchronize) runs before and after every timed call. Any runtime: torch, ONNX Runtime."""
    times, cpu = [], []
    for _ in range(warmup):
        run()
    for _ in range(repeats):
        if sync is not None:
            sync()
        start, start_cpu = time.perf_counter(), time.thread_time()
        run()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
    return times, cpu


def _timed_runs(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> tuple[list[float], list[float]]:
    """time_calls of model(x) under inference_mode, synchronised on CUDA."""
    sync = (lambda: torch.cuda.synchronize(x.device)) if x.device.type == "cuda" else None
    with torch.inference_mode():
        return time_calls(lambda: model(x), warmup, repeats, sync)


# A CPU forward pass whose thread got less than this share of the wall-clock time was descheduled: another
# process took its core (a loaded machine), so its time says nothing about the model.
RUNNABLE_SHARE = 0.8
# A measurement with fewer clean repeats than this is flagged `interfered` (latency_cache measures it again).
MIN_CLEAN_FRACTION = 0.5


def latency_summary(wall: list[float], cpu: list[float] | None) -> dict:
    """Median and IQR in ms of timed calls, dropping the repeats whose thread was descheduled (see measure_latency);
    cpu None (a GPU, whose time is not the thread's) keeps every repeat."""
    wall_ms = np.asarray(wall) * 1e3
    clean = np.ones(len(wall_ms), dtype=bool)
    if cpu is not None:
        clean = np.asarray(cpu) >= RUNNABLE_SHARE * np.asarray(wall)
    fraction = float(clean.mean())
    interfered = fraction < MIN_CLEAN_FRACTION
    kept = wall_ms if interfered else wall_ms[clean]
    p25, p50, p75 = np.percentile(kept, [25, 50, 75])
    return {"median_ms": float(p50), "iqr_ms": float(p75 - p25), "repeats": int(len(wall_ms)),
            "clean_fraction": round(fraction, 3), "interfered": bool(interfered)}


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    threads: int | None = None,
    warmup: int = 10,
    repeats: int = 50,
) -> dict:
    """Median and IQR (p75 - p25) of forward latency in ms, on the device of the model's parameters.

    On the CPU every repeat's wall time is checked against the calling thread's CPU time (the thread that runs
    the model, and takes part in every intra-op parallel region): repeats in which the thread was runnable for
    under RUNNABLE_SHARE of the time are dropped, as another process held the core. `clean_fraction` says how many
    were kept; `interfered` is True when that is under MIN_CLEAN_FRACTION (the median is then over all repeats).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    x = _example(model, input_shape, batch_size)
    with _eval_mode(model), _threads(threads) as used:
        wall, cpu = _timed_runs(model, x, warmup, repeats)
    summary = latency_summary(wall, cpu if x.device.type == "cpu" else None)
    return {"median_ms": summary.pop("median_ms"), "iqr_ms": summary.pop("iqr_ms"), "threads": used,
            "batch_size": batch_size, "device": str(x.device), **summary}


def measure_throughput(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 256,
    threads: int | None = None,
    repeats: int = 5,
) -> dict:
    """Images per second at `batch_size`, from the median of `repeats` timed batches (after 2 warm-up batches)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    x = _example(model, input_shape, batch_size)
    with _eval_mode(model), _threads(threads) as used:
        median_s = float(np.median(_timed_runs(model, x, warmup=2, repeats=repeats)[0]))
    return {"images_per_s": batch_size / median_s, "batch_size": batch_size, "threads": used}

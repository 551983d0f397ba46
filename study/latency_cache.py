"""Latency and throughput measured once per architecture, one measurement at a time per machine.

Concurrent trials on one machine would otherwise time their models while the others train, and two trials of the
same architecture would get different numbers from noise alone (and both sit on the Pareto front for it). Here:
- a measurement runs under a machine-wide file lock, so two trials never time at the same moment;
- the result is cached under a key of the model's tensor shapes, the device, the thread count, the batch size and
  the repeat count, so every trial with the same architecture reports the same number. Unstructured pruning keeps
  the dense shapes, so it gets the dense latency: sparsity brings no speed-up on dense kernels.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import torch
import torch.nn as nn
from filelock import FileLock

from study.io import write_json_atomic
from study.measure import measure_latency, measure_throughput

CACHE_VERSION = 1


def cpu_name() -> str:
    """The CPU's model name (part of every latency key; benchmarks print it beside their ratios)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def architecture_key(model: nn.Module, input_shape: tuple, device: torch.device, threads: int | None,
                     kind: str, batch_size: int, repeats: int) -> str:
    shapes = [(k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    payload = json.dumps([CACHE_VERSION, type(model).__name__, shapes, list(input_shape), device.type, dev,
                          threads or torch.get_num_threads(), kind, batch_size, repeats, torch.__version__])
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _cached(cache_dir: Path, key: str, measure) -> dict:
    folder = cache_dir / "latency"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    if path.exists():
        try:
            return {**json.loads(path.read_text()), "cached": True}
        except (OSError, ValueError):
            pass
    with FileLock(str(folder / ".measure.lock")):  # one timing at a time on this machine
        if path.exists():
            try:
                return {**json.loads(path.read_text()), "cached": True}
            except (OSError, ValueError):
                pass  # unreadable (a damaged cache file): measured again and replaced below
        result = measure()
        write_json_atomic(path, result)
        return {**result, "cached": False}


def latency(model: nn.Module, input_shape: tuple, *, device: torch.device, threads: int | None, repeats: int,
            cache_dir: Path) -> dict:
    """Batch-1 latency (median_ms, iqr_ms, threads, device) of `model` on `device`, measured once per architecture."""
    model = model.to(device)
    key = architecture_key(model, input_shape, device, threads, "latency", 1, repeats)
    return _cached(cache_dir, key, lambda: measure_latency(model, input_shape, batch_size=1, threads=threads,
                                                           repeats=repeats))


def throughput(model: nn.Module, input_shape: tuple, *, device: torch.device, threads: int | None, batch_size: int,
               cache_dir: Path) -> dict:
    """Images/s at `batch_size` on `device`, measured once per architecture."""
    model = model.to(device)
    key = architecture_key(model, input_shape, device, threads, "throughput", batch_size, 5)
    return _cached(cache_dir, key, lambda: measure_throughput(model, input_shape, batch_size=batch_size,
                                                              threads=threads))

"""Latency and throughput measured once per architecture, one measurement at a time per machine.

Concurrent trials on one machine would otherwise time their models while the others train, and two trials of the
same architecture would get different numbers from noise alone (and both sit on the Pareto front for it). Here:
- a measurement runs under a machine-wide file lock, so two trials never time at the same moment;
- the result is cached under a key of the model's tensor shapes, the device (and the CPU ISA torch and oneDNN
  may use), the thread count, the batch size and the repeat count, so every trial with the same architecture
  reports the same number. Unstructured pruning keeps the dense shapes, so it gets the dense latency: sparsity
  brings no speed-up on dense kernels;
- a latency measured while another process took the core (study.measure.timing: repeats whose thread was descheduled
  are dropped; `interfered` when most were) is cached with that flag and measured again by the next trial that
  asks, up to MAX_ATTEMPTS times in all, keeping the better measurement: a busy moment on a shared machine no
  longer decides an architecture's latency for the whole study. Every entry keeps its IQR, clean fraction and
  attempt count.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeGuard

import torch
import torch.nn as nn
from filelock import FileLock

from study.core.io import write_json_atomic
from study.measure.timing import measure_latency, measure_throughput

CACHE_VERSION = 2  # 2: entries carry interference flags (study.measure.timing)
MAX_ATTEMPTS = 3  # measurements of one architecture while each found the machine busy


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
                     kind: str, batch_size: int, repeats: int, backend: str = "torch") -> str:
    """The cache key of one timing: a hash of the layer shapes and dtypes, the device (the CPU's model name), the
    kernels torch may use, the runtime and its version, the threads, and what is timed how."""
    shapes = [(k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    # the kernels torch and oneDNN may use here: ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA change the timings
    isa = [torch.backends.cpu.get_cpu_capability(), os.environ.get("ONEDNN_MAX_CPU_ISA", "")]
    runtime: str | list = torch.__version__  # torch: the key as before ONNX Runtime existed (caches stay valid)
    if backend != "torch":  # onnxruntime (fp32) or onnxruntime-int8: its version decides the kernels
        from study.measure.onnx import ort_version

        runtime = [backend, torch.__version__, ort_version()]
    payload = json.dumps([CACHE_VERSION, type(model).__name__, shapes, list(input_shape), device.type, dev, isa,
                          threads or torch.get_num_threads(), kind, batch_size, repeats, runtime])
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None  # unreadable (a damaged cache file): measured again and replaced


def _final(entry: dict | None) -> TypeGuard[dict]:
    """A cache entry that stands: a clean measurement, or one re-tried MAX_ATTEMPTS times."""
    return entry is not None and (not entry.get("interfered") or entry.get("attempts", 1) >= MAX_ATTEMPTS)


def _better(old: dict, new: dict) -> dict:
    """Of two measurements of one model: a clean one over an interfered one, else the faster (interference
    only ever adds time)."""
    if old.get("interfered") != new.get("interfered"):
        return old if new.get("interfered") else new
    key = "median_ms" if "median_ms" in new else "images_per_s"
    faster = min if key == "median_ms" else max
    return faster(old, new, key=lambda e: e.get(key, float("nan")))


def _cached(cache_dir: Path, key: str, measure) -> dict:
    folder = cache_dir / "latency"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    entry = _read(path)
    if _final(entry):
        return {**entry, "cached": True}
    with FileLock(str(folder / ".measure.lock")):  # one timing at a time on this machine
        entry = _read(path)
        if _final(entry):
            return {**entry, "cached": True}
        result = {**measure(), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        attempts = (entry.get("attempts", 1) + 1) if entry else 1
        result = {**(_better(entry, result) if entry else result), "attempts": attempts}
        write_json_atomic(path, result)
        return {**result, "cached": False}


BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")


def _measure(backend: str, model: nn.Module, input_shape: tuple, threads: int | None, kind: str, amount: int,
             onnx_file: Callable[[], Path] | None) -> Callable[[], dict]:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        if kind == "latency":
            return lambda: measure_latency(model, input_shape, batch_size=1, threads=threads, repeats=amount)
        return lambda: measure_throughput(model, input_shape, batch_size=amount, threads=threads)
    if onnx_file is None:
        raise ValueError(f"backend {backend} needs onnx_file")

    def run() -> dict:
        from study.measure import onnx as onnx_backend

        sess = onnx_backend.session(onnx_file(), threads)
        if kind == "latency":
            return {**onnx_backend.measure_latency(sess, input_shape, batch_size=1, repeats=amount), "backend": backend}
        return onnx_backend.measure_throughput(sess, input_shape, batch_size=amount)
    return run


def _placed(model: nn.Module, device: torch.device, backend: str) -> tuple[nn.Module, torch.device]:
    """Where a backend times: eager PyTorch on `device` (the model moved there), ONNX Runtime on the CPU."""
    return (model.to(device), device) if backend == "torch" else (model, torch.device("cpu"))


def latency(model: nn.Module, input_shape: tuple, *, device: torch.device, threads: int | None, repeats: int,
            cache_dir: Path, backend: str = "torch", onnx_file: Callable[[], Path] | None = None) -> dict:
    """Batch-1 latency (median_ms, iqr_ms, threads, device) of `model`, measured once per architecture.

    backend torch: eager PyTorch on `device`. onnxruntime / onnxruntime-int8: ONNX Runtime's CPU execution
    provider on the file `onnx_file()` returns (called only on a cache miss; the fp32 or int8 export of `model`,
    whose shapes make the key)."""
    model, device = _placed(model, device, backend)
    key = architecture_key(model, input_shape, device, threads, "latency", 1, repeats, backend)
    return _cached(cache_dir, key, _measure(backend, model, input_shape, threads, "latency", repeats, onnx_file))


def throughput(model: nn.Module, input_shape: tuple, *, device: torch.device, threads: int | None, batch_size: int,
               cache_dir: Path, backend: str = "torch", onnx_file: Callable[[], Path] | None = None) -> dict:
    """Images/s at `batch_size`, measured once per architecture (backends as for `latency`)."""
    model, device = _placed(model, device, backend)
    key = architecture_key(model, input_shape, device, threads, "throughput", batch_size, 5, backend)
    return _cached(cache_dir, key, _measure(backend, model, input_shape, threads, "throughput", batch_size,
                                            onnx_file))

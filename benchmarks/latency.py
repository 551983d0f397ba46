"""Re-measure latency of several saved models under identical conditions: one process, same threads, interleaved.

Every model is loaded first, warmed up once, then timed round-robin: in each round every model gets one burst of
`repeats` batch-1 forward passes (after `round_warmup` untimed ones, since the previous model evicted its caches),
and the order rotates from round to round so that no model always runs first. Reported per model:
- `latency_ms_bs1_remeasured`: median over rounds of each burst's median (ms, batch 1);
- `latency_iqr_ms_bs1_remeasured`: median over rounds of each burst's IQR (p75 - p25, ms);
- `throughput_ips_remeasured`: median over rounds of images/s at `throughput_batch`.
Model loading and timing come from study.models.checkpoint / study.measure.timing
(imported only when used, so that reading results never needs torch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

LATENCY_COL = "latency_ms_bs1_remeasured"
IQR_COL = "latency_iqr_ms_bs1_remeasured"
THROUGHPUT_COL = "throughput_ips_remeasured"


def remeasure(
    checkpoints: Mapping[str, str | Path],
    *,
    rounds: int = 5,
    warmup: int = 10,
    round_warmup: int = 2,
    repeats: int = 20,
    threads: int | None = None,
    throughput_batch: int = 256,
    throughput_repeats: int = 3,
    log: Callable[[str], None] = print,
    load_model: Callable[..., Any] | None = None,
    measure_latency: Callable[..., dict] | None = None,
    measure_throughput: Callable[..., dict] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Time every checkpoint in `checkpoints` (key -> model.pt path) interleaved; returns (per-key results, info).

    A checkpoint that cannot be loaded is skipped with a note through `log`. `info` records device, threads, batch
    sizes and the protocol, for benchmark.json. The three callables default to the study's own functions.
    """
    if rounds < 1 or repeats < 1:
        raise ValueError("rounds and repeats must be >= 1")
    if load_model is None or measure_latency is None or measure_throughput is None:
        from study.measure import timing as measure
        from study.models import checkpoint

        load_model = load_model or checkpoint.load_model
        measure_latency = measure_latency or measure.measure_latency
        measure_throughput = measure_throughput or measure.measure_throughput
    models = _load_models(checkpoints, load_model, log)
    info: dict[str, Any] = {
        "models": list(models),
        "rounds": rounds,
        "warmup": warmup,
        "round_warmup": round_warmup,
        "repeats_per_round": repeats,
        "batch_sizes": [1, throughput_batch],
        "throughput_batch": throughput_batch,
        "method": "interleaved round-robin, rotating order; median over rounds of per-burst medians",
        "device": None,
        "threads": threads,
    }
    if not models:
        return {}, info
    for model, shape in models.values():  # one warm-up each before any is timed
        measure_latency(model, shape, batch_size=1, threads=threads, warmup=warmup, repeats=1)
    lat, iqr = _time_latency_rounds(models, measure_latency, info, rounds=rounds, round_warmup=round_warmup,
                                    repeats=repeats, threads=threads)
    ips = _time_throughput_rounds(models, measure_throughput, rounds=min(rounds, throughput_repeats),
                                  batch=throughput_batch, threads=threads)
    results = {
        k: {
            LATENCY_COL: float(np.median(lat[k])),
            IQR_COL: float(np.median(iqr[k])),
            THROUGHPUT_COL: float(np.median(ips[k])) if ips[k] else float("nan"),
        }
        for k in models
    }
    return results, info


Model = tuple[Any, tuple[int, ...]]  # a loaded model and its input shape (C, H, W)


def _load_models(checkpoints: Mapping[str, str | Path], load_model: Callable[..., Any],
                 log: Callable[[str], None]) -> dict[str, Model]:
    """Every checkpoint that loads, by key, with its input shape; the others skipped with a note."""
    from study.core.errors import UserError

    models: dict[str, Model] = {}
    for key, path in checkpoints.items():
        try:
            model, meta = load_model(path)
        except UserError as e:
            log(f"note: latency of {key} not re-measured: {e}")
            continue
        models[key] = (model, tuple(meta["input_shape"]))
    return models


def _rotated(keys: list[str], r: int) -> list[str]:
    """The keys in round r's order: rotated by r, so that no model always runs first."""
    return keys[r % len(keys):] + keys[: r % len(keys)]


def _time_latency_rounds(models: dict[str, Model], measure_latency: Callable[..., dict], info: dict[str, Any], *,
                         rounds: int, round_warmup: int, repeats: int,
                         threads: int | None) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per model, each round's burst median and IQR of batch-1 latency (ms); records the device and threads the
    timing used in `info`."""
    keys = list(models)
    lat: dict[str, list[float]] = {k: [] for k in keys}
    iqr: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        for key in _rotated(keys, r):
            model, shape = models[key]
            res = measure_latency(model, shape, batch_size=1, threads=threads, warmup=round_warmup, repeats=repeats)
            lat[key].append(float(res["median_ms"]))
            iqr[key].append(float(res["iqr_ms"]))
            info["device"], info["threads"] = res.get("device"), res.get("threads", threads)
    return lat, iqr


def _time_throughput_rounds(models: dict[str, Model], measure_throughput: Callable[..., dict], *, rounds: int,
                            batch: int, threads: int | None) -> dict[str, list[float]]:
    """Per model, each round's images/s at batch size `batch`."""
    keys = list(models)
    ips: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        for key in _rotated(keys, r):
            model, shape = models[key]
            res = measure_throughput(model, shape, batch_size=batch, threads=threads, repeats=3)
            ips[key].append(float(res["images_per_s"]))
    return ips

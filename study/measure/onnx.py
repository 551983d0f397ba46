"""ONNX export, ONNX Runtime inference and latency, and int8 post-training quantization.

The students a study finds are small, and PyTorch eager at batch 1 times mostly Python and dispatch overhead for
them (measured side by side with ONNX Runtime in docs/RUNTIMES.md).
With `latency_backend: onnxruntime` a trial is timed where such models are served: exported to ONNX, checked
against PyTorch, and run by ONNX Runtime's CPU execution provider with the trial's thread count and every graph
optimisation on.

- Export: torch's TorchScript-based exporter (`dynamo=False`) while torch has it: it is several times faster than the
  torch.export-based one (docs/RUNTIMES.md), and a trial exports once or twice.
  Torch deprecates it (2.9+); where it is gone or cannot export a model, `export_onnx` uses the torch.export-based
  exporter (`dynamo=True`, needs onnxscript). Both are public `torch.onnx.export` modes; the exporter used is
  recorded. The batch dimension is dynamic.
- Match check: ONNX Runtime's logits on a batch of real images must satisfy |ort - torch| <= ATOL + RTOL * |torch|
  elementwise (fp32; graph fusions reorder float sums), else the trial fails with the largest difference.
- int8: ONNX Runtime's static quantization (`quantize_static`, QDQ format, per-channel int8 weights, uint8
  activations, MinMax calibration) on a fixed, seeded sample of training images (centre crops, no augmentation),
  after `quant_pre_process`. A quantized model runs only in ONNX Runtime, so its accuracy is measured there.
- Latency: the same protocol and interference check as study.measure.timing (median and IQR of batch-1 runs; repeats
  in which the calling thread was descheduled are dropped). With one intra-op thread ONNX Runtime runs the graph on
  the calling thread; with more, the calling thread is one of the pool's workers, as in torch.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from study.core.io import write_path_atomic
from study.measure.timing import latency_summary, time_calls

OPSET = 17
ATOL, RTOL = 1e-4, 1e-3  # fp32 ONNX Runtime vs PyTorch logits
INPUT, OUTPUT = "x", "logits"


def ort_version() -> str:
    """The installed ONNX Runtime's version (onnxruntime imported only when asked)."""
    import onnxruntime

    return onnxruntime.__version__


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path, exporter: str = "auto") -> str:
    """Write `model` (a CPU fp32 copy, eval mode) to `path` as ONNX with a dynamic batch dimension, atomically.
    exporter: auto (TorchScript-based, else torch.export-based), torchscript or dynamo. Returns the one used."""
    net = copy.deepcopy(model).cpu().float().eval()
    x = torch.zeros((1, *tuple(input_shape)[-3:]))
    if exporter in ("auto", "torchscript"):
        try:
            write_path_atomic(path, lambda p: _export_torchscript(net, x, p))
            return "torchscript"
        except Exception:
            if exporter == "torchscript":
                raise
    write_path_atomic(path, lambda p: _export_dynamo(net, x, p))
    return "dynamo"


def _export_torchscript(net: nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        # torch 2.9+ warns on every call that this exporter is deprecated (see the module docstring)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=OPSET, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})


def _export_dynamo(net: nn.Module, x: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(net, (x,), dynamo=True, opset_version=max(OPSET, 18), input_names=[INPUT],
                                output_names=[OUTPUT], dynamic_shapes={"x": {0: batch}}, verbose=False)
    if program is None:  # torch.onnx.export returns None only for dynamo=False
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNX program")
    program.save(str(path))


def export_checked(model: nn.Module, input_shape: tuple[int, ...], path: Path, x: torch.Tensor,
                   threads: int | None = None) -> tuple[str, dict, object]:
    """export_onnx, then check_matches on `x`: (exporter, check, session), or RuntimeError naming the file, the
    largest difference and the tolerance when ONNX Runtime's logits differ from PyTorch's."""
    exporter = export_onnx(model, input_shape, path)
    sess = session(path, threads)
    check = check_matches(sess, model, x)
    if not check["ok"]:
        raise RuntimeError(f"{Path(path).name}: ONNX Runtime's logits differ from PyTorch's on {check['images']} "
                           f"images (max |difference| {check['max_abs_diff']:.2e}, tolerance {ATOL:g} + {RTOL:g} "
                           f"* |logit|; exporter {exporter}): the ONNX export is wrong")
    return exporter, check, sess


def session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session: `threads` intra-op threads (None: torch's current count), one inter-op
    thread, every graph optimisation on."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: the quantized graphs print a note per fused node otherwise
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        from study.core.errors import UserError

        raise UserError(f"{path}: ONNX Runtime cannot load this file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]}); export the model again.") from None


def session_threads(sess) -> int:
    """The intra-op thread count an ONNX Runtime session runs with."""
    return int(sess.get_session_options().intra_op_num_threads)


def predict(sess, x: torch.Tensor | np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Logits (N, K) of normalised float inputs (N, C, H, W), in batches."""
    arr = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: arr[i:i + batch_size]})[0] for i in range(0, len(arr),
                                                                                         batch_size)])


def accuracy(sess, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy in percent, as study.training.loop.evaluate computes it for PyTorch."""
    pred = predict(sess, x, batch_size).argmax(1)
    return 100.0 * float((pred == y.cpu().numpy()).sum()) / max(1, len(pred))


def check_matches(sess, model: nn.Module, x: torch.Tensor) -> dict:
    """Compare ONNX Runtime's fp32 logits with PyTorch's on `x`; ok when every element is within ATOL + RTOL*|ref|."""
    net = copy.deepcopy(model).cpu().float().eval()
    with torch.inference_mode():
        ref = net(x.cpu().float()).numpy()
    got = predict(sess, x)
    diff = np.abs(got - ref)
    return {"max_abs_diff": float(diff.max()), "ok": bool((diff <= ATOL + RTOL * np.abs(ref)).all()),
            "argmax_equal": float((got.argmax(1) == ref.argmax(1)).mean()), "images": int(len(x)),
            "atol": ATOL, "rtol": RTOL}


def calibration_sample(train_x: torch.Tensor, pad: int, mean: torch.Tensor, std: torch.Tensor, count: int,
                       seed: int) -> torch.Tensor:
    """`count` training images picked by `seed` (the same for every trial with that seed), centre crops of the
    padded uint8 training tensor, normalised: float32 (count, C, H, W) on the CPU."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(train_x.shape[0], generator=g)[:count]
    x = train_x[idx.to(train_x.device)].cpu()
    if pad:
        x = x[:, :, pad:-pad, pad:-pad]
    return (x.float() / 255.0 - mean.cpu()) / std.cpu()


def quantize_int8(fp32_path: Path, out_path: Path, calibration: torch.Tensor, batch_size: int = 32) -> None:
    """Static int8 quantization of an fp32 ONNX file (QDQ, per-channel int8 weights, uint8 activations,
    MinMax calibration on `calibration`, normalised float (N, C, H, W)), written atomically to out_path."""
    from onnxruntime import quantization as q

    arr = calibration.detach().cpu().float().numpy()

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT: arr[i:i + batch_size]} for i in range(0, len(arr), batch_size)])

        def get_next(self):
            return next(self.batches, None)

    def write(tmp: Path) -> None:
        prep = tmp.with_name(tmp.stem + ".prep.onnx")
        try:
            q.quant_pre_process(str(fp32_path), str(prep), skip_symbolic_shape=True)
            q.quantize_static(str(prep), str(tmp), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                              calibrate_method=q.CalibrationMethod.MinMax)
        finally:
            prep.unlink(missing_ok=True)

    write_path_atomic(out_path, write)


def _example(input_shape: tuple[int, ...], batch_size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch_size, *tuple(input_shape)[-3:])).astype(np.float32)


# ONNX Runtime runs these students in tens of microseconds, so a few dozen repeats time about a millisecond in all,
# and a new session is slower for its first few hundred calls (docs/RUNTIMES.md, "Warm-up of a new ONNX Runtime
# session"). So both the warm-up and the timed part run for at least this long.
MIN_WARMUP_S, MIN_TIMED_S, MAX_REPEATS = 0.03, 0.1, 100_000


def measure_latency(sess, input_shape: tuple[int, ...], batch_size: int = 1, warmup: int = 10,
                    repeats: int = 50, min_warmup_s: float = MIN_WARMUP_S, min_timed_s: float = MIN_TIMED_S) -> dict:
    """Batch-`batch_size` latency of an ONNX Runtime session: median and IQR in ms, as study.measure.timing reports it.
    At least `warmup` untimed and `repeats` timed calls, more where they take under min_warmup_s / min_timed_s."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    feed = {sess.get_inputs()[0].name: _example(input_shape, batch_size)}
    start, calls = time.perf_counter(), 0
    while calls < warmup or time.perf_counter() - start < min_warmup_s:
        sess.run(None, feed)
        calls += 1
    per_call = (time.perf_counter() - start) / max(calls, 1)
    repeats = int(min(MAX_REPEATS, max(repeats, math.ceil(min_timed_s / max(per_call, 1e-7)))))
    wall, cpu = time_calls(lambda: sess.run(None, feed), 0, repeats)
    summary = latency_summary(wall, cpu)
    return {"median_ms": summary.pop("median_ms"), "iqr_ms": summary.pop("iqr_ms"),
            "threads": session_threads(sess), "batch_size": batch_size, "device": "cpu",
            "backend": "onnxruntime", "onnxruntime_version": ort_version(), **summary}


def measure_throughput(sess, input_shape: tuple[int, ...], batch_size: int = 256, repeats: int = 5) -> dict:
    """Images per second at `batch_size` (median of `repeats` timed batches after 2 warm-up batches)."""
    feed = {sess.get_inputs()[0].name: _example(input_shape, batch_size)}
    wall, _ = time_calls(lambda: sess.run(None, feed), 2, repeats)
    return {"images_per_s": batch_size / float(np.median(wall)), "batch_size": batch_size,
            "threads": session_threads(sess)}


class OrtModel:
    """An ONNX file opened for benchmarks.latency's interleaved re-measurement (same call shape as a torch model's
    measure functions: `measure_latency(model, shape, batch_size=, threads=, warmup=, repeats=)`)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path, self.threads = Path(path), threads
        self.sess = session(self.path, threads)
        self.warmed = False  # the first measurement of a session gets the full warm-up

    def for_threads(self, threads: int | None):
        """The session to time with `threads` threads (None: the current one), opened again (and warmed up
        afresh) when the count changes."""
        if threads is not None and threads != session_threads(self.sess):
            self.sess, self.threads, self.warmed = session(self.path, threads), threads, False
        return self.sess


def remeasure_latency(model: OrtModel, input_shape, batch_size: int = 1, threads: int | None = None,
                      warmup: int = 10, repeats: int = 50) -> dict:
    """benchmarks.latency calls this once per model to warm it up, then once per round: the first call on a
    session gets the full MIN_WARMUP_S warm-up, every later one bursts of at least 20 ms (whose medians the caller
    takes the median of)."""
    sess = model.for_threads(threads)
    first, model.warmed = not model.warmed, True
    return measure_latency(sess, input_shape, batch_size, warmup, repeats,
                           min_warmup_s=MIN_WARMUP_S if first else 0.0, min_timed_s=0.0 if first else 0.02)


def remeasure_throughput(model: OrtModel, input_shape, batch_size: int = 256, threads: int | None = None,
                         repeats: int = 5) -> dict:
    """benchmarks.latency's throughput call: images/s of `model`'s session at `batch_size` with `threads`."""
    return measure_throughput(model.for_threads(threads), input_shape, batch_size, repeats)


def open_for_remeasure(model_pt: Path, work_dir: Path) -> tuple[OrtModel, dict]:
    """The ONNX file a trial deployed beside its model.pt (model_int8.onnx, else model.onnx), or, for a trial
    timed with torch, model.pt exported into work_dir; returns (OrtModel, meta with input_shape)."""
    from study.models.checkpoint import load_model

    folder = Path(model_pt).parent
    found = [folder / n for n in ("model_int8.onnx", "model.onnx") if (folder / n).is_file()]
    if found:
        model = OrtModel(found[0])
        shape = [int(d) for d in model.sess.get_inputs()[0].shape[1:]]
        return model, {"input_shape": shape, "onnx_file": str(found[0])}
    from study.core.errors import UserError

    net, meta = load_model(model_pt)
    path = Path(work_dir) / f"{abs(hash(str(model_pt)))}.onnx"
    try:
        export_onnx(net, tuple(meta["input_shape"]), path)
    except Exception as exc:  # noqa: BLE001  one model that does not export must not stop the others' timing
        raise UserError(f"{model_pt}: cannot be exported to ONNX for ONNX Runtime ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    return OrtModel(path), {**meta, "onnx_file": "exported from model.pt for this measurement"}

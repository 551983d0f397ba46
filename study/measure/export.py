"""Export a trained (possibly pruned) student so it runs with torch alone (`torch.export` program) or with ONNX
Runtime alone (ONNX file), with a model card.

Why torch.export: in torch 2.14 `torch.jit.trace/save/load` warn that TorchScript is deprecated. The exported
program keeps the pruned layer shapes, takes any batch size (dynamic batch dimension) and loads with
`torch.export.load(path).module()`; no class from this project is needed. The network expects NORMALISED input,
x = (pixels / 255 - mean) / std per channel; mean and std travel inside the file (extra file `kdstudy.json`),
in meta.json, in the model card and in predict.py.

Files written to the export folder (each atomically):
  model.pt2            the exported program (torch.export.save), meta embedded as extra file kdstudy.json
  meta.json            the same meta: data set, classes, input shape, mean/std, metrics, config
  example_images.pt    a few test images, uint8 (N, C, H, W), saved with torch.save (a plain tensor)
  example_logits.pt    the trained model's logits for them (float32 (N, K)), to check a copy of the export
  predict.py           a short script that imports only torch and runs the export
  model.onnx           the same network as ONNX (study.measure.onnx.export_onnx), checked against PyTorch in
                       ONNX Runtime; model_int8.onnx too for a quantized trial (the trial's own quantized file)
  example_images.npy   the example images, example_logits.npy / example_logits_int8.npy the recorded logits
  predict_onnx.py      a short script that imports only onnxruntime and numpy and runs model.onnx / model_int8.onnx
  model_card.md        what the model is, how it was made, its metrics (mean +- std over seeds)
"""

from __future__ import annotations

import copy
import json
import shutil
import statistics
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from study.core.fmt import fmt_value
from study.core.io import write_json_atomic, write_path_atomic, write_text_atomic

if TYPE_CHECKING:
    import torch
    from torch import nn

META_NAME = "kdstudy.json"  # extra file inside model.pt2
# The texts below are shared with the result pipeline and the report, which import them without loading torch:
# this module imports torch inside the functions that export.
KD_CONVENTION = "L = alpha * CE(student, y) + (1 - alpha) * D(student, teacher)"
KD_TERMS = {  # the distillation term D of each kd_loss (study/training/losses.py)
    "kd": "D = T^2 * KL(softmax(teacher/T) || softmax(student/T))",
    "kd_ls": "D = T^2 * KL on z-score standardised logits (logit standardisation, Sun et al. 2024)",
    "dkd": "D = T^2 * (target-vs-rest KL + dkd_beta * non-target KL) (decoupled KD, Zhao et al. 2022)",
    "ce": "no distillation term: plain cross-entropy, no teacher",
}
# What unstructured pruning does and does not buy: results.csv's `note` on such rows, the report, the model card.
UNSTRUCTURED_NOTE = ("unstructured sparsity: fewer nonzero_params, same dense shapes and kernels; "
                     "no latency gain")


def normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, C, H, W) pixels -> the normalised float input the network expects (as in study.training.loop)."""
    import torch

    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s


def export_model(model: nn.Module, out_dir: Path, *, meta: dict, example_images: torch.Tensor,
                 int8_file: Path | None = None, threads: int | None = None) -> dict:
    """Export `model` (eval mode, CPU, fp32, dynamic batch) to out_dir/model.pt2 and model.onnx, and check both.

    meta must hold "mean", "std" and "input_shape"; it is embedded in the file and written to meta.json.
    The saved program is loaded back and run on `example_images` (uint8); returns where it went and how
    closely the copy matches the model. int8_file (the trial's quantized ONNX model) is copied in as
    model_int8.onnx. ONNX Runtime's batch-1 latency of the ONNX files is measured with `threads` threads.
    """
    import torch

    out_dir = Path(out_dir)
    net = copy.deepcopy(model).cpu().float().eval()
    x = normalise(example_images, meta["mean"], meta["std"])  # (N, C, H, W) float32
    with torch.inference_mode():
        expected = net(x).clone()  # (N, K)
    batch = torch.export.Dim("batch", min=1)
    # strict=False traces with Python semantics (no TorchDynamo), enough for these plain feed-forward nets.
    program = torch.export.export(net, (x,), dynamic_shapes={"x": {0: batch}}, strict=False)
    text = json.dumps(meta, indent=2, default=str)
    write_path_atomic(out_dir / "model.pt2", lambda p: torch.export.save(program, p, extra_files={META_NAME: text}))

    loaded = torch.export.load(out_dir / "model.pt2").module()
    with torch.no_grad():
        got = loaded(x)
        one = loaded(x[:1])  # batch 1 must work too (the batch dimension is dynamic)
    info = {
        "format": "torch.export", "file": "model.pt2", "torch_version": torch.__version__,
        "max_abs_diff": float((got - expected).abs().max()), "argmax_equal": bool((got.argmax(1) ==
                                                                                   expected.argmax(1)).all()),
        "batch1_ok": bool(torch.allclose(one, expected[:1], atol=1e-5, rtol=1e-5)),
    }
    write_path_atomic(out_dir / "example_images.pt", lambda p: torch.save(example_images.clone(), p))
    write_path_atomic(out_dir / "example_logits.pt", lambda p: torch.save(expected, p))
    write_json_atomic(out_dir / "meta.json", meta)
    write_text_atomic(out_dir / "predict.py", PREDICT_PY.replace(NORMALIZATION_MARK, normalization_line(meta)))
    info["onnx"] = _export_onnx(net, out_dir, x, expected, example_images, int8_file, threads,
                                normalization_line(meta))
    return info


def _export_onnx(net: nn.Module, out_dir: Path, x: torch.Tensor, expected: torch.Tensor,
                 example_images: torch.Tensor, int8_file: Path | None, threads: int | None,
                 normalization: str = "") -> dict:
    """model.onnx (+ model_int8.onnx), example images and logits as .npy, predict_onnx.py; checked and timed."""
    import numpy as np

    from study.measure import onnx as onnx_backend

    shape = tuple(x.shape[1:])
    exporter, check, sess = onnx_backend.export_checked(net, shape, out_dir / "model.onnx", x, threads)
    info = {"file": "model.onnx", "exporter": exporter, "opset": onnx_backend.OPSET,
            "onnxruntime_version": onnx_backend.ort_version(), "max_abs_diff": check["max_abs_diff"],
            "tolerance": f"|ort - torch| <= {onnx_backend.ATOL:g} + {onnx_backend.RTOL:g} * |torch|",
            "latency_ms_bs1": {"onnxruntime": onnx_backend.measure_latency(sess, shape, repeats=200)["median_ms"]},
            "latency_threads": onnx_backend.session_threads(sess)}
    write_path_atomic(out_dir / "example_images.npy", lambda p: np.save(p, example_images.cpu().numpy()))
    write_path_atomic(out_dir / "example_logits.npy", lambda p: np.save(p, expected.numpy()))
    if int8_file is not None:
        write_path_atomic(out_dir / "model_int8.onnx", partial(_copy_file, int8_file))
        qsess = onnx_backend.session(out_dir / "model_int8.onnx", threads)
        q_logits = onnx_backend.predict(qsess, x)
        write_path_atomic(out_dir / "example_logits_int8.npy", lambda p: np.save(p, q_logits))
        info["int8_file"] = "model_int8.onnx"
        info["int8_argmax_equal_fp32"] = float((q_logits.argmax(1) == expected.numpy().argmax(1)).mean())
        info["latency_ms_bs1"]["onnxruntime-int8"] = onnx_backend.measure_latency(qsess, shape,
                                                                                   repeats=200)["median_ms"]
    write_text_atomic(out_dir / "predict_onnx.py", PREDICT_ONNX_PY.replace(NORMALIZATION_MARK, normalization))
    return info


def _copy_file(source: Path, dest: Path) -> None:
    """Copy `source` to `dest` (a writer for write_path_atomic)."""
    shutil.copyfile(source, dest)


NORMALIZATION_MARK = "@NORMALIZATION@"


def normalization_line(meta: dict) -> str:
    """The input normalisation, as the predict scripts' docstrings state it."""
    name = meta.get("normalize") or "dataset"
    return (f"Input normalisation: {name} (the teacher's; meta.json \"normalize\"): x = (pixels / 255 - mean) / std, "
            f"mean {[round(float(v), 6) for v in meta['mean']]}, std {[round(float(v), 6) for v in meta['std']]}.")


PREDICT_PY = '''"""Run the exported model with torch alone (no other package, nothing from the project that made it).

    python predict.py               check: run the bundled example images, compare with the recorded logits
    python predict.py IMAGES.pt     classify a tensor saved with torch.save: uint8 (N, C, H, W) pixels 0-255,
                                    or float (N, C, H, W) already scaled to 0-1; prints one class index a line

@NORMALIZATION@
"""

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
extra = {"kdstudy.json": ""}
model = torch.export.load(HERE / "model.pt2", extra_files=extra).module()  # already in eval mode
meta = json.loads(extra["kdstudy.json"])
MEAN = torch.tensor(meta["mean"], dtype=torch.float32).view(1, -1, 1, 1)
STD = torch.tensor(meta["std"], dtype=torch.float32).view(1, -1, 1, 1)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """Pixels -> the normalised input the network was trained on: (x / 255 - mean) / std per channel."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return (x - MEAN) / STD


def predict(images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(preprocess(images))  # (N, num_classes) logits


if __name__ == "__main__":
    if len(sys.argv) > 1:
        for k in predict(torch.load(sys.argv[1], weights_only=True)).argmax(1).tolist():
            print(k)
    else:
        images = torch.load(HERE / "example_images.pt", weights_only=True)
        expected = torch.load(HERE / "example_logits.pt", weights_only=True)
        logits = predict(images)
        ok = torch.allclose(logits, expected, atol=1e-5, rtol=1e-5) and bool(
            (logits.argmax(1) == expected.argmax(1)).all())
        print(f"{meta['dataset']}: {len(images)} example images, predicted {logits.argmax(1).tolist()}, "
              f"max |logit difference| to the trained model {float((logits - expected).abs().max()):.2e}: "
              f"{'OK' if ok else 'MISMATCH'}")
        sys.exit(0 if ok else 1)
'''


PREDICT_ONNX_PY = '''"""Run the exported model with ONNX Runtime and numpy alone (no torch, nothing from this project).

    python predict_onnx.py              check: run the bundled example images, compare with the recorded logits
    python predict_onnx.py --int8       the same with model_int8.onnx (exported for quantized trials)
    python predict_onnx.py IMAGES.npy   classify an array saved with numpy.save: uint8 (N, C, H, W) pixels 0-255,
                                        or float (N, C, H, W) already scaled to 0-1; prints one class index a line
                                        (add --int8 to use the quantized model)

The fp32 check allows |logit - recorded| <= 1e-4 + 1e-3 * |recorded|. int8 kernels differ between CPUs (with
and without VNNI, for one), so the int8 check asks only that 90 % of the example predictions agree.

@NORMALIZATION@
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
META = json.loads((HERE / "meta.json").read_text())
MEAN = np.asarray(META["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
STD = np.asarray(META["std"], dtype=np.float32).reshape(1, -1, 1, 1)


def load(int8: bool = False) -> ort.InferenceSession:
    name = "model_int8.onnx" if int8 else "model.onnx"
    if not (HERE / name).is_file():
        sys.exit(f"{HERE / name} not found: this export has no int8 model (its trial was not quantized).")
    return ort.InferenceSession(str(HERE / name), providers=["CPUExecutionProvider"])


def preprocess(images: np.ndarray) -> np.ndarray:
    """Pixels -> the normalised input the network was trained on: (x / 255 - mean) / std per channel."""
    x = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
    return (x - MEAN) / STD


def predict(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: preprocess(images)})[0]  # (N, num_classes) logits


if __name__ == "__main__":
    int8 = "--int8" in sys.argv[1:]
    files = [a for a in sys.argv[1:] if a != "--int8"]
    session = load(int8)
    if files:
        for k in predict(session, np.load(files[0])).argmax(1).tolist():
            print(k)
        sys.exit(0)
    images = np.load(HERE / "example_images.npy")
    expected = np.load(HERE / ("example_logits_int8.npy" if int8 else "example_logits.npy"))
    logits = predict(session, images)
    agree = float((logits.argmax(1) == expected.argmax(1)).mean())
    diff = float(np.abs(logits - expected).max())
    ok = agree >= 0.9 if int8 else bool((np.abs(logits - expected) <= 1e-4 + 1e-3 * np.abs(expected)).all()
                                        and agree == 1.0)
    print(f"{META['dataset']}: {len(images)} example images ({'int8' if int8 else 'fp32'}), predicted "
          f"{logits.argmax(1).tolist()}, max |logit difference| to the recorded logits {diff:.2e}, "
          f"{agree:.0%} of predictions agree: {'OK' if ok else 'MISMATCH'}")
    sys.exit(0 if ok else 1)
'''


def _pm(mean: float | None, std: float | None, n: int, unit: str = "%") -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f}{unit} +- {std or 0.0:.2f}{unit} (n={n})"


def model_card(summary: dict, meta: dict, config: dict, exported_seed: int, exported_metrics: dict,
               export_info: dict) -> str:
    """A short markdown model card: use, data, metrics (mean +- std over seeds), costs, recipe, config."""
    lines = [*_card_use(summary, meta, config, export_info), *_card_data(meta, config),
             *_card_metrics(summary, config, exported_seed, exported_metrics),
             *_card_cost(summary, config, export_info), *_card_recipe(summary, config, export_info)]
    if summary.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in summary["warnings"]]
    lines += ["", "## Resolved config (seed of the exported model)", "", "```yaml",
              yaml.safe_dump({**config, "seed": exported_seed}, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def _card_use(summary: dict, meta: dict, c: dict, export_info: dict) -> list[str]:
    """The card's title, what the model is, and how to run it with torch or with ONNX Runtime."""
    n = len(summary["seeds"])
    return [
        f"# Model card: {c['student_arch']} x{c['width_mult']:g} on {meta['dataset']} "
        f"(run {summary['run_name']}, {summary.get('label') or 'trial ' + str(summary['trial'])})",
        "",
        "A student network found by a knowledge-distillation + pruning search and re-trained with "
        f"{n} seed(s) by `kdstudy reproduce`. This folder needs only torch {export_info['torch_version']} "
        "(or a compatible version) to run model.pt2, or only onnxruntime and numpy to run model.onnx"
        + (f" (ONNX Runtime {export_info['onnx']['onnxruntime_version']} made it)." if export_info.get("onnx")
           else "."),
        "",
        "## Use",
        "",
        "```python",
        "import torch",
        "model = torch.export.load(\"model.pt2\").module()  # eval mode, any batch size",
        f"mean = torch.tensor({list(meta['mean'])}).view(1, -1, 1, 1)",
        f"std = torch.tensor({list(meta['std'])}).view(1, -1, 1, 1)",
        "x = (images.float() / 255 - mean) / std  # images: uint8 (N, C, H, W)",
        f"logits = model(x)  # (N, {meta['num_classes']})",
        "```",
        "",
        "`python predict.py` checks the export on bundled example images; `python predict.py IMAGES.pt` classifies "
        "a saved tensor.",
        "",
        "With ONNX Runtime and numpy only (`model.onnx`, input name `x`, output `logits`, dynamic batch):",
        "",
        "```python",
        "import numpy as np, onnxruntime as ort",
        "session = ort.InferenceSession(\"model.onnx\", providers=[\"CPUExecutionProvider\"])",
        f"mean = np.asarray({list(meta['mean'])}, dtype=np.float32).reshape(1, -1, 1, 1)",
        f"std = np.asarray({list(meta['std'])}, dtype=np.float32).reshape(1, -1, 1, 1)",
        "logits = session.run(None, {\"x\": (images.astype(np.float32) / 255 - mean) / std})[0]",
        "```",
        "",
        "`python predict_onnx.py` checks it (`--int8` the quantized model, where there is one); "
        "`python predict_onnx.py IMAGES.npy` classifies a saved array.",
    ]


def _card_data(meta: dict, c: dict) -> list[str]:
    """The card's data section: data set, classes, input shape and normalisation, the splits."""
    return [
        "",
        "## Data",
        "",
        f"- Data set: `{meta['dataset']}`, {meta['num_classes']} classes (index = the data set's label index), "
        f"input (C, H, W) = {tuple(meta['input_shape'])}.",
        f"- Input normalisation: {meta.get('normalize') or 'dataset'} (the teacher's, which the student was trained "
        f"with): x = (pixels / 255 - mean) / std per channel, mean {list(meta['mean'])}, std {list(meta['std'])}.",
        f"- Validation split: {c['val_size']:g} of the training set, held out by seed (search objective); "
        "test split: the data set's test set, used only for reporting."
        + (f" Trained on a seeded, stratified subset of {c['train_size']:,} of the remaining training images "
           "(train_size)." if c.get("train_size") else ""),
    ]


def _card_metrics(summary: dict, c: dict, exported_seed: int, exported_metrics: dict) -> list[str]:
    """The card's metrics: accuracies reproduced (mean +- std over seeds), in the search, and of the exported seed."""
    n = len(summary["seeds"])
    return [
        "",
        "## Metrics",
        "",
        f"Over seeds {summary['seeds']} ({summary['seeds_vary']}); std is the sample std.",
        "",
        "| metric | reproduced (mean +- std) | search (one run) | this exported model (seed "
        f"{exported_seed}) |",
        "|---|---|---|---|",
        f"| test accuracy | {_pm(summary['test_acc_mean'], summary['test_acc_std'], n)} | "
        f"{fmt_value(summary.get('test_acc_search'), '.2f')}% | {exported_metrics['test_acc']:.2f}% |",
        f"| validation accuracy | {_pm(summary['val_acc_mean'], summary['val_acc_std'], n)} | "
        f"{fmt_value(summary.get('val_acc_search'), '.2f')}% | {exported_metrics['val_acc']:.2f}% |",
        *(["", f"Accuracies are the int8 model's (model_int8.onnx) in ONNX Runtime; the fp32 model (model.pt2, "
           f"model.onnx) tested {_pm(summary.get('test_acc_fp32_mean'), summary.get('test_acc_fp32_std'), n)} over "
           "the same seeds."] if c.get("quantize") == "int8" else []),
        "",
        f"Distillation budget: {summary['epochs']} epochs (search: {summary['epochs_search']})"
        + (" -- a longer/shorter budget than the search, so the difference is not a pure reproduction check."
           if summary["budget_changed"] else ".")
        + f" Test accuracy minus the search's: {fmt_value(summary.get('diff_test_acc'), '+.2f')} points.",
    ]


def _card_cost(summary: dict, c: dict, export_info: dict) -> list[str]:
    """The card's costs: parameters, MACs and batch-1 latency per runtime."""
    return [
        "",
        "## Cost",
        "",
        f"- Parameters: {fmt_value(summary['params'], ',')} (non-zero: {fmt_value(summary['nonzero_params'], ',')}).",
        f"- MACs (multiply-accumulates, batch 1): {fmt_value(summary['macs'], ',')}.",
        f"- Latency, batch 1, {_latency_where(summary, c)}, {summary.get('latency_backend_used') or 'torch'}, "
        f"eval mode: {summary['latency_ms_bs1']:.3f} ms median over seeds "
        f"({summary['latency_threads']} thread(s)) on the machine that ran the reproduction.",
        *_runtime_lines(summary, export_info.get("onnx")),
    ]


def _card_recipe(summary: dict, c: dict, export_info: dict) -> list[str]:
    """The card's recipe: teacher, distillation, pruning, fine-tuning, the command and the code version."""
    teacher = summary.get("teacher") or {}
    return [
        "",
        "## How it was made",
        "",
        f"- Teacher: {c['teacher_arch']} x{c['teacher_width']:g}, {c['teacher_epochs']} epochs"
        + (f", val_acc {teacher['val_acc']:.2f}%" if teacher.get("val_acc") is not None else "")
        + (f", sha256 `{teacher['sha256'][:16]}...`" if teacher.get("sha256") else "") + ".",
        f"- Distillation ({c['kd_loss']}): {KD_CONVENTION}, {KD_TERMS.get(c['kd_loss'], c['kd_loss'])}; "
        f"T = {c['temperature']:.3f}, alpha = {c['alpha']:.3f}, "
        f"{summary['epochs']} epochs, SGD lr {c['lr']:g}, batch {c['batch_size']}.",
        f"- Pruning after distillation: {_prune_text(c)}.",
        f"- Fine-tuning after pruning: {c['finetune_epochs']} epochs at lr {c['finetune_lr']:g}"
        + (" with the same distillation loss." if c["kd_loss"] != "ce" else "."),
        f"- Command: `{summary['command']}`",
        f"- Code: {summary['code'].get('git_commit') or 'no git commit'}"
        + (" (uncommitted changes)" if summary["code"].get("git_dirty") else "")
        + f", torch {summary['code'].get('torch')}; export check: max |logit difference| "
        f"{export_info['max_abs_diff']:.1e}.",
    ]


def _prune_text(c: dict) -> str:
    """The pruning step in words: none, unstructured (weights zeroed) or structured (channels removed)."""
    from study.models.pruning import get_prune_method

    prune = c["prune_method"]
    if prune == "none":
        return "none (dense student)"
    if not get_prune_method(prune).structured:
        return (f"{prune}, prune_ratio {c['prune_ratio']:.3f} = fraction of conv WEIGHTS zeroed by global "
                f"magnitude ({UNSTRUCTURED_NOTE})")
    return (f"{prune} (torch-pruning DepGraph), prune_ratio {c['prune_ratio']:.3f} = fraction of CHANNELS "
            "removed per layer (about 1-(1-p)^2 of the parameters); classifier kept")


def _runtime_lines(summary: dict, onnx: dict | None) -> list[str]:
    """Batch-1 latency per runtime on the reproducing machine: PyTorch eager from the seeds' trials, ONNX Runtime
    measured at export."""
    torch_ms = [r.get("latency_ms_bs1_torch") for r in summary.get("per_seed", [])]
    torch_ms = [v for v in torch_ms if v is not None]
    parts = [f"PyTorch eager {statistics.median(torch_ms):.3f} ms (median over seeds)"] if torch_ms else []
    if onnx:
        lat = onnx.get("latency_ms_bs1", {})
        parts += [f"ONNX Runtime {onnx['onnxruntime_version']} fp32 {lat['onnxruntime']:.3f} ms"]
        if "onnxruntime-int8" in lat:
            parts += [f"ONNX Runtime int8 {lat['onnxruntime-int8']:.3f} ms (top-1 agreement with fp32 on the "
                      f"example images {onnx['int8_argmax_equal_fp32']:.0%})"]
        parts[-1] += f", {onnx['latency_threads']} thread(s), measured at export"
    return [f"- Latency per runtime, batch 1: {'; '.join(parts)}."] if parts else []


def _latency_where(summary: dict, cfg: dict) -> str:
    """Where batch-1 latency was timed: the measured device (e.g. cuda:0), else what the config asked for."""
    used = summary.get("latency_device_used")
    if used:
        return "CPU" if used == "cpu" else f"the training device ({used})"
    return "CPU" if cfg.get("latency_device", "cpu") == "cpu" else "the training device"

"""ONNX export, ONNX Runtime latency and int8 quantization (study/measure/onnx.py) with the real onnx/onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY_TRIAL

from study.config import make_config
from study.core.errors import UserError
from study.data.datasets import load_dataset
from study.data.streaming import make_resident
from study.measure import latency_cache
from study.measure import onnx as onnx_backend
from study.models.families import build_model
from study.models.pruning import prune_model


@pytest.fixture(scope="module")
def digits():
    return make_resident(load_dataset("digits", "data"), TINY_TRIAL["val_size"], TINY_TRIAL["seed"],
                         torch.device("cpu"))


def _student(prune: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 1, 0.5).eval()
    if prune != "none":
        prune_model(model, prune, 0.5, torch.randn(1, 1, 8, 8))
    return model


@pytest.mark.parametrize("prune,exporter", [("none", "torchscript"), ("l1_structured", "torchscript"),
                                            ("l1_unstructured", "torchscript"), ("l1_structured", "dynamo")])
def test_export_matches_pytorch(prune, exporter, digits, tmp_path, one_thread):
    model = _student(prune)
    path = tmp_path / "m.onnx"
    assert onnx_backend.export_onnx(model, (1, 8, 8), path, exporter=exporter) == exporter
    onnx.checker.check_model(str(path))
    sess = onnx_backend.session(path, threads=1)
    check = onnx_backend.check_matches(sess, model, digits.val_x)
    assert check["ok"] and check["argmax_equal"] == 1.0, check
    assert check["max_abs_diff"] <= onnx_backend.ATOL + onnx_backend.RTOL * 50
    one = onnx_backend.predict(sess, digits.val_x[:1])  # dynamic batch: 1 and len(val) both run
    with torch.inference_mode():
        assert np.allclose(one, model(digits.val_x[:1]).numpy(), atol=onnx_backend.ATOL, rtol=onnx_backend.RTOL)
    if prune == "l1_structured":  # the pruned shapes are in the graph
        dims = {tuple(t.dims) for t in onnx.load(str(path)).graph.initializer}
        assert any(d[:1] == (8,) for d in dims) and not any(d[:1] == (32,) for d in dims if len(d) == 4)


def test_a_file_that_is_not_onnx_is_one_sentence(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"PK\x03\x04 not an onnx file")
    with pytest.raises(UserError, match=r"model\.onnx: ONNX Runtime cannot load this file .*export the model again"):
        onnx_backend.session(bad, 1)


@pytest.mark.parametrize("changes,message", [
    ({"quantize": "int8"}, "set latency_backend: onnxruntime"),
    ({"latency_backend": "onnxruntime", "latency_device": "trial"}, "set latency_device: cpu"),
    ({"latency_backend": "tensorrt"}, "latency_backend must be torch or onnxruntime"),
    ({"quantize": "int4", "latency_backend": "onnxruntime"}, "quantize must be none or int8"),
    ({"calibration_images": 0}, "calibration_images must be >= 1"),
])
def test_bad_backend_settings_name_the_fix(changes, message):
    with pytest.raises(UserError, match=message):
        make_config(TINY_TRIAL, changes)


def test_a_space_that_searches_int8_on_torch_is_rejected(tmp_path):
    from conftest import write_space

    from study.core.errors import SpaceError
    from study.search.space import load_space

    path = write_space(tmp_path / "s.yaml", params={"quantize": {"type": "categorical", "choices": ["none", "int8"]}})
    with pytest.raises(SpaceError, match="latency_backend: onnxruntime"):
        load_space(path)


def test_latency_cache_keys_by_backend(tmp_path):
    model = build_model("resnet8", 10, 1, 0.25)
    keys = {b: latency_cache.architecture_key(model, (1, 8, 8), torch.device("cpu"), 1, "latency", 1, 10, b)
            for b in latency_cache.BACKENDS}
    assert len(set(keys.values())) == 3


@pytest.fixture(scope="module")
def int8_trial(tmp_path_factory):
    from study.trial.run import execute_trial

    out = tmp_path_factory.mktemp("int8") / "trial"
    cfg = make_config(TINY_TRIAL, {"latency_backend": "onnxruntime", "quantize": "int8", "width_mult": 0.5,
                                   "prune_method": "l1_structured", "prune_ratio": 0.3, "calibration_images": 64})
    return cfg, out, execute_trial(cfg, out_dir=out)


def test_int8_trial_reports_the_quantized_model(int8_trial, digits):
    from study.models.checkpoint import load_model
    from study.training.loop import evaluate

    cfg, out, m = int8_trial
    assert m["latency_backend_used"] == "onnxruntime-int8" and m["onnx_exporter"] in ("torchscript", "dynamo")
    # size and accuracy are the int8 file's, measured here again in ONNX Runtime on the study's splits
    assert m["size_bytes"] == (out / "model_int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size
    sess = onnx_backend.session(out / "model_int8.onnx", 1)
    assert m["val_acc"] == pytest.approx(onnx_backend.accuracy(sess, digits.val_x, digits.val_y))
    assert m["test_acc"] == pytest.approx(onnx_backend.accuracy(sess, digits.test_x, digits.test_y))
    fp32, _ = load_model(out / "model.pt")
    assert m["val_acc_fp32"] == pytest.approx(evaluate(fp32, digits.val_x, digits.val_y))
    assert m["calibration_images_used"] == 64 and m["onnxruntime_version"] == onnx_backend.ort_version()
    assert m["latency_ms_bs1"] == m["latency_ms_bs1_onnxruntime"] > 0 and m["latency_ms_bs1_torch"] > 0
    assert m["throughput_ips"] == m["throughput_ips_onnxruntime"] and m["throughput_ips_torch"] > 0
    assert json.loads((out / "metrics.json").read_text())["latency_backend_used"] == "onnxruntime-int8"
    # QDQ with per-channel weights: every conv weight is dequantized with one scale per output channel
    graph = onnx.load(str(out / "model_int8.onnx")).graph
    init = {t.name: t for t in graph.initializer}
    deq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in init
           and len(init[n.input[0]].dims) == 4]
    assert deq and all(len(init[n.input[1]].dims) == 1 and init[n.input[1]].dims[0] > 1 for n in deq)
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)


def test_calibration_sample_is_seeded_and_unaugmented(digits):
    a = onnx_backend.calibration_sample(digits.train_x, digits.pad, digits.mean, digits.std, 16, seed=3)
    b = onnx_backend.calibration_sample(digits.train_x, digits.pad, digits.mean, digits.std, 16, seed=3)
    c = onnx_backend.calibration_sample(digits.train_x, digits.pad, digits.mean, digits.std, 16, seed=4)
    assert a.shape == (16, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)


def test_architecture_costs_time_the_backend_before_training(tmp_path):
    from study.trial.run import architecture_costs

    cfg = make_config(TINY_TRIAL, {"latency_backend": "onnxruntime", "quantize": "int8", "width_mult": 0.25})
    costs = architecture_costs(cfg, 10, (1, 8, 8), cache_dir=tmp_path)
    entries = [json.loads(p.read_text()) for p in (tmp_path / "latency").glob("*.json")]
    assert costs["latency_ms_bs1"] > 0 and [e["backend"] for e in entries] == ["onnxruntime-int8"]
    assert entries[0]["median_ms"] == costs["latency_ms_bs1"]


def test_an_export_that_differs_from_pytorch_fails_the_trial(tmp_path, monkeypatch):
    from study.trial import run as trial

    real = onnx_backend.export_onnx

    def other_weights(model, shape, path, exporter="auto"):  # a wrong export: same graph, other weights
        return real(_reinit(model), shape, path, exporter)

    monkeypatch.setattr(onnx_backend, "export_onnx", other_weights)
    cfg = make_config(TINY_TRIAL, {"latency_backend": "onnxruntime", "width_mult": 0.25, "epochs": 1,
                                   "finetune_epochs": 0})
    with pytest.raises(RuntimeError, match="ONNX Runtime's logits differ from PyTorch's"):
        trial.execute_trial(cfg, out_dir=tmp_path / "t")


def _reinit(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    return other


def test_remeasure_on_onnxruntime(int8_trial, tmp_path):
    from benchmarks import latency
    from study.models.checkpoint import save_model

    _, out, m = int8_trial
    torch_only = tmp_path / "plain" / "model.pt"  # a trial timed with torch: exported for the measurement
    save_model(torch_only, build_model("resnet8", 10, 1, 0.25), {"arch": "resnet8", "num_classes": 10,
                                                                 "in_channels": 1, "width_mult": 0.25,
                                                                 "input_shape": [1, 8, 8]})
    res, info = latency.remeasure(
        {"int8": out / "model.pt", "plain": torch_only}, rounds=2, warmup=1, repeats=3, threads=1,
        throughput_batch=4, log=lambda _: None,
        load_model=lambda p: onnx_backend.open_for_remeasure(Path(p), tmp_path),
        measure_latency=onnx_backend.remeasure_latency, measure_throughput=onnx_backend.remeasure_throughput)
    assert set(res) == {"int8", "plain"} and info["threads"] == 1
    assert all(r[latency.LATENCY_COL] > 0 and r[latency.THROUGHPUT_COL] > 0 for r in res.values())
    assert list(tmp_path.glob("*.onnx"))  # the torch-only trial was exported; the int8 one used its own file


@pytest.mark.parametrize("arch", ["resnet8x4", "resnet18", "wrn_16_1"])
def test_every_student_family_exports(arch, tmp_path, one_thread):
    """The other families of study.models.families (CIFAR resnet x4, ImageNet-style resnet, wide resnet), pruned."""
    torch.manual_seed(0)
    model = build_model(arch, 10, 3, 0.25).eval()
    prune_model(model, "l1_structured", 0.3, torch.randn(1, 3, 32, 32))
    onnx_backend.export_onnx(model, (3, 32, 32), tmp_path / "m.onnx")
    check = onnx_backend.check_matches(onnx_backend.session(tmp_path / "m.onnx", 1), model, torch.randn(8, 3, 32, 32))
    assert check["ok"], check

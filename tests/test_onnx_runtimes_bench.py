"""devbench.onnx_runtimes runs end to end (quick mode) and writes its table and JSON."""

from __future__ import annotations

import json


def test_runtime_benchmark_quick_writes_the_table_and_json(tmp_path, capsys):
    from devbench.onnx_runtimes import RUNTIMES, main

    assert main(["--quick", "--json", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "| student | params (nonzero) | PyTorch eager | ONNX Runtime fp32 | ONNX Runtime int8 |" in out
    data = json.loads((tmp_path / "out.json").read_text())
    assert "onnxruntime" in data["machine"] and len(data["rows"]) == 2
    for row in data["rows"]:
        assert set(row["latency_ms_bs1"]) == set(RUNTIMES) and all(v > 0 for v in row["latency_ms_bs1"].values())
        assert set(row["val_acc"]) == set(RUNTIMES)
        assert row["size_bytes"]["onnxruntime-int8"] > 0

"""benchmarks.layout: a tiny run (the README shows a full one)."""

import torch

from benchmarks.layout import format_table, run


def test_tiny_run_times_every_setting_and_names_autos_pick():
    res = run(torch.device("cpu"), rounds=1, steps=1, models=(("resnet8", 0.25, (1, 8, 8)),), log=lambda m: None)
    (model,) = res["models"].values()
    assert set(model) == {"fp32-NCHW", "fp32-NHWC", "bf16-NCHW", "bf16-NHWC"}
    assert model["fp32-NCHW"]["speedup"] == 1.0 and all(v["ms"] > 0 for v in model.values())
    assert res["auto_picks"] in ("fp32-NHWC", "bf16-NHWC")  # CPU: channels_last in both precisions
    assert "| resnet8 x0.25 1x8x8 |" in format_table(res)

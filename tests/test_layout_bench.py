"""devbench.layout: a tiny run (the README shows a full one)."""

import torch

from devbench.layout import format_table, run


def test_tiny_run_times_every_setting_and_names_autos_pick():
    res = run(torch.device("cpu"), rounds=1, steps=1, models=(("resnet8", 0.25, (1, 8, 8)),), log=lambda m: None)
    (model,) = res["models"].values()
    assert set(model) == {"fp32-NCHW", "fp32-NHWC", "bf16-NCHW", "bf16-NHWC"}
    assert model["fp32-NCHW"]["speedup"] == 1.0 and all(v["ms"] > 0 for v in model.values())
    assert res["auto_picks"] in ("fp32-NHWC", "bf16-NHWC")  # CPU: channels_last in both precisions
    assert "| resnet8 x0.25 1x8x8 |" in format_table(res)


def test_guard_cost_never_times_the_known_bad_case_unguarded():
    from devbench.layout import format_guard_table, guard_cost

    res = guard_cost(torch.device("cpu"), rounds=1, steps=1, precision="fp32", log=lambda m: None,
                     models=(("resnet8", 0.25, (1, 8, 8), 0.0), ("resnet8", 1.0, (1, 8, 8), 0.0)))
    narrow, wide = res["models"]["resnet8 x0.25 1x8x8"], res["models"]["resnet8 x1 1x8x8"]
    assert set(narrow) == {"NHWC guarded", "NCHW"}  # 4- and 8-channel strided shortcuts: unsafe unguarded
    assert set(wide) == {"NHWC guarded", "NHWC unguarded", "NCHW"}  # 16 and 32: outside the known-bad case
    assert narrow["NHWC guarded"]["vs_guarded"] == 1.0 and all(v["ms"] > 0 for v in wide.values())
    assert "(unsafe)" in format_guard_table(res)

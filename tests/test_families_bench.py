"""devbench.families: its check can fail (an untraceable family is reported, not hidden)."""

from __future__ import annotations


def test_families_table_reports_working_and_failing_families(capsys):
    from devbench.families import check, main

    assert check("resnet8", "l1_structured", (1, 8, 8)).startswith("ok")
    assert main(["resnet8", "torchvision:shufflenet_v2_x1_0", "timm:no_such_model_here"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| `")}
    assert "ok (reload" in rows["`resnet8`"]
    assert "FAIL: PruneError" in rows["`torchvision:shufflenet_v2_x1_0`"]
    assert "timm" in rows["`timm:no_such_model_here`"] and "ok" not in rows["`timm:no_such_model_here`"]

"""devbench.latency_load: a tiny run (the README shows a full one)."""

import subprocess
import sys
from pathlib import Path

from devbench.latency_load import format_table, run

REPO = Path(__file__).resolve().parents[1]


def test_tiny_run_has_every_model_at_every_load_with_ratios_to_idle():
    res = run([0, 1], rounds=1, repeats=3, log=lambda m: None)
    assert res["loads"] == [0, 1] and len(res["models"]) == 4
    for by_load in res["models"].values():
        assert by_load["0"]["ratio_to_idle"] == 1.0
        assert by_load["1"]["median_ms"] > 0 and by_load["1"]["ratio_to_idle"] > 0
    table = format_table(res)
    assert "| resnet8 x1.0 l1_structured 0.5 |" in table and "1 background trainer" in table


def test_bad_arguments_exit_2():
    r = subprocess.run([sys.executable, "-m", "devbench.latency_load", "--rounds", "0"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr

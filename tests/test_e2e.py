"""devbench.e2e: the parts that run without timing two commits (that takes minutes; README shows a run)."""

import subprocess
import sys
from pathlib import Path

from devbench.e2e import TRIAL_POINTS, demo_space, format_table

REPO = Path(__file__).resolve().parents[1]


def test_unknown_baseline_is_one_sentence_and_exit_2():
    r = subprocess.run([sys.executable, "-m", "devbench.e2e", "--baseline", "no-such-commit-xyz"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "cannot check out baseline 'no-such-commit-xyz'" in r.stderr
    assert "Traceback" not in r.stderr
    listed = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout
    assert "kdstudy-e2e" not in listed  # nothing left behind


def test_timed_trials_use_the_default_studys_trial_settings():
    trial = demo_space()["trial"]
    assert trial["dataset"] == "digits" and trial["threads"] == 1
    for params in TRIAL_POINTS.values():  # every timed point is a point of the default search space
        space = demo_space()["params"]
        for name, value in params.items():
            spec = space[name]
            assert value in spec["choices"] if "choices" in spec else spec["low"] <= value <= spec["high"] or (
                name == "prune_ratio" and params["prune_method"] == "none"), name


def test_table_shows_both_sides_the_ratio_and_accuracy():
    side = {"trial_wall_s": 4.0, "process_wall_s": 6.0, "val_acc": 97.0, "val_acc_std": 0.5, "test_acc": 96.5,
            "test_acc_std": 0.25}
    res = {"cpu": "Test CPU", "torch": "2.x", "baseline": "a" * 40, "head": "b" * 40,
           "trial": {"dense": {"baseline": side, "head": {**side, "trial_wall_s": 1.0, "process_wall_s": 3.0},
                               "speedup_trial_wall": 4.0, "speedup_process_wall": 2.0}},
           "study": {"baseline": {"wall_s": 60.0, "runs": [{"best_val_acc": 95.0}]},
                     "head": {"wall_s": 30.0, "runs": [{"best_val_acc": 97.5}]}, "speedup": 2.0, "trials": 40}}
    table = format_table(res)
    assert "| trial dense: trial clock | 4.00 s | 1.00 s | 4.00x | val 97.00 +- 0.50 -> 97.00 +- 0.50;" in table
    assert "| default study (40 trials, empty cache) | 60.0 s | 30.0 s | 2.00x | best val 95.00 -> 97.50 |" in table
    assert "Test CPU" in table
    assert "CPU time" not in table  # no CPU accounting (not Linux): no row for it

    res["study"].update(cores=2, cpu_ratio=1.5)
    res["study"]["baseline"].update(cpu_s=114.0, cores_busy=1.9)
    res["study"]["head"].update(cpu_s=76.0, cores_busy=1.95)
    assert ("| default study: CPU time, all processes | 114.0 s | 76.0 s | 1.50x | cores busy (CPU time / wall "
            "time): 1.90 -> 1.95 of 2 |") in format_table(res)


def test_machine_cpu_time_counts_this_process_work():
    import os
    import time

    from devbench.e2e import machine_cpu_s

    if not os.path.exists("/proc/stat"):
        assert machine_cpu_s() is None
        return
    a, c0 = machine_cpu_s(), time.process_time()
    while time.process_time() - c0 < 0.3:  # busy for 0.3 s of this process's CPU time
        pass
    b = machine_cpu_s()
    assert b - a >= 0.2  # the machine-wide count saw (at least most of) it; other processes only add


def test_accuracy_is_summarised_over_seeds():
    from devbench.e2e import summarise

    rows = [{"trial_wall_s": t, "process_wall_s": t + 1, "val_acc": v, "test_acc": v - 1}
            for t, v in ((1.0, 96.0), (3.0, 98.0), (2.0, 97.0))]
    s = summarise(rows)
    assert s["trial_wall_s"] == 2.0 and s["process_wall_s"] == 3.0  # medians
    assert s["val_acc"] == 97.0 and s["val_acc_std"] == 1.0 and s["test_acc"] == 96.0


def test_table_survives_a_study_without_a_complete_trial():
    side = {"trial_wall_s": 4.0, "process_wall_s": 6.0, "val_acc": 97.0, "val_acc_std": 0.5, "test_acc": 96.5,
            "test_acc_std": 0.25}
    res = {"cpu": "Test CPU", "torch": "2.x", "baseline": "a" * 40, "head": "b" * 40,
           "trial": {"dense": {"baseline": side, "head": side, "speedup_trial_wall": 1.0,
                               "speedup_process_wall": 1.0}},
           "study": {"baseline": {"wall_s": 60.0, "runs": [{"best_val_acc": None}]},
                     "head": {"wall_s": 30.0, "runs": [{"best_val_acc": 97.5}]}, "speedup": 2.0, "trials": 40}}
    assert "best val none complete -> 97.50" in format_table(res)


def test_process_tree_cpu_is_split_by_role():
    import os
    import subprocess
    import sys

    import pytest

    from devbench.e2e import TreeCPU, role_of

    assert role_of(7, 7, "python") == "driver"
    assert role_of(8, 7, "ray::ImplicitFu") == "trial actors"  # /proc's comm is cut at 15 characters
    assert role_of(9, 7, "ray::run_refere") == "references"
    assert role_of(10, 7, "raylet") == "Ray's own processes"
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("no /proc: TreeCPU reports None")
    burn = "import time\nc = time.process_time()\nwhile time.process_time() - c < {s}: pass\n"
    code = (burn.format(s=0.4) + "import subprocess, sys\n"
            f"subprocess.run([sys.executable, '-c', {burn.format(s=0.6)!r}])\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    tree = TreeCPU(proc.pid)
    proc.wait()
    got = tree.result()
    assert 0.3 <= got["driver"] <= 1.0, got  # the process itself (interpreter start-up included)
    assert 0.4 <= got["Ray's own processes"] <= 1.2, got  # its child: any other process of the tree
    assert got["trial actors"] == 0 and got["references"] == 0

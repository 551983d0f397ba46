"""The running summary of the progress lines (study.search.progress.study_so_far), from told.json files on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from study.search.hypervolume import normalization, normalized_hypervolume
from study.search.progress import study_so_far

OBJECTIVES = [("val_acc", "maximize"), ("nonzero_params", "minimize")]


def _told(run_dir, number, status, **result):
    path = run_dir / "trials" / str(number) / "told.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"status": status, "error": False, "result": result}))


def test_best_hypervolume_counts_and_eta(tmp_path):
    _told(tmp_path, 0, "complete", val_acc=80.0, nonzero_params=1000, wall_s=10.0)
    _told(tmp_path, 1, "complete", val_acc=90.0, nonzero_params=4000, wall_s=30.0)
    _told(tmp_path, 2, "infeasible", nonzero_params=9000, wall_s=2.0)
    _told(tmp_path, 3, "complete", val_acc=90.0, nonzero_params=5000, wall_s=18.0)  # ties trial 1, dominated
    ref = tmp_path / "references" / "teacher" / "metrics.json"
    ref.parent.mkdir(parents=True)
    ref.write_text(json.dumps({"val_acc": 95.0, "nonzero_params": 20000}))

    s = study_so_far(tmp_path, OBJECTIVES, total=10, running=2, concurrent=2)
    assert (s.done, s.running, s.left) == (4, 2, 4)
    assert s.best == ("val_acc", 90.0, 1)  # ties go to the lower trial number
    # the results pipeline's rule: ranges over the complete trials and the models beside the search
    values = np.array([[80.0, 1000], [90.0, 4000], [90.0, 5000]])
    norm = normalization(["val_acc", "nonzero_params"], ["maximize", "minimize"],
                         np.vstack([values, [[95.0, 20000]]]))
    assert s.hypervolume == pytest.approx(normalized_hypervolume(values, norm))
    assert s.eta_s == pytest.approx((10 + 30 + 2 + 18) / 4 * (2 + 4) / 2)
    line = s.line()
    assert "best val_acc 90.00% (trial 1)" in line and "trials 4 done / 2 running / 4 left" in line
    assert "ETA 45s" in line and f"hypervolume {s.hypervolume:.4f}" in line


def test_nothing_finished_yet(tmp_path):
    _told(tmp_path, 0, "failed", error="boom")
    s = study_so_far(tmp_path, OBJECTIVES, total=3, running=1, concurrent=1)
    assert (s.best, s.hypervolume, s.eta_s, s.left) == (None, None, None, 1)
    assert s.line().startswith("no complete trial  hypervolume -  trials 1 done / 1 running / 1 left  ETA -")


def test_live_report_takes_at_most_a_tenth_of_the_loop(monkeypatch, tmp_path):
    """The live report is built in Tune's event loop: after a rewrite that took t seconds the next one waits at
    least 10 t (and at least every_s), so a big study's report cannot hold the search for long."""
    import time

    from study import app

    calls = []

    def slow_report(run_dir):
        calls.append(time.time())
        time.sleep(0.05)
        return run_dir / "report.html"

    monkeypatch.setattr(app, "write_live_report", slow_report)
    live = app.LiveReport(every_s=0)
    live(tmp_path, None)
    live(tmp_path, None)  # within 10 x 0.05 s of the first: skipped
    assert len(calls) == 1 and live.took >= 0.05
    live.last -= 1.0  # a second later
    live(tmp_path, None)
    assert len(calls) == 2

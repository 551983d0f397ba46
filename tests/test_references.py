"""Reference points: which are missing, and one failing reference does not lose the others."""

import json

from conftest import TINY_TRIAL

from study.search.references import REFERENCES, missing_references, run_references


def test_missing_references(tmp_path):
    assert missing_references(tmp_path, has_teacher=True) == list(REFERENCES)
    assert missing_references(tmp_path, has_teacher=False) == ["student_ce"]  # no teacher: only the CE student
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "metrics.json").write_text("{}")
    assert missing_references(tmp_path, has_teacher=True) == ["student_ce", "student_kd"]  # resumed: kept


def test_a_failing_reference_is_reported_and_the_next_still_runs(tmp_path):
    out = run_references(["teacher", "student_ce"], dict(TINY_TRIAL), str(tmp_path / "no-such-teacher.pt"),
                         str(tmp_path), gpu=False)
    assert isinstance(out["teacher"], str) and "no-such-teacher.pt" in out["teacher"]
    assert out["student_ce"]["reference"] == "student_ce" and out["student_ce"]["val_acc"] > 10
    assert json.loads((tmp_path / "student_ce" / "metrics.json").read_text())["kd_loss"] == "ce"
    assert not (tmp_path / "teacher" / "metrics.json").exists()

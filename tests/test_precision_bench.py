"""devbench.precision on the tiny test budget: every (teacher, student) precision pair runs and is recorded."""

import json

from conftest import write_space

from devbench.precision import PAIRS, main


def test_precision_benchmark_runs_each_pair(tmp_path, capsys):
    space = write_space(tmp_path / "s.yaml")
    assert main(["--seeds", "1", "--space", str(space), "--json", str(tmp_path / "p.json")]) == 0
    summary = json.loads((tmp_path / "p.json").read_text())
    assert list(summary) == [f"teacher {t}, student {s}" for t, s in PAIRS]
    for (_, student), row in zip(PAIRS, summary.values(), strict=True):
        run = row["runs"][0]
        assert run["precision_used"].startswith(student)  # fp32 students really ran in fp32
        assert 0 <= run["val_acc"] <= 100 and row["val_acc"][1] == 0.0  # one seed: no spread
    assert "mean +- std over 1 seed(s)" in capsys.readouterr().out


def test_precision_benchmark_rejects_zero_seeds(capsys):
    assert main(["--seeds", "0"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err


def test_cli_missing_space_is_one_sentence(tmp_path, capsys):
    from devbench.precision import main

    assert main(["--seeds", "1", "--space", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such search space file" in err

"""devbench.thin_input: a tiny run (the README shows a full one)."""

from devbench.thin_input import correctness, main


def test_the_guarded_gradients_are_bf16_rounding_in_every_case(capsys):
    rows = correctness(repeats=2)
    assert len(rows) == 8 and all(r["guarded"] < 0.05 for r in rows), rows  # bf16 rounding, not garbage
    assert main(["--rounds", "1", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "| dw 8ch 1x1 k3 s2 |" in out and "| resnet8 1x8x8 | 7 |" in out and "native bf16" in out

"""`python -m devbench.precision`: does training in bf16 cost accuracy? Teacher and student precision, by seed.

Runs the default study's trial (search_spaces/demo.yaml's trial settings at width 1.0, KD T = 4, alpha = 0.5,
unpruned) for each seed with three (teacher_precision, precision) pairs: (bf16, bf16), (fp32, bf16) and
(fp32, fp32); teachers are trained (and cached) per seed and precision, untimed. Prints val/test accuracy per run
and mean +- std per pair. This is the measurement behind `teacher_precision: fp32` being the default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PAIRS = (("bf16", "bf16"), ("fp32", "bf16"), ("fp32", "fp32"))  # (teacher_precision, student precision)
POINT = {"width_mult": 1.0, "kd_loss": "kd", "temperature": 4.0, "alpha": 0.5, "prune_method": "none"}


def run(seeds: int, space_file: str, log=print) -> dict:
    from study.search.space import load_space
    from study.trial.run import TrialHooks, execute_trial

    class Quiet(TrialHooks):
        def log(self, msg: str) -> None:
            pass

    space = load_space(space_file)
    rows: dict[str, list[dict]] = {}
    for seed in range(seeds):
        for teacher_p, student_p in PAIRS:
            cfg = space.config_for(POINT).replace(seed=seed, teacher_precision=teacher_p, precision=student_p)
            m = execute_trial(cfg, hooks=Quiet())
            name = f"teacher {teacher_p}, student {student_p}"
            rows.setdefault(name, []).append({"seed": seed, "val_acc": m["val_acc"], "test_acc": m["test_acc"],
                                              "teacher_val_acc": m.get("teacher_val_acc"),
                                              "precision_used": m["precision_used"]})
            log(f"seed {seed}  {name:28s} val {m['val_acc']:.2f}  test {m['test_acc']:.2f}  "
                f"(teacher val {m.get('teacher_val_acc', float('nan')):.2f}, student ran {m['precision_used']})")
    from study.reproduce.rerun import mean_std

    summary = {}
    for name, rs in rows.items():
        summary[name] = {k: tuple(round(v, 2) for v in mean_std([r[k] for r in rs]))
                         for k in ("val_acc", "test_acc", "teacher_val_acc")}
        summary[name]["runs"] = rs
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devbench.precision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--space", default=str(Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml"),
                   help="space whose trial settings are used (default search_spaces/demo.yaml)")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.seeds < 1:
        print("error: --seeds must be >= 1.", file=sys.stderr)
        return 2
    from study.core.errors import UserError

    try:
        summary = run(args.seeds, args.space)
    except UserError as exc:  # a wrong --space, missing data: one sentence
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"mean +- std over {args.seeds} seed(s):")
    for name, s in summary.items():
        print(f"  {name:28s} val {s['val_acc'][0]:.2f} +- {s['val_acc'][1]:.2f}  "
              f"test {s['test_acc'][0]:.2f} +- {s['test_acc'][1]:.2f}  "
              f"teacher val {s['teacher_val_acc'][0]:.2f} +- {s['teacher_val_acc'][1]:.2f}")
    if args.json:
        from study.core.io import write_json_atomic

        write_json_atomic(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

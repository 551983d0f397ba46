"""`python -m benchmarks RUN_DIR`: results.csv, pareto.csv, benchmark.json, and the front printed as a table."""

from __future__ import annotations

import argparse
import sys

from benchmarks.collect import front_lines, front_table, read_results, run_benchmarks
from study.core.errors import UserError


def main(argv: list[str] | None = None) -> int:
    """Collect RUN_DIR's results (re-measuring the front's latency unless --no-remeasure) and print the front;
    returns the exit code (2 for a user error, said in one line)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `python -m study run`")
    p.add_argument("--no-remeasure", action="store_true",
                   help="skip re-measuring the latency of the front models and references")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per model (default 5)")
    p.add_argument("--repeats", type=int, default=20, help="timed batch-1 forward passes per round (default 20)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for timing (default: the study's trial setting, as the search timed them)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default=None,
                   help="runtime to re-measure on (default: the study's latency_backend); onnxruntime times each "
                        "trial's model.onnx / model_int8.onnx, exporting model.pt where a trial has none")
    p.add_argument("--throughput-batch", type=int, default=256, help="batch size of the throughput measure")
    args = p.parse_args(argv)
    if min(args.rounds, args.repeats, args.throughput_batch, args.threads or 1) < 1:
        print("error: --rounds, --repeats, --threads and --throughput-batch must be positive integers.",
              file=sys.stderr)
        return 2
    try:
        summary = run_benchmarks(
            args.run_dir, remeasure=not args.no_remeasure, backend=args.backend,
            remeasure_kwargs={"rounds": args.rounds, "repeats": args.repeats, "throughput_batch": args.throughput_batch,
                              **({"threads": args.threads} if args.threads else {})},
        )
        df = read_results(args.run_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    objectives = [{"name": o["name"], "direction": o["direction"]} for o in summary["objectives"]]
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    print(f"study {summary['study_name']}: {summary['n_trials']} trials ({counts})")
    ref = ", ".join(f"{o['name']}={o['reference']:g}" for o in summary["objectives"])
    print(f"hypervolume {summary['hypervolume']:.4f} (normalised, reference point (1,...,1); raw reference {ref})")
    rm = summary.get("remeasure")
    if rm and rm["models"]:
        print(f"latency re-measured with {rm.get('backend', 'torch')} on {rm['device']} with {rm['threads']} threads, "
              f"batch sizes {rm['batch_sizes']}")
    elif rm:
        print("latency: no checkpoint of a front trial or reference could be loaded; nothing re-measured")
    front = front_table(df, objectives)
    print(f"Pareto front ({len(front)} trials):")
    print("\n".join(front_lines(df, objectives)) if len(front) else "(empty: no COMPLETE trial)")
    for b in summary.get("baselines") or []:
        print(f"baseline {b['line']}")
    if summary.get("knee"):
        print(f"knee of the front: trial {summary['knee']['trial']} ({summary['knee']['rule']})")
    print(f"wrote {args.run_dir}/results.csv, pareto.csv, benchmark.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

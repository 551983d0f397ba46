"""`python -m devbench.latency_load`: how much batch-1 latency moves when other trials train meanwhile.

A study times each architecture inside its trial (study.measure.latency_cache: one timing at a time per machine, then
cached), while the other concurrent trials keep training. This benchmark measures that effect on this machine:
the default study's student family (resnet8 on 1x8x8 digits-shaped input, one torch thread, the trial's 30 timed
batch-1 passes) timed with 0, 1, ... N background processes that train a resnet8 student the way a trial does
(forward + backward, batch 128, one thread). Load levels alternate over rounds; reported per model: the median
over rounds of the per-round median latency at each load, and its ratio to the idle one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKGROUND = """
import time
import torch
torch.set_num_threads(1)
from study.models.families import build_model
model = build_model("resnet8", 10, 1, 1.0)
x, y = torch.randn(128, 1, 8, 8), torch.randint(0, 10, (128,))
print("ready", flush=True)
while True:
    torch.nn.functional.cross_entropy(model(x), y).backward()
"""
MODELS = {  # name -> (width, prune method, prune ratio): points of the default study's space
    "resnet8 x0.25": (0.25, "none", 0.0),
    "resnet8 x0.5": (0.5, "none", 0.0),
    "resnet8 x1.0": (1.0, "none", 0.0),
    "resnet8 x1.0 l1_structured 0.5": (1.0, "l1_structured", 0.5),
}


def build_models() -> dict:
    import torch

    from study.models.families import build_model
    from study.models.pruning import prune_model

    out = {}
    for name, (width, method, ratio) in MODELS.items():
        torch.manual_seed(0)
        model = build_model("resnet8", 10, 1, width).eval()
        prune_model(model, method, ratio, torch.randn(1, 1, 8, 8))
        out[name] = model
    return out


def start_background(n: int) -> list[subprocess.Popen]:
    """n trainers, each waited for until its first step runs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", BACKGROUND], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    for p in procs:
        if p.stdout is None or p.stdout.readline().strip() != "ready":
            stop(procs)
            raise RuntimeError("a background trainer did not start")
    time.sleep(0.5)  # into its steady state
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def run(loads: list[int], rounds: int, repeats: int, log=print) -> dict:
    from study.measure.timing import measure_latency

    models = build_models()
    for model in models.values():  # warm-up: first calls create oneDNN primitives
        measure_latency(model, (1, 8, 8), batch_size=1, threads=1, repeats=3)
    per: dict[int, dict[str, list[float]]] = {n: {k: [] for k in models} for n in loads}
    for r in range(rounds):
        for n in (loads if r % 2 == 0 else list(reversed(loads))):
            procs = start_background(n)
            try:
                for name, model in models.items():
                    res = measure_latency(model, (1, 8, 8), batch_size=1, threads=1, repeats=repeats)
                    per[n][name].append(float(res["median_ms"]))
            finally:
                stop(procs)
        log(f"  round {r + 1}/{rounds} done")
    out: dict = {"cores": os.cpu_count(), "loads": loads, "rounds": rounds, "repeats": repeats, "models": {}}
    for name in models:
        med = {n: statistics.median(per[n][name]) for n in loads}
        idle = med[loads[0]]
        out["models"][name] = {str(n): {"median_ms": round(med[n], 4), "ratio_to_idle": round(med[n] / idle, 3)}
                               for n in loads}
    return out


def format_table(res: dict) -> str:
    loads = res["loads"]
    head = "| model | " + " | ".join(f"{n} background trainer{'s' if n != 1 else ''}" for n in loads) + " |"
    lines = [f"batch-1 latency, 1 torch thread, median of {res['rounds']} rounds x {res['repeats']} passes; "
             f"{res['cores']} cores", "", head, "|---" * (len(loads) + 1) + "|"]
    for name, by_load in res["models"].items():
        cells = [f"{by_load[str(n)]['median_ms']:.4f} ms" + ("" if n == loads[0] else
                                                            f" ({by_load[str(n)]['ratio_to_idle']:.3f}x)")
                 for n in loads]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devbench.latency_load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-load", type=int, default=os.cpu_count() or 2,
                   help="most background trainers (default: the number of cores)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds over the load levels (default 3)")
    p.add_argument("--repeats", type=int, default=30, help="timed batch-1 passes per measurement (default 30)")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.max_load < 0 or args.rounds < 1 or args.repeats < 1:
        print("error: --max-load must be >= 0, --rounds and --repeats >= 1.", file=sys.stderr)
        return 2
    from study.measure.latency_cache import cpu_name

    res = run(list(range(args.max_load + 1)), args.rounds, args.repeats)
    res["cpu"] = cpu_name()
    if args.json:
        from study.core.io import write_json_atomic

        write_json_atomic(args.json, res)
    print(f"on {res['cpu']}")
    print(format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m devbench.onnx_runtimes`: the demo's students on three runtimes, side by side in one run.

Trains four students with the default study's trial settings (search_spaces/demo.yaml: digits, 15 + 5 epochs, KD
T=4 alpha=0.5, one thread), each with `quantize: int8` so that one trial gives the fp32 model, its ONNX export and
its int8 model: resnet8 at width 0.25 / 0.5 / 1.0, and width 1.0 with l1_structured pruning of 50 % of the
channels. A fifth, width 1.0 with 70 % of its conv weights zeroed (l1_unstructured), answers what ONNX Runtime
does with zeros. Then, with no training running, times batch-1 latency of every (student, runtime) pair in
interleaved rounds with rotating order (median over rounds of each burst's median; study.measure.timing's protocol) and
reports validation accuracy on each runtime: PyTorch eager fp32, ONNX Runtime fp32, ONNX Runtime int8.
Prints a markdown table with the CPU's name and ISA flags; --json writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

STUDENTS = (  # label, width_mult, prune_method, prune_ratio
    ("resnet8 x0.25", 0.25, "none", 0.0),
    ("resnet8 x0.5", 0.5, "none", 0.0),
    ("resnet8 x1.0", 1.0, "none", 0.0),
    ("resnet8 x1.0, l1_structured 50 %", 1.0, "l1_structured", 0.5),
    ("resnet8 x1.0, l1_unstructured 70 % (zeros)", 1.0, "l1_unstructured", 0.7),
)
RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")
# Latency only (untrained, calibrated on noise): a CIFAR-sized student, where int8 has real work to save.
LARGER = (("resnet20 x1.0, 3x32x32 (untrained: latency only)", "resnet20", 1.0, (3, 32, 32)),)


def cpu_flags() -> str:
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8")
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return "flags unknown"
    have = set(line.split(":", 1)[1].split())
    return ", ".join(f if f in have else f"no {f}" for f in wanted)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devbench.onnx_runtimes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    p.add_argument("--repeats", type=int, default=200, help="timed batch-1 calls per burst (default 200)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run for tests: 2 students, 1 + 1 epochs, 1 round of 5 calls (numbers meaningless)")
    args = p.parse_args(argv)
    students, larger = (STUDENTS[:1] + STUDENTS[3:4], ()) if args.quick else (STUDENTS, LARGER)
    if args.quick:
        args.rounds, args.repeats = 1, 5

    from study.data.datasets import load_dataset
    from study.data.streaming import make_resident
    from study.measure import onnx as onnx_backend
    from study.measure.latency_cache import cpu_name
    from study.measure.timing import measure_latency
    from study.models.checkpoint import load_model
    from study.search.space import load_space
    from study.training.loop import evaluate
    from study.trial.run import execute_trial

    base = load_space("demo").base_config().replace(quantize="int8", latency_backend="onnxruntime",
                                                    kd_loss="kd", temperature=4.0, alpha=0.5)
    if args.quick:
        base = base.replace(epochs=1, finetune_epochs=1, teacher_epochs=2, calibration_images=32)
    torch.set_num_threads(base.threads or 1)
    ds = load_dataset(base.dataset, base.data_root)
    data = make_resident(ds, base.val_size, base.val_split_seed, torch.device("cpu"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdstudy-onnx-bench-") as tmp:
        models = {}
        for label, width, method, ratio in students:
            out = Path(tmp) / label.replace(" ", "_").replace(",", "").replace("%", "pc")
            cfg = base.replace(width_mult=width, prune_method=method, prune_ratio=ratio)
            print(f"training {label} ...", flush=True)
            m = execute_trial(cfg, out_dir=out)
            net, _ = load_model(out / "model.pt")
            fp32 = onnx_backend.session(out / "model.onnx", 1)
            int8 = onnx_backend.session(out / "model_int8.onnx", 1)
            rows.append({"student": label, "params": m["params"], "nonzero_params": m["nonzero_params"],
                         "val_acc": {"torch": evaluate(net, data.val_x, data.val_y),
                                     "onnxruntime": onnx_backend.accuracy(fp32, data.val_x, data.val_y),
                                     "onnxruntime-int8": onnx_backend.accuracy(int8, data.val_x, data.val_y)},
                         "size_bytes": {"torch": m["size_bytes_checkpoint"],
                                        "onnxruntime": (out / "model.onnx").stat().st_size,
                                        "onnxruntime-int8": (out / "model_int8.onnx").stat().st_size}})
            models[label] = {"torch": net.eval(), "onnxruntime": fp32, "onnxruntime-int8": int8}
        shapes = {r["student"]: data.input_shape for r in rows}
        for label, arch, width, shape in larger:
            from study.models.families import build_model

            torch.manual_seed(0)
            net = build_model(arch, 10, shape[0], width).eval()
            out = Path(tmp) / arch
            onnx_backend.export_onnx(net, shape, out / "model.onnx")
            onnx_backend.quantize_int8(out / "model.onnx", out / "model_int8.onnx", torch.randn(64, *shape))
            models[label] = {"torch": net, "onnxruntime": onnx_backend.session(out / "model.onnx", 1),
                             "onnxruntime-int8": onnx_backend.session(out / "model_int8.onnx", 1)}
            shapes[label] = shape
            n = sum(p.numel() for p in net.parameters())
            rows.append({"student": label, "params": n, "nonzero_params": n, "val_acc": None,
                         "size_bytes": {"onnxruntime": (out / "model.onnx").stat().st_size,
                                        "onnxruntime-int8": (out / "model_int8.onnx").stat().st_size}})

        def once(label: str, runtime: str, repeats: int, warmup: int) -> float:
            model, shape = models[label][runtime], shapes[label]
            if runtime == "torch":
                return measure_latency(model, shape, threads=1, warmup=warmup, repeats=repeats)["median_ms"]
            return onnx_backend.measure_latency(model, shape, warmup=warmup, repeats=repeats)["median_ms"]

        pairs = [(r["student"], rt) for r in rows for rt in RUNTIMES]
        for label, rt in pairs:
            once(label, rt, 1, 50)
        times: dict = {pair: [] for pair in pairs}
        for k in range(args.rounds):
            print(f"timing round {k + 1}/{args.rounds}", flush=True)
            for pair in pairs[k % len(pairs):] + pairs[:k % len(pairs)]:
                times[pair].append(once(*pair, args.repeats, 20))
        for r in rows:
            r["latency_ms_bs1"] = {rt: statistics.median(times[(r["student"], rt)]) for rt in RUNTIMES}

    machine = f"{cpu_name()} ({cpu_flags()}), 1 thread, torch {torch.__version__}, onnxruntime " \
              f"{onnx_backend.ort_version()}"
    print(f"\nbatch-1 latency (ms, median of {args.rounds} interleaved rounds of {args.repeats} calls) and "
          f"validation accuracy ({len(data.val_y)} images) on {machine}\n")
    print("| student | params (nonzero) | PyTorch eager | ONNX Runtime fp32 | ONNX Runtime int8 | eager / ORT fp32 "
          "| int8 / fp32 latency | accuracy eager / ORT fp32 / ORT int8 | int8 file / fp32 file |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lat, acc, size = r["latency_ms_bs1"], r["val_acc"], r["size_bytes"]
        acc_text = "-" if acc is None else \
            f"{acc['torch']:.2f} / {acc['onnxruntime']:.2f} / {acc['onnxruntime-int8']:.2f} %"
        print(f"| {r['student']} | {r['params']:,} ({r['nonzero_params']:,}) | {lat['torch']:.3f} | "
              f"{lat['onnxruntime']:.4f} | {lat['onnxruntime-int8']:.4f} | "
              f"{lat['torch'] / lat['onnxruntime']:.1f}x | {lat['onnxruntime-int8'] / lat['onnxruntime']:.2f} | "
              f"{acc_text} | "
              f"{size['onnxruntime-int8'] / size['onnxruntime']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rounds": args.rounds, "repeats": args.repeats,
                                         "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

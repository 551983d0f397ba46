"""`python -m devbench.thin_input`: the bf16 thin-input defect of study.training.kernels, and what its rewrite costs.

Part 1, correctness: padded k > 1 convolutions on inputs one pixel wide or high (the cases the defect was found in),
channels_last under bf16 autocast, raw and through ConvKernelGuard(bf16=True), against the fp32 NCHW convolution:
the worst relative error of the weight gradient over 10 random inputs (max |got - want| / max |want|; bf16 rounding
is about 1e-2, the defect 1e13, inf or nan). Part 2, cost: one training step of a student (bf16 autocast,
channels_last, batch 128, as train_phase runs it) with the guard's thin-input forward and without, alternating,
median of rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import time

CASES = (  # (channels, (H, W), kernel, stride, depthwise)
    (8, (1, 1), 3, 2, True), (16, (1, 1), 3, 2, False), (288, (1, 1), 5, 2, True), (288, (1, 1), 5, 1, False),
    (288, (1, 4), 5, 1, False), (16, (4, 1), 3, 2, False), (288, (2, 1), 3, 2, True), (288, (2, 2), 3, 2, True),
)
MODELS = (("resnet8", (1, 8, 8)), ("resnet20", (3, 32, 32)), ("torchvision:mobilenet_v3_small", (3, 16, 16)),
          ("torchvision:mobilenet_v3_small", (3, 32, 32)))


def weight_grad(conv, x, bf16: bool, channels_last: bool, guard):
    import torch

    conv.weight.grad = None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv.to(memory_format=fmt)
    with guard or contextlib.nullcontext(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = conv(x.contiguous(memory_format=fmt))
    out.float().square().sum().backward()
    conv.to(memory_format=torch.contiguous_format)
    return conv.weight.grad.clone()


def correctness(repeats: int = 10) -> list[dict]:
    import torch

    from study.training.kernels import ConvKernelGuard

    rows = []
    for channels, (h, w), k, s, depthwise in CASES:
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(channels, channels, k, s, k // 2, groups=channels if depthwise else 1, bias=False)
        guard = ConvKernelGuard(conv, "cpu", bf16=True)
        worst = {"raw": 0.0, "guarded": 0.0}
        for _ in range(repeats):
            x = torch.randn(8, channels, h, w)
            want = weight_grad(conv, x, False, False, None)
            for name, g in (("raw", None), ("guarded", guard)):
                got = weight_grad(conv, x, True, True, g)
                err = float((got - want).abs().max()) / (float(want.abs().max()) + 1e-12)
                worst[name] = max(worst[name], err if err == err else float("inf"))  # nan counts as inf
        rows.append({"case": f"{'dw' if depthwise else 'full'} {channels}ch {h}x{w} k{k} s{s}", **worst})
    return rows


def step_cost(rounds: int, steps: int) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from study.models.families import build_model
    from study.training.kernels import ConvKernelGuard

    rows = []
    for arch, shape in MODELS:
        torch.manual_seed(0)
        model = build_model(arch, 10, shape[0], 1.0, shape).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(128, *shape).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (128,))
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):
            for thin in (False, True):
                guard = ConvKernelGuard(model, "cpu", bf16=thin)
                t = time.perf_counter()
                for _ in range(steps):
                    with guard, torch.autocast("cpu", dtype=torch.bfloat16):
                        out = model(x)
                    loss = F.cross_entropy(out.float(), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                times[thin].append((time.perf_counter() - t) / steps * 1e3)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        rows.append({"model": f"{arch} {'x'.join(map(str, shape))}", "without_ms": med[False], "with_ms": med[True],
                     "ratio": med[True] / med[False],
                     "thin_convs": len(ConvKernelGuard(model, "cpu", bf16=True).thin_convs)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devbench.thin_input", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    import torch

    from study.measure.latency_cache import cpu_name
    from study.training.loop import _cpu_has_native_bf16

    torch.set_num_threads(1)
    print(f"on {cpu_name()} (ATen {torch.backends.cpu.get_cpu_capability()}, native bf16: {_cpu_has_native_bf16()},"
          f" 1 thread), torch {torch.__version__}")
    print("\nweight gradient, bf16 channels_last vs fp32 NCHW (worst relative error of 10 inputs)\n")
    print("| convolution | raw | guarded |\n|---|---|---|")
    for r in correctness():
        print(f"| {r['case']} | {r['raw']:.3g} | {r['guarded']:.3g} |")
    print(f"\ntraining step (bf16, channels_last, batch 128), median of {args.rounds} alternating rounds of "
          f"{args.steps} steps\n")
    print("| model | k>1 convs | without | with the thin-input forward | ratio |\n|---|---|---|---|---|")
    for r in step_cost(args.rounds, args.steps):
        print(f"| {r['model']} | {r['thin_convs']} | {r['without_ms']:.2f} ms | {r['with_ms']:.2f} ms | "
              f"{r['ratio']:.3f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

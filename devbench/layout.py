"""`python -m devbench.layout`: the measurements behind the training precision rule
(study.training.loop.resolve_precision).

One student training step as a trial runs it (forward under autocast where bf16, KD loss against fixed teacher
logits, backward, torch.optim.SGD's fused nesterov step; the oneDNN #6035 guard), batch 128, timed
in four settings: fp32 NCHW, fp32 channels_last, bf16 NCHW, bf16 channels_last. Models: resnet8 and resnet20 on
1x8x8 (digits) and 3x32x32 (CIFAR-shaped) input. `--guard` instead times channels_last with and without the guard
(without only where that is safe) and NCHW, in the precision `auto` picks. The settings alternate within each
round; reported per model: the best round's mean step time per setting and its speed-up over fp32 NCHW (higher
is faster), and which setting `precision: auto` picks on this device.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

SETTINGS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))
MODELS = (("resnet8", 1.0, (1, 8, 8)), ("resnet8", 0.25, (1, 8, 8)), ("resnet20", 1.0, (1, 8, 8)),
          ("resnet8", 1.0, (3, 32, 32)), ("resnet20", 1.0, (3, 32, 32)))


def setting_name(dtype: str, channels_last: bool) -> str:
    return f"{dtype}-{'NHWC' if channels_last else 'NCHW'}"


def _student(arch: str, width: float, shape: tuple, prune: float, device):
    """A fresh benchmark student on `device`, l1_structured-pruned by `prune` (channel fraction) when > 0."""
    import torch

    from study.models.families import build_model

    model = build_model(arch, 10, shape[0], width).to(device)
    if prune:
        from study.models.pruning import prune_model

        prune_model(model, "l1_structured", prune, torch.randn(1, *shape, device=device))
    return model


def step_fn(arch: str, width: float, shape: tuple, dtype: str, channels_last: bool, device, guard: bool = True,
            prune: float = 0.0):
    """A closure running one training step of a fresh student in this setting (guard=False: without the
    oneDNN #6035 rewrite; prune > 0: after l1_structured channel pruning of that ratio)."""
    import torch

    from study.training.kernels import ConvKernelGuard
    from study.training.loop import autocast, make_optimizer
    from study.training.losses import kd_loss

    torch.manual_seed(0)
    model = _student(arch, width, shape, prune, device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt, _ = make_optimizer(model, 0.05, 5e-4, total=1, warm=1)
    rewrite = (ConvKernelGuard(model, device, bf16=dtype == "bf16") if guard  # as train_phase: study.training.kernels
               else contextlib.nullcontext())
    x = torch.randn(128, *shape, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (128,), device=device)
    t = torch.randn(128, 10, device=device)

    def step() -> None:
        with rewrite, autocast(dtype, device):
            out = model(x)
        loss, _, _ = kd_loss(out, t, y, 4.0, 0.5, 0.0, kind="kd", dkd_beta=8.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(device, rounds: int = 3, steps: int = 20, models=MODELS, log=print) -> dict:
    import torch

    from study.training.loop import resolve_precision

    out: dict = {"device": str(device), "threads": torch.get_num_threads(), "rounds": rounds, "steps": steps,
                 "auto_picks": setting_name(*resolve_precision("auto", device)), "models": {}}
    for arch, width, shape in models:
        name = f"{arch} x{width:g} {'x'.join(map(str, shape))}"
        steps_by = {s: step_fn(arch, width, shape, *s, device) for s in SETTINGS}
        for step in steps_by.values():  # warm-up: kernel selection, allocator
            for _ in range(3):
                step()
        _sync(device)
        best = dict.fromkeys(SETTINGS, float("inf"))
        for r in range(rounds):
            order = SETTINGS if r % 2 == 0 else tuple(reversed(SETTINGS))
            for s in order:
                t0 = time.perf_counter()
                for _ in range(steps):
                    steps_by[s]()
                _sync(device)
                best[s] = min(best[s], (time.perf_counter() - t0) / steps)
        base = best[SETTINGS[0]]
        out["models"][name] = {setting_name(*s): {"ms": round(best[s] * 1e3, 3), "speedup": round(base / best[s], 2)}
                               for s in SETTINGS}
        log(f"  {name} done")
    return out


GUARD_MODELS = (("resnet8", 1.0, (1, 8, 8), 0.0), ("resnet8", 0.25, (1, 8, 8), 0.0),
                ("resnet8", 1.0, (1, 8, 8), 0.6), ("resnet20", 1.0, (3, 32, 32), 0.0),
                ("resnet18", 0.5, (3, 32, 32), 0.0))


def _unguarded_is_safe(arch: str, width: float, shape: tuple, prune: float) -> bool:
    """Whether the model's strided 1x1 convs all have >= 16 input channels: outside the known-bad case of
    oneDNN #6035 on AVX2 and AVX-512, so it may be timed without the guard."""
    from study.training.kernels import needs_unit_stride_rewrite

    return not any(needs_unit_stride_rewrite(m) for m in _student(arch, width, shape, prune, "cpu").modules())


def guard_cost(device, rounds: int = 3, steps: int = 20, models=GUARD_MODELS, precision: str = "auto",
               log=print) -> dict:
    """Training-step time of channels_last with the kernels guard, against the same without it (only where
    that is safe) and against NCHW (the other way around the bug), in the precision `auto` picks here."""
    import torch

    from study.training.loop import resolve_precision

    dtype, _ = resolve_precision(precision, device)
    out: dict = {"device": str(device), "threads": torch.get_num_threads(), "rounds": rounds, "steps": steps,
                 "dtype": dtype, "isa": torch.backends.cpu.get_cpu_capability(), "models": {}}
    for arch, width, shape, prune in models:
        name = f"{arch} x{width:g} {'x'.join(map(str, shape))}" + (f" pruned {prune:g}" if prune else "")
        settings = {"NHWC guarded": (True, True), "NCHW": (False, False)}
        if _unguarded_is_safe(arch, width, shape, prune):
            settings["NHWC unguarded"] = (True, False)
        fns = {k: step_fn(arch, width, shape, dtype, cl, device, guard=g, prune=prune)
               for k, (cl, g) in settings.items()}
        for fn in fns.values():
            for _ in range(3):
                fn()
        best = dict.fromkeys(fns, float("inf"))
        for r in range(rounds):
            for k in (list(fns) if r % 2 == 0 else list(reversed(fns))):
                t0 = time.perf_counter()
                for _ in range(steps):
                    fns[k]()
                _sync(device)
                best[k] = min(best[k], (time.perf_counter() - t0) / steps)
        base = best["NHWC guarded"]
        out["models"][name] = {k: {"ms": round(v * 1e3, 3), "vs_guarded": round(v / base, 2)} for k, v in best.items()}
        log(f"  {name} done")
    return out


def format_guard_table(res: dict) -> str:
    cols = ["NHWC guarded", "NHWC unguarded", "NCHW"]
    lines = [f"student training step ({res['dtype']}), batch 128, on {res['device']}"
             f"{', ' + res['cpu'] if res.get('cpu') else ''} (ATen {res['isa']}, {res['threads']} threads); best of "
             f"{res['rounds']} alternating rounds of {res['steps']} steps; time relative to NHWC guarded (above 1 "
             "is slower); unguarded only where every strided 1x1 conv has >= 16 input channels", "",
             "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for model, r in res["models"].items():
        cells = [f"{r[c]['ms']:.2f} ms ({r[c]['vs_guarded']:.2f}x)" if c in r else "(unsafe)" for c in cols]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(res: dict) -> str:
    names = [setting_name(*s) for s in SETTINGS]
    where = res["device"] + (f", {res['cpu']}" if res.get("cpu") else "")
    lines = [f"student training step, batch 128, on {where} ({res['threads']} threads); best of "
             f"{res['rounds']} alternating rounds of {res['steps']} steps; speed-up over fp32-NCHW (higher is "
             f"faster); precision: auto picks {res['auto_picks']} here", "",
             "| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for model, r in res["models"].items():
        lines.append(f"| {model} | " + " | ".join(f"{r[n]['ms']:.2f} ms ({r[n]['speedup']:.2f}x)" for n in names)
                     + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devbench.layout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1, as a trial)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="timed steps per setting and round (default 20)")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--guard", action="store_true",
                   help="instead: what the oneDNN #6035 guard (study.training.kernels) costs: channels_last guarded vs "
                        "unguarded (where safe) vs NCHW")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="with --guard")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.threads < 1:
        print("error: --rounds, --steps and --threads must be >= 1.", file=sys.stderr)
        return 2
    import torch

    from study.core.device import resolve_device  # the trials' own rule for auto / cuda:N
    from study.core.errors import UserError

    try:
        device = resolve_device(args.device)
    except (UserError, RuntimeError) as exc:  # RuntimeError: not a device name torch knows
        print(f"error: --device {args.device}: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if args.guard:
        res = guard_cost(device, args.rounds, args.steps, precision=args.precision)
    else:
        res = run(device, args.rounds, args.steps)
    if device.type == "cpu":
        from study.measure.latency_cache import cpu_name

        res["cpu"] = cpu_name()
    else:
        res["gpu"] = torch.cuda.get_device_name(device)
        res["device"] += f" ({res['gpu']})"
    if args.json:
        from study.core.io import write_json_atomic

        write_json_atomic(args.json, res)
    print(format_guard_table(res) if args.guard else format_table(res))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

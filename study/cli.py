"""`kdstudy COMMAND ...` (or `python -m study COMMAND ...`): trial, teacher, data, run, reproduce."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from study.core.errors import UserError


def _space_config(space_path: str, sets: list[str]):
    from study.config import make_config, parse_set_args
    from study.search.space import load_space

    space = load_space(space_path)
    overrides = parse_set_args(sets or [])
    cfg = make_config(space.trial, overrides, source=f"{space_path} + --set")
    return space, cfg


def cmd_trial(args: argparse.Namespace) -> int:
    """`trial`: one trial from a space's settings (with --set overrides), staged into --out."""
    from study.trial.run import TrialHooks, execute_trial

    _, cfg = _space_config(args.space, args.set)
    out = Path(args.out or f"out/trial-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"trial: {cfg.student_arch} x{cfg.width_mult:g}, kd={cfg.kd_loss} T={cfg.temperature:g} "
          f"alpha={cfg.alpha:g}, prune={cfg.prune_method}@{cfg.prune_ratio:g} on {cfg.dataset} -> {out}", flush=True)

    class Hooks(TrialHooks):
        def on_epoch(self, epoch, total, val_acc, log, ckpt):
            print(f"  epoch {epoch + 1}/{total} [{log['phase']}] loss {log['loss']:.3f} (ce {log['ce']:.3f}, "
                  f"kd {log['kd']:.3f})  val_acc {val_acc:.2f}%", flush=True)

    m = execute_trial(cfg, out_dir=out, hooks=Hooks(), stage=True)  # a failed trial leaves --out as it was
    print(f"val_acc {m['val_acc']:.2f}%  test_acc {m['test_acc']:.2f}%  params {m['params']:,} "
          f"(nonzero {m['nonzero_params']:,})  MACs {m['macs']:,}  latency {m['latency_ms_bs1']:.3f} ms "
          f"(bs1, {m['latency_threads']} threads, {m['latency_backend_used']})  wall {m['wall_s']:.1f}s")
    if m.get("latency_backend_used") != "torch":
        print(f"PyTorch eager latency {m['latency_ms_bs1_torch']:.3f} ms; fp32 val_acc {m['val_acc_fp32']:.2f}%")
    files = ["config.yaml", "metrics.json", "model.pt"] + [f for f in ("model.onnx", "model_int8.onnx")
                                                           if (out / f).exists()]
    print("wrote " + ", ".join(f"{out}/{f}" for f in files))
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    """`teacher`: train (or load) the space's teacher and print its accuracy, normalisation, warnings and path."""
    from study.core.device import resolve_device
    from study.data.datasets import load_dataset_for
    from study.data.streaming import data_for
    from study.teacher.inputs import describe, resolve, teacher_warnings
    from study.teacher.model import get_teacher

    _, cfg = _space_config(args.space, args.set)
    device = resolve_device(cfg.device)
    ds = load_dataset_for(cfg)
    cfg, ds, record = resolve(cfg, ds, device)  # auto with a checkpoint: scored under each candidate, said
    _, info = get_teacher(cfg, device, data=data_for(cfg, ds, device))
    print(f"teacher {info['arch']} (width {info['width_mult']:g}) on {info['dataset']}: "
          f"val_acc {info['val_acc']:.2f}%  test_acc {info['test_acc']:.2f}%  params {info['params']:,}")
    print(f"input normalisation: {describe(record)}")
    if cfg.teacher_checkpoint:
        for w in teacher_warnings(info, classes=ds.classes, image_size=cfg.image_size,
                                  input_shape=tuple(ds.train_x.shape[1:])):
            print(w)
    print(info["path"])
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """`data`: prepare a data set's files under its root and print its size, classes and shape."""
    from study.data.datasets import load_dataset, prepare_dataset

    prepare_dataset(args.name, args.root)
    ds = load_dataset(args.name, args.root)
    print(f"{args.name}: {len(ds.train_y)} train / {len(ds.test_y)} test images, {ds.num_classes} classes, "
          f"shape {tuple(ds.train_x.shape[1:])}, under {args.root}")
    return 0


def ray_auth_env(address: str | None) -> None:
    """Ray 2.60's `ray start --head` turns token auth on when ~/.ray/auth_token exists, but a driver joining with
    ray.init(address=...) only sends the token when RAY_AUTH_MODE=token is set before ray is imported
    (ray-project/ray#64755 review). Set it for the user when a token is there."""
    import os

    if not address or "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or \
            (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"


def cmd_run(args: argparse.Namespace) -> int:
    """`run`: a whole study (study.app.run_study)."""
    import os

    args.address = args.address or os.environ.get("RAY_ADDRESS") or None  # Ray's own convention
    ray_auth_env(args.address)
    from study.app import run_study

    space = args.space
    if args.seed is not None:  # the space with another study seed, recorded as the run's space.yaml
        import dataclasses

        from study.search.space import load_space

        space = dataclasses.replace(load_space(args.space), seed=args.seed)
    run_study(space, name=args.name, trials=args.trials, concurrent=args.concurrent, storage=args.storage,
              address=args.address, runs_dir=args.runs_dir, gpus_per_trial=args.gpus_per_trial,
              cpus_per_trial=args.cpus_per_trial, report=not args.no_report, live_report_s=args.live_report_s)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """`reproduce`: rerun a model of a study with more seeds and export it."""
    from study.reproduce.rerun import reproduce

    summary = reproduce(Path(args.run_dir), rank=args.rank, knee=args.knee, trial=args.trial, baseline=args.baseline,
                        seeds=args.seeds, epochs=args.epochs, max_latency_ms=args.max_latency_ms,
                        max_params=args.max_params)
    print(json.dumps(summary, indent=2))
    return 0


def _docstring(module_file: str) -> str | None:
    """A module's docstring without importing it (the help text must not wait for torch)."""
    import ast

    return ast.get_docstring(ast.parse((Path(__file__).parent / module_file).read_text()))


def build_parser(prog: str = "python -m study") -> argparse.ArgumentParser:
    """The command line's parser, one subcommand per cmd_* function."""
    from study import __version__

    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--version", action="version", version=f"kdstudy {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("trial", help="run one trial (no Ray) and write config.yaml, metrics.json, model.pt")
    t.add_argument("space", help="search space YAML, or a shipped space's name such as demo (its trial: values "
                   "are used; --set overrides)")
    t.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a trial setting (repeatable)")
    t.add_argument("--out", help="output folder (default out/trial-TIMESTAMP)")
    t.set_defaults(func=cmd_trial)

    te = sub.add_parser("teacher", help="train (or load the cached) teacher of a space and print its path")
    te.add_argument("space")
    te.add_argument("--set", action="append", metavar="NAME=VALUE")
    te.set_defaults(func=cmd_teacher)

    d = sub.add_parser("data", help="download / prepare a data set (needs internet)")
    d.add_argument("name", help="cifar10, cifar100, fashion_mnist, tinyimagenet")
    d.add_argument("--root", default="data")
    d.set_defaults(func=cmd_data)

    r = sub.add_parser("run", help="run a search study (Ray Tune + Optuna) into runs/NAME/")
    r.add_argument("space", help="search space YAML, or a shipped space's name (demo, fashion_mnist, cifar10, ...)")
    r.add_argument("--name", help="run name (default: the space's name); an existing run is resumed")
    r.add_argument("--trials", type=int, help="number of trials (overrides search.trials)")
    r.add_argument("--seed", type=int, help="study seed: the sampler's (overrides search.seed; the trials' own "
                   "training seed stays trial.seed)")
    r.add_argument("--concurrent", type=int, help="trials at once (overrides search.concurrent)")
    r.add_argument("--storage", help="Optuna RDB URL, e.g. postgresql://user@host/db (default runs/NAME/optuna.db)")
    r.add_argument("--address", help="join an existing Ray cluster (e.g. auto or HOST:6379; default $RAY_ADDRESS, "
                   "else a local Ray)")
    r.add_argument("--runs-dir", default="runs", help="parent folder of run folders (default runs)")
    r.add_argument("--gpus-per-trial", type=float, help="GPU fraction per trial (overrides resources)")
    r.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (overrides resources)")
    r.add_argument("--no-report", action="store_true", help="skip building benchmarks and report.html (at the end "
                   "and while the study runs)")
    r.add_argument("--live-report-s", type=float, default=30.0, metavar="S", help="while the study runs, rewrite "
                   "report.html as trials end, at most every S seconds (default 30)")
    r.set_defaults(func=cmd_run)

    rp = sub.add_parser("reproduce", help="rerun a trial or baseline with several seeds and export it",
                        description=_docstring("reproduce/rerun.py"),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("run_dir")
    g = rp.add_mutually_exclusive_group(required=True)
    g.add_argument("--rank", type=int, help="K-th trial of the front by the documented rule (1 = most accurate)")
    g.add_argument("--knee", action="store_true", help="the front's knee (as benchmark.json names it)")
    g.add_argument("--trial", type=int, help="any trial that finished training, by its Optuna number")
    g.add_argument("--baseline", metavar="NAME", help="a baseline of the space (seed_recipe, no_kd, ...)")
    rp.add_argument("--seeds", type=int, default=3)
    rp.add_argument("--epochs", type=int, help="longer distillation budget (default: the study's)")
    rp.add_argument("--max-latency-ms", type=float, help="with --rank: only front trials under this latency")
    rp.add_argument("--max-params", type=float, help="with --rank: only front trials under this many params")
    rp.set_defaults(func=cmd_reproduce)
    return p


def main(argv: list[str] | None = None, prog: str = "python -m study") -> int:
    """Run the command line; a UserError is one line on stderr and exit code 2."""
    args = build_parser(prog).parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


def console_main() -> int:
    """The `kdstudy` command (pip install .): the same subcommands as `python -m study`."""
    return main(prog="kdstudy")

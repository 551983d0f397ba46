"""`python -m devbench.trial_path [SPACE] [--set NAME=VALUE ...]`: the path of one trial through the code.

Runs `python -m study trial SPACE --out TMP` in this process under a profiler and lists, in the order they are first
entered, the package's modules (study, benchmarks, reports) whose functions the trial calls, grouped by stage
package (study/<stage>/, or a root module such as study/cli.py). docs/ARCHITECTURE.md's "One trial" list is this
output; tests/test_layering.py checks that they agree.

Default: the demo space with its trial values, a short budget (`epochs=2, finetune_epochs=1, teacher_epochs=2`),
and the fresh teacher cache of a temporary folder, so that every stage runs (the teacher is trained, not loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "benchmarks", "reports")
SHORT = ("epochs=2", "finetune_epochs=1", "teacher_epochs=2", "latency_repeats=3")


_MODULES: dict[str, str | None] = {}


def module_of(filename: str) -> str | None:
    """The dotted module name of a source file of the package, else None (memoised: the profiler asks per call)."""
    if filename not in _MODULES:
        _MODULES[filename] = _module_of(filename)
    return _MODULES[filename]


def _module_of(filename: str) -> str | None:
    try:
        rel = Path(filename).resolve().relative_to(REPO)
    except ValueError:
        return None
    if rel.parts[0] not in PACKAGES or rel.suffix != ".py":
        return None
    parts = rel.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str:
    """study.<stage> for a module of a stage subpackage; the module itself for study's root modules."""
    parts = module.split(".")
    if parts[0] == "study" and len(parts) > 2:
        return ".".join(parts[:2])
    return module


def import_package() -> None:
    """Import every module of study first, so that the trace sees the trial's calls, not import-time ones (the
    registries' decorators run when a module is imported)."""
    import importlib
    import pkgutil

    import study

    for info in pkgutil.walk_packages(study.__path__, "study."):
        if info.name != "study.__main__":
            importlib.import_module(info.name)


def trace_trial(argv: list[str]) -> list[str]:
    """Run `python -m study trial *argv` here; the package modules whose functions it entered, in order."""
    import_package()
    entered: list[str] = []
    seen: set[str] = set()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_name != "<module>":
            module = module_of(frame.f_code.co_filename)
            if module and module not in seen and module != "study.__main__":
                seen.add(module)
                entered.append(module)

    saved = sys.argv
    sys.argv = ["study", "trial", *argv]
    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        runpy.run_module("study", run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        sys.argv = saved
    return entered


def trial_path(space: str = "demo", sets: tuple[str, ...] = SHORT) -> dict:
    """{"modules": [...], "stages": [...]} of one trial of `space` with `sets` applied, in a temporary folder."""
    saved = os.environ.get("KDSTUDY_CACHE")
    with tempfile.TemporaryDirectory(prefix="trial-path-") as tmp:
        os.environ["KDSTUDY_CACHE"] = str(Path(tmp) / "cache")  # a fresh teacher: every stage runs
        argv = [space, "--out", str(Path(tmp) / "trial")]
        for s in sets:
            argv += ["--set", s]
        try:
            modules = trace_trial(argv)
        finally:
            if saved is None:
                os.environ.pop("KDSTUDY_CACHE", None)
            else:
                os.environ["KDSTUDY_CACHE"] = saved
    stages: list[str] = []
    for m in modules:
        if stage_of(m) not in stages:
            stages.append(stage_of(m))
    return {"modules": modules, "stages": stages}


def main() -> None:
    """Print the path (or write it as JSON with --json FILE)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("space", nargs="?", default="demo")
    ap.add_argument("--set", action="append", default=None, metavar="NAME=VALUE",
                    help=f"trial settings (default: {' '.join(SHORT)})")
    ap.add_argument("--json", type=Path, help="write {modules, stages} here")
    args = ap.parse_args()
    path = trial_path(args.space, tuple(args.set) if args.set else SHORT)
    if args.json:
        args.json.write_text(json.dumps(path, indent=2))
    print(f"\none trial: {len(path['modules'])} modules in {len(path['stages'])} stage packages", file=sys.stderr)
    for stage in path["stages"]:
        members = [m for m in path["modules"] if stage_of(m) == stage]
        print(f"  {stage}: {', '.join(m.rsplit('.', 1)[-1] for m in members) if members != [stage] else ''}",
              file=sys.stderr)


if __name__ == "__main__":
    main()

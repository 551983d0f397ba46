"""Layering of the code: study/'s stages are subpackages in pipeline order, and each imports only the ones before
it; the engine imports neither the result pipeline (benchmarks), the report (reports) nor the developers' benchmarks
(devbench); only the application layer (study/app.py) composes them. No import cycle between modules, nor between
packages (study's subpackages and root modules, benchmarks, reports). Imports are read from the source (ast), at
module level and inside functions.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "study"
APP_LAYER = {"study.app"}  # the one module of study/ that may import benchmarks and reports
APP_IMPORTERS = {"study.cli"}  # the entry point that runs the app layer (besides `study.__init__`'s lazy name table)
OUTSIDE_ENGINE = ("benchmarks", "reports", "devbench")
# The engine's packages in pipeline order (docs/ARCHITECTURE.md): each may import only those before it.
STAGES = ("study.core", "study.data", "study.models", "study.training", "study.config", "study.teacher",
          "study.measure", "study.trial", "study.search", "study.reproduce")
ROOT_MODULES = {"study", "study.__main__", "study.cli", "study.app", "study.config"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for top in ("study", "benchmarks", "reports") for p in sorted((REPO / top).rglob("*.py"))}
STUDY_MODULES = {m for m in MODULES if m.split(".")[0] == "study"}


def package_of(module: str) -> str:
    """The node a module belongs to in the package graph: study's subpackage, a root module of study, or the
    top-level package (benchmarks, reports)."""
    parts = module.split(".")
    if parts[0] != "study":
        return parts[0]
    if len(parts) > 1 and (STUDY / parts[1]).is_dir():
        return f"study.{parts[1]}"
    return module


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at module level or in a function: `import a.b` -> a.b; `from a import b` -> a.b
    when a.b is a module, else a; relative imports resolved against the module's package."""
    found: set[str] = set()
    name = _module_name(path) if path.is_relative_to(REPO) else "study.x"
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from .x import y
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            found.update(subs or [base])
            if subs and len(subs) < len(node.names):
                found.add(base)  # `from study.measure import onnx, X`: a submodule and the package
    return found


def module_graph() -> dict[str, set[str]]:
    """The packages' modules -> the modules of study, benchmarks and reports each imports (itself left out)."""
    return {m: {d for d in imports_of(p) if d in MODULES and d != m} for m, p in MODULES.items()}


def study_graph() -> dict[str, set[str]]:
    """study/'s modules -> the study/ modules each imports."""
    return {m: deps & STUDY_MODULES for m, deps in module_graph().items() if m in STUDY_MODULES}


def package_graph() -> dict[str, set[str]]:
    """Packages -> the packages their modules import (a package's own modules left out)."""
    graph: dict[str, set[str]] = {}
    for m, deps in module_graph().items():
        graph.setdefault(package_of(m), set()).update(package_of(d) for d in deps if package_of(d) != package_of(m))
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in components:  # a concrete path through the component, back to its start
        start = min(comp)
        path, seen = [start], {start}
        while True:
            nxt = sorted(w for w in graph[path[-1]] if w in comp)
            back = [w for w in nxt if w == start]
            if back and len(path) > 1:
                cycles.append([*path, start])
                break
            fresh = [w for w in nxt if w not in seen]
            if not fresh:  # every edge in the component leads on; close the loop at the first repeat
                w = nxt[0]
                cycles.append([*path[path.index(w):], w])
                break
            path.append(fresh[0])
            seen.add(fresh[0])
    return cycles


def test_the_app_layer_module_exists():
    assert APP_LAYER <= set(MODULES), f"{APP_LAYER - set(MODULES)} missing: update APP_LAYER"


@pytest.mark.parametrize("module", sorted(STUDY_MODULES - APP_LAYER))
def test_the_engine_imports_neither_benchmarks_reports_nor_devbench(module):
    bad = sorted(d for d in imports_of(MODULES[module]) if d.split(".")[0] in OUTSIDE_ENGINE)
    assert not bad, f"{module} imports {bad}: only {sorted(APP_LAYER)} may; move the step there"


def test_only_the_entry_point_imports_the_app_layer():
    importers = {m for m, deps in study_graph().items() if deps & APP_LAYER and m not in APP_LAYER}
    assert importers <= APP_IMPORTERS, f"{sorted(importers - APP_IMPORTERS)} import {sorted(APP_LAYER)}"


def test_no_import_cycle_among_modules():
    cycles = find_cycles(module_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_import_cycle_among_packages():
    cycles = find_cycles(package_graph())
    assert not cycles, "package cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_stage_imports_only_the_stages_before_it():
    graph = package_graph()
    assert set(STAGES) <= set(graph), f"{set(STAGES) - set(graph)} missing: update STAGES"
    for i, stage in enumerate(STAGES):
        later = sorted(graph[stage] & set(STAGES[i + 1:]))
        assert not later, f"{stage} imports the later stage(s) {later}: move the code down the pipeline"
    engine = {p for p in graph if p.startswith("study.")} - ROOT_MODULES
    assert engine <= set(STAGES), f"{sorted(engine - set(STAGES))}: add the new subpackage to STAGES in order"


def test_study_modules_live_in_a_stage_and_search_spaces_holds_yaml_only():
    loose = sorted(m for m in STUDY_MODULES if package_of(m) == m and m not in ROOT_MODULES | set(STAGES))
    assert not loose, f"{loose} sit at study/'s root: put them in the stage subpackage that owns them"
    assert not list((REPO / "search_spaces").glob("*.py")), "search_spaces/ holds the YAML spaces only"
    assert all(p.with_name("__init__.py").is_file() and ast.get_docstring(ast.parse(p.with_name("__init__.py")
               .read_text())) for p in STUDY.glob("*/*.py")), "every stage package has a docstring saying what it owns"


def test_the_checks_see_what_they_look_for(tmp_path):
    """The reader catches function-level and relative imports, and the cycle finder reports a cycle."""
    src = tmp_path / "mod.py"
    src.write_text("import os\n\ndef f():\n    from benchmarks.collect import read_results\n"
                   "    from . import teacher\n    from study.measure import onnx, __version__\n")
    assert {"os", "benchmarks.collect", "study.teacher", "study.measure.onnx", "study.measure"} <= imports_of(src)
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_app_layer_composes_the_engine_the_results_and_the_report(tmp_path, monkeypatch):
    """study.app.run_study runs the engine without its own summary, then results.csv / benchmark.json, the Pareto
    table and report.html; report=False leaves the engine's summary and writes neither."""
    from study_fixture import make_run_dir

    from study import app
    from study.search import driver as search

    run = make_run_dir(tmp_path)  # a finished study's run folder (no model files: nothing to re-measure)
    calls = []

    def engine(space_file, **kwargs):
        calls.append((space_file, kwargs))
        return run

    monkeypatch.setattr(search, "run_search", engine)
    lines: list[str] = []
    result = app.run_study("demo", name="x", trials=3, log=lines.append)
    assert result.run_dir == run and result.report == run / "report.html"
    assert sorted(result.pareto) == sorted(json.loads((run / "benchmark.json").read_text())["pareto_trials"])
    assert result.knee in result.pareto and result.trial(result.knee).val_acc > 0
    assert calls[-1][0] == "demo" and calls[-1][1]["summary"] is False and calls[-1][1]["trials"] == 3
    assert (run / "results.csv").is_file() and (run / "report.html").is_file()
    assert json.loads((run / "benchmark.json").read_text())["pareto_trials"]
    assert any(line.startswith("Pareto-optimal trials (") for line in lines)
    assert isinstance(calls[-1][1]["on_trial_end"], app.LiveReport)  # report.html rewritten while it runs
    end = lines[lines.index(f"report: {run / 'report.html'}") + 1:]  # then which model to take, with commands
    knee = result.knee
    assert end[0] == "Which model to take:" and end[1].startswith("  knee") and f"trial {knee} [" in end[1]
    assert end[2].strip() == f"kdstudy reproduce {run} --knee"
    assert any("most accurate" in line for line in end[1:] if not line.strip().startswith("kdstudy"))

    (run / "results.csv").unlink()
    (run / "report.html").unlink()
    assert app.run_study("demo", report=False, log=lines.append).run_dir == run
    assert calls[-1][1]["summary"] is True and calls[-1][1]["on_trial_end"] is None
    assert not (run / "results.csv").exists() and not (run / "report.html").exists()


def test_the_python_api_runs_the_app_layer():
    import study
    from study import app

    assert study.run_study is app.run_study

"""The package's code reads as code (docs/ARCHITECTURE.md, "Rules"): no function over 70 lines, a docstring on
every public definition, no run state passed around as string-keyed dicts, no test-only switches on the product path,
no CPU models (measurements) in the code, and docs/ARCHITECTURE.md's path of one trial is the traced one."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_FILES = sorted(p for top in ("study", "benchmarks", "reports") for p in (REPO / top).rglob("*.py"))
MAX_LINES = 70


def _rel(p: Path) -> str:
    return p.relative_to(REPO).as_posix()


def _functions(tree: ast.AST):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_is_longer_than_70_lines():
    long = [f"{_rel(p)}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)"
            for p in PACKAGE_FILES for f in _functions(ast.parse(p.read_text()))
            if f.end_lineno - f.lineno + 1 > MAX_LINES]
    assert not long, f"functions over {MAX_LINES} lines (split them along their steps): " + "; ".join(long)


def _public_definitions(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            yield node.name, node
            if isinstance(node, ast.ClassDef):
                for m in node.body:
                    if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and not m.name.startswith("_"):
                        yield f"{node.name}.{m.name}", m


def test_every_public_definition_has_a_docstring():
    missing = [f"{_rel(p)}:{node.lineno} {name}" for p in PACKAGE_FILES
               for name, node in _public_definitions(ast.parse(p.read_text())) if not ast.get_docstring(node)]
    assert not missing, f"{len(missing)} public definitions without a docstring: " + "; ".join(missing)


def test_every_module_has_a_docstring():
    missing = [_rel(p) for p in PACKAGE_FILES if p.read_text().strip() and not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"modules without a docstring: {missing}"


ORCHESTRATION = [p for p in PACKAGE_FILES if _rel(p).startswith(("study/search/", "study/trial/", "study/reproduce/",
                                                                   "study/app.py", "study/cli.py", "reports/"))
                 or _rel(p) in ("benchmarks/collect.py", "benchmarks/recommend.py")]


def test_no_run_state_in_string_keyed_dicts():
    """The study's plan and a search trial's context are typed (StudyPlan, TrialContext): no `meta[...]`,
    `meta.get(...)`, `ctx[...]` in the code that runs studies and reads them. (A checkpoint's or an export's
    metadata is a file format, read where it is loaded.)"""
    assert ORCHESTRATION and all(p.is_file() for p in ORCHESTRATION)
    pattern = re.compile(r"\b(meta|ctx)(\[\s*[\"']|\.get\()")
    hits = [f"{_rel(p)}:{i}" for p in ORCHESTRATION for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert not hits, "string-keyed meta/ctx dicts: " + ", ".join(hits)
    readers = [_rel(p) for p in PACKAGE_FILES if "load_study_meta(" in p.read_text() and p.name != "results.py"]
    assert not readers, f"{readers} read study.json as a dict: use study.search.results.load_study_plan"


def test_no_test_switch_on_the_product_path():
    hits = [_rel(p) for p in PACKAGE_FILES if re.search(r"for_tests|KDSTUDY_TEST", p.read_text())]
    assert not hits, f"test-only switches in the package: {hits} (tests inject what they need from tests/)"


CPU_WORDS = re.compile(r"\b(EPYC|Xeon|Zen ?[2-5]|Sapphire Rapids|Granite Rapids|Ryzen|Threadripper)\b")


def test_no_cpu_models_in_the_code():
    """Measurements live in docs/ with their commands and machines (docs/PLATFORMS.md, HOW_IT_RUNS.md,
    RUNTIMES.md), not in the code's comments and docstrings."""
    hits = [f"{_rel(p)}:{i}" for p in PACKAGE_FILES for i, line in enumerate(p.read_text().splitlines(), 1)
            if CPU_WORDS.search(line)]
    assert not hits, "CPU models named in the code (move the measurement to docs/): " + ", ".join(hits)


def _documented_trial_path() -> list[tuple[str, list[str]]]:
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## The path of one trial", 1)[1].split("\n## ", 1)[0]
    return [(stage, [m.strip() for m in mods.split(",") if m.strip()])
            for stage, mods in re.findall(r"^\d+\. `([a-z_.]+)`(?::\s*(.*))?$", section, flags=re.M)]


@pytest.mark.slow
def test_architecture_lists_the_traced_path_of_one_trial(tmp_path):
    """docs/ARCHITECTURE.md's numbered list is what devbench.trial_path traces (a short demo trial, fresh teacher):
    the stage packages in the order the trial enters them, each with its modules."""
    import json

    out = tmp_path / "path.json"
    subprocess.run([sys.executable, "-m", "devbench.trial_path", "--json", str(out)], cwd=REPO, check=True,
                   capture_output=True, timeout=600)
    traced = json.loads(out.read_text())
    grouped = [(stage, [m.rsplit(".", 1)[-1] for m in traced["modules"] if m != stage and m.startswith(stage + ".")])
               for stage in traced["stages"]]
    assert _documented_trial_path() == grouped, (
        f"docs/ARCHITECTURE.md's path of one trial differs from `python -m devbench.trial_path`: {grouped}")
    assert len(traced["stages"]) <= 11

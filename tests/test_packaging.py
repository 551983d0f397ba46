"""The package: its metadata agrees with requirements.txt, the wheel carries what `kdstudy` needs, --help is light."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]


def _runtime_requirements() -> list[str]:
    lines = (REPO / "requirements.txt").read_text().split("# Tests and tooling")[0].splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_pyproject_dependencies_are_requirements_txt_runtime_block():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["dependencies"] == _runtime_requirements()
    assert meta["scripts"]["kdstudy"] == "study.cli:console_main"


@pytest.mark.slow
def test_the_wheel_holds_the_packages_the_spaces_and_the_command(tmp_path):
    import shutil

    src = tmp_path / "src"  # a copy of what a clone holds, so that the build writes nothing into the repository
    for name in ("study", "search_spaces", "benchmarks", "reports", "devbench", "tests"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("kdstudy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("study/cli.py", "study/training/kernels.py", "study/search/space.py", "search_spaces/demo.yaml",
                   "benchmarks/collect.py", "reports/__init__.py"):
        assert needed in names, needed
    assert not any(n.startswith(("tests/", "runs/", ".venv/", "devbench/")) for n in names)  # not the product
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "kdstudy = study.cli:console_main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_version_and_help_do_not_import_torch():
    code = ("import sys\nfrom study.cli import main\n"
            "for argv in (['--version'], ['--help'], ['reproduce', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch imported' if 'torch' in sys.modules else 'torch not imported')")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "kdstudy 0." in r.stdout and "reproduce" in r.stdout and r.stdout.strip().endswith("torch not imported")


def test_a_shipped_space_is_found_by_name(tmp_path, monkeypatch):
    from study.search.space import load_space, resolve_space_path, shipped_spaces

    monkeypatch.chdir(tmp_path)  # outside the clone: no search_spaces/ folder here
    assert "demo" in shipped_spaces()
    assert resolve_space_path("demo") == REPO / "search_spaces" / "demo.yaml"
    assert load_space("demo.yaml").name == "demo"
    (tmp_path / "demo.yaml").write_text("name: mine\n")
    assert resolve_space_path("demo.yaml") == Path("demo.yaml")  # a file of the user's wins
    from study.core.errors import SpaceError

    with pytest.raises(SpaceError, match="shipped spaces: .*demo"):
        load_space("no_such_space")


def test_the_python_api_names():
    import study

    assert study.__version__.startswith("0.")
    from study import TrialConfig, load_space, run_study, run_trial

    assert callable(run_trial) and callable(run_study) and callable(load_space)
    assert TrialConfig().student_arch
    with pytest.raises(AttributeError):
        study.no_such_name  # noqa: B018


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's Python example, as written, from a folder outside the clone (a real demo trial)."""
    text = (REPO / "README.md").read_text()
    block = text.split("From Python (names resolve on first use", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    r = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "val_acc" in r.stdout and "nonzero_params" in r.stdout
    assert (tmp_path / "out" / "api-trial" / "metrics.json").is_file()


def test_no_import_cycles_between_our_modules():
    """Every import, module-level or inside a function, between the four packages' modules: no cycle."""
    import ast

    mods = {}
    for pkg in ("study", "search_spaces", "benchmarks", "reports"):
        for f in (REPO / pkg).rglob("*.py"):
            mods[".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")] = f
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            graph[m].update(n for n in names if n in mods and n != m)
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, f"import cycle: {' -> '.join([*stack[stack.index(n):], n])}"
            if n not in state:
                visit(n, [*stack, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


@pytest.mark.slow
def test_make_study_installs_the_kdstudy_command(tmp_path):
    """`make study` installs the package into the venv (its stamp rule runs `make package`), so .venv/bin/kdstudy
    exists afterwards; `make package` is run for real into a fresh venv (no dependencies: --version needs none)."""
    import shutil

    src = tmp_path / "src"  # a copy, so that the editable install writes nothing into the repository
    for name in ("study", "search_spaces", "benchmarks", "reports"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "Makefile", "requirements.txt"):
        shutil.copy(REPO / name, src / name)
    venv = tmp_path / "venv"
    dry = subprocess.run(["make", "-n", "-C", str(src), f"VENV={venv}", "study"], capture_output=True, text=True,
                         timeout=60)
    assert dry.returncode == 0, dry.stderr
    steps = dry.stdout.splitlines()
    install = next(i for i, s in enumerate(steps) if "pip install --quiet --no-deps --no-build-isolation -e ." in s)
    assert install < next(i for i, s in enumerate(steps) if "-m study run" in s)

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # the venv sees this environment's packages (pip, setuptools), as `make study`'s sees requirements.txt's
    import sysconfig

    (purelib,) = venv.glob("lib/python*/site-packages")
    (purelib / "test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run(["make", "-C", str(src), f"VENV={venv}", "package"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    v = subprocess.run([str(venv / "bin" / "kdstudy"), "--version"], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    from study import __version__

    assert v.returncode == 0 and v.stdout.strip() == f"kdstudy {__version__}", v.stdout + v.stderr

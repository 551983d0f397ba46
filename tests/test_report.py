"""`python -m reports`: one offline HTML file, escaped text, checked in a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from study_fixture import FRONT, XSS, make_run_dir

from benchmarks.collect import read_results, run_benchmarks
from reports.__main__ import main
from reports.html import build_report

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# The objectives' costs first, the other costs collapsed below them; no importance from 6 complete trials.
PLOTS = ["plot-pareto-params", "plot-pareto-latency_ms_bs1", "plot-pareto-nonzero_params", "plot-pareto-macs",
         "plot-3d", "plot-parcoords", "plot-hv"]
QUIET = {"log": lambda msg: None}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Report of the fixture study; no results.csv yet, so the report collects them first."""
    run = make_run_dir(tmp_path_factory.mktemp("study"), reproduce=True)
    return build_report(run, **QUIET)


def test_report_collects_results_when_missing(report: Path) -> None:
    run = report.parent
    assert all((run / n).is_file() for n in ("results.csv", "pareto.csv", "benchmark.json"))
    assert json.loads((run / "benchmark.json").read_text())["remeasure"] is None


def test_report_is_offline_and_embeds_plotly_once(report: Path) -> None:
    page = report.read_text()
    assert not re.search(r"<script[^>]*\ssrc\s*=", page, flags=re.I)  # no external script at all, let alone a CDN
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']?https?://", page, flags=re.I)
    assert page.count("* plotly.js v") == 1
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_report_escapes_every_text_from_trials(report: Path) -> None:
    page = report.read_text()
    assert XSS not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # Inside the plot JSON no "<" survives either (it could close the script element).
    for spec in re.findall(r"var f = (\{.*?\}); Plotly\.newPlot", page, flags=re.S):
        assert "<" not in spec and "</script" not in spec.lower()


def test_report_commands_and_settings(report: Path) -> None:
    page = report.read_text()
    for n in FRONT:
        assert f'kdstudy reproduce {report.parent} <span class="nw">--trial {n}</span></code>' in page
    assert "python -m study reproduce" not in page  # one spelling: the installed command
    assert "TPESampler" in page and "search_spaces/&lt;fixture&gt;.yaml" in page
    assert "alpha * CE(student, y)" in page and "no latency gain" in page


def test_report_cli_and_importance_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run_dir(tmp_path, n_complete=1, references=False)
    run_benchmarks(run, remeasure=False, **QUIET)
    assert main([str(run)]) == 0
    page = (run / "report.html").read_text()
    assert 'id="importance-note"' in page and "at least 2 complete trials" in page
    assert "No reference models found" in page and "plot-importance" not in page
    assert main([str(tmp_path / "missing")]) == 2
    assert "study.json not found" in capsys.readouterr().err


def test_reports_do_not_import_training_code() -> None:
    code = ("import sys, reports.html, reports.__main__, benchmarks.collect; "
            "bad = [m for m in ('torch', 'study.training.loop', 'study.models.checkpoint', 'study.measure.timing', 'ray') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# --------------------------------------------------------------------------------------------- real browser

@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()) and not shutil.which("chromedriver"):
        pytest.skip("headless browser test needs Chromium: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report: Path, browser: object) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(report.as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return document.querySelectorAll('.js-plotly-plot').length") == len(PLOTS))
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018  (the injected script must not have run)
    assert driver.execute_script("return typeof window.Plotly") == "object"
    ids = driver.execute_script("return Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => d.id)")
    assert ids == PLOTS

    df = read_results(report.parent)
    for plot in PLOTS[:5]:
        cols = {"plot-3d": ["params", "latency_ms_bs1"]}.get(plot, [plot.removeprefix("plot-pareto-")])
        shown = df[df["state"].isin(["COMPLETE", "INFEASIBLE"])].dropna(subset=[*cols, "val_acc"])
        traces = driver.execute_script(
            "return document.getElementById(arguments[0]).data.map(t => [t.meta, t.x.length, t.customdata || []])",
            plot)
        trial_traces = [t for t in traces if t[0] == "trials"]
        assert sum(t[1] for t in trial_traces) == len(shown) == 6, plot
        assert sorted(n for t in trial_traces for n in t[2]) == sorted(shown["number"])
        assert [t[1] for t in traces if t[0] == "reference"] == [1, 1, 1]  # one legend entry each
        assert plot == "plot-3d" or [t for t in traces if t[0] == "front"]
    n_params = driver.execute_script("return document.getElementById('plot-parcoords').data[0].dimensions.length")
    assert n_params == 5  # 4 parameters + val_acc
    hv = driver.execute_script("return document.getElementById('plot-hv').data[0].x.length")
    assert hv == 9

    def rows(table: str) -> list[list[str]]:
        return driver.execute_script(
            "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr'))"
            ".map(r => Array.from(r.cells).map(c => c.innerText))", table)

    pareto_rows = rows("table-pareto")
    assert sorted(int(r[0].split()[0]) for r in pareto_rows) == FRONT
    assert sum("knee" in r[0] for r in pareto_rows) == 1
    assert all(r[1].startswith("kdstudy reproduce ") for r in pareto_rows)  # the command beside the trial
    problems = {int(r[0]): r for r in rows("table-problems")}
    assert sorted(problems) == [6, 7, 8]
    assert problems[7][2] == XSS  # shown as text, literally
    assert problems[6][1] == "EARLY_STOPPED" and problems[8][1] == "INFEASIBLE"
    assert sorted(r[0] for r in rows("table-references")) == ["student_ce", "student_kd", "teacher"]
    assert [r[0] for r in rows("table-reproduce")] == ["1"]
    settings = {r[0]: r[1] for r in rows("table-settings")}
    assert settings["sampler"] == "TPESampler" and "1.1" in settings["hypervolume reference rule"]


def test_report_says_when_the_study_changed_after_its_results_were_collected(tmp_path: Path) -> None:
    import os

    run = make_run_dir(tmp_path, reproduce=True)
    notes: list[str] = []
    build_report(run, log=notes.append)
    assert not any("changed after results.csv" in n for n in notes)
    later = (run / "results.csv").stat().st_mtime + 60
    os.utime(run / "optuna.db", (later, later))  # the study went on (resumed) after the collection
    build_report(run, log=notes.append)
    assert any("changed after results.csv" in n and "python -m benchmarks" in n for n in notes), notes


def test_reproduce_table_shows_a_longer_budget_beside_its_numbers() -> None:
    from reports.html import reproduce_table

    same = {"trial": 1, "seeds": [0, 1], "epochs": 15, "epochs_search": 15, "budget_changed": False,
            "test_acc_mean": 97.0}
    longer = {**same, "epochs": 60, "budget_changed": True, "test_acc_mean": 98.0}
    html = reproduce_table([same, longer])
    assert "distillation epochs" in html and "60 (search: 15)" in html and "<td>15</td>" in html

"""The reports as a reader sees them: rendered in headless Chromium at 1400 px wide, screenshots saved, and the
layout checked in the DOM (the answer above the fold, no sideways scroll, no overlapping labels, one latency
measurement per plot).

Renders the committed Fashion-MNIST run, the synthetic fixture study, runs/demo when `make study` made it, and any
run folders listed in KDSTUDY_REPORT_RUNS (os.pathsep-separated). Screenshots go to the test's tmp folder and, when
KDSTUDY_SCREENSHOT_DIR is set, there too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from study_fixture import make_run_dir
from test_report import QUIET, browser  # noqa: F401  (the shared headless Chromium fixture)

from benchmarks.collect import read_results
from reports.html import LATENCY_RE, build_report, importance_html

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1400, 900
# What a report reads; the models, seeds' folders and exports are left behind.
SKIP = shutil.ignore_patterns("*.pt", "*.pt2", "*.onnx", "*.ckpt", "report.html", "front.png", "trials", "ray",
                              "seed_*", "export", "trial-*", "references")


def _runs() -> list[Path | None]:
    runs: list[Path | None] = [ROOT / "results" / "fashion_mnist", ROOT / "runs" / "demo"]
    runs += [Path(p) for p in os.environ.get("KDSTUDY_REPORT_RUNS", "").split(os.pathsep) if p]
    return [None] + [r for r in runs if (r / "results.csv").is_file()]  # None: the fixture study


def _screenshots(driver: object, out: Path, name: str) -> list[Path]:
    """The first screen and the whole page; copied to KDSTUDY_SCREENSHOT_DIR when set."""
    top, full = out / f"{name}-top.png", out / f"{name}-full.png"
    driver.save_screenshot(str(top))
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, min(height + 200, 16000))
    driver.save_screenshot(str(full))
    driver.set_window_size(WIDTH, HEIGHT)
    if os.environ.get("KDSTUDY_SCREENSHOT_DIR"):
        dest = Path(os.environ["KDSTUDY_SCREENSHOT_DIR"])
        dest.mkdir(parents=True, exist_ok=True)
        for p in (top, full):
            shutil.copy(p, dest / p.name)
    return [top, full]


OVERLAPS = """
const boxes = (sel) => Array.from(document.querySelectorAll(sel)).map(e => [e, e.getBoundingClientRect()])
    .filter(([e, r]) => r.width > 0 && r.height > 0);
const hit = (a, b) => a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1;
const out = [];
for (const plot of document.querySelectorAll('.js-plotly-plot')) {
  for (const sel of ['g.textpoint text', 'text.legendtext']) {
    const bs = boxes('#' + plot.id + ' ' + sel);
    for (let i = 0; i < bs.length; i++) for (let j = i + 1; j < bs.length; j++)
      if (hit(bs[i][1], bs[j][1])) out.push([plot.id, bs[i][0].textContent, bs[j][0].textContent]);
  }
}
return out;
"""


def _above_the_fold(driver: object) -> dict[str, float | None]:
    return driver.execute_script("""
        const bottom = (sel) => { const e = document.querySelector(sel);
                                  return e ? e.getBoundingClientRect().bottom : null; };
        return {fold: window.innerHeight, answer: bottom('#answer h2'),
                recommendation: bottom('#table-recommend tbody tr'),
                command: bottom('#table-recommend code.cmd'), verdict: bottom('#verdicts li')};""")


@pytest.mark.slow
@pytest.mark.parametrize("source", _runs(), ids=lambda r: "fixture" if r is None else r.name)
def test_report_reads_at_a_glance_at_1400_px(source: Path | None, tmp_path: Path, browser: object,  # noqa: F811
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    name = "fixture" if source is None else source.name
    if source is None:
        run = make_run_dir(tmp_path / "fixture", reproduce=True)
    else:
        run = tmp_path / source.name
        shutil.copytree(source, run, ignore=SKIP)
    monkeypatch.chdir(run.parent)  # as a user runs it: `python -m reports results/NAME`, a relative path
    report = build_report(Path(run.name), **QUIET)
    driver = browser
    driver.set_window_size(WIDTH, HEIGHT)
    driver.get(report.resolve().as_uri())
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(
        "return document.querySelectorAll('.js-plotly-plot').length === document.querySelectorAll('.plot').length"))
    assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    shots = _screenshots(driver, tmp_path, name)
    assert all(p.stat().st_size > 10_000 for p in shots)

    assert driver.execute_script("return window.innerWidth") == WIDTH
    seen = _above_the_fold(driver)
    expected = ["answer", "recommendation", "command"] + (["verdict"] if seen["verdict"] is not None else [])
    assert all(seen[k] is not None and seen[k] <= seen["fold"] for k in expected), seen
    assert source is None or seen["verdict"] is not None  # both real runs have baselines
    widths = driver.execute_script("""
        const box = document.getElementById('table-pareto').parentElement;  // scrolls sideways if the table is wider
        return [box.scrollWidth, box.clientWidth, document.documentElement.scrollWidth];""")
    assert widths[0] <= widths[1] and widths[2] <= WIDTH, widths
    driver.execute_script("document.querySelectorAll('details').forEach(d => { d.open = true; })")
    WebDriverWait(driver, 10).until(lambda d: True)
    assert driver.execute_script(OVERLAPS) == []
    _one_latency_per_plot(driver, read_results(run))


def _one_latency_per_plot(driver: object, df: pd.DataFrame) -> None:
    """Where the run re-measured latency, its latency plot draws only re-measured values."""
    if LATENCY_RE not in df.columns or df[LATENCY_RE].isna().all():
        return
    xs = driver.execute_script("""
        return document.getElementById('plot-pareto-latency_ms_bs1_remeasured').data
            .filter(t => t.mode === 'markers').flatMap(t => t.x);""")
    measured = set(pd.to_numeric(df[LATENCY_RE], errors="coerce").dropna().round(9))
    assert xs and {round(x, 9) for x in xs} <= measured


def test_importance_needs_enough_complete_trials_and_leaves_training_settings_out_of_costs() -> None:
    imps = {"val_acc": {"alpha": 0.3, "width_mult": 0.7}, "latency_ms_bs1": {"alpha": 0.65, "width_mult": 0.35}}
    few = importance_html({"counts": {"COMPLETE": 13}, "importances": imps})
    assert "plot-importance" not in few and "13 complete trials are too few" in few
    enough = importance_html({"counts": {"COMPLETE": 25}, "importances": imps})
    assert "plot-importance" in enough and "From 25 complete trials" in enough
    assert "0.65 (latency_ms_bs1)" in enough and "(alpha) are left out" in enough

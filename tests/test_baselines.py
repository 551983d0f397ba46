"""Baselines in a space, their comparison with the front, the front's knee, train_size and the PNG figure."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import write_space
from study_fixture import OBJECTIVES, make_run_dir

from benchmarks.collect import analyse, compare_baselines, knee
from study.core.errors import SpaceError
from study.core.io import REPO
from study.search.space import BUILTIN_BASELINES, load_space


def test_absent_baselines_give_both_built_ins_and_an_empty_list_none(tmp_path):
    space = load_space(write_space(tmp_path / "a.yaml", baselines=None))
    assert [n for n, _ in space.baselines] == ["seed_recipe", "no_kd"]
    cfg = space.baseline_config("seed_recipe")
    assert (cfg.kd_loss, cfg.temperature, cfg.alpha, cfg.width_mult, cfg.prune_method, cfg.prune_ratio,
            cfg.finetune_epochs) == ("kd", 4.0, 0.3, 1.0, "l1_structured", 0.3, 5)
    assert cfg.epochs == space.base_config().epochs and cfg.dataset == "digits"  # the rest from the space
    assert space.baseline_config("no_kd").kd_loss == "ce"
    assert load_space(write_space(tmp_path / "b.yaml", baselines=[])).baselines == ()


def test_own_baselines_beside_a_built_in(tmp_path):
    space = load_space(write_space(tmp_path / "c.yaml", baselines=[
        "seed_recipe", {"name": "half-width", "width_mult": 0.5, "kd_loss": "kd", "alpha": 0.1}]))
    assert dict(space.baselines)["seed_recipe"] == BUILTIN_BASELINES["seed_recipe"]
    assert space.baseline_config("half-width").width_mult == 0.5


@pytest.mark.parametrize("entry,message", [
    ("my_recipe", "unknown built-in baseline 'my_recipe'"),
    ({"width_mult": 0.5}, "needs a `name`"),
    ({"name": "../x", "width_mult": 0.5}, "needs a `name` of letters"),
    ({"name": "seed_recipe", "alpha": 0.9}, "is a built-in baseline"),
    ({"name": "b", "widht_mult": 0.5}, "Did you mean 'width_mult'"),
    ({"name": "b", "dataset": "cifar10"}, "is fixed for the whole study"),
    ({"name": "b", "latency_backend": "torch"}, "sets how cost is measured"),
    ({"name": "b", "alpha": 2.0}, r"baselines\.b: is not a valid configuration: .*alpha must be in \[0, 1\]"),
    (3, "must be a built-in name or a mapping"),
])
def test_bad_baselines_name_the_entry_and_the_fix(tmp_path, entry, message):
    with pytest.raises(SpaceError, match=message):
        load_space(write_space(tmp_path / "bad.yaml", baselines=[entry]))


def test_duplicate_and_non_list_baselines_are_refused(tmp_path):
    with pytest.raises(SpaceError, match="appears twice"):
        load_space(write_space(tmp_path / "d.yaml", baselines=["no_kd", "no_kd"]))
    with pytest.raises(SpaceError, match="must be a list"):
        load_space(write_space(tmp_path / "e.yaml", baselines={"name": "x"}))


def _table(tmp_path, baselines: dict) -> pd.DataFrame:
    """The synthetic study (front: trials 0, 1, 2, 5) plus baseline rows: name -> (val_acc, params, latency)."""
    from benchmarks.collect import collect_results
    from study.search.results import load_study_plan, open_study

    run = make_run_dir(tmp_path)
    df = collect_results(run, open_study(run, load_study_plan(run)), OBJECTIVES, log=lambda _: None)
    rows = [{"number": None, "baseline": n, "state": "BASELINE", "val_acc": v, "params": p, "latency_ms_bs1": ms}
            for n, (v, p, ms) in baselines.items()]
    df = pd.concat([df, pd.DataFrame(rows)], ignore_index=True)
    df["number"] = df["number"].astype("Int64")
    return analyse(df, OBJECTIVES)[0]


def test_baseline_comparison_both_ways(tmp_path):
    # front: 0 (90 %, 100k, 2.0 ms), 1 (88 %, 50k, 1.2 ms), 2 (85 %, 25k, 0.8 ms), 5 = 0
    df = _table(tmp_path, {"worse": (86.0, 60_000, 1.5),     # dominated by trial 1
                           "strong": (89.0, 40_000, 1.0),    # dominates trial 1, dominated by none
                           "tiny": (70.0, 10_000, 0.5)})     # nothing at or below its cost
    got = {b["name"]: b for b in compare_baselines(df, OBJECTIVES)}
    assert got["worse"]["dominated_by"] == [1] and got["worse"]["dominates"] == []
    assert got["worse"]["gain"]["trial"] == 1 and got["worse"]["gain"]["difference"] == pytest.approx(2.0)
    assert "dominated by searched trial(s) 1" in got["worse"]["line"] and "+2.00 points" in got["worse"]["line"]
    assert got["strong"]["dominated_by"] == [] and got["strong"]["dominates"] == [1]
    assert got["strong"]["gain"]["trial"] == 2 and got["strong"]["gain"]["difference"] == pytest.approx(-4.0)
    assert "not dominated by any searched trial" in got["strong"]["line"]
    assert "it dominates searched front trial(s) 1" in got["strong"]["line"]
    assert got["tiny"]["gain"] is None and "no trial finished at no more than its params and latency_ms_bs1" \
        in got["tiny"]["line"]
    # baselines never join the front and do not change it
    assert sorted(df.loc[df["on_front"], "number"].astype(int)) == [0, 1, 2, 5]


def test_an_enqueued_baseline_is_judged_against_the_searched_trials_only(tmp_path):
    # trial 1 relabelled as an enqueued baseline: it stays on the study's front, but it is no longer a searched
    # trial, so it neither dominates itself nor counts as the search's answer to the other baselines
    df = _table(tmp_path, {"worse": (86.0, 60_000, 1.5)})
    df.loc[df["number"] == 1, "baseline"] = "recipe"
    got = {b["name"]: b for b in compare_baselines(df, OBJECTIVES)}
    assert got["recipe"]["trial"] == 1 and got["recipe"]["dominated_by"] == []
    assert got["worse"]["dominated_by"] == [] and got["worse"]["gain"]["trial"] == 2  # 1 was the searched one
    assert 1 in df.loc[df["on_front"], "number"].astype(int).tolist()


def test_baselines_in_the_space_are_found_with_their_parameters(tmp_path):
    from study.search.space import load_space

    demo = load_space("demo")
    params, why = demo.baseline_params("seed_recipe")
    assert why == "" and params == {"kd_loss": "kd", "temperature": 4.0, "alpha": 0.3, "width_mult": 1.0,
                                    "prune_method": "l1_structured", "prune_ratio": 0.3, "quantize": "none"}
    assert demo.config_for(params).to_dict() == demo.baseline_config("seed_recipe").to_dict()
    params, _ = demo.baseline_params("no_kd")  # temperature and alpha do not exist for kd_loss ce
    assert params == {"kd_loss": "ce", "width_mult": 1.0, "prune_method": "none", "quantize": "none"}
    text = (REPO / "search_spaces" / "demo.yaml").read_text()
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(text.replace("finetune_epochs: 5", "finetune_epochs: 3")
                      .replace("prune_ratio: {type: float, low: 0.1,", "prune_ratio: {type: float, low: 0.35,"))
    space = load_space(narrow)
    params, why = space.baseline_params("seed_recipe")
    assert params is None and "prune_ratio 0.3 is outside params.prune_ratio (0.35 .. 0.7)" in why
    wide = tmp_path / "wide.yaml"
    wide.write_text(text.replace("finetune_epochs: 5", "finetune_epochs: 3"))
    params, why = load_space(wide).baseline_params("seed_recipe")
    assert params is None and why.startswith("finetune_epochs 5 differs from the study's 3")


def _confirm_seed(run, key: str, seed: int, test_acc: float) -> None:
    folder = run / "confirm" / key / f"seed_{seed}"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"seed": seed, "val_acc": test_acc, "test_acc": test_acc}))
    (folder / "reproduce.json").write_text("{}")  # marks the seed finished


@pytest.mark.parametrize("recipe_seeds, dominated", [((85.0, 88.0), True), ((88.0, 89.0), False)])
def test_confirmed_verdicts_are_on_seed_means(tmp_path, recipe_seeds, dominated):
    from benchmarks.collect import confirmed_verdicts

    df = _table(tmp_path, {"recipe": (86.0, 60_000, 1.5)})  # trial 1: 88 %, 50k, 1.2 ms (test_acc 87.5)
    run = tmp_path / "run"
    plan = {"seeds": [1, 2], "candidates": [{"label": "trial 1", "trial": 1, "baseline": None, "why": ["knee"]},
                                            {"label": "baseline recipe", "trial": None, "baseline": "recipe",
                                             "why": ["baseline"]}]}
    for seed, acc in zip((1, 2), (86.0, 86.5), strict=True):
        _confirm_seed(run, "trial-1", seed, acc)
    for seed, acc in zip((1, 2), recipe_seeds, strict=True):
        _confirm_seed(run, "baseline-recipe", seed, acc)
    got = confirmed_verdicts(df, OBJECTIVES, plan, run, {"trial_epochs": 90, "trial_epochs_in_baselines": 9.0})
    rows = {r["label"]: r for r in got["candidates"]}
    assert rows["trial 1"]["n_seeds"] == 3 and rows["trial 1"]["test_acc_mean"] == pytest.approx((87.5 + 86 + 86.5) / 3)
    assert rows["baseline recipe"]["n_seeds"] == 2  # its table row has no test_acc: only the two seeds count
    (verdict,) = got["baselines"]
    assert (verdict["dominated_by"] == [1]) == dominated
    assert verdict["best_at_no_more_cost"] == 1
    assert verdict["difference"] == pytest.approx(86.6667 - sum(recipe_seeds) / 2, abs=1e-3)
    assert ("dominated on seed means by searched trial(s) 1" in verdict["line"]) == dominated
    assert "90 trial-epochs = 9.0x one baseline training" in verdict["line"]


def test_knee_is_the_front_point_nearest_the_ideal(tmp_path):
    df = _table(tmp_path, {})
    # scaled over the front: 0 -> (0, 1, 1), 1 -> (0.4, 1/3, 1/3), 2 -> (1, 0, 0): trial 1 is nearest (0, 0, 0)
    assert knee(df, OBJECTIVES)["trial"] == 1


def test_train_size_is_a_seeded_stratified_subset():
    from study.data.datasets import load_dataset
    from study.data.streaming import make_resident

    ds = load_dataset("digits", "data")
    cpu = torch.device("cpu")
    full = make_resident(ds, 0.2, 0, cpu)
    a, b = make_resident(ds, 0.2, 0, cpu, 300), make_resident(ds, 0.2, 0, cpu, 300)
    other = make_resident(ds, 0.2, 1, cpu, 300)
    assert a.train_x.shape[0] == 300 and torch.equal(a.train_x, b.train_x) and not torch.equal(a.train_x,
                                                                                                 other.train_x)
    assert torch.equal(a.val_x, full.val_x) and torch.equal(a.test_x, full.test_x)  # only training shrinks
    counts = torch.bincount(a.train_y, minlength=10).float()
    assert counts.min() >= 300 / 10 - 3 and counts.max() <= 300 / 10 + 3  # class proportions kept


def test_train_size_names_another_teacher():
    from study.config import make_config
    from study.teacher.model import teacher_key

    base = make_config({"dataset": "digits"})
    assert teacher_key(base) != teacher_key(base.replace(train_size=300))
    assert teacher_key(base) == teacher_key(base.replace(width_mult=0.5))


def test_png_shows_the_front(tmp_path):
    from PIL import Image

    from benchmarks.collect import run_benchmarks
    from reports.png import write_png

    run = make_run_dir(tmp_path)
    run_benchmarks(run, remeasure=False, log=lambda _: None)
    path = write_png(run)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 2 * img.size[1] > 400  # one panel per cost objective

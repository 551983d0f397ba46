"""`devbench.search_quality`: the variants it runs and the "does a searched trial beat the baseline within the
budget" rule (the studies themselves are run by the command, not here)."""

from __future__ import annotations

import yaml

from devbench.search_quality import beats, format_table, write_variant

DIRS = ["maximize", "minimize", "minimize"]


def test_variants_change_only_the_search_and_the_baselines(tmp_path):
    paths = {v: write_variant("search_spaces/demo.yaml", v, 3, tmp_path)
             for v in ("default", "random", "mo_asha", "gp")}
    raw = {v: yaml.safe_load(p.read_text()) for v, p in paths.items()}
    shipped = yaml.safe_load(open("search_spaces/demo.yaml").read())
    for r in raw.values():
        assert r["params"] == shipped["params"] and r["trial"] == shipped["trial"]  # the same space for all
        assert r["search"]["seed"] == 3 and r["search"]["confirm_seeds"] == 0
    assert "baselines" not in raw["default"] and raw["default"]["search"]["scheduler"] == shipped["search"]["scheduler"]
    assert raw["random"]["search"]["sampler"] == "random" and raw["random"]["baselines"] == []
    assert raw["mo_asha"]["search"]["scheduler"] == "mo_asha" and raw["mo_asha"]["baselines"] == []
    assert raw["gp"]["search"]["sampler"] == "gp" and "baselines" not in raw["gp"]  # the default, another sampler
    assert write_variant("search_spaces/demo.yaml", "random", 3, tmp_path).read_text() == paths["random"].read_text()


def test_beats_counts_searched_trials_within_the_budget_only():
    recipe = [95.0, 30_000, 0.03]
    timeline = [
        {"epochs": 20, "values": recipe, "enqueued": True},               # the baseline itself
        {"epochs": 20, "values": [96.0, 40_000, 0.02], "enqueued": False},  # more params: no
        {"epochs": 4, "values": None, "enqueued": False},                 # early stopped
        {"epochs": 20, "values": [95.5, 20_000, 0.02], "enqueued": False},  # dominates, within 64 epochs
        {"epochs": 20, "values": [99.0, 1_000, 0.01], "enqueued": False},   # dominates, but past the budget
    ]
    assert beats(timeline, 64, recipe, DIRS) == [3]
    assert beats(timeline, 200, recipe, DIRS) == [3, 4]
    assert beats(timeline, 40, recipe, DIRS) == []


def test_table_names_the_median_and_the_rank_signal():
    summary = {"runs": [{"variant": "default", "seed": 0, "budget_epochs": 400, "epochs_run": 400,
                         "trials_in_budget": 20, "complete": 20, "early_stopped": 0, "hypervolume": 0.5,
                         "beats_seed_recipe": True}],
               "median_hypervolume": {"default": 0.5}, "rank_signal": {"configurations": 20, "4": 0.6}}
    text = format_table(summary)
    assert "| default | 0 | 400 | 400 | 20 | 20 | 0 | 0.5000 | yes |" in text
    assert "default 0.5000" in text and "4: 0.60" in text and "over 20 fully trained" in text

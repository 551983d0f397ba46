"""Pareto front and hypervolume: brute force, known values, and Optuna's own implementation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmarks import pareto


def brute_front(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """On the front iff finite and no other finite point dominates it (definition, written out)."""
    n = len(values)
    finite = [bool(np.all(np.isfinite(v))) for v in values]
    out = np.zeros(n, dtype=bool)
    for i in range(n):
        if not finite[i]:
            continue
        out[i] = not any(finite[j] and pareto.dominates(values[j], values[i], directions) for j in range(n) if j != i)
    return out


def brute_hv(loss: np.ndarray, ref: np.ndarray) -> float:
    """Inclusion-exclusion over boxes [p, ref]: exact for small sets."""
    boxes = [p for p in loss if np.all(p < ref)]
    total = 0.0
    for k in range(1, len(boxes) + 1):
        for subset in itertools.combinations(boxes, k):
            corner = np.max(subset, axis=0)
            total += (-1) ** (k + 1) * float(np.prod(ref - corner))
    return total


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_front_matches_brute_force_mixed_directions_ties_and_nan(m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 5, size=(40, m)).astype(float)  # a coarse grid forces ties and duplicates
    values[rng.random(40) < 0.1, rng.integers(0, m)] = np.nan
    directions = [["minimize", "maximize"][i % 2] for i in range(m)]
    mask = pareto.pareto_mask(values, directions)
    np.testing.assert_array_equal(mask, brute_front(values, directions))
    assert mask.any()
    assert not mask[np.isnan(values).any(axis=1)].any()


def test_front_random_continuous_3d() -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(size=(120, 3))
    dirs = ["maximize", "minimize", "minimize"]
    np.testing.assert_array_equal(pareto.pareto_mask(values, dirs), brute_front(values, dirs))


def test_duplicates_are_all_kept_and_direction_matters() -> None:
    values = np.array([[90.0, 10.0], [90.0, 10.0], [80.0, 10.0], [95.0, 20.0]])
    assert pareto.pareto_mask(values, ["maximize", "minimize"]).tolist() == [True, True, False, True]
    # Flipping the accuracy direction turns the front around.
    assert pareto.pareto_mask(values, ["minimize", "minimize"]).tolist() == [False, False, True, False]


def test_all_nan_and_empty() -> None:
    assert pareto.pareto_mask(np.full((3, 2), np.nan), ["minimize"] * 2).tolist() == [False] * 3
    assert pareto.pareto_mask(np.empty((0, 2)), ["minimize"] * 2).tolist() == []
    with pytest.raises(ValueError):
        pareto.pareto_mask(np.ones((2, 2)), ["minimize", "up"])


def test_known_hypervolumes() -> None:
    ref = np.ones(2)
    assert pareto.hypervolume(np.array([[0.5, 0.5]]), ref) == pytest.approx(0.25)
    # Two boxes of 0.32 overlapping in 0.16.
    assert pareto.hypervolume(np.array([[0.2, 0.6], [0.6, 0.2]]), ref) == pytest.approx(0.48)
    assert pareto.hypervolume(np.zeros((1, 3)), np.ones(3)) == pytest.approx(1.0)
    assert pareto.hypervolume(np.array([[0.5, 0.5, 0.5], [0.0, 0.0, 0.9]]), np.ones(3)) == pytest.approx(
        0.125 + 0.1 - 0.5 * 0.5 * 0.1)
    # Points at or beyond the reference, NaN points and an empty set add nothing.
    assert pareto.hypervolume(np.array([[1.0, 0.0], [2.0, 2.0], [np.nan, 0.1]]), ref) == 0.0
    assert pareto.hypervolume(np.empty((0, 2)), ref) == 0.0
    assert pareto.hypervolume(np.array([[0.5]]), np.array([2.0])) == pytest.approx(1.5)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_hypervolume_matches_inclusion_exclusion(m: int) -> None:
    rng = np.random.default_rng(m)
    for _ in range(5):
        loss = rng.random((7, m))
        loss[0] = loss[1]  # duplicate
        ref = np.full(m, 0.95)
        assert pareto.hypervolume(loss, ref) == pytest.approx(brute_hv(loss, ref), abs=1e-12)


@pytest.mark.parametrize("m", [2, 3])
def test_hypervolume_matches_optuna(m: int) -> None:
    hv_mod = pytest.importorskip("optuna._hypervolume")
    if not hasattr(hv_mod, "compute_hypervolume"):
        pytest.skip("this optuna has no compute_hypervolume")
    rng = np.random.default_rng(10 + m)
    loss = rng.random((60, m))
    ref = np.full(m, 1.1)
    assert pareto.hypervolume(loss, ref) == pytest.approx(hv_mod.compute_hypervolume(loss, ref), rel=1e-10)


def test_dominated_points_do_not_change_hypervolume() -> None:
    rng = np.random.default_rng(3)
    loss = rng.random((20, 3))
    front = loss[pareto.pareto_mask(loss, ["minimize"] * 3)]
    assert pareto.hypervolume(loss, np.ones(3)) == pytest.approx(pareto.hypervolume(front, np.ones(3)))


def test_normalization_rule() -> None:
    values = np.array([[80.0, 1000.0, 2.0], [90.0, 4000.0, np.nan]])
    norm = pareto.normalization(["val_acc", "params", "latency_ms_bs1"], ["maximize", "minimize", "minimize"],
                                values)
    assert norm.lo == (0.0, 0.0, 0.0)
    assert norm.hi == pytest.approx((100.0, 4400.0, 2.2))
    assert norm.fixed == (True, False, False)
    assert norm.reference_raw == pytest.approx([0.0, 4400.0, 2.2])
    np.testing.assert_allclose(norm.transform(np.array([[90.0, 2200.0, 1.1]])), [[0.1, 0.5, 0.5]])
    # One point: box from its normalised loss to (1, 1, 1).
    hv = pareto.normalized_hypervolume(np.array([[90.0, 2200.0, 1.1]]), norm)
    assert hv == pytest.approx(0.9 * 0.5 * 0.5)
    # A maximised cost-like objective (not an accuracy): worst end 0.
    n2 = pareto.normalization(["throughput_ips"], ["maximize"], np.array([[50.0], [100.0]]))
    assert n2.reference_raw == [0.0] and n2.hi == (pytest.approx(110.0),)


def test_hypervolume_series_is_running_front() -> None:
    rng = np.random.default_rng(5)
    values = np.column_stack([rng.uniform(60, 95, 25), rng.uniform(1e4, 1e5, 25)])
    values[4] = np.nan  # e.g. a failed trial
    norm = pareto.normalization(["val_acc", "params"], ["maximize", "minimize"], values)
    series = pareto.hypervolume_series(values, norm)
    assert len(series) == 25
    assert all(b >= a for a, b in itertools.pairwise(series))
    for k in (0, 5, 24):
        assert series[k] == pytest.approx(pareto.normalized_hypervolume(values[: k + 1][~np.isnan(values[: k + 1,
                                                                                              0])], norm))


def test_one_dominance_rule():
    """study.core.dominance is the rule every front uses (benchmarks.pareto, MO-ASHA, study.search.results.front_trials)."""
    from study.core.dominance import dominates, non_dominated_mask

    assert dominates([1, 2], [1, 3]) and not dominates([1, 3], [1, 2])
    assert not dominates([1, 2], [1, 2])  # identical points never dominate each other
    assert not dominates([np.nan, 0], [1, 1]) and not dominates([2, 0], [1, 1])
    mask = non_dominated_mask(np.array([[1, 2], [1, 2], [2, 1], [2, 2], [np.nan, 0]]))
    assert mask.tolist() == [True, True, True, False, False]
    # benchmarks.pareto's own form (raw values and directions) is the same rule, NaN included
    assert pareto.dominates([np.nan, 0], [1, 1], ["minimize"] * 2) is dominates([np.nan, 0], [1, 1]) is False
    assert pareto.dominates([90, 1], [80, 1], ["maximize", "minimize"]) and not pareto.dominates([1], [1], ["minimize"])


def test_the_run_and_reproduce_share_one_front(tmp_path):
    """study.search.results.front_trials: the printed Pareto table's front and reproduce's; a trial Optuna calls COMPLETE
    whose search status is early_stopped is left out (Optuna's best_trials would take it)."""
    from study_fixture import FRONT, make_run_dir

    from study.reproduce.rerun import pareto_front
    from study.search.results import front_trials, load_study_plan, open_study

    run = make_run_dir(tmp_path, leaked_early_stop=True)
    study = open_study(run, load_study_plan(run))
    assert [t.number for t in front_trials(study)] == FRONT
    assert sorted(t.number for t in pareto_front(study, run)) == FRONT
    assert 9 in {t.number for t in study.best_trials}

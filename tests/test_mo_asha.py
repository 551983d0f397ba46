"""MO-ASHA ranking, checked against brute force."""

import itertools

import numpy as np

from study.search.mo_asha import MOASHAScheduler, crowding_distance, mo_rank, non_dominated_fronts, promote


def dominated(points, i):
    return any(np.all(points[j] <= points[i]) and np.any(points[j] < points[i]) for j in range(len(points)) if j != i)


def test_first_front_matches_brute_force():
    rng = np.random.default_rng(0)
    for n, m in itertools.product((1, 5, 30), (2, 3)):
        pts = rng.integers(0, 6, size=(n, m)).astype(float)  # many ties
        fronts = non_dominated_fronts(pts)
        assert sorted(i for f in fronts for i in f) == list(range(n))
        assert set(fronts[0]) == {i for i in range(n) if not dominated(pts, i)}
        for k in range(1, len(fronts)):  # everything in front k is dominated by something in front k-1
            for i in fronts[k]:
                assert dominated(pts[fronts[k - 1] + [i]], len(fronts[k - 1]))


def test_crowding_extremes_are_infinite():
    pts = np.array([[0.0, 3.0], [1.0, 2.0], [2.0, 1.0], [3.0, 0.0]])
    cd = crowding_distance(pts)
    assert np.isinf(cd[0]) and np.isinf(cd[3]) and np.isfinite(cd[1])


def test_dominated_slow_trial_is_stopped_but_cheap_slow_trial_survives():
    # (-acc, params): the cheap model learns slower but is not dominated -> single-metric ASHA would stop it.
    pts = np.array([[-90.0, 100.0], [-85.0, 100.0], [-60.0, 10.0]])
    assert promote(pts, 0, eta=3)
    assert not promote(pts, 1, eta=3)  # same cost, lower accuracy: dominated
    assert promote(pts, 2, eta=3)  # worst accuracy, but 10x cheaper
    assert mo_rank(pts)[-1] == 1


class _Trial:
    def __init__(self, tid):
        self.trial_id = tid


def test_scheduler_records_rungs_and_stops_dominated():
    s = MOASHAScheduler([("val_acc", "maximize"), ("params", "minimize")], max_t=9, grace_period=1,
                        reduction_factor=3)
    assert s._rungs == [1, 3]
    r = {"status": "running", "epoch": 1, "params": 100}
    assert s.on_trial_result(None, _Trial("a"), {**r, "val_acc": 90.0}) == "CONTINUE"
    assert s.on_trial_result(None, _Trial("b"), {**r, "val_acc": 50.0}) == "STOP"
    assert s.on_trial_result(None, _Trial("c"), {**r, "val_acc": 40.0, "params": 10}) == "CONTINUE"
    # non-rung epochs and final results never stop a trial
    assert s.on_trial_result(None, _Trial("a"), {**r, "epoch": 2, "val_acc": 1.0}) == "CONTINUE"
    assert s.on_trial_result(None, _Trial("b"), {"status": "complete", "epoch": 9, "val_acc": 1.0}) == "CONTINUE"


def test_rung_costs_are_those_of_the_model_being_trained():
    """Before pruning, two trials of the same dense student compare on accuracy alone: the one that will prune
    harder gets no credit for its final size, and latency (noisy) is ranked through exact MACs."""
    s = MOASHAScheduler([("val_acc", "maximize"), ("params", "minimize"), ("latency_ms_bs1", "minimize")],
                        max_t=9, grace_period=1, reduction_factor=3)
    dense = {"rung_params": 1000, "rung_nonzero_params": 1000, "rung_macs": 5000}
    mild = {"status": "running", "epoch": 1, "params": 800, "latency_ms_bs1": 0.21, **dense}
    hard = {"status": "running", "epoch": 1, "params": 200, "latency_ms_bs1": 0.20, **dense}
    assert s.on_trial_result(None, _Trial("mild"), {**mild, "val_acc": 80.0}) == "CONTINUE"
    # same dense model, worse accuracy: stopped although its final params and latency are lower
    assert s.on_trial_result(None, _Trial("hard"), {**hard, "val_acc": 70.0}) == "STOP"
    assert s._vector({**hard, "val_acc": 70.0}) == [-70.0, 1000.0, 5000.0]


def test_no_running_report_after_the_last_epoch_where_rays_asha_has_a_rung():
    """Ray's ASHA puts a rung at max_t when max_t / grace is a power of eta (grace 1, eta 3, 9 epochs: 1, 3, 9);
    a "running" report there could stop a fully trained trial before it is measured, so none is sent."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    from study.search.mo_asha import rung_epochs
    from study.search.trainable import RayHooks

    assert sorted(r for r, _ in _Bracket(1, 9, 3, 0)._rungs) == [1, 3, 9]  # the Ray behaviour this guards against
    assert rung_epochs(1, 3, 9) == [1, 3]
    costs = {"params": 10, "nonzero_params": 10, "macs": 100}
    for every_s in (0.0, 3600.0):  # reporting every epoch, or only at the rungs
        hooks = RayHooks(costs, report_epochs=rung_epochs(1, 3, 9), report_every_s=every_s)
        due = [e + 1 for e in range(9) if hooks.wants_checkpoint(e, 9)]
        assert due == ([1, 2, 3, 4, 5, 6, 7, 8] if every_s == 0 else [1, 3]), due

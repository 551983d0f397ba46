"""MO-ASHA: asynchronous successive halving that promotes by non-dominated rank (Schmucker et al. 2021).

Single-metric ASHA ranks trials by accuracy alone, so it stops small / pruned students that learn slower but
sit on the accuracy-cost front. Here, when a trial reaches a rung (epochs grace * eta^k), its vector
(accuracy so far, plus the cost objectives) is ranked against every vector recorded at that rung by
non-dominated sorting, ties within a front broken by crowding distance (NSGA-II selection, one of the paper's
two variants).

The costs at a rung are those of the model the trial is training at that moment (`rung_params`,
`rung_nonzero_params`, `rung_macs` in the result): before pruning that is the dense student, so a trial that
will prune hard gets no credit for a small final size while its accuracy is still that of the dense model (that
credit would stop the milder, later more accurate configurations). Costs are exact counts; a noisy objective such
as latency is ranked through MACs at the rungs, so two trials training the same architecture compare on accuracy
alone. The trial continues when it is in the best
ceil(n / eta) of the n recorded, or when no other trial at that rung dominates it (see `promote`); otherwise it
is stopped and told to Optuna as PRUNED.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence

import numpy as np

from study.core.dominance import dominates

try:  # the pure ranking functions below work (and are tested) without Ray
    from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler
except ImportError:  # pragma: no cover
    FIFOScheduler = object  # type: ignore[assignment,misc]
    TrialScheduler = None  # type: ignore[assignment,misc]


def non_dominated_fronts(points: np.ndarray) -> list[list[int]]:
    """Indices grouped into successive non-dominated fronts (all objectives minimised)."""
    n = len(points)
    dominated_by = [0] * n
    beats: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                beats[i].append(j)
                dominated_by[j] += 1
            elif dominates(points[j], points[i]):
                beats[j].append(i)
                dominated_by[i] += 1
    fronts, current = [], [i for i in range(n) if dominated_by[i] == 0]
    while current:
        fronts.append(current)
        nxt = []
        for i in current:
            for j in beats[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    nxt.append(j)
        current = nxt
    return fronts


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each point (n x m) within its front; the ends get infinity."""
    n, m = points.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        order = np.argsort(points[:, k], kind="stable")
        span = points[order[-1], k] - points[order[0], k]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (points[order[2:], k] - points[order[:-2], k]) / span
    return dist


def mo_rank(points: np.ndarray) -> list[int]:
    """Indices from best to worst: by non-dominated front, then by larger crowding distance."""
    ranked: list[int] = []
    for front in non_dominated_fronts(points):
        cd = crowding_distance(points[front])
        ranked += [front[i] for i in np.argsort(-cd, kind="stable")]
    return ranked


def promote(points: np.ndarray, index: int, eta: int) -> bool:
    """Does point `index` survive this rung, among all points recorded there (itself included)?

    It does when it is among the best ceil(n / eta) by MO rank, or when no other point at the rung dominates it:
    the cost objectives are exact before training, so a non-dominated trial can only be beaten on accuracy by
    trials that cost more, and stopping it could remove a point of the final front.
    """
    keep = max(1, math.ceil(len(points) / eta))
    return index in mo_rank(points)[:keep] or index in non_dominated_fronts(points)[0]


def rung_epochs(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """The epochs at which MO-ASHA compares trials, and every trial reports: grace * eta^k below max_t. (Ray's
    ASHA compares at the same epochs, plus at max_t when max_t / grace is a power of eta; trials send their
    final result there as "complete", after measuring, never as "running": see RayHooks.wants_checkpoint.)"""
    rungs, r = [], grace_period
    while r < max_t:
        rungs.append(r)
        r *= reduction_factor
    return rungs


class MOASHAScheduler(FIFOScheduler):
    """Ray Tune scheduler for MO-ASHA. `objectives` is [(metric, "maximize"|"minimize"), ...]; results must carry
    `time_attr` and the objectives (cost objectives in every intermediate result)."""

    def __init__(self, objectives: Sequence[tuple[str, str]], max_t: int, grace_period: int = 1,
                 reduction_factor: int = 3, time_attr: str = "epoch"):
        super().__init__()
        self._objectives = list(objectives)
        self._eta = reduction_factor
        self._time_attr = time_attr
        self._rungs = rung_epochs(grace_period, reduction_factor, max_t)
        self._recorded: dict[int, dict[str, list[float]]] = {r: {} for r in self._rungs}
        self._num_stopped = 0

    def set_search_properties(self, metric, mode, **spec) -> bool:  # metric lists are ours, ignore Tune's
        """Tune's metric and mode: ignored, the objectives are this scheduler's own."""
        return True

    def _vector(self, result: dict) -> list[float] | None:
        vec, used = [], set()
        for name, direction in self._objectives:
            key = name
            if name != "val_acc":
                key = f"rung_{name}" if f"rung_{name}" in result else "rung_macs" if "rung_macs" in result else name
            if key in used:
                continue
            used.add(key)
            v = result.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return None
            vec.append(-float(v) if direction == "maximize" and key == name else float(v))
        return vec

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        """At the highest rung a running trial reached (first time only): record its vector there and STOP it
        unless `promote` keeps it; CONTINUE otherwise."""
        if result.get("status") != "running" or self._time_attr not in result:
            return TrialScheduler.CONTINUE
        t = result[self._time_attr]
        vec = self._vector(result)
        if vec is None:
            return TrialScheduler.CONTINUE
        for rung in reversed(self._rungs):  # the highest rung reached and not yet recorded for this trial
            if t < rung or trial.trial_id in self._recorded[rung]:
                continue
            recs = self._recorded[rung]
            recs[trial.trial_id] = vec
            ids = list(recs)
            if not promote(np.array([recs[i] for i in ids]), ids.index(trial.trial_id), self._eta):
                self._num_stopped += 1
                return TrialScheduler.STOP
            break
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        """The rungs and how many trials were stopped, for Tune's status lines."""
        return f"MO-ASHA: rungs {self._rungs}, stopped {self._num_stopped}"

    def save(self, checkpoint_path: str) -> None:
        """Write the scheduler's state (rungs, recorded vectors, counts) to Tune's experiment snapshot."""
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__dict__, fh)

    def restore(self, checkpoint_path: str) -> None:
        """Read the scheduler's state back from Tune's experiment snapshot."""
        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))

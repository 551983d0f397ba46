"""Hypervolume under the project's normalisation rule: one implementation, used by the results pipeline
(benchmarks.pareto re-exports it) and by the study's live progress line (study.search.progress). Pure numpy.

Reference rule (`normalization` + reference point (1, ..., 1)):
- Objectives whose name ends in ``acc`` (accuracies, in percent) use the fixed range 0..100 %.
- Every other objective uses lo = min(0, smallest value) and hi = lo + 1.1 * (largest value - lo), the values being
  those given (the results pipeline: all COMPLETE trials and reference models; for the usual non-negative costs:
  0..1.1 x max).
- Each objective is mapped to a loss in [0, 1] (0 = best end of the range, 1 = worst end); the hypervolume is that of
  the normalised minimisation problem w.r.t. (1, ..., 1), i.e. the fraction of the unit box dominated by the front.
  The raw reference point is the worst end of every range: 0 % for a maximised accuracy, hi for a minimised cost.
Only points strictly better than the reference point in every objective contribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from study.core.dominance import non_dominated_mask

DIRECTIONS = ("minimize", "maximize")
GROWTH = 1.1  # non-accuracy ranges end 10 % beyond the largest observed value


def _check_directions(directions: Sequence[str], n_obj: int) -> None:
    if len(directions) != n_obj:
        raise ValueError(f"{len(directions)} directions for {n_obj} objectives")
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {bad[0]!r}")


def hypervolume(loss: np.ndarray, reference: Sequence[float] | np.ndarray) -> float:
    """Exact hypervolume dominated by `loss` (n x m, minimisation form) and bounded by `reference`.

    Points not strictly better than the reference in every objective, and non-finite points, add nothing.
    Recursive slicing over the last objective with a 2-D sweep at the bottom: O(n^(m-1) log n), fine for fronts
    of a few hundred points in 2-4 objectives.
    """
    loss = np.asarray(loss, dtype=float)
    ref = np.asarray(reference, dtype=float)
    if loss.ndim != 2 or loss.shape[1] != ref.shape[0]:
        raise ValueError(f"loss shape {loss.shape} does not match reference point of length {ref.shape[0]}")
    if loss.shape[0] == 0:
        return 0.0
    pts = loss[np.all(np.isfinite(loss), axis=1) & np.all(loss < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = np.unique(pts, axis=0)
    pts = pts[non_dominated_mask(pts)]
    return float(_hv(pts, ref))


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    m = pts.shape[1]
    if m == 1:
        return float(ref[0] - pts[:, 0].min())
    if m == 2:
        order = np.lexsort((pts[:, 1], pts[:, 0]))  # x ascending, then y ascending
        total, best_y = 0.0, ref[1]
        for x, y in pts[order]:
            if y < best_y:
                total += (ref[0] - x) * (best_y - y)
                best_y = y
        return total
    # Slice along the last objective: between consecutive levels, the dominated region's cross-section is the
    # (m-1)-D hypervolume of the points already below that level.
    pts = pts[np.argsort(pts[:, -1], kind="stable")]
    levels = np.append(pts[:, -1], ref[-1])
    total = 0.0
    for k in range(len(pts)):
        depth = levels[k + 1] - levels[k]
        if depth <= 0:
            continue
        below = pts[: k + 1, :-1]
        below = below[non_dominated_mask(below)]
        total += depth * _hv(below, ref[:-1])
    return total


@dataclass(frozen=True)
class Normalization:
    """Per-objective ranges of the hypervolume rule (see the module docstring)."""

    names: tuple[str, ...]
    directions: tuple[str, ...]
    lo: tuple[float, ...]  # lower end of each range, in the objective's own unit
    hi: tuple[float, ...]  # upper end of each range
    fixed: tuple[bool, ...]  # True where the range is the fixed 0..100 % of an accuracy

    @property
    def reference_raw(self) -> list[float]:
        """The worst end of every range: the reference point in the objectives' own units."""
        return [lo if d == "maximize" else hi for d, lo, hi in zip(self.directions, self.lo, self.hi, strict=True)]

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Map raw values (n x m) to losses where 0 is the best end of each range and 1 the worst."""
        values = np.asarray(values, dtype=float)
        lo, hi = np.array(self.lo), np.array(self.hi)
        scaled = (values - lo) / (hi - lo)
        maximize = np.array([d == "maximize" for d in self.directions])
        return np.where(maximize, 1.0 - scaled, scaled)

    def to_json(self) -> list[dict]:
        """The ranges as a JSON object (benchmark.json)."""
        return [
            {"name": n, "direction": d, "range": [lo, hi], "fixed_range": f, "reference": r}
            for n, d, lo, hi, f, r in zip(self.names, self.directions, self.lo, self.hi, self.fixed,
                                          self.reference_raw, strict=True)
        ]


def is_accuracy(name: str) -> bool:
    """Objectives named like `val_acc` / `test_acc` are accuracies in percent (fixed range 0..100)."""
    return name.lower().endswith("acc")


def normalization(names: Sequence[str], directions: Sequence[str], values: np.ndarray) -> Normalization:
    """Ranges of the hypervolume rule from the observed `values` (COMPLETE trials and references, n x m)."""
    values = np.asarray(values, dtype=float).reshape(-1, len(names))
    _check_directions(directions, len(names))
    lo: list[float] = []
    hi: list[float] = []
    fixed: list[bool] = []
    for j, name in enumerate(names):
        if is_accuracy(name):
            lo.append(0.0)
            hi.append(100.0)
            fixed.append(True)
            continue
        col = values[:, j][np.isfinite(values[:, j])]
        low = min(0.0, float(col.min())) if len(col) else 0.0
        span = float(col.max()) - low if len(col) else 0.0
        lo.append(low)
        hi.append(low + GROWTH * span if span > 0 else low + 1.0)
        fixed.append(False)
    return Normalization(tuple(names), tuple(directions), tuple(lo), tuple(hi), tuple(fixed))


def normalized_hypervolume(values: np.ndarray, norm: Normalization) -> float:
    """Hypervolume of raw `values` under `norm` w.r.t. (1, ..., 1); in [0, 1]."""
    values = np.asarray(values, dtype=float).reshape(-1, len(norm.names))
    return hypervolume(norm.transform(values), np.ones(len(norm.names)))


def hypervolume_series(values: np.ndarray, norm: Normalization) -> list[float]:
    """Hypervolume after each of the points in order (the running front), all under the same final `norm`.

    Recomputes only when a new point is not weakly dominated by the running front.
    """
    loss = norm.transform(np.asarray(values, dtype=float).reshape(-1, len(norm.names)))
    ref = np.ones(loss.shape[1])
    front = np.empty((0, loss.shape[1]))
    series, current = [], 0.0
    for p in loss:
        if np.all(np.isfinite(p)) and np.all(p < ref) and not np.any(np.all(front <= p, axis=1)):
            front = np.vstack([front, p])
            front = front[non_dominated_mask(front)]
            current = hypervolume(front, ref)
        series.append(current)
    return series

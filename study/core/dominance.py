"""Pareto dominance, in one place: every front, rank and promotion rule of the project uses these.

Points are minimisation vectors (maximised objectives negated first). A point dominates another when it is at least
as good in every objective and strictly better in one, so identical points never dominate each other. Points with
a NaN (or inf) never dominate and are never on a front.
"""

from __future__ import annotations

import numpy as np


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether minimisation vector `a` dominates `b`."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return bool(np.all(np.isfinite(a)) and np.all(a <= b) and np.any(a < b))


def non_dominated_mask(loss: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of `loss` (n points x m minimised objectives) that no other row dominates;
    rows with a non-finite value are False."""
    loss = np.asarray(loss, dtype=float)
    finite = np.all(np.isfinite(loss), axis=1)
    mask = np.zeros(len(loss), dtype=bool)
    idx = np.flatnonzero(finite)
    pts = loss[idx]
    for k, p in enumerate(pts):
        mask[idx[k]] = not np.any(np.all(pts <= p, axis=1) & np.any(pts < p, axis=1))
    return mask

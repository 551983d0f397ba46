"""Exact Pareto fronts and hypervolumes over any number of objectives, each with its own direction.

Conventions (the tests check every one):
- A point is on the front iff no other point dominates it: at least as good in every objective and strictly
  better in one. Duplicates therefore do not dominate each other: identical points are all kept on the front.
- Rows with a NaN (or inf) in any objective are never on the front and never dominate anything.
- Hypervolume is computed on the minimisation form (maximised objectives negated, or normalised, first); only
  points strictly better than the reference point in every objective contribute.

Hypervolume reference rule of this project (`normalize` + reference point (1, ..., 1); the code is
study.search.hypervolume, re-exported here, so that the study's live progress line computes it the same way):
- Objectives whose name ends in ``acc`` (accuracies, in percent) use the fixed range 0..100 %.
- Every other objective uses lo = min(0, smallest value) and hi = lo + 1.1 * (largest value - lo), the values being
  those of all COMPLETE trials and reference models (for the usual non-negative costs: 0..1.1 x max).
- Each objective is mapped to a loss in [0, 1] (0 = best end of the range, 1 = worst end); the hypervolume is that of
  the normalised minimisation problem w.r.t. (1, ..., 1), i.e. the fraction of the unit box dominated by the front.
  The raw reference point is the worst end of every range: 0 % for a maximised accuracy, hi for a minimised cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from study.core.dominance import dominates as study_dominates
from study.core.dominance import non_dominated_mask
from study.search.hypervolume import (  # noqa: F401  re-exported: the one hypervolume implementation
    DIRECTIONS,
    GROWTH,
    Normalization,
    _check_directions,
    hypervolume,
    hypervolume_series,
    is_accuracy,
    normalization,
    normalized_hypervolume,
)


def to_minimization(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """(n, m) array with every maximised column negated, so that smaller is better everywhere."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D (points x objectives), got shape {values.shape}")
    _check_directions(directions, values.shape[1])
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return values * sign


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of `values` (n points x m objectives); NaN rows are False."""
    return non_dominated_mask(to_minimization(values, directions))


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True iff point `a` dominates point `b` (no worse everywhere, strictly better somewhere)."""
    la, lb = to_minimization(np.array([a, b], dtype=float), directions)
    return study_dominates(la, lb)

"""Stratified index splits: the one draw behind validation holdouts, training subsets and default test splits.

A trial's training and validation rows are drawn with it by study.data.datasets.split_indices (which needs the
Dataset type, so it lives there; this module stays a leaf that imagefolder can import as well).
"""

from __future__ import annotations

import numpy as np


def stratified_holdout(y: np.ndarray, n_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of `y` into (kept, held out), each sorted, holding out `n_holdout` in class proportion."""
    classes, counts = np.unique(y, return_counts=True)
    # Integer largest-remainder allocation: the per-class shares sum to exactly n_holdout, with no float rounding.
    take = counts * n_holdout // len(y)
    remainder = counts * n_holdout % len(y)
    take[np.argsort(-remainder, kind="stable")[: n_holdout - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    held = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)]
    held_idx = np.sort(np.concatenate(held))
    keep = np.ones(len(y), dtype=bool)
    keep[held_idx] = False
    return np.flatnonzero(keep), held_idx

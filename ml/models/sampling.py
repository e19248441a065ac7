"""Fixed random samples of rows: the rows a bounded computation (tuning, clustering, the
silhouette, permutation importance, the drift reference) works on are the same on every run."""

from __future__ import annotations

import numpy as np

SEED = 7


def sample_rows(n_rows: int, size: int) -> np.ndarray:
    """A fixed random subset of row positions (all of them when there are few)."""
    if n_rows <= size:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(SEED).choice(n_rows, size, replace=False))

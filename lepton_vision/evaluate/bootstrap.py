"""Resampling units for bootstrap confidence intervals, shared by every kind's metrics.

Samples of one group (a patient's slices, a video's frames) are correlated, so a bootstrap that
resamples samples would give intervals that are too narrow; these helpers resample whole groups
when the data has them (samples with an empty group count as their own unit). No TensorFlow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def has_groups(groups: Any) -> bool:
    """Whether any sample has a non-empty group id (None, NaN and "" mean no group)."""
    if groups is None:
        return False
    g = pd.Series(np.asarray(groups, dtype=object)).fillna("").astype(str)
    return bool((g != "").any())


def resampling_units(groups: Any, n: int) -> tuple[np.ndarray, int, str]:
    """Unit index per sample for the bootstrap: groups when any is non-empty, else samples.

    Returns ``(unit id per sample, number of units, "group" | "sample")``; samples with an empty
    group count as their own unit.
    """
    if has_groups(groups):
        g = pd.Series(np.asarray(groups, dtype=object)).fillna("").astype(str).to_numpy()
        empty = g == ""
        g = g.copy()
        g[empty] = np.array([f"\x00sample{i}" for i in np.flatnonzero(empty)], dtype=object)
        _, gid = np.unique(g, return_inverse=True)
        return gid, int(gid.max()) + 1, "group"
    return np.arange(n), n, "sample"


def resample_weights(rng: np.random.Generator, gid: np.ndarray, n_units: int, n_resamples: int) -> Any:
    """Yield (B, n) integer weight matrices: how often each sample's unit was drawn, per resample."""
    n = len(gid)
    # Chunks keep the (B, n) weight matrices to a few tens of MB for large tables.
    chunk = max(1, int(4_000_000 // max(n, n_units)))
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        draws = rng.integers(0, n_units, size=(b, n_units))
        counts = np.zeros((b, n_units), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(b), n_units), draws.ravel()), 1)
        yield counts[:, gid]
        done += b


def percentile_interval(values: np.ndarray, ci: float) -> list[float | None]:
    """The central ``ci`` percentile interval of the finite ``values`` ([None, None] when none are)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return [None, None]
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.percentile(v, [100 * alpha, 100 * (1 - alpha)])
    return [float(lo), float(hi)]

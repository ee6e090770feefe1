"""Two runs scored on the same bootstrap resamples: the record a kind returns for a comparison.

:func:`lepton_vision.evaluate.compare.compare_runs` checks that two runs share their samples and
folds and asks the runs' kind for its metric on the same resamples (``paired_bootstrap``); the
kind reads the runs' out-of-fold files with :func:`read_run_csv`. No TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lepton_vision.config.errors import DataError


@dataclass(frozen=True)
class Paired:
    """One metric of two runs on the same bootstrap resamples (what a kind's ``paired_bootstrap``
    returns): point values, one value per resample for each run, and the resampling unit."""

    metric: str
    a: float
    b: float
    boot_a: np.ndarray
    boot_b: np.ndarray
    unit: str
    n_units: int


def read_run_csv(run: Path, name: str) -> pd.DataFrame:
    """A CSV of a finished cross-validation (ids as text), or a DataError naming what is missing."""
    path = Path(run) / name
    if not path.is_file():
        raise DataError(f"{path}: missing; the run has not finished its cross-validation",
                        hint="Finish it with `lepton-vision train RECIPE --resume RUN`.")
    return pd.read_csv(path, dtype={"sample_id": str}, keep_default_na=False)

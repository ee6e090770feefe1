"""Compare two runs of the same data and folds: each metric with its CI, and the paired difference.

Two runs trained on the same samples with the same folds (e.g. from scratch and from
pretraining) are scored on the same bootstrap resamples of the same units (groups, else
images), so the interval of the difference accounts for the pairing: a difference whose
interval excludes 0 is not an accident of which patients or sequences were drawn.

Metrics: ROC AUC of the out-of-fold scores (classification) or COCO AP50 of the out-of-fold
boxes, mean over classes (detection); ``merge_classes=True`` scores detection with every class
as one ("is there an obstacle here", KITTI practice for tiny subsets). No TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lepton_vision.config.errors import DataError
from lepton_vision.evaluate.bootstrap import percentile_interval
from lepton_vision.evaluate.paired import read_run_csv


def _same_folds(a: Path, b: Path) -> None:
    fa = read_run_csv(a, "folds.csv")[["sample_id", "fold"]].sort_values("sample_id").reset_index(drop=True)
    fb = read_run_csv(b, "folds.csv")[["sample_id", "fold"]].sort_values("sample_id").reset_index(drop=True)
    if not fa.equals(fb):
        n = len(set(map(tuple, fa.to_numpy())) ^ set(map(tuple, fb.to_numpy())))
        raise DataError(
            f"{a} and {b} do not share their samples and folds ({n} sample/fold pairs differ)",
            hint="Compare runs of the same dataset, seed and cv settings.",
        )


def _summary(name: str, a: float, b: float, boot_a: np.ndarray, boot_b: np.ndarray, level: float,
             unit: str, n_units: int) -> dict[str, Any]:
    diff = boot_b - boot_a
    ok = np.isfinite(diff)
    return {
        "metric": name,
        "a": {"value": float(a), "ci": percentile_interval(boot_a, level)},
        "b": {"value": float(b), "ci": percentile_interval(boot_b, level)},
        "difference": {"value": float(b - a), "ci": percentile_interval(diff, level),
                       "p_b_better": float(np.mean(diff[ok] > 0)) if ok.any() else None},
        "ci_level": level, "n_bootstrap": int(len(boot_a)), "bootstrap_unit": unit, "n_units": int(n_units),
    }


def compare_runs(run_a: str | Path, run_b: str | Path, *, merge_classes: bool = False, n_bootstrap: int = 1000,
                 ci: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Score two finished cross-validations of the same folds on the same resamples.

    Args:
        run_a: The reference run (e.g. from scratch).
        run_b: The other run (e.g. pretrained).
        merge_classes: Detection: every class counts as one.
        n_bootstrap: Paired bootstrap resamples of the units (groups, else images).
        ci: Confidence level of the intervals.
        seed: Bootstrap seed.

    Returns:
        ``{"metric", "a": {"value", "ci"}, "b": {...}, "difference": {"value", "ci",
        "p_b_better"}, "ci_level", "n_bootstrap", "bootstrap_unit", "n_units"}``; the
        difference is b - a.

    Raises:
        DataError: A run has not finished its folds, or the two runs' folds differ.
    """
    from lepton_vision.kinds import kind_of
    from lepton_vision.runio import RunDir

    a, b = Path(run_a), Path(run_b)
    _same_folds(a, b)
    kind_a, kind_b = RunDir(a).task_kind, RunDir(b).task_kind
    if kind_a != kind_b:
        raise DataError(f"{a} is {kind_a} and {b} is {kind_b}; compare runs of one task")
    paired = kind_of(kind_a).paired_bootstrap(RunDir(a), RunDir(b), merge_classes=merge_classes,
                                              n_bootstrap=n_bootstrap, seed=seed)
    return _summary(paired.metric, paired.a, paired.b, paired.boot_a, paired.boot_b, ci, paired.unit, paired.n_units)

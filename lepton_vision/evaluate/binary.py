"""TF-free binary metrics at an operating point, with group-bootstrap CIs.

Used by classification (slice scores) and by detection (the image-level "object present"
score). Conventions: ``label`` is 1 for the positive class; a sample is predicted positive iff
``score >= threshold``; a set with one class raises :class:`DataError` (AUC is never recorded as
0 or NaN).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lepton_vision.config.errors import DataError
from lepton_vision.evaluate.bootstrap import resample_weights, resampling_units


#: Metrics that are rates in [0, 1] and get a bootstrap CI and a mean ± SD over folds.
SCALAR_METRICS: tuple[str, ...] = (
    "roc_auc",
    "pr_auc",
    "f1",
    "precision",
    "sensitivity",
    "specificity",
    "accuracy",
    "balanced_accuracy",
)


#: Human names for the terminal table and the report.
METRIC_LABELS: dict[str, str] = {
    "roc_auc": "ROC AUC",
    "pr_auc": "PR AUC (AP)",
    "f1": "F1",
    "precision": "Precision (PPV)",
    "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
}


#: Curves in metrics.json are downsampled to at most this many points (keeps the file small).
MAX_CURVE_POINTS = 200


def as_arrays(labels: Any, scores: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64, scores float64) as 1-D arrays, or a DataError naming ``where`` (bad labels, NaN scores, length mismatch)."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or len(y) != len(s):
        raise DataError(
            f"{where}: labels and scores must be 1-D arrays of the same length. "
            f"Got shapes {y.shape} and {s.shape}."
        )
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise DataError(
            f"{where}: labels must be 0 (negative) or 1 (positive). "
            f"Got {sorted({str(v) for v in y[bad][:5]})}. Map the classes to 0/1 first."
        )
    if not np.isfinite(s).all():
        n_bad = int((~np.isfinite(s)).sum())
        raise DataError(
            f"{where}: {n_bad} score(s) are NaN or infinite. Got {s[~np.isfinite(s)][:3].tolist()}. "
            "Check the model output (a NaN loss during training produces NaN scores)."
        )
    return y.astype(np.int64), s


def require_both_classes(y: np.ndarray, where: str) -> None:
    """Raise a DataError naming ``where`` unless ``y`` holds both classes (AUC is never recorded as 0 or NaN)."""
    n_pos = int(y.sum())
    n_neg = int(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise DataError(
            f"{where}: only one class present, so AUC, sensitivity and specificity are undefined. "
            f"Got n={len(y)}, positives={n_pos}, negatives={n_neg}. "
            "Every fold needs both classes: use stratified (group) folds, fewer folds, or more data "
            "of the missing class."
        )


def binary_metrics(labels: Any, scores: Any, threshold: float | Any, where: str = "data") -> dict[str, Any]:
    """All binary metrics at one operating point.

    Args:
        labels: 0/1 labels.
        scores: Scores.
        threshold: A float, or one threshold per sample (pooled OOF uses each sample's fold
            threshold).
        where: Names the set in error messages (``"fold 3"``, ``"pooled OOF"``).

    Returns:
        ``roc_auc, pr_auc, f1, precision, sensitivity, specificity, accuracy, balanced_accuracy``
        (floats), ``confusion`` ``{tn, fp, fn, tp}``, ``n``, ``n_pos`` (ints). Precision and F1
        are 0 when nothing is predicted positive.

    Raises:
        DataError: One class only, or bad labels/scores.
    """
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    y, s = as_arrays(labels, scores, where)
    require_both_classes(y, where)
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), s.shape)
    pred = (s >= thr).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    return {
        "roc_auc": float(roc_auc_score(y, s)),
        "pr_auc": float(average_precision_score(y, s)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "sensitivity": float(recall_score(y, pred)),
        "specificity": tn / (tn + fp),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "n": int(len(y)),
        "n_pos": int(y.sum()),
    }


def _weighted_metrics(
    y: np.ndarray, s: np.ndarray, pred: np.ndarray, w: np.ndarray
) -> dict[str, np.ndarray]:
    """Every scalar metric for many resamples at once.

    A bootstrap resample is the original data with integer weights (how often each sample was
    drawn), so each metric is a weighted sum over the original samples. ``w`` is (B, n).
    AUC is the Mann-Whitney statistic with ties counted 1/2; AP is sklearn's step-wise
    sum of precision x recall increments over distinct scores, both with weights.
    """
    w = w.astype(np.float64)
    pos = y.astype(np.float64)
    neg = 1.0 - pos
    # Group tied scores: sklearn's curves step over distinct scores, and ties count 1/2 in AUC.
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    wp = np.add.reduceat(w[:, order] * pos[order], starts, axis=1)  # (B, U) ascending score
    wn = np.add.reduceat(w[:, order] * neg[order], starts, axis=1)
    P = wp.sum(axis=1)
    N = wn.sum(axis=1)
    neg_below = np.cumsum(wn, axis=1) - wn
    auc = (wp * (neg_below + 0.5 * wn)).sum(axis=1) / (P * N)
    # AP: walk the distinct scores from the highest down.
    tp_cum = np.cumsum(wp[:, ::-1], axis=1)
    fp_cum = np.cumsum(wn[:, ::-1], axis=1)
    called = tp_cum + fp_cum
    prec_curve = np.divide(tp_cum, called, out=np.zeros_like(tp_cum), where=called > 0)
    ap = (wp[:, ::-1] * prec_curve).sum(axis=1) / P

    p = pred.astype(np.float64)
    tp = w @ (pos * p)
    fp = w @ (neg * p)
    fn = P - tp
    tn = N - fp
    sens = tp / P
    spec = tn / N
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return {
        "roc_auc": auc,
        "pr_auc": ap,
        "f1": f1,
        "precision": precision,
        "sensitivity": sens,
        "specificity": spec,
        "accuracy": (tp + tn) / (P + N),
        "balanced_accuracy": (sens + spec) / 2.0,
    }


def bootstrap_ci(
    labels: Any,
    scores: Any,
    thresholds_per_sample: float | Any,
    groups: Any = None,
    n_resamples: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap confidence intervals for every scalar metric.

    Samples of one group (patient, video) are correlated, so when ``groups`` holds any non-empty
    value whole groups are resampled with replacement (samples with an empty group count as
    their own group); otherwise samples are. Resamples with a single class have no AUC and are
    skipped (and counted). The thresholds stay fixed per sample: the CI covers sampling
    variation of the evaluation data, not of threshold selection. Confusion counts get no CI.

    Args:
        labels: 0/1 labels.
        scores: Scores.
        thresholds_per_sample: A float or one threshold per sample.
        groups: Group id per sample, or None / all empty for sample-level resampling.
        n_resamples: Number of bootstrap resamples (>= 1).
        ci: Confidence level, e.g. 0.95.
        seed: Seed of numpy's default_rng; the same seed gives the same intervals.

    Returns:
        ``{"intervals": {metric: (lo, hi)}, "n_resamples", "skipped_resamples",
        "unit": "group" | "sample", "n_units"}``.

    Raises:
        DataError: One class in the data, or every resample had a single class.
    """
    y, s = as_arrays(labels, scores, "bootstrap data")
    require_both_classes(y, "bootstrap data")
    if n_resamples < 1:
        raise DataError(f"bootstrap: n_resamples must be >= 1. Got {n_resamples}. Set evaluate.n_bootstrap.")
    thr = np.broadcast_to(np.asarray(thresholds_per_sample, dtype=np.float64), s.shape)
    pred = s >= thr
    rng = np.random.default_rng(seed)
    n = len(y)
    gid, n_units, unit = resampling_units(groups, n)
    collected: dict[str, list[np.ndarray]] = {m: [] for m in SCALAR_METRICS}
    skipped = 0
    for w in resample_weights(rng, gid, n_units, n_resamples):
        wpos = w @ y
        valid = (wpos > 0) & (wpos < w.sum(axis=1))
        skipped += int((~valid).sum())
        if valid.any():
            vals = _weighted_metrics(y, s, pred, w[valid])
            for m in SCALAR_METRICS:
                collected[m].append(vals[m])
    n_valid = n_resamples - skipped
    if n_valid == 0:
        raise DataError(
            f"bootstrap: all {n_resamples} resamples of {n_units} {unit}s had a single class. "
            f"Got {int(y.sum())} positives in {n} samples. Add data from more {unit}s of each class."
        )
    alpha = (1.0 - ci) / 2.0
    intervals: dict[str, tuple[float, float]] = {}
    for m in SCALAR_METRICS:
        v = np.concatenate(collected[m])
        lo, hi = np.percentile(v, [100 * alpha, 100 * (1 - alpha)])
        intervals[m] = (float(lo), float(hi))
    return {
        "intervals": intervals,
        "n_resamples": int(n_resamples),
        "skipped_resamples": int(skipped),
        "unit": unit,
        "n_units": n_units,
    }


OOF_COLUMNS = ("label", "fold", "score")


def check_oof(oof: pd.DataFrame, file: str = "oof_predictions.csv") -> None:
    """Raise a DataError naming the file and lines when an out-of-fold table lacks label/fold/score or has empty values."""
    missing = [c for c in OOF_COLUMNS if c not in oof.columns]
    if missing:
        raise DataError(
            f"{file}: missing column(s) {missing}. Got columns {list(oof.columns)}. "
            "It must have columns sample_id, path, group, label, fold, score (written by train)."
        )
    if len(oof) == 0:
        raise DataError(f"{file}: no rows. Got an empty table. Re-run training.")
    for col in OOF_COLUMNS:
        bad = oof[col].isna()
        if bad.any():
            rows = (np.flatnonzero(bad.to_numpy())[:5] + 2).tolist()  # +2: header line, 1-based
            raise DataError(f"{file}: empty or NaN '{col}' on line(s) {rows}. Got {int(bad.sum())} such rows. Re-run training.")


def downsample(x: np.ndarray, y: np.ndarray, k: int = MAX_CURVE_POINTS) -> tuple[list[float], list[float]]:
    """A curve as two lists of at most ``k`` points (evenly spaced indices, 5 decimals), small enough for metrics.json."""
    if len(x) > k:
        idx = np.unique(np.linspace(0, len(x) - 1, k).round().astype(np.int64))
        x, y = x[idx], y[idx]
    return [round(float(v), 5) for v in x], [round(float(v), 5) for v in y]


def curves(y: np.ndarray, s: np.ndarray) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The ROC and precision-recall curves of (labels, scores), downsampled."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(y, s)
    precision, recall, _ = precision_recall_curve(y, s)
    fx, ty = downsample(fpr, tpr)
    rx, py = downsample(recall, precision)
    return {"fpr": fx, "tpr": ty}, {"recall": rx, "precision": py}


def format_value(entry: dict[str, Any], digits: int = 3) -> str:
    """``"0.912 [0.871, 0.948]"`` from ``{"value", "lo", "hi"}`` (no brackets without a CI)."""
    text = f"{entry['value']:.{digits}f}"
    if entry.get("lo") is not None and entry.get("hi") is not None:
        text += f" [{entry['lo']:.{digits}f}, {entry['hi']:.{digits}f}]"
    return text

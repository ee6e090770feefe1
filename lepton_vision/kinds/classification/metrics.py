"""TF-free binary-classification metrics from saved out-of-fold predictions.

Everything here works on numpy arrays and the ``oof_predictions.csv`` table (columns
``sample_id, path, group, label, fold, score``), so ``lepton-vision evaluate RUN`` can re-score a
finished run with another threshold policy without TensorFlow.

Conventions used everywhere in this module:

* ``label`` is 1 for the task's positive class, 0 otherwise; ``score`` is the model's sigmoid.
* Decision rule: a sample is predicted positive iff ``score >= threshold``.
* A set with one class (no positives or no negatives) raises :class:`DataError`; AUC is never
  recorded as 0 or NaN.
* Thresholds applied to a fold are never chosen on that fold (see :func:`fold_thresholds`).
* The same holds for temperatures (:func:`fold_temperatures`) and for patient-level thresholds
  (patient scores aggregated from slices by :func:`aggregate_by_group`; a patient is positive
  if any of its slices is).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lepton_vision.config.errors import DataError, RecipeError, did_you_mean, format_choices
from lepton_vision.config.recipe import PatientAggregation, Threshold
from lepton_vision.runio import RunDir

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

POLICIES: tuple[str, ...] = ("max_f1", "youden", "min_sensitivity", "min_specificity", "fixed")

#: Curves in metrics.json are downsampled to at most this many points (keeps the file small).
MAX_CURVE_POINTS = 200


# --------------------------------------------------------------------------------------------
# Input checks


def _as_arrays(labels: Any, scores: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
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


def _require_both_classes(y: np.ndarray, where: str) -> None:
    n_pos = int(y.sum())
    n_neg = int(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise DataError(
            f"{where}: only one class present, so AUC, sensitivity and specificity are undefined. "
            f"Got n={len(y)}, positives={n_pos}, negatives={n_neg}. "
            "Every fold needs both classes: use stratified (group) folds, fewer folds, or more data "
            "of the missing class."
        )


# --------------------------------------------------------------------------------------------
# Threshold policies


def parse_policy(text: str) -> Threshold:
    """Parse a policy string such as ``"max_f1"``, ``"min_sensitivity:0.9"`` or ``"fixed:0.5"``.

    Args:
        text: ``<policy>`` or ``<policy>:<value>``.

    Returns:
        The validated :class:`~lepton_vision.config.recipe.Threshold`.

    Raises:
        RecipeError: Unknown policy, a value that is not a number, or a missing/extra value.
    """
    raw = str(text).strip()
    name, sep, value_text = raw.partition(":")
    name = name.strip()
    if name not in POLICIES:
        raise RecipeError(
            f"--policy: unknown threshold policy. Got '{raw}'.{did_you_mean(name, POLICIES)} "
            f"Use one of: {format_choices(POLICIES)}, e.g. 'max_f1' or 'min_sensitivity:0.9'."
        )
    value: float | None = None
    if sep:
        try:
            value = float(value_text)
        except ValueError:
            raise RecipeError(
                f"--policy: the value after ':' must be a number between 0 and 1. Got '{value_text}'. "
                f"Write e.g. '{name}:0.9'."
            ) from None
    try:
        return Threshold(policy=name, value=value)
    except Exception as e:  # pydantic.ValidationError: turn it into one readable line
        errors = getattr(e, "errors", None)
        detail = "; ".join(str(err.get("msg", err)) for err in errors()) if callable(errors) else str(e)
        raise RecipeError(
            f"--policy: invalid threshold policy. Got '{raw}'. {detail}. "
            "Policies min_sensitivity, min_specificity and fixed take a value in [0, 1] "
            "('min_sensitivity:0.9'); max_f1 and youden take none."
        ) from None


def policy_text(policy: Threshold) -> str:
    """The inverse of :func:`parse_policy` (``"min_sensitivity:0.9"``)."""
    return policy.policy if policy.value is None else f"{policy.policy}:{policy.value:g}"


def choose_threshold(labels: Any, scores: Any, policy: Threshold, where: str = "threshold data") -> float:
    """Choose an operating threshold on (labels, scores) by a policy.

    Candidate thresholds are the distinct scores (sklearn's curves); ties are broken toward the
    higher threshold. A sample is positive iff ``score >= threshold``.

    * ``max_f1``: the threshold with the highest F1.
    * ``youden``: the threshold with the highest sensitivity + specificity - 1.
    * ``min_sensitivity`` (value = target): the *highest* threshold whose sensitivity >= target
      (so target 1.0 gives the lowest positive score).
    * ``min_specificity`` (value = target): the *lowest* threshold whose specificity >= target.
      When only "predict nothing positive" reaches the target, that is the next float above the
      highest score.
    * ``fixed`` (value = threshold): the value, unchanged (no data needed).

    Args:
        labels: 0/1 labels.
        scores: Scores, higher = more positive.
        policy: The policy.
        where: Names the data in error messages (``"folds != 2"``).

    Returns:
        The threshold as a Python float.

    Raises:
        DataError: The data has one class, or bad labels/scores.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    if policy.policy == "fixed":
        assert policy.value is not None  # Threshold validates this
        return float(policy.value)
    y, s = _as_arrays(labels, scores, where)
    _require_both_classes(y, where)
    if policy.policy == "max_f1":
        precision, recall, thr = precision_recall_curve(y, s)
        p, r = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
        denom = p + r
        f1 = np.divide(2 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        return float(thr[best].max())
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    # roc_curve's first threshold is +inf ("nothing positive"); a finite stand-in keeps JSON valid.
    thr = thr.astype(np.float64).copy()
    thr[0] = float(np.nextafter(s.max(), np.inf))
    eps = 1e-12  # targets like 0.9 must not fail on 0.8999999 from float division
    if policy.policy == "youden":
        j = tpr - fpr
        # thresholds are descending, so argmax's first hit is the highest threshold among ties
        return float(thr[int(np.argmax(j))])
    assert policy.value is not None
    target = float(policy.value)
    if policy.policy == "min_sensitivity":
        ok = np.flatnonzero(tpr >= target - eps)
        return float(thr[ok[0]])  # tpr reaches 1 at the lowest positive score, so ok is non-empty
    if policy.policy == "min_specificity":
        ok = np.flatnonzero(1.0 - fpr >= target - eps)
        return float(thr[ok[-1]])  # index 0 (nothing positive) always has specificity 1
    raise RecipeError(f"threshold.policy: unknown policy. Got '{policy.policy}'. Use one of {POLICIES}.")


def fold_thresholds(oof: pd.DataFrame, policy: Threshold) -> dict[int, float]:
    """The honest threshold for each fold: chosen on the OOF scores of all *other* folds.

    Why: a threshold tuned on fold k's own labels makes fold k's sensitivity, specificity and F1
    optimistic (the operating point is fitted to the very data it is judged on), which is the
    mistake this project promises not to make. Fold k's model was trained on exactly the samples
    of the other folds, so choosing its threshold there uses training data only. Their
    *out-of-fold* scores (from the other fold models) stand in for "how this kind of model scores
    unseen data"; fold k's model's own scores on its training samples would be overconfident and
    give a threshold that is too high. Fold k's scores and labels never influence its threshold.

    Args:
        oof: Out-of-fold table with columns ``label``, ``fold``, ``score``.
        policy: Threshold policy (``fixed`` gives the same value for every fold).

    Returns:
        ``{fold: threshold}`` for every fold in ``oof``.

    Raises:
        DataError: Fewer than two folds, or the other folds hold a single class.
    """
    folds = _cross_fit_folds(oof, "honest thresholds")
    out: dict[int, float] = {}
    fold_col = oof["fold"].to_numpy().astype(np.int64)
    y = oof["label"].to_numpy()
    s = oof["score"].to_numpy()
    for k in folds:
        rest = fold_col != k
        out[k] = choose_threshold(y[rest], s[rest], policy, where=f"threshold for fold {k} (folds != {k})")
    return out


# --------------------------------------------------------------------------------------------
# Point metrics


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

    y, s = _as_arrays(labels, scores, where)
    _require_both_classes(y, where)
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


# --------------------------------------------------------------------------------------------
# Bootstrap


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


def _has_groups(groups: Any) -> bool:
    if groups is None:
        return False
    g = pd.Series(np.asarray(groups, dtype=object)).fillna("").astype(str)
    return bool((g != "").any())


def _resampling_units(groups: Any, n: int) -> tuple[np.ndarray, int, str]:
    """Unit index per sample for the bootstrap: groups when any is non-empty, else samples.

    Returns ``(unit id per sample, number of units, "group" | "sample")``; samples with an empty
    group count as their own unit.
    """
    if _has_groups(groups):
        g = pd.Series(np.asarray(groups, dtype=object)).fillna("").astype(str).to_numpy()
        empty = g == ""
        g = g.copy()
        g[empty] = np.array([f"\x00sample{i}" for i in np.flatnonzero(empty)], dtype=object)
        _, gid = np.unique(g, return_inverse=True)
        return gid, int(gid.max()) + 1, "group"
    return np.arange(n), n, "sample"


def _resample_weights(rng: np.random.Generator, gid: np.ndarray, n_units: int, n_resamples: int) -> Any:
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
    y, s = _as_arrays(labels, scores, "bootstrap data")
    _require_both_classes(y, "bootstrap data")
    if n_resamples < 1:
        raise DataError(f"bootstrap: n_resamples must be >= 1. Got {n_resamples}. Set evaluate.n_bootstrap.")
    thr = np.broadcast_to(np.asarray(thresholds_per_sample, dtype=np.float64), s.shape)
    pred = s >= thr
    rng = np.random.default_rng(seed)
    n = len(y)
    gid, n_units, unit = _resampling_units(groups, n)
    collected: dict[str, list[np.ndarray]] = {m: [] for m in SCALAR_METRICS}
    skipped = 0
    for w in _resample_weights(rng, gid, n_units, n_resamples):
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


# --------------------------------------------------------------------------------------------
# Calibration


#: Scores are clipped to [CLIP_EPS, 1 - CLIP_EPS] before the logit (a sigmoid of exactly 0 or 1
#: would give an infinite logit). The exported graph must clip the same way for exact parity.
CLIP_EPS = 1e-6

#: Bounds of the fitted temperature.
TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)


def _bin_index(s: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each score on [0, 1]: bin i is [i/n, (i+1)/n), the last one includes 1."""
    if int(n_bins) < 1:
        raise DataError(f"calibration: n_bins must be >= 1. Got {n_bins}. Set evaluate.calibration_bins (2..50).")
    return np.clip(np.floor(np.clip(s, 0.0, 1.0) * n_bins).astype(np.int64), 0, int(n_bins) - 1)


def _weighted_ece(y: np.ndarray, s: np.ndarray, w: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE for each row of the (B, n) weight matrix ``w`` (one row of ones = the data as is)."""
    onehot = np.zeros((len(s), int(n_bins)))
    onehot[np.arange(len(s)), _bin_index(s, n_bins)] = 1.0
    w = w.astype(np.float64)
    score_sum = w @ (onehot * s[:, None])
    pos_sum = w @ (onehot * y[:, None].astype(np.float64))
    # sum over bins of count_b / N * |mean score_b - fraction positive_b| = sum |S_b - Y_b| / N
    return np.abs(score_sum - pos_sum).sum(axis=1) / w.sum(axis=1)


def expected_calibration_error(labels: Any, scores: Any, n_bins: int = 10) -> float:
    """Expected calibration error with equal-width bins on [0, 1].

    ``ECE = sum_b (n_b / n) * |mean score in b - fraction positive in b|``; empty bins add 0.
    Scores are expected to be probabilities (sigmoid outputs); values outside [0, 1] fall in the
    first or last bin.

    Args:
        labels: 0/1 labels.
        scores: Predicted probabilities of the positive class.
        n_bins: Number of equal-width bins.

    Returns:
        The ECE in [0, 1] as a Python float.

    Raises:
        DataError: No samples, or bad labels/scores.
    """
    y, s = _as_arrays(labels, scores, "calibration data")
    if len(y) == 0:
        raise DataError("calibration data: no samples. Got 0 scores. Score at least one sample.")
    return float(_weighted_ece(y, s, np.ones((1, len(y))), n_bins)[0])


def reliability_curve(labels: Any, scores: Any, n_bins: int = 10) -> dict[str, list[Any]]:
    """The points of a reliability diagram (equal-width bins on [0, 1]).

    Args:
        labels: 0/1 labels.
        scores: Predicted probabilities of the positive class.
        n_bins: Number of bins.

    Returns:
        ``{"bin_centers", "mean_score", "frac_pos", "counts"}``, one entry per bin; ``mean_score``
        and ``frac_pos`` are None for empty bins (JSON has no NaN).
    """
    y, s = _as_arrays(labels, scores, "calibration data")
    b = _bin_index(s, n_bins)
    counts = np.bincount(b, minlength=n_bins)
    score_sum = np.bincount(b, weights=s, minlength=n_bins)
    pos_sum = np.bincount(b, weights=y.astype(np.float64), minlength=n_bins)
    mean_score: list[float | None] = []
    frac_pos: list[float | None] = []
    for i in range(int(n_bins)):
        ok = counts[i] > 0
        mean_score.append(float(score_sum[i] / counts[i]) if ok else None)
        frac_pos.append(float(pos_sum[i] / counts[i]) if ok else None)
    return {
        "bin_centers": [float((i + 0.5) / n_bins) for i in range(int(n_bins))],
        "mean_score": mean_score,
        "frac_pos": frac_pos,
        "counts": [int(c) for c in counts],
    }


def _ece_entry(
    y: np.ndarray, s: np.ndarray, groups: Any, n_bins: int, n_bootstrap: int, ci: float, seed: int
) -> dict[str, float | None]:
    """``{"value", "lo", "hi"}``: ECE with a percentile bootstrap CI over the same units as the
    other metrics (groups when there are any). Single-class resamples are kept: ECE is defined."""
    value = float(_weighted_ece(y, s, np.ones((1, len(y))), n_bins)[0])
    if n_bootstrap <= 0:
        return {"value": value, "lo": None, "hi": None}
    gid, n_units, _ = _resampling_units(groups, len(y))
    rng = np.random.default_rng(seed)
    vals = np.concatenate([_weighted_ece(y, s, w, n_bins) for w in _resample_weights(rng, gid, n_units, n_bootstrap)])
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.percentile(vals, [100 * alpha, 100 * (1 - alpha)])
    return {"value": value, "lo": float(lo), "hi": float(hi)}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), CLIP_EPS, 1.0 - CLIP_EPS)
    return np.log(p) - np.log1p(-p)


def _log_loss(y: np.ndarray, s: np.ndarray) -> float:
    z = _logit(s)
    # -[y log sigmoid(z) + (1-y) log(1 - sigmoid(z))], written stably with logaddexp
    return float(np.mean(y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)))


def apply_temperature(scores: Any, temperature: float) -> Any:
    """Temperature-scaled scores: ``sigmoid(logit(clip(p, 1e-6, 1 - 1e-6)) / T)``.

    T > 1 pulls overconfident scores toward 0.5, T < 1 sharpens them. The map is non-decreasing,
    so AUC and the ranking of samples are unchanged.

    Args:
        scores: A float or an array of probabilities.
        temperature: T > 0.

    Returns:
        A float for a scalar input, else a float64 array of the input's shape.
    """
    from scipy.special import expit

    if not temperature > 0:
        raise DataError(f"temperature: must be > 0. Got {temperature}. Fit it with fit_temperature.")
    out = expit(_logit(np.asarray(scores, dtype=np.float64)) / float(temperature))
    return float(out) if np.ndim(out) == 0 else out


def calibrated_threshold(threshold: float, temperature: float) -> float:
    """The threshold on temperature-scaled scores that makes the same decisions as ``threshold``
    on raw scores (``score >= threshold``).

    Thresholds inside (0, 1] are mapped by :func:`apply_temperature` (non-decreasing, so every
    raw positive stays positive); a threshold above 1 ("nothing positive", see
    :func:`choose_threshold`) or at/below 0 ("everything positive") is kept, since scaled scores
    stay in [0, 1]. Decisions can only differ for raw scores within 1e-6 of 0 or 1, where the
    clip makes the map flat.
    """
    t = float(threshold)
    if t > 1.0 or t <= 0.0:
        return t
    return float(apply_temperature(t, temperature))


def fit_temperature(labels: Any, scores: Any) -> float:
    """The temperature T minimising the log-loss of ``sigmoid(logit(score) / T)``.

    Bounded scalar minimisation (scipy, over log T so small and large T are searched alike)
    within :data:`TEMPERATURE_BOUNDS`; scores are clipped to [1e-6, 1 - 1e-6].

    Args:
        labels: 0/1 labels.
        scores: Predicted probabilities.

    Returns:
        T as a Python float.

    Raises:
        DataError: One class only (the loss would push T to a bound), or bad labels/scores.
    """
    from scipy.optimize import minimize_scalar

    y, s = _as_arrays(labels, scores, "temperature data")
    _require_both_classes(y, "temperature data")
    z = _logit(s)
    yf = y.astype(np.float64)

    def loss(log_t: float) -> float:
        q = z / np.exp(log_t)
        return float(np.mean(yf * np.logaddexp(0.0, -q) + (1.0 - yf) * np.logaddexp(0.0, q)))

    lo, hi = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))


def _cross_fit_folds(oof: pd.DataFrame, what: str) -> list[int]:
    """The sorted fold ids of a checked OOF table; cross-fitting needs at least two."""
    _check_oof(oof)
    folds = sorted(int(f) for f in pd.unique(oof["fold"]))
    if len(folds) < 2:
        raise DataError(
            f"oof_predictions.csv: {what} need at least 2 folds. Got folds {folds}. "
            "Set cv.n_splits >= 2."
        )
    return folds


def fold_temperatures(oof: pd.DataFrame) -> dict[int, float]:
    """The honest temperature for each fold: fitted on the OOF scores of all *other* folds.

    The same reasoning as :func:`fold_thresholds`: fold k's labels never influence the
    temperature its calibration is judged with.

    Returns:
        ``{fold: T}`` for every fold in ``oof``.

    Raises:
        DataError: Fewer than two folds, or the other folds hold a single class.
    """
    folds = _cross_fit_folds(oof, "cross-fitted temperatures")
    fold_col = oof["fold"].to_numpy().astype(np.int64)
    y = oof["label"].to_numpy()
    s = oof["score"].to_numpy()
    return {k: fit_temperature(y[fold_col != k], s[fold_col != k]) for k in folds}


# --------------------------------------------------------------------------------------------
# Patient (group) level


AGGREGATIONS: tuple[str, ...] = ("max", "mean", "top_k_mean")
PATIENT_COLUMNS: tuple[str, ...] = ("group", "label", "fold", "score", "n_slices")


def aggregate_by_group(oof: pd.DataFrame, method: str = "max", k: int | None = 3) -> pd.DataFrame:
    """One row per group (patient): slice scores combined, label = any positive slice.

    Rows with an empty group have no patient and are left out.

    Args:
        oof: Out-of-fold table with ``group``, ``label``, ``fold``, ``score``.
        method: ``max`` (the most suspicious slice), ``mean``, or ``top_k_mean`` (mean of the
            ``k`` highest slice scores; all of them when a patient has fewer slices).
        k: Slices averaged by ``top_k_mean`` (None = 3); ignored otherwise.

    Returns:
        Columns ``group, label, fold, score, n_slices``, sorted by group (empty without groups).

    Raises:
        DataError: A group whose slices lie in more than one fold (its patient would be
            scored by a model that trained on some of its slices), or a bad table.
        RecipeError: Unknown method or k < 1.
    """
    _check_oof(oof)
    if method not in AGGREGATIONS:
        raise RecipeError(
            f"evaluate.patient_aggregation.method: unknown method. Got '{method}'.{did_you_mean(str(method), AGGREGATIONS)} "
            f"Use one of: {format_choices(AGGREGATIONS)}."
        )
    k_eff = 3 if k is None else int(k)
    if k_eff < 1:
        raise RecipeError(f"evaluate.patient_aggregation.k: must be >= 1. Got {k}. Use e.g. k: 3.")
    if "group" not in oof.columns:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "group" else np.float64) for c in PATIENT_COLUMNS})
    g = oof["group"].fillna("").astype(str)
    part = pd.DataFrame(
        {
            "group": g,
            "label": oof["label"].to_numpy().astype(np.int64),
            "fold": oof["fold"].to_numpy().astype(np.int64),
            "score": oof["score"].to_numpy().astype(np.float64),
        }
    )[g.to_numpy() != ""]
    if len(part) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "group" else np.float64) for c in PATIENT_COLUMNS})
    by = part.groupby("group", sort=True)
    n_folds = by["fold"].nunique()
    spanning = n_folds[n_folds > 1]
    if len(spanning):
        first = spanning.index[0]
        folds = sorted(int(f) for f in part.loc[part["group"] == first, "fold"].unique())
        raise DataError(
            f"oof_predictions.csv: group '{first}' has slices in folds {folds}. Got {len(spanning)} group(s) "
            "spanning several folds. Patient-level scores need every patient in one fold: use "
            "cv.strategy: stratified_group (or auto with a group column in the dataset card)."
        )
    if method == "max":
        score = by["score"].max()
    elif method == "mean":
        score = by["score"].mean()
    else:
        score = by["score"].apply(lambda v: float(np.sort(v.to_numpy())[::-1][:k_eff].mean()))
    out = pd.DataFrame(
        {
            "group": score.index.astype(str),
            "label": by["label"].max().to_numpy().astype(np.int64),
            "fold": by["fold"].first().to_numpy().astype(np.int64),
            "score": score.to_numpy().astype(np.float64),
            "n_slices": by.size().to_numpy().astype(np.int64),
        }
    )
    return out.reset_index(drop=True)


def _patient_section(
    oof: pd.DataFrame,
    policy: Threshold,
    method: str,
    k: int | None,
    n_bootstrap: int,
    ci: float,
    seed: int,
) -> dict[str, Any] | None:
    """Patient-level metrics (None when no sample has a group); see :func:`score_oof`."""
    pat = aggregate_by_group(oof, method, k)
    if len(pat) == 0:
        return None
    g = oof["group"].fillna("").astype(str)
    base: dict[str, Any] = {
        "aggregation": {"method": method, "k": (3 if k is None else int(k)) if method == "top_k_mean" else None},
        "n": int(len(pat)),
        "n_pos": int(pat["label"].sum()),
        "n_slices": int(pat["n_slices"].sum()),
        "n_slices_without_group": int((g == "").sum()),
        "bootstrap_unit": "patient",
    }
    y = pat["label"].to_numpy()
    s = pat["score"].to_numpy()
    fold_col = pat["fold"].to_numpy()
    try:
        _require_both_classes(y, "patient level (all patients)")
        thresholds = fold_thresholds(pat, policy)
        final_threshold = choose_threshold(y, s, policy, where="patient level (all patients)")
    except DataError as e:
        # Too few patients of one class for patient-level numbers: say so, slice level still stands.
        return {**base, "error": str(e)}
    per_fold: list[dict[str, Any]] = []
    skipped_folds: list[dict[str, Any]] = []
    for f in sorted(thresholds):
        m = fold_col == f
        n_pos = int(y[m].sum())
        if n_pos == 0 or n_pos == int(m.sum()):
            # one fold may hold only normal (or abnormal) patients; pooled numbers still use it
            skipped_folds.append({"fold": f, "n": int(m.sum()), "n_pos": n_pos, "reason": "one class at patient level"})
            continue
        per_fold.append({"fold": f, "threshold": thresholds[f], **binary_metrics(y[m], s[m], thresholds[f], where=f"patient level, fold {f}")})
    mean_sd = {
        name: {
            "mean": float(np.mean([f[name] for f in per_fold])) if per_fold else None,
            "sd": float(np.std([f[name] for f in per_fold], ddof=1)) if len(per_fold) >= 2 else None,
        }
        for name in SCALAR_METRICS
    }
    thr_per = np.array([thresholds[int(f)] for f in fold_col], dtype=np.float64)
    pooled_m = binary_metrics(y, s, thr_per, where="patient level, pooled")
    intervals: dict[str, tuple[float | None, float | None]] = {m: (None, None) for m in SCALAR_METRICS}
    skipped = 0
    if n_bootstrap > 0:
        boot = bootstrap_ci(y, s, thr_per, None, n_bootstrap, ci, seed)  # one row per patient
        intervals = dict(boot["intervals"])
        skipped = boot["skipped_resamples"]
    return {
        **base,
        "thresholds": {str(f): v for f, v in thresholds.items()},
        "final_threshold": final_threshold,
        "per_fold": per_fold,
        "skipped_folds": skipped_folds,
        "mean_sd": mean_sd,
        "pooled": {
            name: {"value": pooled_m[name], "lo": intervals[name][0], "hi": intervals[name][1]}
            for name in SCALAR_METRICS
        },
        "confusion": pooled_m["confusion"],
        "skipped_resamples": int(skipped),
    }


# --------------------------------------------------------------------------------------------
# Whole-run scoring


OOF_COLUMNS = ("label", "fold", "score")


def _check_oof(oof: pd.DataFrame, file: str = "oof_predictions.csv") -> None:
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


def _downsample(x: np.ndarray, y: np.ndarray, k: int = MAX_CURVE_POINTS) -> tuple[list[float], list[float]]:
    if len(x) > k:
        idx = np.unique(np.linspace(0, len(x) - 1, k).round().astype(np.int64))
        x, y = x[idx], y[idx]
    return [round(float(v), 5) for v in x], [round(float(v), 5) for v in y]


def _curves(y: np.ndarray, s: np.ndarray) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(y, s)
    precision, recall, _ = precision_recall_curve(y, s)
    fx, ty = _downsample(fpr, tpr)
    rx, py = _downsample(recall, precision)
    return {"fpr": fx, "tpr": ty}, {"recall": rx, "precision": py}


def score_oof(
    oof: pd.DataFrame,
    policy: Threshold,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    *,
    aggregation: PatientAggregation | None = None,
    calibration_bins: int = 10,
    temperature_scaling: bool = False,
) -> dict[str, Any]:
    """Score a run's out-of-fold predictions: per fold, mean ± SD, pooled with bootstrap CIs.

    Each fold is scored at its honest threshold (:func:`fold_thresholds`); pooled metrics use
    each sample's own fold threshold. ``final_threshold`` is chosen on *all* OOF scores: it is
    the operating point the exported (final) model ships with, because the final model is
    trained on all data and the OOF scores are the best available picture of its scores on
    unseen data. It is never used to compute the reported metrics (that would peek).

    Args:
        oof: Table with columns ``label``, ``fold``, ``score`` and optionally ``group``.
        policy: Threshold policy.
        n_bootstrap: Bootstrap resamples for the pooled CIs (0 = no CIs: ``lo``/``hi`` are None).
        ci: Confidence level.
        seed: Bootstrap seed.
        aggregation: How slice scores become patient scores (``evaluate.patient_aggregation``;
            None = max).
        calibration_bins: Bins of the reliability curve and the ECE (``evaluate.calibration_bins``).
        temperature_scaling: ``evaluate.temperature_scaling``: also judge temperature scaling,
            honestly (fold k's scores scaled with a T fitted on the other folds), and fit the T
            the export applies on all OOF scores.

    Returns:
        A JSON-serialisable dict (no NaN) with the slice-level keys ``policy, thresholds,
        final_threshold, n_folds, per_fold, mean_sd, pooled, confusion, n, n_pos, ci,
        n_bootstrap, bootstrap_unit, skipped_resamples, curves``, plus:

        * ``calibration``: ``{n_bins, ece: {value, lo, hi}, log_loss, brier, curve:
          {bin_centers, mean_score, frac_pos, counts}}`` of the raw OOF scores; with
          temperature scaling also ``after_scaling: {fold_temperatures: {fold: T}, ece,
          log_loss, brier, curve}`` (cross-fitted).
        * ``patient`` (only when some sample has a non-empty group): ``{aggregation: {method,
          k}, n, n_pos, n_slices, n_slices_without_group, bootstrap_unit: "patient",
          thresholds, final_threshold, per_fold, skipped_folds, mean_sd, pooled, confusion,
          skipped_resamples}``, patient thresholds cross-fitted on the other folds' patient
          scores with the same policy; or ``{aggregation, n, n_pos, ..., error}`` when the
          patients cannot be scored (e.g. all of one class).
        * With temperature scaling: ``temperature`` (T fitted on all OOF scores: what the
          export applies), ``final_threshold_calibrated`` (``final_threshold`` mapped by
          :func:`calibrated_threshold`) and ``temperature_note``.

    Raises:
        DataError: Missing columns, NaN values, fewer than 2 folds, any fold with one class, or
            a group spanning several folds.
    """
    _check_oof(oof)
    y_all, s_all = _as_arrays(oof["label"].to_numpy(), oof["score"].to_numpy(), "oof_predictions.csv")
    fold_col = oof["fold"].to_numpy().astype(np.int64)
    folds = sorted(int(f) for f in np.unique(fold_col))
    # Check every fold before choosing thresholds, so the error names the fold, not "folds != k".
    for k in folds:
        _require_both_classes(y_all[fold_col == k], f"fold {k}")
    thresholds = fold_thresholds(oof, policy)
    final_threshold = choose_threshold(y_all, s_all, policy, where="all OOF predictions")

    per_fold: list[dict[str, Any]] = []
    roc_folds: list[dict[str, Any]] = []
    pr_folds: list[dict[str, Any]] = []
    for k in folds:
        m = fold_col == k
        fm = binary_metrics(y_all[m], s_all[m], thresholds[k], where=f"fold {k}")
        per_fold.append({"fold": k, "threshold": thresholds[k], **fm})
        roc, pr = _curves(y_all[m], s_all[m])
        roc_folds.append({"fold": k, "auc": fm["roc_auc"], **roc})
        pr_folds.append({"fold": k, "ap": fm["pr_auc"], **pr})

    mean_sd = {
        name: {
            "mean": float(np.mean([f[name] for f in per_fold])),
            "sd": float(np.std([f[name] for f in per_fold], ddof=1)),
        }
        for name in SCALAR_METRICS
    }

    thr_per_sample = np.array([thresholds[int(k)] for k in fold_col], dtype=np.float64)
    pooled_m = binary_metrics(y_all, s_all, thr_per_sample, where="pooled OOF")
    groups = oof["group"].to_numpy() if "group" in oof.columns else None
    unit = "group" if _has_groups(groups) else "sample"
    skipped = 0
    intervals: dict[str, tuple[float | None, float | None]] = {m: (None, None) for m in SCALAR_METRICS}
    if n_bootstrap > 0:
        boot = bootstrap_ci(y_all, s_all, thr_per_sample, groups, n_bootstrap, ci, seed)
        intervals = dict(boot["intervals"])
        skipped = boot["skipped_resamples"]
    pooled = {
        name: {"value": pooled_m[name], "lo": intervals[name][0], "hi": intervals[name][1]}
        for name in SCALAR_METRICS
    }
    roc_all, pr_all = _curves(y_all, s_all)

    calibration: dict[str, Any] = {
        "n_bins": int(calibration_bins),
        "ece": _ece_entry(y_all, s_all, groups, calibration_bins, n_bootstrap, ci, seed),
        "log_loss": _log_loss(y_all, s_all),
        "brier": float(np.mean((s_all - y_all) ** 2)),
        "curve": reliability_curve(y_all, s_all, calibration_bins),
    }
    extra: dict[str, Any] = {}
    if temperature_scaling:
        temps = fold_temperatures(oof)
        s_cal = s_all.copy()  # every fold is overwritten with its cross-fitted scaling
        for k in folds:
            m = fold_col == k
            s_cal[m] = apply_temperature(s_all[m], temps[k])
        calibration["after_scaling"] = {
            "fold_temperatures": {str(k): v for k, v in temps.items()},
            "ece": _ece_entry(y_all, s_cal, groups, calibration_bins, n_bootstrap, ci, seed),
            "log_loss": _log_loss(y_all, s_cal),
            "brier": float(np.mean((s_cal - y_all) ** 2)),
            "curve": reliability_curve(y_all, s_cal, calibration_bins),
        }
        temperature = fit_temperature(y_all, s_all)
        extra = {
            "temperature": temperature,
            "final_threshold_calibrated": calibrated_threshold(final_threshold, temperature),
            "temperature_note": (
                "The exported model outputs sigmoid(logit(clip(p, 1e-6, 1-1e-6)) / temperature). This "
                "map is increasing, so AUC, ranking and every reported sensitivity/specificity are "
                "unchanged; thresholds were chosen on raw scores, and final_threshold_calibrated is "
                "final_threshold mapped the same way (score >= final_threshold_calibrated on scaled "
                "scores makes the same decisions as score >= final_threshold on raw ones)."
            ),
        }
    agg = aggregation or PatientAggregation()
    patient = _patient_section(oof, policy, agg.method, agg.k, n_bootstrap, ci, seed) if "group" in oof.columns else None
    return {
        "policy": policy.model_dump(mode="json"),
        "thresholds": {str(k): v for k, v in thresholds.items()},
        "final_threshold": final_threshold,
        "n_folds": len(folds),
        "per_fold": per_fold,
        "mean_sd": mean_sd,
        "pooled": pooled,
        "confusion": pooled_m["confusion"],
        "n": pooled_m["n"],
        "n_pos": pooled_m["n_pos"],
        "ci": float(ci),
        "n_bootstrap": int(n_bootstrap),
        "bootstrap_unit": unit,
        "skipped_resamples": int(skipped),
        "curves": {
            "roc": {"folds": roc_folds, "pooled": {"auc": pooled_m["roc_auc"], **roc_all}},
            "pr": {"folds": pr_folds, "pooled": {"ap": pooled_m["pr_auc"], **pr_all}},
        },
        "calibration": calibration,
        **({"patient": patient} if patient is not None else {}),
        **extra,
    }


def format_value(entry: dict[str, Any], digits: int = 3) -> str:
    """``"0.912 [0.871, 0.948]"`` from ``{"value", "lo", "hi"}`` (no brackets without a CI)."""
    text = f"{entry['value']:.{digits}f}"
    if entry.get("lo") is not None and entry.get("hi") is not None:
        text += f" [{entry['lo']:.{digits}f}, {entry['hi']:.{digits}f}]"
    return text


def summary_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows for the terminal table: (metric name, ``"0.912 [0.871, 0.948]"``) per pooled metric."""
    return [(name, format_value(metrics["pooled"][name])) for name in SCALAR_METRICS if name in metrics["pooled"]]


def read_oof(path: str | Path) -> pd.DataFrame:
    """Read ``oof_predictions.csv`` (group and sample_id kept as strings, empty group = "")."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no out-of-fold predictions. Got a run directory without oof_predictions.csv. "
            "Finish training first: lepton-vision train RECIPE (it resumes unfinished folds)."
        )
    # keep_default_na=False: an empty group must stay "" (no groups), not become NaN
    oof = pd.read_csv(
        path,
        dtype={"sample_id": str, "path": str, "group": str},
        keep_default_na=False,
        na_values={"label": [""], "fold": [""], "score": ["", "nan", "NaN"]},
    )
    _check_oof(oof, str(path))
    return oof


def _policy_from_run(run: RunDir) -> Threshold | None:
    """The policy recorded in run.json: ``threshold``, else the task card's ``task.threshold``."""
    import json

    if not run.run_info.is_file():
        return None
    info = json.loads(run.run_info.read_text(encoding="utf-8"))
    if not isinstance(info, dict):
        return None
    for raw in (info.get("threshold"), (info.get("task") or {}).get("threshold")):
        if isinstance(raw, dict) and raw.get("policy"):
            return Threshold(**raw)
    return None


def rescore(run_dir: str | Path | RunDir, policy: Threshold | str | None = None) -> dict[str, Any]:
    """Re-score a finished run from its files (what ``lepton-vision evaluate RUN`` calls).

    Args:
        run_dir: The run directory.
        policy: A :class:`Threshold`, a string for :func:`parse_policy`, or None for the run's
            own policy: ``evaluate.threshold`` of ``recipe.resolved.yaml``, else ``threshold`` or
            ``task.threshold`` recorded in ``run.json`` (the task card's policy at training time).

    Returns:
        :func:`score_oof`'s dict, with ``n_bootstrap``, ``ci``, ``seed``, the patient aggregation,
        calibration bins and temperature scaling from the recipe.

    Raises:
        DataError: Missing or bad oof_predictions.csv.
        RecipeError: Bad policy text, unreadable recipe, or no policy anywhere.
    """
    from lepton_vision.config.recipe import load_recipe

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    oof = read_oof(run.oof)
    if not run.recipe.is_file():
        raise RecipeError(
            f"{run.recipe}: missing. Got a run directory without recipe.resolved.yaml. "
            "Point evaluate at a run directory written by lepton-vision train."
        )
    recipe = load_recipe(run.recipe)
    if isinstance(policy, str):
        policy = parse_policy(policy)
    if policy is None:
        policy = recipe.evaluate.threshold or _policy_from_run(run)
    if policy is None:
        raise RecipeError(
            f"{run.recipe}: evaluate.threshold is null and run.json records no threshold policy. "
            "Got no policy. Pass one, e.g. --policy max_f1 or --policy min_sensitivity:0.9."
        )
    ev = recipe.evaluate
    return score_oof(
        oof,
        policy,
        ev.n_bootstrap,
        ev.ci,
        recipe.seed,
        aggregation=ev.patient_aggregation,
        calibration_bins=ev.calibration_bins,
        temperature_scaling=ev.temperature_scaling,
    )


__all__ = [
    "SCALAR_METRICS",
    "METRIC_LABELS",
    "POLICIES",
    "parse_policy",
    "policy_text",
    "choose_threshold",
    "fold_thresholds",
    "binary_metrics",
    "bootstrap_ci",
    "score_oof",
    "expected_calibration_error",
    "reliability_curve",
    "apply_temperature",
    "calibrated_threshold",
    "fit_temperature",
    "fold_temperatures",
    "aggregate_by_group",
    "AGGREGATIONS",
    "format_value",
    "summary_rows",
    "read_oof",
    "rescore",
]

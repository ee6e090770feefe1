"""TF-free classification scoring of a run: per fold, pooled, per patient, calibrated.

The binary metrics, bootstrap and threshold policies themselves are shared with the other kinds
(:mod:`lepton_vision.evaluate`); this module applies them to a classification run. Everything here
works on numpy arrays and the ``oof_predictions.csv`` table (columns
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
from lepton_vision.evaluate.binary import (
    SCALAR_METRICS,
    as_arrays,
    binary_metrics,
    bootstrap_ci,
    check_oof,
    curves,
    format_value,
    require_both_classes,
)
from lepton_vision.evaluate.bootstrap import has_groups, resample_weights, resampling_units
from lepton_vision.evaluate.thresholds import choose_threshold, cross_fit_folds, fold_thresholds, parse_policy
from lepton_vision.runio import RunDir


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
    y, s = as_arrays(labels, scores, "calibration data")
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
    y, s = as_arrays(labels, scores, "calibration data")
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
    gid, n_units, _ = resampling_units(groups, len(y))
    rng = np.random.default_rng(seed)
    vals = np.concatenate([_weighted_ece(y, s, w, n_bins) for w in resample_weights(rng, gid, n_units, n_bootstrap)])
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

    y, s = as_arrays(labels, scores, "temperature data")
    require_both_classes(y, "temperature data")
    z = _logit(s)
    yf = y.astype(np.float64)

    def loss(log_t: float) -> float:
        q = z / np.exp(log_t)
        return float(np.mean(yf * np.logaddexp(0.0, -q) + (1.0 - yf) * np.logaddexp(0.0, q)))

    lo, hi = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))


def fold_temperatures(oof: pd.DataFrame) -> dict[int, float]:
    """The honest temperature for each fold: fitted on the OOF scores of all *other* folds.

    The same reasoning as :func:`fold_thresholds`: fold k's labels never influence the
    temperature its calibration is judged with.

    Returns:
        ``{fold: T}`` for every fold in ``oof``.

    Raises:
        DataError: Fewer than two folds, or the other folds hold a single class.
    """
    folds = cross_fit_folds(oof, "cross-fitted temperatures")
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
    check_oof(oof)
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
        require_both_classes(y, "patient level (all patients)")
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
    check_oof(oof)
    y_all, s_all = as_arrays(oof["label"].to_numpy(), oof["score"].to_numpy(), "oof_predictions.csv")
    fold_col = oof["fold"].to_numpy().astype(np.int64)
    folds = sorted(int(f) for f in np.unique(fold_col))
    # Check every fold before choosing thresholds, so the error names the fold, not "folds != k".
    for k in folds:
        require_both_classes(y_all[fold_col == k], f"fold {k}")
    thresholds = fold_thresholds(oof, policy)
    final_threshold = choose_threshold(y_all, s_all, policy, where="all OOF predictions")

    per_fold: list[dict[str, Any]] = []
    roc_folds: list[dict[str, Any]] = []
    pr_folds: list[dict[str, Any]] = []
    for k in folds:
        m = fold_col == k
        fm = binary_metrics(y_all[m], s_all[m], thresholds[k], where=f"fold {k}")
        per_fold.append({"fold": k, "threshold": thresholds[k], **fm})
        roc, pr = curves(y_all[m], s_all[m])
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
    unit = "group" if has_groups(groups) else "sample"
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
    roc_all, pr_all = curves(y_all, s_all)

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
    check_oof(oof, str(path))
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


def stratum_metrics(oof: pd.DataFrame, metrics: dict[str, Any], sample_ids: list[str], n_bootstrap: int,
                    ci: float, seed: int) -> dict[str, Any]:
    """The pooled out-of-fold metrics on a subset of samples (a stratum of a shortcut feature).

    Thresholds are each sample's fold threshold (``metrics["per_fold"]``), as for the pooled
    metrics. Returns ``n``, ``n_pos``, and ``roc_auc``, ``sensitivity``, ``specificity`` as
    {value, lo, hi} (None where the stratum lacks the class a metric needs).
    """
    from lepton_vision.evaluate.shortcuts import rate_with_ci

    sub = oof[oof["sample_id"].astype(str).isin(set(sample_ids))]
    y = sub["label"].to_numpy(np.int64)
    s = sub["score"].to_numpy(np.float64)
    thr_of = {int(f["fold"]): float(f["threshold"]) for f in metrics.get("per_fold", [])}
    thr = np.array([thr_of.get(int(k), metrics.get("final_threshold", 0.5)) for k in sub["fold"]], np.float64)
    groups = sub["group"].to_numpy() if "group" in sub.columns else None
    pred = s >= thr
    none = {"value": None, "lo": None, "hi": None}
    out: dict[str, Any] = {"n_pos": int(y.sum()), "roc_auc": dict(none)}
    pos, neg = y == 1, y == 0
    gpos = groups[pos] if groups is not None else None
    gneg = groups[neg] if groups is not None else None
    out["sensitivity"] = rate_with_ci(pred[pos], gpos, n_bootstrap, ci, seed) if pos.any() else dict(none)
    out["specificity"] = rate_with_ci(~pred[neg], gneg, n_bootstrap, ci, seed) if neg.any() else dict(none)
    if pos.any() and neg.any():
        m = binary_metrics(y, s, thr, where="stratum")
        lo, hi = (None, None)
        if n_bootstrap > 0:
            lo, hi = bootstrap_ci(y, s, thr, groups, n_bootstrap, ci, seed)["intervals"]["roc_auc"]
        out["roc_auc"] = {"value": m["roc_auc"], "lo": lo, "hi": hi}
    return out


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


def paired_bootstrap(run_a: RunDir, run_b: RunDir, *, merge_classes: bool = False, n_bootstrap: int = 1000,
                     seed: int = 0) -> Any:
    """ROC AUC of two runs of the same folds on the same resamples of patients (or slices)
    (:class:`~lepton_vision.evaluate.paired.Paired`).

    Raises:
        DataError: ``merge_classes`` (it applies to detection runs only).
    """
    from sklearn.metrics import roc_auc_score

    from lepton_vision.evaluate.paired import Paired, read_run_csv

    if merge_classes:
        raise DataError("merge_classes applies to detection runs only")
    oa = read_run_csv(run_a.root, "oof_predictions.csv").sort_values("sample_id").reset_index(drop=True)
    ob = read_run_csv(run_b.root, "oof_predictions.csv").sort_values("sample_id").reset_index(drop=True)
    y = oa["label"].to_numpy(dtype=int)
    sa, sb = oa["score"].to_numpy(dtype=float), ob["score"].to_numpy(dtype=float)
    point = [roc_auc_score(y, sa), roc_auc_score(y, sb)]
    gid, n_units, unit = resampling_units(oa["group"].to_numpy(dtype=object), len(y))
    rng = np.random.default_rng(seed)
    ba, bb = [], []
    for w in resample_weights(rng, gid, n_units, n_bootstrap):
        for row in w:
            yw = y[row > 0]
            if len(np.unique(yw)) < 2:
                ba.append(np.nan), bb.append(np.nan)
                continue
            ba.append(roc_auc_score(y, sa, sample_weight=row))
            bb.append(roc_auc_score(y, sb, sample_weight=row))
    return Paired("roc_auc", float(point[0]), float(point[1]), np.asarray(ba), np.asarray(bb), unit, n_units)


__all__ = [
    "paired_bootstrap",
    "score_oof",
    "expected_calibration_error",
    "reliability_curve",
    "apply_temperature",
    "calibrated_threshold",
    "fit_temperature",
    "fold_temperatures",
    "aggregate_by_group",
    "AGGREGATIONS",
    "summary_rows",
    "read_oof",
    "rescore",
]


def classification_change(labels: Any, float_scores: Any, int8_scores: Any,
                          threshold: float) -> dict[str, Any]:
    """ROC AUC and F1 at the exported threshold, float32 vs int8, on the same images."""
    from sklearn.metrics import f1_score, roc_auc_score

    y = np.asarray(labels, dtype=int)
    f = np.asarray(float_scores, dtype=np.float64)
    q = np.asarray(int8_scores, dtype=np.float64)
    both = len(np.unique(y)) == 2
    auc_f = float(roc_auc_score(y, f)) if both else None
    auc_q = float(roc_auc_score(y, q)) if both else None
    out = {
        "metric": "roc_auc",
        "n": int(len(y)),
        "n_positive": int(y.sum()),
        "float": auc_f,
        "int8": auc_q,
        "drop": None if auc_f is None else auc_f - auc_q,
        "f1_float": float(f1_score(y, f >= threshold, zero_division=0)),
        "f1_int8": float(f1_score(y, q >= threshold, zero_division=0)),
        "decision_agreement": float(np.mean((f >= threshold) == (q >= threshold))),
        "max_abs_score_diff": float(np.max(np.abs(f - q))),
        "median_abs_score_diff": float(np.median(np.abs(f - q))),
    }
    if not both:
        out["why"] = f"only class {int(y[0]) if len(y) else '-'} among the images"
    return out

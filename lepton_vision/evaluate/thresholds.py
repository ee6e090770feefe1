"""Operating-point policies and honest (cross-fitted) thresholds, for every kind.

A threshold applied to fold k is chosen on the out-of-fold scores of the other folds, never on
fold k (:func:`fold_thresholds`); the exported threshold is chosen on all out-of-fold scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lepton_vision.config.errors import DataError, RecipeError, did_you_mean, format_choices
from lepton_vision.config.recipe import Threshold
from lepton_vision.evaluate.binary import as_arrays, check_oof, require_both_classes


POLICIES: tuple[str, ...] = ("max_f1", "youden", "min_sensitivity", "min_specificity", "fixed")


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
    y, s = as_arrays(labels, scores, where)
    require_both_classes(y, where)
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
    folds = cross_fit_folds(oof, "honest thresholds")
    out: dict[int, float] = {}
    fold_col = oof["fold"].to_numpy().astype(np.int64)
    y = oof["label"].to_numpy()
    s = oof["score"].to_numpy()
    for k in folds:
        rest = fold_col != k
        out[k] = choose_threshold(y[rest], s[rest], policy, where=f"threshold for fold {k} (folds != {k})")
    return out


def cross_fit_folds(oof: pd.DataFrame, what: str) -> list[int]:
    """The sorted fold ids of a checked OOF table; cross-fitting needs at least two."""
    check_oof(oof)
    folds = sorted(int(f) for f in pd.unique(oof["fold"]))
    if len(folds) < 2:
        raise DataError(
            f"oof_predictions.csv: {what} need at least 2 folds. Got folds {folds}. "
            "Set cv.n_splits >= 2."
        )
    return folds

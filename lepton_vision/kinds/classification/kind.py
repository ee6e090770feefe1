"""Binary classification: a sigmoid score per image, AUC/F1/sensitivity/specificity with CIs.

The model is a backbone from :mod:`lepton_vision.models.backbones` with a one-unit sigmoid head; its
out-of-fold score column is ``score``; scoring is :func:`lepton_vision.kinds.classification.metrics.score_oof`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

#: Columns this kind writes to oof_predictions.csv besides sample_id, path, group, label, fold.
OOF_COLUMNS: tuple[str, ...] = ("score",)


def build_model(recipe: Any, weights: str | None = None, seed: int | None = None) -> Any:
    """An uncompiled Keras classifier for ``recipe`` (input float32 in [0,1], output sigmoid).

    Args:
        recipe: The validated :class:`lepton_vision.config.recipe.Recipe`.
        weights: Resolved weights argument ('none', 'imagenet' or an absolute file path);
            defaults to ``recipe.model.weights``.
        seed: Weight-initialisation seed; defaults to ``recipe.seed``.
    """
    from lepton_vision.models.backbones import build_classifier

    m = recipe.model
    return build_classifier(
        m.backbone,
        tuple(recipe.input.image_size),
        recipe.input.channels,
        weights=weights or m.weights,
        dropout=m.dropout,
        width=m.width,
        seed=recipe.seed if seed is None else seed,
    )


def score_oof(oof: pd.DataFrame, policy: Any, n_bootstrap: int, ci: float, seed: int,
              **options: Any) -> dict[str, Any]:
    """Metrics with CIs from out-of-fold scores (no TensorFlow); see metrics.score_oof.

    ``options`` are passed through: ``aggregation`` (patient-level), ``calibration_bins``,
    ``temperature_scaling``.
    """
    from lepton_vision.kinds.classification.metrics import score_oof as _score

    return _score(oof, policy, n_bootstrap, ci, seed, **options)

"""The classification model of a recipe: a backbone with a one-unit sigmoid head.

Imported by the kind (fold and final models) and by classification pretraining; TensorFlow is
imported only when a model is built.
"""

from __future__ import annotations

from typing import Any


def build_model(recipe: Any, weights: str | None = None, seed: int | None = None, n_classes: int = 2) -> Any:
    """An uncompiled Keras classifier for ``recipe`` (input float32 in [0,1], output sigmoid).

    Args:
        recipe: The validated :class:`lepton_vision.config.recipe.Recipe`.
        weights: Resolved weights argument ('none', 'imagenet' or an absolute file path);
            defaults to ``recipe.model.weights``.
        seed: Weight-initialisation seed; defaults to ``recipe.seed``.
        n_classes: The task's classes (always two here: one sigmoid output).
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

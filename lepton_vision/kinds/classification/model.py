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


def average_models(models: list[Any]) -> Any:
    """One Keras classifier whose score is the mean of the fold models' scores (``final.mode:
    average``): the export takes it like any final model (same signatures, threshold inside).

    Each fold model becomes a member ``fold_<k>`` that returns its pooled features and its score;
    the ensemble's ``score`` layer averages the scores. Its pooled features (the export's OOD
    reference) are the members' features side by side (:func:`feature_model`); its Grad-CAM is
    the mean of the members' maps (:func:`lepton_vision.kinds.classification.explain.gradcam_with_scores`).

    Args:
        models: The fold models (same input shape), in fold order.
    """
    from lepton_vision.backend import import_keras

    _, keras = import_keras()
    if not models:
        raise ValueError("average_models needs at least one fold model")
    shape = tuple(models[0].input.shape[1:])
    for k, m in enumerate(models):
        if tuple(m.input.shape[1:]) != shape:
            raise ValueError(f"fold model {k} takes {tuple(m.input.shape[1:])}, fold model 0 takes {shape}")
    # (named apart from the members' own "image" inputs: Keras wants unique operation names)
    x = keras.Input(shape=shape, name="folds_image")
    feats, scores = [], []
    for k, m in enumerate(models):
        member = keras.Model(m.inputs, [m.get_layer("pool").output, m.outputs[0]], name=f"fold_{k}")
        f, s = member(x)
        feats.append(f)
        scores.append(s)
    score = (keras.layers.Average(name="score")(scores) if len(scores) > 1
             else keras.layers.Activation("linear", name="score")(scores[0]))
    return keras.Model(x, score, name=f"average_of_{len(models)}_folds")


def feature_model(model: Any) -> Any:
    """``x -> pooled features`` of a classifier (its ``pool`` layer), or of an
    :func:`average_models` ensemble (its members' ``pool`` outputs, concatenated)."""
    from lepton_vision.backend import import_keras

    _, keras = import_keras()
    members = [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name.startswith("fold_")]
    if "pool" in [layer.name for layer in model.layers] or not members:
        return keras.Model(model.input, model.get_layer("pool").output)
    x = keras.Input(shape=tuple(model.input.shape[1:]), name="folds_image")
    feats = [m(x)[0] for m in members]  # the members' own layers and weights, called on one input
    return keras.Model(x, keras.layers.Concatenate()(feats) if len(feats) > 1 else feats[0])


def ensemble_members(model: Any) -> list[Any]:
    """The member scorers ``x -> score`` of an :func:`average_models` ensemble ([] for a plain model)."""
    from lepton_vision.backend import import_keras

    _, keras = import_keras()
    return [keras.Model(layer.inputs, layer.outputs[1], name=layer.name) for layer in model.layers
            if isinstance(layer, keras.Model) and layer.name.startswith("fold_") and len(layer.outputs) == 2]

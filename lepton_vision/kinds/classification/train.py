"""Fit one classifier fold (or the final model): what is particular to a sigmoid classifier.

The loop, callbacks, optimizer and schedule are the engine's (:mod:`lepton_vision.engine.callbacks`,
:mod:`lepton_vision.engine.optim`); this module adds binary cross-entropy with balanced class
weights (as per-sample weights in the tf.data pipeline), the exact validation AUC that picks the
best epoch and drives early stopping, and BatchNorm statistics recomputed on the training
images ("precise BN") before every validation and after the refit.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lepton_vision.backend import import_keras
from lepton_vision.config.errors import DataError
from lepton_vision.config.recipe import Recipe
from lepton_vision.data.pipeline import make_dataset
from lepton_vision.engine.callbacks import FoldResult, fit_and_keep_best, refit
from lepton_vision.engine.optim import make_optimizer, steps_per_execution

tf, keras = import_keras()


# ---------------------------------------------------------------------------------------------
# Callbacks


class _Validate(keras.callbacks.Callback):
    """Scores the validation set after each epoch and puts exact ``val_auc`` / ``val_loss`` in
    the logs, before early stopping, the LR schedule and the checkpoint read them.

    Keras' ``AUC`` metric buckets scores into 200 thresholds: when all validation scores fall in
    one bucket (common in early epochs) it reports 0.5 whatever their order. The best epoch is
    chosen on the same exact AUC (scikit-learn) that the out-of-fold report uses.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, train_x: np.ndarray) -> None:
        super().__init__()
        self.x, self.y, self.batch_size, self.train_x = x, y, batch_size, train_x

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from sklearn.metrics import roc_auc_score

        if logs is None:
            return
        # Score (and later keep) the epoch with the normalisation statistics it will ship with.
        recompute_bn_statistics(self.model, self.train_x)
        scores = predict_scores(self.model, self.x, self.batch_size)
        if not np.all(np.isfinite(scores)):
            logs["val_loss"], logs["val_auc"] = float("nan"), float("nan")
            return
        p = np.clip(scores, 1e-7, 1 - 1e-7)  # the clipping Keras' binary_crossentropy applies
        logs["val_loss"] = float(-np.mean(self.y * np.log(p) + (1 - self.y) * np.log(1 - p)))
        logs["val_auc"] = float(roc_auc_score(self.y, scores))


# ---------------------------------------------------------------------------------------------
# Building blocks


def _check_labels(y: np.ndarray, what: str, fold_label: str) -> np.ndarray:
    y = np.asarray(y).astype(np.int64).reshape(-1)
    bad = set(np.unique(y).tolist()) - {0, 1}
    if bad:
        raise DataError(f"{fold_label}: {what} labels must be 0/1. Got {sorted(bad)}.")
    if len(np.unique(y)) < 2:
        raise DataError(
            f"{fold_label}: the {what} set has only class {int(y[0]) if len(y) else '-'} "
            f"({len(y)} images). Got one class. AUC needs both classes: use fewer folds "
            "(cv.n_splits) or add images of the missing class."
        )
    return y


def sample_weights(y: np.ndarray, recipe: Recipe) -> np.ndarray | None:
    """Per-sample weights that balance the classes (``train.class_weight: balanced``), else None."""
    if recipe.train.class_weight != "balanced":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.array([0, 1])
    cw = compute_class_weight("balanced", classes=classes, y=y)
    return cw[y].astype(np.float32)


def compile_classifier(model: Any, recipe: Recipe, n_train: int, epochs: int) -> None:
    """Compile with the recipe's optimizer, binary cross-entropy and a (bucketed) training AUC."""
    model.compile(
        optimizer=make_optimizer(recipe, n_train, epochs, model),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
        steps_per_execution=steps_per_execution(),
    )


def image_augment(recipe: Recipe) -> Any:
    """The recipe's albumentations pipeline for images without boxes (None without ``augment``)."""
    if not recipe.augment:
        return None
    from lepton_vision.data.augment import build_augment

    return build_augment([op.model_dump() for op in recipe.augment], recipe.seed)


def _model_and_data(model_builder: Callable[[], Any], x: np.ndarray, y: np.ndarray,
                    recipe: Recipe, epochs: int) -> tuple[Any, Any]:
    """A fresh compiled model and its augmented, class-weighted training dataset."""
    model = model_builder()
    compile_classifier(model, recipe, len(y), epochs)
    ds = make_dataset(
        x, y, recipe.train.batch_size, training=True, augment=image_augment(recipe),
        seed=recipe.seed, sample_weights=sample_weights(y, recipe),
    )
    return model, ds


# ---------------------------------------------------------------------------------------------
# Public API


def fit_fold(
    model_builder: Callable[[], Any],
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    recipe: Recipe,
    out_dir: Path,
    *,
    fold_label: str = "fold 1/5",
    epochs: int | None = None,
) -> FoldResult:
    """Train one fold with validation; the returned model carries the best epoch's weights.

    Writes ``out_dir/history.csv`` (one row per epoch), ``out_dir/best.keras`` (the best epoch's
    model) and TensorBoard logs under ``out_dir/tb``.

    Args:
        model_builder: Zero-argument callable returning a fresh, uncompiled model (it should seed
            its own weight initialisation, as ``backbones.build_classifier`` does).
        train_x: float32 ``[N, h, w, C]`` in ``[0, 1]``.
        train_y: ``[N]`` 0/1 labels.
        val_x: Validation images, same layout.
        val_y: Validation labels.
        recipe: The recipe (train.*, augment, seed).
        out_dir: The fold's directory (created if missing).
        fold_label: Shown in progress lines and errors, e.g. ``"fold 2/5"``.
        epochs: Override ``recipe.train.epochs``.

    Returns:
        A :class:`FoldResult`.

    Raises:
        DataError: A split has one class only, or labels are not 0/1.
        TrainError: The loss became NaN/inf.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = int(epochs if epochs is not None else recipe.train.epochs)
    ty = _check_labels(train_y, "training", fold_label)
    vy = _check_labels(val_y, "validation", fold_label)
    if recipe.train.verbose:
        print(f"{fold_label} — {len(ty)} train / {len(vy)} val images", flush=True)

    model, train_ds = _model_and_data(model_builder, train_x, ty, recipe, epochs)
    return fit_and_keep_best(
        model, train_ds, recipe, out_dir, validate=_Validate(val_x, vy, recipe.train.batch_size, train_x),
        monitor="val_auc", n_train=len(ty), n_val=len(vy), epochs=epochs, fold_label=fold_label,
        metric_name="validation AUC", hint="Check the validation images for NaN/inf pixels.", checkpoint=True,
    )


def fit_final(
    model_builder: Callable[[], Any],
    x: np.ndarray,
    y: np.ndarray,
    recipe: Recipe,
    out_dir: Path,
    epochs: int,
) -> Any:
    """Refit on all data for a fixed number of epochs (no validation, no early stopping).

    Same optimizer, schedule (cosine over ``epochs``; reduce_on_plateau watches the training
    loss since there is no validation set), class weights and augmentation as the folds. Writes
    ``out_dir/history.csv``.

    Args:
        model_builder: Zero-argument callable returning a fresh, uncompiled model.
        x: All images, float32 ``[N, h, w, C]`` in ``[0, 1]``.
        y: ``[N]`` 0/1 labels.
        recipe: The recipe.
        out_dir: Where the log goes (created if missing).
        epochs: Epochs to train (usually the median best epoch of the folds).

    Returns:
        The trained Keras model.

    Raises:
        DataError: One class only.
        TrainError: The loss became NaN/inf.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    label = "final model"
    ty = _check_labels(y, "training", label)
    epochs = max(1, int(epochs))
    if recipe.train.verbose:
        print(f"{label} — {len(ty)} train images, {epochs} epochs", flush=True)
    model, ds = _model_and_data(model_builder, x, ty, recipe, epochs)
    refit(model, ds, recipe, out_dir, epochs=epochs, n_train=len(ty), label=label)
    recompute_bn_statistics(model, x)
    return model


def recompute_bn_statistics(model: Any, x: np.ndarray, batch_size: int = 256, max_images: int = 1024) -> int:
    """Set every BatchNormalization layer's moving mean/variance to the average batch statistics
    of (up to ``max_images`` of) the un-augmented training images, under the current weights.

    Why: Keras keeps exponential moving averages updated during training; with few steps per
    fold they lag the weights, so the model evaluated (and exported) differs from the one trained:
    on synthetic_ct the validation loss spiked from 0.4 to 3-5 between epochs and each fold's
    model scored on its own scale, which broke the pooled out-of-fold AUC and the cross-fold
    threshold. Recomputing the statistics ("precise BN", Wu & Johnson 2021) removes that lag. It
    uses training images only, so nothing is learned from the scored fold.

    Args:
        model: A Keras model (flat, as built by ``backbones.build_classifier``).
        x: float32 ``[N, h, w, C]`` training images in ``[0, 1]`` (no augmentation).
        batch_size: Images per forward pass (batch statistics are averaged across passes).
        max_images: Use at most this many images (the first ones: deterministic).

    Returns:
        The number of BatchNormalization layers updated (0 for models without any).
    """
    bns = [layer for layer in model._flatten_layers(include_self=False)
           if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if not bns or len(x) == 0:
        return 0
    x = np.asarray(x[:max_images], dtype=np.float32)
    old = [layer.momentum for layer in bns]
    try:
        for i, start in enumerate(range(0, len(x), batch_size)):
            # momentum i/(i+1) turns the moving average into an equal-weight mean of batches
            for layer in bns:
                layer.momentum = i / (i + 1)
            model(tf.constant(x[start : start + batch_size]), training=True)
    finally:
        for layer, m in zip(bns, old):
            layer.momentum = m
    return len(bns)


_PREDICT_FNS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def predict_scores(model: Any, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Sigmoid scores for images, batched through one compiled ``tf.function`` per model.

    Args:
        model: A classifier from :mod:`lepton_vision.models.backbones`.
        x: float32 ``[N, h, w, C]`` in ``[0, 1]``.
        batch_size: Images per call.

    Returns:
        float64 ``[N]`` scores.
    """
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        return np.zeros(0, dtype=np.float64)
    fn = _PREDICT_FNS.get(model)
    if fn is None:
        spec = tf.TensorSpec((None, *x.shape[1:]), tf.float32)
        ref = weakref.ref(model)  # a strong reference in the value would keep the key alive
        fn = tf.function(lambda batch: ref()(batch, training=False), input_signature=[spec])
        _PREDICT_FNS[model] = fn
    out = [
        np.asarray(fn(tf.constant(x[i : i + batch_size]))).reshape(-1)
        for i in range(0, len(x), int(batch_size))
    ]
    return np.concatenate(out).astype(np.float64)

"""Fit one fold (or the final model) with Keras ``fit``: schedule, class weights, callbacks.

Keras ``fit`` is the training loop; this module only chooses its parts from the recipe:
optimizer (adam / adamw / sgd, gradient clipping), learning-rate schedule (linear warm-up + cosine,
constant, or reduce-on-plateau on validation AUC), balanced class weights (as per-sample weights
in the tf.data pipeline), early stopping on validation AUC with the best epoch's weights restored,
checkpoint, CSV log, TensorBoard log and a NaN guard that turns a diverged run into a
:class:`TrainError` with advice.
"""

from __future__ import annotations

import math
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lepton_vision.backend import import_keras
from lepton_vision.config.errors import DataError, TrainError
from lepton_vision.data.pipeline import make_dataset
from lepton_vision.config.recipe import Recipe

tf, keras = import_keras()


@keras.saving.register_keras_serializable(package="lepton_vision")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak_lr`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``.

    ``lr(step) = peak * (step + 1) / warmup`` for ``step < warmup`` (so the first step is not
    wasted at lr 0), then ``peak * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))``,
    and 0 after ``total_steps``.

    Args:
        peak_lr: Learning rate at the end of warm-up.
        warmup_steps: Optimizer steps of warm-up (0 = none).
        total_steps: Optimizer steps of the whole run (> warmup_steps).
    """

    def __init__(self, peak_lr: float, warmup_steps: int, total_steps: int) -> None:
        super().__init__()
        self.peak_lr = float(peak_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(max(total_steps, warmup_steps + 1))

    def __call__(self, step: Any) -> Any:
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak_lr, tf.float32)
        warm = tf.constant(float(self.warmup_steps), tf.float32)
        decay_steps = tf.constant(float(self.total_steps - self.warmup_steps), tf.float32)
        progress = tf.clip_by_value((step - warm) / decay_steps, 0.0, 1.0)
        cosine = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        warmup = peak * (step + 1.0) / tf.maximum(warm, 1.0)
        return tf.where(step < warm, warmup, cosine)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


@dataclass(frozen=True)
class FoldResult:
    """What fitting one fold produced.

    Attributes:
        best_epoch: 1-based epoch with the best validation AUC (its weights are in ``model``).
        best_val_auc: Validation AUC at that epoch.
        epochs_run: Epochs actually run (fewer than asked when early stopping fired).
        history: One row per epoch: epoch (1-based), loss, auc, val_loss, val_auc, lr.
        model: The Keras model carrying the best epoch's weights (not serialised).
    """

    best_epoch: int
    best_val_auc: float
    epochs_run: int
    history: pd.DataFrame = field(repr=False, compare=False)
    model: Any = field(repr=False, compare=False)


# ---------------------------------------------------------------------------------------------
# Callbacks


class _EpochLog(keras.callbacks.Callback):
    """Adds ``lr`` to the logs, keeps the history and prints one line per epoch."""

    def __init__(self, label: str, epochs: int, n_train: int, verbose: bool) -> None:
        super().__init__()
        self.label, self.epochs, self.n_train, self.verbose = label, epochs, n_train, verbose
        self.rows: list[dict[str, float]] = []
        self._t0 = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["lr"] = lr
        seconds = time.perf_counter() - self._t0
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
        if self.verbose:
            parts = [f"{self.label} epoch {epoch + 1}/{self.epochs}"]
            for key in ("loss", "auc", "val_loss", "val_auc", "box_loss", "class_loss", "dfl_loss", "val_ap50"):
                if key in logs:
                    parts.append(f"{key} {float(logs[key]):.3f}")
            parts.append(f"lr {lr:.2g}")
            parts.append(f"({seconds:.1f} s, {self.n_train / max(seconds, 1e-9):.0f} img/s)")
            print(" ".join(parts), flush=True)


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


class _NanGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and remembers where it happened.

    The loss in the batch logs is the epoch's running mean, so one NaN step makes it NaN for the
    rest of the epoch: with ``steps_per_execution`` > 1 the guard sees it at the end of that
    execution, and ``at`` is the last batch of the execution (the NaN was at or before it)."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0
        self.at: tuple[int, int] | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)) and self.at is None:
            self.at = (self.epoch + 1, batch + 1)
            self.model.stop_training = True


class _BestWeights(keras.callbacks.Callback):
    """Tracks the best ``monitor`` epoch (same rule as EarlyStopping) and restores its weights."""

    def __init__(self, min_delta: float, monitor: str = "val_auc") -> None:
        super().__init__()
        self.min_delta = float(min_delta)
        self.monitor = monitor
        self.best = -np.inf
        self.best_epoch = 0  # 1-based; 0 = no epoch finished with a finite val_auc
        self.weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(float(value)):
            return
        if self.weights is None or float(value) - self.min_delta > self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            self.weights = self.model.get_weights()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.weights is not None:
            self.model.set_weights(self.weights)


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


def _sample_weights(y: np.ndarray, recipe: Recipe) -> np.ndarray | None:
    if recipe.train.class_weight != "balanced":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.array([0, 1])
    cw = compute_class_weight("balanced", classes=classes, y=y)
    return cw[y].astype(np.float32)


def _schedule_and_lr(recipe: Recipe, n_train: int, epochs: int) -> Any:
    sched = recipe.train.schedule
    peak = float(recipe.train.optimizer.learning_rate)
    if sched.name != "cosine":
        return peak  # constant, or reduce_on_plateau (needs a plain float the callback can change)
    steps_per_epoch = max(1, math.ceil(n_train / recipe.train.batch_size))
    total = steps_per_epoch * int(epochs)
    warmup = min(int(round(sched.warmup_epochs * steps_per_epoch)), total - 1)
    return WarmupCosine(peak, max(0, warmup), total)


def make_optimizer(recipe: Recipe, n_train: int, epochs: int, model: Any = None) -> Any:
    """The optimizer of ``recipe.train.optimizer`` with the recipe's learning-rate schedule.

    Args:
        recipe: The recipe.
        n_train: Training images (to turn epochs into optimizer steps).
        epochs: Planned epochs (the cosine schedule ends at the last step).
        model: The model it trains; with ``train.finetune`` set, the optimizer gives its backbone
            a scaled (or, while frozen, zero) learning rate (:mod:`lepton_vision.models.finetune`).

    Returns:
        A ``keras.optimizers.Optimizer``.
    """
    optimizer = _base_optimizer(recipe, n_train, epochs)
    ft = recipe.train.finetune
    if model is None or not ft.active():
        return optimizer
    from lepton_vision.models.finetune import layerwise_optimizer

    steps_per_epoch = max(1, math.ceil(n_train / recipe.train.batch_size))
    return layerwise_optimizer(optimizer, model, ft.backbone_lr_scale,
                               int(round(ft.freeze_backbone_epochs * steps_per_epoch)))


def ema_callbacks(recipe: Recipe) -> list[Any]:
    """With ``train.optimizer.ema_momentum``: the callback that puts the averaged weights into
    the model at each epoch's end (for the callbacks after it: validation, best weights) and
    the training weights back at the next epoch's start. Goes first in the callback list."""
    if recipe.train.optimizer.ema_momentum is None:
        return []
    return [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)]


def _base_optimizer(recipe: Recipe, n_train: int, epochs: int) -> Any:
    opt = recipe.train.optimizer
    lr = _schedule_and_lr(recipe, n_train, epochs)
    common: dict[str, Any] = {"learning_rate": lr}
    if opt.clipnorm is not None:
        common["clipnorm"] = float(opt.clipnorm)
    if opt.global_clipnorm is not None:
        common["global_clipnorm"] = float(opt.global_clipnorm)
    if opt.ema_momentum is not None:
        common.update(use_ema=True, ema_momentum=float(opt.ema_momentum))
    if opt.name == "adam":
        return keras.optimizers.Adam(**common)
    if opt.name == "adamw":
        return keras.optimizers.AdamW(weight_decay=float(opt.weight_decay), **common)
    return keras.optimizers.SGD(
        momentum=float(opt.momentum), weight_decay=float(opt.weight_decay) or None, **common
    )


#: Optimizer steps per ``tf.function`` call in ``fit``. One call per step left Keras' Python
#: loop and callback dispatch on the critical path: on 2 cores (small_cnn 64 px, batch 32) fit
#: ran at 0.95x a hand-written GradientTape loop with 1 and at 0.99x with 4
#: (benchmarks/train_throughput.py). Batch-level callbacks then see every 4th step; the NaN guard
#: still stops within the execution that hit the NaN, because the logged loss is the epoch's
#: running mean.
STEPS_PER_EXECUTION = 4


def steps_per_execution() -> int:
    """:data:`STEPS_PER_EXECUTION`, or 1 under a strategy with several replicas: Keras 3's
    multi-step ``fit`` function fails under MirroredStrategy ("You must feed a value for
    placeholder tensor", keras-team/keras#19246; reproduced here with 2 CPU replicas)."""
    return STEPS_PER_EXECUTION if tf.distribute.get_strategy().num_replicas_in_sync <= 1 else 1


def _compile(model: Any, recipe: Recipe, n_train: int, epochs: int) -> None:
    model.compile(
        optimizer=make_optimizer(recipe, n_train, epochs, model),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
        steps_per_execution=steps_per_execution(),
    )


def _augment(recipe: Recipe) -> Any:
    if not recipe.augment:
        return None
    from lepton_vision.data.augment import build_augment

    return build_augment([op.model_dump() for op in recipe.augment], recipe.seed)


def _model_and_data(model_builder: Callable[[], Any], x: np.ndarray, y: np.ndarray,
                    recipe: Recipe, epochs: int) -> tuple[Any, Any]:
    """A fresh compiled model and its augmented, class-weighted training dataset."""
    model = model_builder()
    _compile(model, recipe, len(y), epochs)
    ds = make_dataset(
        x, y, recipe.train.batch_size, training=True, augment=_augment(recipe),
        seed=recipe.seed, sample_weights=_sample_weights(y, recipe),
    )
    return model, ds


def _nan_error(fold_label: str, where: tuple[int, int], recipe: Recipe) -> TrainError:
    epoch, batch = where
    opt = recipe.train.optimizer
    clip = (f"global_clipnorm {opt.global_clipnorm:g}" if opt.global_clipnorm is not None
            else f"clipnorm {opt.clipnorm}")
    return TrainError(
        f"{fold_label}: the loss became NaN/inf in epoch {epoch}, by batch {batch}. "
        f"Got learning_rate {opt.learning_rate:g}, {clip}.",
        hint="Lower train.optimizer.learning_rate (e.g. --set train.optimizer.learning_rate="
        f"{opt.learning_rate / 2:g}), keep gradient clipping on (train.optimizer.clipnorm: 1.0, or "
        "global_clipnorm for detectors), lengthen train.schedule.warmup_epochs, and check the "
        "data for corrupt images (NaN/inf pixels).",
    )


def _keras_verbose(recipe: Recipe) -> int:
    # Keras' bar rewrites one line with \b characters: only useful on a terminal.
    return 1 if recipe.train.verbose and sys.stdout.isatty() else 0


def _write_history(log: _EpochLog, out_dir: Path) -> pd.DataFrame:
    """Replace CSVLogger's file (0-based epochs, kept while training in case of a crash) with
    the final history: 1-based epochs, the same frame :class:`FoldResult` carries."""
    from lepton_vision.runio import atomic_write_csv

    history = pd.DataFrame(log.rows)
    atomic_write_csv(out_dir / "history.csv", history)
    return history


def _save_model(model: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    tmp.replace(path)


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
    log = _EpochLog(fold_label, epochs, len(ty), recipe.train.verbose)
    nan = _NanGuard()
    best = _BestWeights(recipe.train.early_stopping.min_delta)
    # _Validate first: the callbacks after it read the val_auc it writes into the logs.
    callbacks: list[Any] = [*ema_callbacks(recipe), _Validate(val_x, vy, recipe.train.batch_size, train_x),
                            log, nan, best]
    es = recipe.train.early_stopping
    if es.enabled:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_auc", mode="max", patience=es.patience, min_delta=es.min_delta,
            restore_best_weights=True,
        ))
    if recipe.train.schedule.name == "reduce_on_plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_auc", mode="max", factor=recipe.train.schedule.factor,
            patience=recipe.train.schedule.patience, verbose=0,
        ))
    callbacks += [
        keras.callbacks.ModelCheckpoint(
            str(out_dir / "best.keras"), monitor="val_auc", mode="max", save_best_only=True,
        ),
        keras.callbacks.CSVLogger(str(out_dir / "history.csv")),
        keras.callbacks.TensorBoard(log_dir=str(out_dir / "tb"), write_graph=False, profile_batch=0),
    ]
    model.fit(train_ds, epochs=epochs, callbacks=callbacks,
              shuffle=False, verbose=_keras_verbose(recipe))
    if nan.at is not None:
        raise _nan_error(fold_label, nan.at, recipe)
    if best.weights is None:
        raise TrainError(
            f"{fold_label}: no epoch produced a finite validation AUC. Got {len(vy)} validation "
            "images.", hint="Check the validation images for NaN/inf pixels.",
        )
    # best.keras must be exactly the returned model (ModelCheckpoint ignores min_delta).
    _save_model(model, out_dir / "best.keras")
    history = _write_history(log, out_dir)
    return FoldResult(
        best_epoch=best.best_epoch,
        best_val_auc=best.best,
        epochs_run=len(log.rows),
        history=history,
        model=model,
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
    nan = _NanGuard()
    log = _EpochLog(label, epochs, len(ty), recipe.train.verbose)
    callbacks: list[Any] = [log, nan]
    if recipe.train.schedule.name == "reduce_on_plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="loss", mode="min", factor=recipe.train.schedule.factor,
            patience=recipe.train.schedule.patience, verbose=0,
        ))
    callbacks.append(keras.callbacks.CSVLogger(str(out_dir / "history.csv")))
    model.fit(ds, epochs=epochs, callbacks=callbacks, shuffle=False,
              verbose=_keras_verbose(recipe))
    if nan.at is not None:
        raise _nan_error(label, nan.at, recipe)
    recompute_bn_statistics(model, x)
    _write_history(log, out_dir)
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

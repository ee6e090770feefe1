"""The Keras ``fit`` of every kind: epoch log, NaN guard, best-epoch weights, early stopping.

Keras ``fit`` is the training loop. A kind supplies the model, the training dataset and a
validation callback that writes its metric (``val_auc``, ``val_ap50``) into the epoch logs;
:func:`fit_and_keep_best` adds the callbacks every fold needs and returns the best epoch's model,
:func:`refit` trains the final model for a fixed number of epochs. A diverged run becomes a
:class:`TrainError` with advice, never a NaN model.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lepton_vision.backend import import_keras
from lepton_vision.config.errors import TrainError
from lepton_vision.config.recipe import Recipe
from lepton_vision.engine.optim import ema_callbacks
from lepton_vision.runio import atomic_save_model, atomic_write_csv

tf, keras = import_keras()


@dataclass(frozen=True)
class FoldResult:
    """What fitting one fold produced.

    Attributes:
        best_epoch: 1-based epoch with the best validation score (its weights are in ``model``).
        best_score: The validation score (``monitor``) at that epoch.
        epochs_run: Epochs actually run (fewer than asked when early stopping fired).
        history: One row per epoch: epoch (1-based), the losses, the validation metrics, lr, then
            the epoch's cost (seconds, images_per_s, peak_rss_mb, peak_gpu_mb on a GPU).
        model: The Keras model carrying the best epoch's weights (not serialised).
        monitor: The validation metric the best epoch was chosen by (``val_auc``, ``val_ap50``).
    """

    best_epoch: int
    best_score: float
    epochs_run: int
    history: pd.DataFrame = field(repr=False, compare=False)
    model: Any = field(repr=False, compare=False)
    monitor: str = "val_auc"


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MiB (None where the platform cannot say).

    ``ru_maxrss`` is in KiB on Linux and in bytes on macOS; Windows has no ``resource`` module."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class EpochLog(keras.callbacks.Callback):
    """Adds ``lr`` to the logs, keeps the history and prints one line per epoch.

    Besides the Keras logs and ``lr``, every row carries the epoch's cost: ``seconds`` (wall
    time of the epoch, validation included), ``images_per_s`` (training images of the epoch per
    second of its training steps, validation left out), ``peak_rss_mb`` (the process's peak
    resident memory so far) and, when a GPU is visible and TensorFlow reports its memory,
    ``peak_gpu_mb`` (the largest peak of any visible GPU during this epoch)."""

    def __init__(self, label: str, epochs: int, n_train: int, verbose: bool) -> None:
        super().__init__()
        self.label, self.epochs, self.n_train, self.verbose = label, epochs, n_train, verbose
        self.rows: list[dict[str, float]] = []
        self._t0 = 0.0
        self._t_steps: float | None = None  # when the epoch's last training step ended
        self._gpus: list[str] = []  # devices whose memory peak is recorded ("GPU:0", ...)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._gpus = []
        for i in range(len(tf.config.list_physical_devices("GPU"))):
            try:  # not every device (or TensorFlow build) keeps memory statistics
                tf.config.experimental.reset_memory_stats(f"GPU:{i}")
                tf.config.experimental.get_memory_info(f"GPU:{i}")
            except (ValueError, RuntimeError, tf.errors.OpError):
                continue
            self._gpus.append(f"GPU:{i}")

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        for device in self._gpus:
            try:
                tf.config.experimental.reset_memory_stats(device)
            except (ValueError, RuntimeError, tf.errors.OpError):
                pass  # on_train_begin kept only devices that keep statistics; one that stops just reports its running peak
        self._t_steps = None
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._t_steps = time.perf_counter()

    def _peak_gpu_mb(self) -> float | None:
        peaks = []
        for device in self._gpus:
            try:
                peaks.append(tf.config.experimental.get_memory_info(device)["peak"] / 2**20)
            except (ValueError, RuntimeError, KeyError, tf.errors.OpError):
                continue
        return max(peaks) if peaks else None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["lr"] = lr
        seconds = time.perf_counter() - self._t0
        steps = seconds if self._t_steps is None else self._t_steps - self._t0
        images_per_s = self.n_train / max(steps, 1e-9)
        cost: dict[str, float] = {"seconds": round(seconds, 3), "images_per_s": round(images_per_s, 2)}
        rss = peak_rss_mb()
        if rss is not None:
            cost["peak_rss_mb"] = round(rss, 1)
        gpu = self._peak_gpu_mb() if self._gpus else None
        if gpu is not None:
            cost["peak_gpu_mb"] = round(gpu, 1)
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}, **cost})
        if self.verbose:
            parts = [f"{self.label} epoch {epoch + 1}/{self.epochs}"]
            for key in ("loss", "auc", "val_loss", "val_auc", "box_loss", "class_loss", "dfl_loss", "val_ap50"):
                if key in logs:
                    parts.append(f"{key} {float(logs[key]):.3f}")
            parts.append(f"lr {lr:.2g}")
            usage = [f"{seconds:.1f} s", f"{images_per_s:.0f} img/s"]
            if rss is not None:
                usage.append(f"RSS {rss / 1024:.1f} GB")
            if gpu is not None:
                usage.append(f"GPU {gpu / 1024:.1f} GB")
            parts.append(f"({', '.join(usage)})")
            print(" ".join(parts), flush=True)


class NanGuard(keras.callbacks.Callback):
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


class BestWeights(keras.callbacks.Callback):
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


def nan_error(fold_label: str, where: tuple[int, int], recipe: Recipe) -> TrainError:
    """The error for a loss that became NaN/inf at ``where`` (epoch, batch), with what to change."""
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


def keras_verbose(recipe: Recipe) -> int:
    """Keras' own progress bar (1) on a terminal with ``train.verbose``, else none (0): the bar
    rewrites one line with backspaces, which only a terminal shows as intended."""
    return 1 if recipe.train.verbose and sys.stdout.isatty() else 0


def write_history(log: EpochLog, out_dir: Path) -> pd.DataFrame:
    """Replace CSVLogger's file (0-based epochs, kept while training in case of a crash) with
    the final history: 1-based epochs, the same frame :class:`FoldResult` carries."""
    history = pd.DataFrame(log.rows)
    atomic_write_csv(out_dir / "history.csv", history)
    return history


def fit_and_keep_best(model: Any, train_ds: Any, recipe: Recipe, out_dir: Path, *, validate: Any, monitor: str,
                      n_train: int, n_val: int, epochs: int, fold_label: str, metric_name: str, hint: str,
                      checkpoint: bool = False) -> FoldResult:
    """Fit one fold of a kind and keep its best epoch (by ``monitor``, which ``validate`` writes).

    The callbacks, in the order Keras calls them: the weight-averaging swap (``ema_momentum``),
    ``validate`` (puts ``monitor`` into the epoch logs before anything reads it), the epoch
    log, the NaN guard, the best-weights tracker, early stopping and reduce-on-plateau on
    ``monitor`` when the recipe asks for them, a checkpoint of the best epoch (``checkpoint``),
    the CSV log and TensorBoard. Writes ``out_dir/{history.csv, best.keras, tb/}``.

    Args:
        model: The compiled model.
        train_ds: The training dataset (augmented, batched).
        recipe: The recipe (train.*).
        out_dir: The fold's directory.
        validate: The kind's validation callback.
        monitor: The log key it writes (maximised).
        n_train: Training images per epoch (for images/s in history.csv and the progress line).
        n_val: Validation images (named in errors).
        epochs: Epochs to run at most.
        fold_label: Shown in progress lines and errors, e.g. ``"fold 2/5"``.
        metric_name: The metric in words for errors ("validation AUC").
        hint: What to check when no epoch could be scored.
        checkpoint: Also let Keras' ModelCheckpoint write best.keras while training.

    Raises:
        TrainError: The loss became NaN/inf, or no epoch produced a finite score.
    """
    log = EpochLog(fold_label, epochs, n_train, recipe.train.verbose)
    nan = NanGuard()
    best = BestWeights(recipe.train.early_stopping.min_delta, monitor=monitor)
    callbacks: list[Any] = [*ema_callbacks(recipe), validate, log, nan, best]
    es = recipe.train.early_stopping
    if es.enabled:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, mode="max", patience=es.patience, min_delta=es.min_delta,
            restore_best_weights=True,
        ))
    if recipe.train.schedule.name == "reduce_on_plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, mode="max", factor=recipe.train.schedule.factor,
            patience=recipe.train.schedule.patience, verbose=0,
        ))
    if checkpoint:
        callbacks.append(keras.callbacks.ModelCheckpoint(
            str(out_dir / "best.keras"), monitor=monitor, mode="max", save_best_only=True,
        ))
    callbacks += [
        keras.callbacks.CSVLogger(str(out_dir / "history.csv")),
        keras.callbacks.TensorBoard(log_dir=str(out_dir / "tb"), write_graph=False, profile_batch=0),
    ]
    model.fit(train_ds, epochs=epochs, callbacks=callbacks, shuffle=False, verbose=keras_verbose(recipe))
    if nan.at is not None:
        raise nan_error(fold_label, nan.at, recipe)
    if best.weights is None:
        raise TrainError(f"{fold_label}: no epoch produced a finite {metric_name}. Got {n_val} validation "
                         "images.", hint=hint)
    # best.keras must be exactly the returned model (ModelCheckpoint ignores min_delta).
    atomic_save_model(model, out_dir / "best.keras")
    history = write_history(log, out_dir)
    return FoldResult(best_epoch=best.best_epoch, best_score=best.best, epochs_run=len(log.rows), history=history,
                      model=model, monitor=monitor)


def refit(model: Any, train_ds: Any, recipe: Recipe, out_dir: Path, *, epochs: int, n_train: int,
          label: str = "final model") -> Any:
    """Train the final model on all data for a fixed number of epochs (no validation left).

    Same optimizer and schedule as the folds; ``reduce_on_plateau`` watches the training loss,
    since there is no validation set. Writes ``out_dir/history.csv``.

    Raises:
        TrainError: The loss became NaN/inf.
    """
    nan = NanGuard()
    log = EpochLog(label, epochs, n_train, recipe.train.verbose)
    callbacks: list[Any] = [log, nan]
    if recipe.train.schedule.name == "reduce_on_plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="loss", mode="min", factor=recipe.train.schedule.factor,
            patience=recipe.train.schedule.patience, verbose=0,
        ))
    callbacks.append(keras.callbacks.CSVLogger(str(out_dir / "history.csv")))
    model.fit(train_ds, epochs=epochs, callbacks=callbacks, shuffle=False, verbose=keras_verbose(recipe))
    if nan.at is not None:
        raise nan_error(label, nan.at, recipe)
    write_history(log, out_dir)
    return model

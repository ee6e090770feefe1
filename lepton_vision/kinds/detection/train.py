"""Fit and run one object detector (a fold or the final model) with Keras ``fit``.

The optimizer, learning-rate schedule, NaN guard, epoch log and best-weights tracking are the
classification ones (:mod:`lepton_vision.kinds.classification.train`); what differs is the target (padded boxes),
the augmentation (boxes move with the image) and the validation score: after every epoch the
validation images are run through the same decode + NMS as the export, and ``val_ap50`` (COCO
AP at IoU 0.5, from :mod:`lepton_vision.kinds.detection.metrics`) picks the best epoch and drives early
stopping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lepton_vision.backend import import_keras
from lepton_vision.models.detectors import DetectorAdapter, nms_padded
from lepton_vision.config.errors import TrainError
from lepton_vision.data.pipeline import make_detection_dataset
from lepton_vision.config.recipe import Recipe
from lepton_vision.kinds.classification.train import (
    _BestWeights,
    _EpochLog,
    _keras_verbose,
    _nan_error,
    _NanGuard,
    _save_model,
    _write_history,
    ema_callbacks,
    make_optimizer,
)

tf, keras = import_keras()


@dataclass
class Detections:
    """Kept detections of one image, in network-input pixels (xyxy)."""

    boxes: np.ndarray  # [K, 4] float32
    scores: np.ndarray  # [K] float32
    classes: np.ndarray  # [K] int32


@dataclass
class DetFoldResult:
    """What fitting one detection fold returns."""

    best_epoch: int
    best_val_ap50: float
    epochs_run: int
    history: pd.DataFrame
    model: Any


def make_predict_fn(model: Any, adapter: DetectorAdapter, max_detections: int, nms_iou: float,
                    min_score: float) -> Callable[[np.ndarray], list[Detections]]:
    """A batched predictor with the export's decode + NMS (one traced graph per input shape).

    The returned function takes float32 ``[B, H, W, 3]`` pixels in 0..255 and returns one
    :class:`Detections` per image.
    """

    # autograph off: the graph has no Python control flow on tensors to convert.
    @tf.function(reduce_retracing=True, autograph=False)
    def run(x: Any) -> Any:
        boxes, scores = adapter.dense_predictions(model, x, training=False)
        return tf.map_fn(
            lambda t: nms_padded(t[0], t[1], max_detections, nms_iou, min_score),
            (boxes, scores),
            fn_output_signature=(tf.float32, tf.float32, tf.int32, tf.int32),
        )

    def predict(x: np.ndarray) -> list[Detections]:
        b, s, c, n = (v.numpy() for v in run(tf.constant(x, tf.float32)))
        return [Detections(b[i, : n[i]], s[i, : n[i]], c[i, : n[i]]) for i in range(len(x))]

    return predict


def predict_detections(predict: Callable[[np.ndarray], list[Detections]], images01: np.ndarray,
                       batch_size: int = 16) -> list[Detections]:
    """Run ``predict`` over letterboxed float32 images in [0, 1], batch by batch."""
    out: list[Detections] = []
    for i in range(0, len(images01), batch_size):
        out += predict(np.asarray(images01[i : i + batch_size], np.float32) * np.float32(255.0))
    return out


def _xywh(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def val_ap50(dets: list[Detections], gt_boxes: Sequence[np.ndarray], gt_classes: Sequence[np.ndarray],
             ignore: Sequence[np.ndarray], n_classes: int, max_det: int = 100) -> float:
    """COCO AP at IoU 0.5 (mean over classes with ground truth; 0 when nothing has any), with
    the matching and interpolation of :mod:`lepton_vision.kinds.detection.metrics`."""
    from lepton_vision.kinds.detection.metrics import DetectionData, ap_table, match_detections, summarize_ap

    n = len(dets)
    gcls = [np.asarray(c, dtype=np.int64).reshape(-1) for c in gt_classes]
    n_gt = np.zeros((n, n_classes), dtype=np.int64)
    for i, c in enumerate(gcls):
        np.add.at(n_gt[i], c, 1)
    det_image = np.concatenate([np.full(len(d.scores), i) for i, d in enumerate(dets)] or [np.zeros(0)]).astype(np.int64)
    data = DetectionData(
        sample_ids=np.arange(n).astype(str), folds=np.zeros(n, np.int64), groups=np.full(n, ""),
        labels=(n_gt.sum(1) > 0).astype(np.int64), image_scores=np.zeros(n),
        gt_boxes=[_xywh(b) for b in gt_boxes], gt_classes=gcls, ignore_boxes=[_xywh(b) for b in ignore],
        n_gt=n_gt, det_image=det_image,
        det_class=np.concatenate([d.classes for d in dets] or [np.zeros(0)]).astype(np.int64),
        det_score=np.concatenate([d.scores for d in dets] or [np.zeros(0)]).astype(np.float64),
        det_boxes=_xywh(np.concatenate([d.boxes for d in dets] or [np.zeros((0, 4))])),
        n_classes=n_classes,
    )
    outcomes, order = match_detections(data, [(0.5, 0.5)], max_det=max_det)
    ap50, _ = summarize_ap(ap_table(data, outcomes, order, np.ones((1, n))))
    return float(np.nan_to_num(ap50[0], nan=0.0))


class _ValidateAP(keras.callbacks.Callback):
    """Puts ``val_ap50`` into the logs after each epoch (before the callbacks that read it)."""

    def __init__(self, images01: np.ndarray, gt_boxes: Sequence[np.ndarray], gt_classes: Sequence[np.ndarray],
                 ignore: Sequence[np.ndarray], n_classes: int, adapter: DetectorAdapter, recipe: Recipe,
                 policy: Any) -> None:
        super().__init__()
        self.images01, self.gt_boxes, self.gt_classes, self.ignore = images01, gt_boxes, gt_classes, ignore
        self.n_classes, self.adapter, self.recipe, self.policy = n_classes, adapter, recipe, policy
        self._predict: Callable[[np.ndarray], list[Detections]] | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        if self._predict is None:
            p = self.policy
            self._predict = make_predict_fn(self.model, self.adapter, p.max_detections, p.nms_iou, p.min_score)
        loss = logs.get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            logs["val_ap50"] = float("nan")
            return
        dets = predict_detections(self._predict, self.images01, self.recipe.train.batch_size)
        logs["val_ap50"] = val_ap50(dets, self.gt_boxes, self.gt_classes, self.ignore, self.n_classes)


def _box_augment(recipe: Recipe) -> Any:
    if not recipe.augment:
        return None
    from lepton_vision.data.augment import build_box_augment

    return build_box_augment([op.model_dump() for op in recipe.augment], recipe.seed,
                             image_size=tuple(recipe.input.image_size))


def _compiled(build: Callable[[], Any], adapter: DetectorAdapter, recipe: Recipe, n_train: int,
              epochs: int) -> Any:
    model = build()
    assert recipe.model.detector is not None  # resolve() requires it for detection tasks
    adapter.compile(model, recipe.model.detector, make_optimizer(recipe, n_train, epochs, model))
    return model


def fit_detection_fold(
    build: Callable[[], Any],
    adapter: DetectorAdapter,
    train: tuple[np.ndarray, Sequence[np.ndarray], Sequence[np.ndarray]],
    val: tuple[np.ndarray, Sequence[np.ndarray], Sequence[np.ndarray], Sequence[np.ndarray]],
    n_classes: int,
    recipe: Recipe,
    policy: Any,
    out_dir: Path,
    *,
    fold_label: str = "fold 1/5",
) -> DetFoldResult:
    """Train one detection fold; the returned model carries the best ``val_ap50`` epoch's weights.

    Args:
        build: Zero-argument callable returning a fresh, uncompiled detector.
        adapter: The detector's adapter (compile, dense predictions).
        train: (images float32 [N,H,W,3] in [0,1] letterboxed, boxes per image in network
            pixels, class ids per image).
        val: The same for validation plus ignore regions per image (network pixels).
        n_classes: Number of object classes.
        recipe: The recipe (train.*, augment, model.detector, seed).
        policy: The task's :class:`~lepton_vision.config.cards.DetectionPolicy` (NMS for validation).
        out_dir: The fold's directory: history.csv, best.keras, TensorBoard logs.
        fold_label: Shown in progress lines and errors.

    Raises:
        TrainError: The loss became NaN/inf, or no epoch could be scored.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = recipe.model.detector
    assert spec is not None
    epochs = int(recipe.train.epochs)
    tx, tb, tc = train
    vx, vb, vc, vi = val
    if recipe.train.verbose:
        print(f"{fold_label} — {len(tx)} train / {len(vx)} val images", flush=True)
    model = _compiled(build, adapter, recipe, len(tx), epochs)
    ds = make_detection_dataset(
        tx, tb, tc, recipe.train.batch_size, training=True, augment=_box_augment(recipe), seed=recipe.seed,
        max_boxes=spec.max_boxes, min_box_size=spec.min_box_size,
    )
    log = _EpochLog(fold_label, epochs, len(tx), recipe.train.verbose)
    nan = _NanGuard()
    best = _BestWeights(recipe.train.early_stopping.min_delta, monitor="val_ap50")
    callbacks: list[Any] = [*ema_callbacks(recipe), _ValidateAP(vx, vb, vc, vi, n_classes, adapter, recipe, policy),
                            log, nan, best]
    es = recipe.train.early_stopping
    if es.enabled:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_ap50", mode="max", patience=es.patience, min_delta=es.min_delta,
            restore_best_weights=True,
        ))
    if recipe.train.schedule.name == "reduce_on_plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_ap50", mode="max", factor=recipe.train.schedule.factor,
            patience=recipe.train.schedule.patience, verbose=0,
        ))
    callbacks += [
        keras.callbacks.CSVLogger(str(out_dir / "history.csv")),
        keras.callbacks.TensorBoard(log_dir=str(out_dir / "tb"), write_graph=False, profile_batch=0),
    ]
    model.fit(ds, epochs=epochs, callbacks=callbacks, shuffle=False, verbose=_keras_verbose(recipe))
    if nan.at is not None:
        raise _nan_error(fold_label, nan.at, recipe)
    if best.weights is None:
        raise TrainError(
            f"{fold_label}: no epoch produced a finite validation AP50. Got {len(vx)} validation images.",
            hint="Check the validation images and boxes; lower the learning rate.",
        )
    _save_model(model, out_dir / "best.keras")
    history = _write_history(log, out_dir)
    return DetFoldResult(best.best_epoch, best.best, len(log.rows), history, model)


def fit_detection_final(
    build: Callable[[], Any],
    adapter: DetectorAdapter,
    train: tuple[np.ndarray, Sequence[np.ndarray], Sequence[np.ndarray]],
    recipe: Recipe,
    out_dir: Path,
    epochs: int,
) -> Any:
    """Refit on all images for a fixed number of epochs (no validation data is left)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = recipe.model.detector
    assert spec is not None
    tx, tb, tc = train
    model = _compiled(build, adapter, recipe, len(tx), epochs)
    ds = make_detection_dataset(
        tx, tb, tc, recipe.train.batch_size, training=True, augment=_box_augment(recipe), seed=recipe.seed,
        max_boxes=spec.max_boxes, min_box_size=spec.min_box_size,
    )
    log = _EpochLog("final", epochs, len(tx), recipe.train.verbose)
    nan = _NanGuard()
    model.fit(ds, epochs=epochs, callbacks=[log, nan], shuffle=False, verbose=_keras_verbose(recipe))
    if nan.at is not None:
        raise _nan_error("final model", nan.at, recipe)
    _write_history(log, out_dir)
    return model

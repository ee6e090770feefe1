"""Fit and run one object detector (a fold or the final model) with Keras ``fit``.

The loop, callbacks, optimizer and schedule are the engine's (:mod:`lepton_vision.engine.callbacks`,
:mod:`lepton_vision.engine.optim`); what is particular to detection is the target (padded boxes),
the augmentation (boxes move with the image) and the validation score: after every epoch the
validation images are run through the same decode + NMS as the export, and ``val_ap50`` (COCO
AP at IoU 0.5, from :mod:`lepton_vision.kinds.detection.metrics`) picks the best epoch and drives early
stopping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lepton_vision.backend import import_keras
from lepton_vision.config.recipe import Recipe
from lepton_vision.data.pipeline import make_detection_dataset
from lepton_vision.engine.callbacks import FoldResult, fit_and_keep_best, refit
from lepton_vision.engine.optim import make_optimizer
from lepton_vision.kinds.detection.metrics import Detections, val_ap50
from lepton_vision.models.detectors import DetectorAdapter, nms_padded

tf, keras = import_keras()


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


def box_augment(recipe: Recipe) -> Any:
    """The recipe's albumentations pipeline with boxes (None without ``augment``)."""
    if not recipe.augment:
        return None
    from lepton_vision.data.augment import build_box_augment

    return build_box_augment([op.model_dump() for op in recipe.augment], recipe.seed,
                             image_size=tuple(recipe.input.image_size))


#: A fit of at most this many training steps (all epochs) runs eagerly. Tracing keras-cv's YOLOv8
#: train step costs about 29 s on 2 CPU cores before the first step (measured: tiny detector,
#: 64x96 input, 16 frames: first epoch 29.1 s in graph mode, 3.6 s eagerly; later epochs 0.2 s vs
#: 3.0 s for 2 steps, i.e. about 1.4 s per eager step), so below ~20 steps eager is faster. Smoke
#: runs and tiny recipes finish sooner; real training (hundreds of steps) is unchanged.
EAGER_MAX_STEPS = 16


def _compiled(build: Callable[[], Any], adapter: DetectorAdapter, recipe: Recipe, n_train: int,
              epochs: int) -> Any:
    model = build()
    assert recipe.model.detector is not None  # resolve() requires it for detection tasks
    adapter.compile(model, recipe.model.detector, make_optimizer(recipe, n_train, epochs, model))
    eager_if_small(model, -(-int(n_train) // int(recipe.train.batch_size)) * int(epochs))
    return model


def eager_if_small(model: Any, steps: int) -> None:
    """Run a detector's fit eagerly when it has at most :data:`EAGER_MAX_STEPS` training steps."""
    model.run_eagerly = int(steps) <= EAGER_MAX_STEPS


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
) -> FoldResult:
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
        tx, tb, tc, recipe.train.batch_size, training=True, augment=box_augment(recipe), seed=recipe.seed,
        max_boxes=spec.max_boxes, min_box_size=spec.min_box_size,
    )
    return fit_and_keep_best(
        model, ds, recipe, out_dir, validate=_ValidateAP(vx, vb, vc, vi, n_classes, adapter, recipe, policy),
        monitor="val_ap50", n_train=len(tx), n_val=len(vx), epochs=epochs, fold_label=fold_label,
        metric_name="validation AP50", hint="Check the validation images and boxes; lower the learning rate.",
    )


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
        tx, tb, tc, recipe.train.batch_size, training=True, augment=box_augment(recipe), seed=recipe.seed,
        max_boxes=spec.max_boxes, min_box_size=spec.min_box_size,
    )
    return refit(model, ds, recipe, out_dir, epochs=epochs, n_train=len(tx))

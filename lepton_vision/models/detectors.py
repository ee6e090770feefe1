"""Object detectors behind one small adapter, and the post-processing every detector shares.

The rest of the engine never touches a detector library directly. A :class:`DetectorAdapter`
builds and compiles a model and turns its raw outputs into dense per-anchor boxes (in network
input pixels, ``xyxy``) and per-class scores; :func:`nms_padded` then does class-aware NMS with
the TFLite builtin ``NON_MAX_SUPPRESSION_V5`` (keras-cv's own NMS needs Flex ops that LiteRT
cannot run, stack.md section 5.2). Training targets are ``{"boxes": [B, N, 4] xyxy in input
pixels, "classes": [B, N]}`` padded with -1.

``ADAPTERS`` maps ``model.detector.architecture`` to an adapter. Only keras-cv YOLOv8 is here:
keras-hub 0.32 has no YOLO, and its RetinaNet (the maintained swap-in, stack.md section 3)
would be one more adapter class with the same three methods.
"""

from __future__ import annotations

from typing import Any, Protocol

from lepton_vision.backend import import_keras
from lepton_vision.config.recipe import DETECTOR_SIZES, DETECTOR_STRIDE, DetectorSpec

#: Letterbox pad value (grey), as in YOLO practice; also what ignore regions are painted with.
PAD_VALUE = 114
#: Largest stride of the YOLOv8 heads; recipes whose input is not a multiple of it are refused.
STRIDE = DETECTOR_STRIDE


class DetectorAdapter(Protocol):
    """What the engine needs from a detector library."""

    def build(self, spec: DetectorSpec, n_classes: int, input_hw: tuple[int, int], seed: int) -> Any:
        """An uncompiled Keras model taking float32 ``[B, H, W, 3]`` pixels in 0..255."""
        ...

    def compile(self, model: Any, spec: DetectorSpec, optimizer: Any) -> None:
        """Compile ``model`` with the detector's losses."""
        ...

    def dense_predictions(self, model: Any, x: Any, training: bool = False,
                          network_scope: str | None = None) -> tuple[Any, Any]:
        """Raw forward pass -> (boxes ``[B, A, 4]`` xyxy input pixels, scores ``[B, A, C]`` in 0..1).

        ``network_scope``: a graph name scope around the network alone (not the box decoding),
        so an exporter can tell the network's ops from the post-processing (int8 export
        quantises only the network)."""
        ...


class YoloV8Adapter:
    """keras-cv 0.9 ``YOLOV8Detector`` (anchor-free; CIoU box loss + BCE class loss)."""

    def build(self, spec: DetectorSpec, n_classes: int, input_hw: tuple[int, int], seed: int) -> Any:
        tf, keras = import_keras()
        import keras_cv

        keras.utils.set_random_seed(seed)
        channels, depth, fpn_depth = DETECTOR_SIZES[spec.size]
        backbone = keras_cv.models.YOLOV8Backbone(
            stackwise_channels=list(channels),
            stackwise_depth=list(depth),
            include_rescaling=True,  # the model takes 0..255 pixels: uint8 frames go straight in
            activation="swish",
            input_shape=(int(input_hw[0]), int(input_hw[1]), 3),
        )
        model = keras_cv.models.YOLOV8Detector(
            num_classes=n_classes, bounding_box_format="xyxy", backbone=backbone, fpn_depth=fpn_depth
        )
        if spec.head_bias_init == "prior":
            prior_head_biases(model, n_classes)
        return model

    def compile(self, model: Any, spec: DetectorSpec, optimizer: Any) -> None:
        model.compile(
            optimizer=optimizer,
            classification_loss="binary_crossentropy",
            box_loss="ciou",
            box_loss_weight=spec.box_loss_weight,
            classification_loss_weight=spec.class_loss_weight,
        )
        if spec.dfl_loss_weight:
            _add_dfl(model, float(spec.dfl_loss_weight))

    def dense_predictions(self, model: Any, x: Any, training: bool = False,
                          network_scope: str | None = None) -> tuple[Any, Any]:
        import contextlib

        from keras_cv.src.models.object_detection.yolo_v8.yolo_v8_detector import (
            decode_regression_to_boxes,
            dist2bbox,
            get_anchors,
        )

        tf, _ = import_keras()
        with tf.name_scope(network_scope) if network_scope else contextlib.nullcontext():
            raw = model(x, training=training)
        dist = decode_regression_to_boxes(raw["boxes"])
        anchors, strides = get_anchors(image_shape=tuple(int(d) for d in x.shape[1:3]))
        boxes = dist2bbox(dist, anchors) * tf.expand_dims(strides, -1)
        return boxes, raw["classes"]


#: Strides of keras-cv YOLOv8's three heads (P3, P4, P5), in the order of their layer names.
HEAD_STRIDES = (8, 16, 32)


def prior_head_biases(model: Any, n_classes: int) -> None:
    """Set the head's last biases as Ultralytics' ``Detect.bias_init`` does.

    keras-cv leaves them at zero, so every one of the thousands of anchors starts at class score
    0.5 and the first epochs of BCE mostly push background down. Ultralytics starts the class
    logits of stride ``s`` at ``log(5 / n_classes / (640 / s) ** 2)`` (about five objects per
    640-pixel image; the constant 640 is theirs, whatever the input size) and the box logits at 1.0.
    """
    import math

    import numpy as np

    for i, stride in enumerate(HEAD_STRIDES, start=1):
        cls = model.get_layer(f"yolo_v8_head_{i}_class_3_conv")
        kernel, bias = cls.get_weights()
        cls.set_weights([kernel, np.full_like(bias, math.log(5.0 / n_classes / (640.0 / stride) ** 2))])
        box = model.get_layer(f"yolo_v8_head_{i}_box_3_conv")
        kernel, bias = box.get_weights()
        box.set_weights([kernel, np.ones_like(bias)])


def _add_dfl(model: Any, weight: float) -> None:
    """Train ``model`` (a compiled keras-cv ``YOLOV8Detector``) with YOLOv8's distribution focal
    loss added to its CIoU + BCE.

    keras-cv's YOLOv8 predicts each box edge as a distribution over 16 distance bins but trains
    only the CIoU of the distributions' means; Ultralytics also trains the bins themselves with
    DFL (Li et al. 2020, weight 1.5): cross-entropy towards the two bins around the assigned
    target distance, weighted by how close each is. This is keras-cv's ``compute_loss`` (0.9)
    with that term added for the same positive anchors and weights; the model's class, saved
    files and export are unchanged (the loss only exists in training). The term is logged as
    ``dfl_loss`` and is part of ``loss``.
    """
    from keras_cv.src.bounding_box import convert_format
    from keras_cv.src.models.object_detection.yolo_v8.yolo_v8_detector import (
        YOLOV8Detector,
        decode_regression_to_boxes,
        dist2bbox,
        get_anchors,
    )

    tf, keras = import_keras()
    ops = keras.ops
    tracker = keras.metrics.Mean(name="dfl_loss")

    def compute_loss(x: Any, y: Any, y_pred: Any, sample_weight: Any = None, **kwargs: Any) -> Any:
        box_pred, cls_pred = y_pred["boxes"], y_pred["classes"]
        anchor_points, stride_tensor = get_anchors(image_shape=x.shape[1:])
        stride_tensor = ops.expand_dims(stride_tensor, axis=-1)
        mask_gt = ops.all(y["boxes"] > -1.0, axis=-1, keepdims=True)
        gt_bboxes = convert_format(y["boxes"], source=model.bounding_box_format, target="xyxy", images=x)
        pred_bboxes = dist2bbox(decode_regression_to_boxes(box_pred), anchor_points)
        target_bboxes, target_scores, fg_mask = model.label_encoder(
            cls_pred, ops.cast(pred_bboxes * stride_tensor, gt_bboxes.dtype), anchor_points * stride_tensor,
            y["classes"], gt_bboxes, mask_gt,
        )
        target_bboxes /= stride_tensor
        target_scores_sum = ops.maximum(ops.sum(target_scores), 1)
        anchor_weight = ops.sum(target_scores, axis=-1) * fg_mask
        total = super(YOLOV8Detector, model).compute_loss(
            x=x,
            y={"box": target_bboxes * fg_mask[..., None], "class": target_scores},
            y_pred={"box": pred_bboxes * fg_mask[..., None], "class": cls_pred},
            sample_weight={"box": model.box_loss_weight * ops.expand_dims(anchor_weight, -1) / target_scores_sum,
                           "class": model.classification_loss_weight / target_scores_sum},
            **kwargs,
        )
        # DFL: target edge distances (left, top, right, bottom) in stride units.
        ltrb = ops.concatenate([anchor_points - target_bboxes[..., :2], target_bboxes[..., 2:] - anchor_points], -1)
        per_anchor = dfl_per_anchor(box_pred, ltrb)
        dfl = ops.sum(per_anchor * ops.cast(anchor_weight, "float32")) / ops.cast(target_scores_sum, "float32")
        tracker.update_state(dfl)
        # Per replica, like Keras' compiled losses (scale_loss_for_distribution): the gradients are summed.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return total + ops.cast(weight * dfl / replicas, total.dtype)

    # An instance attribute (not a subclass): best.keras and exports stay plain YOLOV8Detector files.
    object.__setattr__(model, "compute_loss", compute_loss)
    model._lepton_dfl_tracker = tracker  # a Metric attribute: Keras adds it to model.metrics (logs)


#: Distance bins per box edge of keras-cv's YOLOv8 head (its 64 box channels / 4).
_REG_MAX = 16


def dfl_per_anchor(box_logits: Any, ltrb: Any) -> Any:
    """Distribution focal loss of each anchor, averaged over its 4 edges.

    Args:
        box_logits: ``[B, A, 4 * 16]`` raw box channels (per edge, logits over distances 0..15).
        ltrb: ``[B, A, 4]`` target distances in stride units (clipped into the bins' range).

    Returns:
        ``[B, A]`` float32: for target ``t`` between bins ``i`` and ``i + 1``,
        ``-((i + 1 - t) log p_i + (t - i) log p_(i+1))``; smallest when the distribution puts
        exactly those masses on the two bins, whose mean is then ``t``.
    """
    _, keras = import_keras()
    ops = keras.ops
    logits = ops.reshape(ops.cast(box_logits, "float32"), (-1, ops.shape(box_logits)[1], 4, _REG_MAX))
    t = ops.clip(ops.cast(ltrb, "float32"), 0.0, _REG_MAX - 1.01)
    left = ops.floor(t)
    w_right = t - left
    i = ops.cast(left, "int32")
    target = (ops.one_hot(i, _REG_MAX) * ops.expand_dims(1.0 - w_right, -1)
              + ops.one_hot(i + 1, _REG_MAX) * ops.expand_dims(w_right, -1))
    return ops.mean(-ops.sum(target * ops.log_softmax(logits, axis=-1), axis=-1), axis=-1)


ADAPTERS: dict[str, DetectorAdapter] = {"yolov8": YoloV8Adapter()}


def adapter_for(spec: DetectorSpec) -> DetectorAdapter:
    """The adapter of ``model.detector.architecture``."""
    return ADAPTERS[spec.architecture]


def nms_padded(boxes: Any, scores: Any, max_detections: int, iou: float, min_score: float) -> tuple[Any, ...]:
    """Class-aware NMS for ONE image with TFLite builtin ops.

    Each anchor keeps its best class (YOLOv8 practice). Boxes are shifted by ``class * offset``
    so that one class-agnostic ``non_max_suppression_with_scores`` never suppresses a box of
    another class.

    Args:
        boxes: ``[A, 4]`` xyxy.
        scores: ``[A, C]`` in 0..1.
        max_detections: Output length (padded).
        iou: NMS IoU threshold.
        min_score: Boxes below this score are dropped.

    Returns:
        (boxes ``[K, 4]``, scores ``[K]``, classes ``[K]`` int32, count int32) with
        ``K = max_detections``; rows at and after ``count`` are zero (scores 0, classes -1).
    """
    tf, _ = import_keras()
    best = tf.reduce_max(scores, axis=-1)
    cls = tf.argmax(scores, axis=-1, output_type=tf.int32)
    offset = tf.cast(cls, boxes.dtype)[:, None] * 4096.0  # inputs are at most 2048 px
    # non_max_suppression wants [y1, x1, y2, x2]; the order does not change IoU, only the layout.
    shifted = tf.gather(boxes + offset, [1, 0, 3, 2], axis=-1)
    # Padded NMS with an explicit valid count: TFLite's NON_MAX_SUPPRESSION_V5 always returns
    # max_detections rows, so tf.shape(idx)[0] is K there and the padding (index 0) looked like
    # real class-0 boxes with score 0. Masking by the count makes TF and TFLite agree.
    idx, sel_scores, count = tf.raw_ops.NonMaxSuppressionV5(
        boxes=shifted, scores=best, max_output_size=max_detections, iou_threshold=iou,
        score_threshold=min_score, soft_nms_sigma=0.0, pad_to_max_output_size=True,
    )
    keep = tf.range(max_detections) < count
    out_boxes = tf.where(keep[:, None], tf.gather(boxes, idx), tf.zeros([], boxes.dtype))
    out_scores = tf.where(keep, sel_scores, tf.zeros([], sel_scores.dtype))
    out_classes = tf.where(keep, tf.gather(cls, idx), -1)
    return (
        tf.reshape(out_boxes, [max_detections, 4]),
        tf.reshape(out_scores, [max_detections]),
        tf.reshape(out_classes, [max_detections]),
        count,
    )

"""Pretraining a detector on generated street or road scenes: the detection steps of the
``pretrain:`` stage (:mod:`lepton_vision.engine.pretrain` runs the stage; this module renders,
batches and scores what is particular to boxes). Rendering runs in worker processes: no
TensorFlow at import.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Frames per rendering job.
JOB_IMAGES = 16


def render(stream: Any, start: int, stop: int) -> dict[str, Any]:
    """Generated frames ``start .. stop-1``, letterboxed: ``images`` uint8 ``[n, H, W, 3]``,
    ``boxes`` (list of ``[k, 4]`` xyxy network pixels), ``classes`` (list of ``[k]``)."""
    from lepton_vision.config.cards import SyntheticSpec
    from lepton_vision.data.preprocess import letterbox
    from lepton_vision.data.synthetic.scenes import iter_scene_frames

    spec = SyntheticSpec.model_validate(stream.synthetic)
    imgs, boxes, classes = [], [], []
    for rgb, b, c in iter_scene_frames(spec, start, stop):
        img, (sx, sy) = letterbox(rgb, stream.size_hw)
        imgs.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
        boxes.append(np.asarray(b, np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32))
        classes.append(np.asarray(c, np.int64).reshape(-1))
    return {"images": np.stack(imgs), "boxes": boxes, "classes": classes}


def job_size(stream: Any) -> int:
    """Images per rendering job."""
    return JOB_IMAGES


def concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Rendered jobs as one chunk."""
    return {"images": np.concatenate([p["images"] for p in parts]),
            "boxes": [b for p in parts for b in p["boxes"]],
            "classes": [c for p in parts for c in p["classes"]]}


def setup(resolved: Any, pre: Any, n_classes: int, per_epoch: int, epochs: int) -> tuple[Any, Any, dict[str, Any]]:
    """The compiled detector to pretrain (one class per generator class), the recipe's box
    augmentation, and the padding batches need."""
    from lepton_vision.engine.optim import make_optimizer
    from lepton_vision.kinds.detection.train import box_augment, eager_if_small
    from lepton_vision.models.detectors import adapter_for

    spec = pre.model.detector
    adapter = adapter_for(spec)
    model = adapter.build(spec, n_classes, tuple(pre.input.image_size), pre.seed)
    adapter.compile(model, spec, make_optimizer(pre, per_epoch, epochs))
    eager_if_small(model, max(1, per_epoch // int(pre.train.batch_size)) * int(epochs))
    return model, box_augment(pre), {"max_boxes": spec.max_boxes, "min_box_size": spec.min_box_size}


def chunk_state(data: dict[str, Any], augment: Any, extra: dict[str, Any]) -> Any:
    """Per-chunk state of the batches: how many other frames a multi-image transform (Mosaic) takes."""
    from lepton_vision.data.augment import partners_needed

    return partners_needed(augment)


def make_batch(data: dict[str, Any], idx: np.ndarray, augment: Any, key: list[int], extra: dict[str, Any],
               state: Any) -> tuple[Any, ...]:
    """One training batch: augmented frames (0..255) and their padded boxes and classes."""
    from lepton_vision.data.augment import augment_with_boxes, draw_partners
    from lepton_vision.data.pipeline import pad_targets

    n = len(data["images"])
    batch = len(idx)
    h, w = data["images"].shape[1:3]
    xs = np.empty((batch, h, w, 3), np.float32)
    bs = np.empty((batch, extra["max_boxes"], 4), np.float32)
    cs = np.empty((batch, extra["max_boxes"]), np.float32)
    for j, i in enumerate(idx):
        img = data["images"][i].astype(np.float32) / np.float32(255.0)
        b, cl = data["boxes"][i], data["classes"][i]
        if augment is not None:
            pick = draw_partners(np.random.default_rng([*key, j]), n, int(i), state)
            img, b, cl = augment_with_boxes(
                augment, img, b, cl,
                [(data["images"][q].astype(np.float32) / np.float32(255.0), data["boxes"][q], data["classes"][q])
                 for q in pick])
        xs[j] = img * np.float32(255.0)
        bs[j], cs[j], _, _ = pad_targets(b, cl, extra["max_boxes"], extra["min_box_size"])
    return xs, {"boxes": bs, "classes": cs}


def output_signature(tf: Any, batch: int, stream: Any, extra: dict[str, Any]) -> Any:
    """The tf.data signature of :func:`make_batch`'s batches."""
    h, w = stream.size_hw
    m = extra["max_boxes"]
    return (tf.TensorSpec((batch, h, w, 3), tf.float32),
            {"boxes": tf.TensorSpec((batch, m, 4), tf.float32), "classes": tf.TensorSpec((batch, m), tf.float32)})


def validate(model: Any, resolved: Any, data: dict[str, Any], n_classes: int) -> dict[str, Any]:
    """AP50 of the pretrained detector on generated frames it never trained on."""
    from lepton_vision.kinds.detection.metrics import val_ap50
    from lepton_vision.kinds.detection.train import make_predict_fn, predict_detections
    from lepton_vision.models.detectors import adapter_for

    policy = resolved.task.detection
    predict = make_predict_fn(model, adapter_for(resolved.recipe.model.detector), policy.max_detections,
                              policy.nms_iou, policy.min_score)
    x = data["images"].astype(np.float32) / np.float32(255.0)
    dets = predict_detections(predict, x)
    empty = [np.zeros((0, 4), np.float32)] * len(x)
    ap = val_ap50(dets, data["boxes"], data["classes"], empty, n_classes)
    return {"metric": "ap50", "value": round(float(ap), 4), "n_images": int(len(x)),
            "n_boxes": int(sum(len(b) for b in data["boxes"]))}

"""Pretraining a classifier on generated CT slices: the classification steps of the ``pretrain:``
stage (:mod:`lepton_vision.engine.pretrain` runs the stage; this module renders, batches and
scores what is particular to slice labels). Rendering runs in worker processes: no TensorFlow
at import.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Slices per rendering job, rounded to whole patients (a patient is built once per job).
JOB_IMAGES = 16


def render(stream: Any, start: int, stop: int) -> dict[str, Any]:
    """Generated slices ``start .. stop-1`` as network inputs: ``images`` float16 ``[n, h, w, C]``
    in [0, 1] (windowed, resized), ``labels`` int ``[n]``."""
    from lepton_vision.config.cards import SyntheticSpec
    from lepton_vision.data.preprocess import to_model_input, to_uint8
    from lepton_vision.data.synthetic.ct import iter_ct_slices

    spec = SyntheticSpec.model_validate(stream.synthetic)
    imgs, labels = [], []
    for hu, label in iter_ct_slices(spec, start, stop):
        x = to_model_input(to_uint8(hu, stream.channels, stream.window), stream.size_hw)
        imgs.append(x.astype(np.float16))
        labels.append(int(label))
    return {"images": np.stack(imgs), "labels": np.asarray(labels, np.int64)}


def job_size(stream: Any) -> int:
    """Images per rendering job: whole patients."""
    spp = int(stream.synthetic["slices_per_patient"])
    return spp * max(1, round(JOB_IMAGES / spp))


def concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Rendered jobs as one chunk."""
    return {"images": np.concatenate([p["images"] for p in parts]),
            "labels": np.concatenate([p["labels"] for p in parts])}


def setup(resolved: Any, pre: Any, n_classes: int, per_epoch: int, epochs: int) -> tuple[Any, Any, dict[str, Any]]:
    """The compiled classifier to pretrain, the recipe's augmentation, and what batches need
    (balanced class weights per chunk)."""
    from lepton_vision.kinds.classification.model import build_model
    from lepton_vision.kinds.classification.train import compile_classifier, image_augment, sample_weights

    model = build_model(pre, weights="none", seed=pre.seed)
    compile_classifier(model, pre, per_epoch, epochs)
    balanced = pre.train.class_weight == "balanced"

    def weights(y: np.ndarray) -> np.ndarray | None:
        if len(np.unique(y)) < 2:  # a chunk of one class: equal weights
            return np.ones(len(y), np.float32)
        return sample_weights(np.asarray(y, np.int64), pre)

    return model, image_augment(pre), {"balanced": balanced, "weights": weights if balanced else (lambda y: None)}


def chunk_state(data: dict[str, Any], augment: Any, extra: dict[str, Any]) -> Any:
    """Per-chunk state of the batches: the chunk's class weights (None when not balanced)."""
    return extra["weights"](data["labels"])


def make_batch(data: dict[str, Any], idx: np.ndarray, augment: Any, key: list[int], extra: dict[str, Any],
               state: Any) -> tuple[Any, ...]:
    """One training batch: augmented images, labels and (balanced) sample weights."""
    from lepton_vision.data.augment import apply_augment

    xs = data["images"][idx].astype(np.float32)
    if augment is not None:
        for j in range(len(idx)):
            xs[j] = apply_augment(augment, xs[j])
    y = data["labels"][idx].astype(np.float32).reshape(-1, 1)
    if state is None:
        return xs, y
    return xs, y, state[idx].astype(np.float32)


def output_signature(tf: Any, batch: int, stream: Any, extra: dict[str, Any]) -> Any:
    """The tf.data signature of :func:`make_batch`'s batches."""
    h, w = stream.size_hw
    x_spec = tf.TensorSpec((batch, h, w, stream.channels), tf.float32)
    y_spec = tf.TensorSpec((batch, 1), tf.float32)
    return (x_spec, y_spec, tf.TensorSpec((batch,), tf.float32)) if extra["balanced"] else (x_spec, y_spec)


def validate(model: Any, resolved: Any, data: dict[str, Any], n_classes: int) -> dict[str, Any]:
    """ROC AUC of the pretrained model on generated slices it never trained on."""
    from sklearn.metrics import roc_auc_score

    from lepton_vision.kinds.classification.train import predict_scores

    y = data["labels"]
    scores = predict_scores(model, data["images"].astype(np.float32), 64)
    auc = float(roc_auc_score(y, scores)) if len(np.unique(y)) == 2 else float("nan")
    return {"metric": "roc_auc", "value": round(auc, 4), "n_images": int(len(y)), "n_positive": int(y.sum())}

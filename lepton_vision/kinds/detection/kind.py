"""Object detection: boxes per image through a detector adapter, COCO AP/F1 and an image score.

The model comes from :mod:`lepton_vision.models.detectors` (keras-cv YOLOv8 behind ``ADAPTERS``); the
run itself is :mod:`lepton_vision.kinds.detection.steps`; out-of-fold scoring is
:func:`lepton_vision.kinds.detection.metrics.score_detection_oof` (no TensorFlow).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

#: Columns of oof_predictions.csv (one row per image) besides sample_id, path, group, label, fold;
#: the boxes themselves are in oof_detections.csv (contract D2).
OOF_COLUMNS: tuple[str, ...] = ("n_gt", "image_score")


def build_model(recipe: Any, weights: str | None = None, seed: int | None = None,
                n_classes: int = 1) -> Any:
    """An uncompiled detector for ``recipe.model.detector`` taking 0..255 pixels at input.image_size.

    Args:
        recipe: The validated recipe (``model.detector`` must be set).
        weights: Unused for detectors trained from scratch; kept for the TaskKind signature.
        seed: Weight-initialisation seed; defaults to ``recipe.seed``.
        n_classes: Number of object classes (the task card's classes).
    """
    from lepton_vision.models.detectors import adapter_for

    spec = recipe.model.detector
    if spec is None:
        raise ValueError("object_detection needs model.detector in the recipe")
    return adapter_for(spec).build(spec, n_classes, tuple(recipe.input.image_size),
                                   recipe.seed if seed is None else seed)


def score_oof(oof: pd.DataFrame, policy: Any, n_bootstrap: int, ci: float, seed: int,
              **options: Any) -> dict[str, Any]:
    """Detection metrics from a run's saved tables (see detection_metrics.score_detection_oof).

    ``oof`` is oof_predictions.csv (one row per image); ``options`` must hold ``samples``
    (samples.csv), ``detections`` (oof_detections.csv), ``class_names`` and ``detection``
    (the task's DetectionPolicy); ``policy`` is the image-level threshold policy.
    """
    from lepton_vision.kinds.detection.metrics import score_detection_oof

    return score_detection_oof(options["samples"], options["detections"], oof, list(options["class_names"]),
                               options["detection"], policy, n_bootstrap, ci, seed)

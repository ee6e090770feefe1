"""``lepton_vision.Predictor``: open an export of any kind with the predictor of its kind.

``Predictor.from_bundle(EXPORT_DIR)`` reads bundle.json's ``kind`` and returns that kind's
predictor (:class:`~lepton_vision.kinds.classification.predictor.ClassificationPredictor`,
:class:`~lepton_vision.kinds.detection.predictor.DetPredictor`), so a product loads any export the
same way. TensorFlow or LiteRT are imported only when a bundle is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lepton_vision.export.bundle import bundle_kind


def open_predictor(export_dir: str | Path, backend: str = "auto", threshold: float | None = None,
                   num_threads: int | None = None, ood: bool = True) -> Any:
    """The predictor of an export's kind.

    Args:
        export_dir: An export folder (``RUN/export``).
        backend: "tflite" (LiteRT, float32), "tflite_int8" (LiteRT, int8), "saved_model"
            (TensorFlow) or "auto": float TFLite when model.tflite exists and ai_edge_litert is
            installed, else the SavedModel.
        threshold: Override the bundle's operating threshold (classification: the score
            threshold; detection: the box score threshold), 0..1.
        num_threads: LiteRT interpreter threads (None: LiteRT's default).
        ood: Score how unlike the training data each input is (when the export has a reference).

    Raises:
        ExportError: The bundle is missing, unreadable, of an unknown schema version or kind, or
            lacks the requested model file.
    """
    from lepton_vision.kinds import kind_of

    predictor_class = kind_of(bundle_kind(export_dir)).predictor_class()
    return predictor_class.from_bundle(Path(export_dir), backend, threshold, num_threads, ood)


class Predictor:
    """Opens exports of every kind: ``Predictor.from_bundle(EXPORT_DIR, backend=..., threshold=...)``
    returns the predictor of the bundle's kind (see :func:`open_predictor`)."""

    from_bundle = staticmethod(open_predictor)

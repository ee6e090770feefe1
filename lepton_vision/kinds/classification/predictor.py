"""Score images with a classification export: the one inference path for CLI, app and products.

:class:`ClassificationPredictor` imports no training code. It reads ``bundle.json``, decodes files with the same
numpy preprocessing as training (:func:`preprocess.read_image` + :func:`preprocess.to_uint8`,
CT window from the bundle) and hands the uint8 image to the exported ``serve_uint8`` signature,
which resizes, scales and thresholds inside the graph. TensorFlow or LiteRT are imported only
when a bundle is loaded.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lepton_vision.config.errors import DataError
from lepton_vision.data import preprocess
from lepton_vision.runio import atomic_write_text
from lepton_vision.serve.predictor import (
    Backend,
    BundlePredictor,
    Observation,
    check_threshold_override,
    open_runner,
    read_kind_bundle,
)


@dataclass(frozen=True)
class Prediction:
    """The result for one image.

    Attributes:
        score: Probability of the positive class.
        decision: ``score >= threshold``.
        label: The class name the decision stands for.
        threshold: The threshold that was applied.
        path: The file scored, or None for an in-memory array.
        ood_score: How unlike the training images the input is (:mod:`lepton_vision.export.reference`;
            above 1: out of distribution); None when the export has no reference.
        in_distribution: ``ood_score <= 1``; None without a reference.
    """

    score: float
    decision: bool
    label: str
    threshold: float
    path: str | None = None
    ood_score: float | None = None
    in_distribution: bool | None = None


class ClassificationPredictor(BundlePredictor):
    """Scores images with a classification export (SavedModel or TFLite).

    Build it with :meth:`from_bundle` (or ``lepton_vision.Predictor.from_bundle``, any kind).
    """

    def __init__(self, export_dir: Path, bundle: dict[str, Any], backend: str, runner: Any,
                 threshold: float, ood: bool = True) -> None:
        super().__init__(export_dir, bundle, backend, runner, ood)
        self.threshold = float(threshold)
        inp = bundle["input"]
        self.image_size = (int(inp["image_size"][0]), int(inp["image_size"][1]))
        self.channels = int(inp["channels"])
        win = inp.get("window")
        if win is None:
            self.window = None
        elif "windows" in win:  # multi-window input: one (level, width) per channel
            self.window = tuple((float(w["level"]), float(w["width"])) for w in win["windows"])
        else:
            self.window = (float(win["level"]), float(win["width"]))
        self.classes = list(bundle["classes"])
        #: Format normalisation the model was trained with (bundle ``input.reencode``), or None.
        self.reencode = inp.get("reencode")

    # ---------------------------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, export_dir: str | Path, backend: Backend = "auto",
                    threshold: float | None = None, num_threads: int | None = None,
                    ood: bool = True) -> ClassificationPredictor:
        """Load ``export_dir/bundle.json`` and the classifier it describes.

        Args:
            export_dir: An export folder (``RUN/export``) of kind binary_classification.
            backend: "tflite" (LiteRT, float32), "tflite_int8" (LiteRT, int8), "saved_model"
                (TensorFlow) or "auto": float TFLite when model.tflite exists and ai_edge_litert
                is installed, else the SavedModel.
            threshold: Override the bundle's operating threshold (0..1).
            num_threads: LiteRT interpreter threads (None: LiteRT's default).
            ood: Score how unlike the training data each input is (when the export has a
                reference; one more model call per image).

        Raises:
            ExportError: The bundle is missing, unreadable, of an unknown schema version, of
                another kind, or lacks the requested model file.
        """
        export_dir = Path(export_dir)
        bundle = read_kind_bundle(export_dir, "binary_classification", ("classes", "threshold", "input"))
        backend, runner = open_runner(export_dir, bundle, backend, num_threads)
        threshold = (float(bundle["threshold"]["value"]) if threshold is None
                     else check_threshold_override(threshold, "threshold", export_dir))
        return cls(export_dir, bundle, backend, runner, threshold, ood)

    # ---------------------------------------------------------------------------------------
    def to_uint8(self, image_or_path: str | Path | np.ndarray) -> np.ndarray:
        """The uint8 HxWxC image the model is given (file decode, CT window, channels, and the
        format normalisation of bundle ``input.reencode`` when the model was trained with one)."""
        if isinstance(image_or_path, (str, Path)):
            path = Path(image_or_path)
            raw = preprocess.read_image(path)  # raises DataError naming the file
            where = str(path)
        else:
            raw = np.asarray(image_or_path)
            where = "image array"
            if np.issubdtype(raw.dtype, np.floating) and self.window is None:
                raise DataError(
                    f"got a float array (dtype {raw.dtype}, shape {raw.shape}) but this model "
                    "takes uint8 images and its bundle has no CT window to map Hounsfield units. "
                    "Pass uint8 pixels (HxW or HxWx3).",
                    file=where,
                )
        if raw.ndim in (2, 3):
            preprocess.check_size(raw.shape[0], raw.shape[1], where)
        try:
            return preprocess.reencode(preprocess.to_uint8(raw, self.channels, self.window), self.reencode)
        except ValueError as exc:
            raise DataError(
                f"cannot convert pixels for the model: {exc}. Got dtype {raw.dtype}, shape "
                f"{raw.shape}; expected uint8/uint16 HxW or HxWx3, or float Hounsfield units.",
                file=where,
            ) from exc

    def score_uint8(self, img: np.ndarray) -> float:
        """Score a uint8 HxWxC image (any size) with the serve_uint8 signature."""
        return float(self.run_uint8(img)["score"].reshape(-1)[0])

    def predict(self, image_or_path: str | Path | np.ndarray) -> Prediction:
        """Score one image: a file path, or a uint8 (or, for CT bundles, float HU) array."""
        img = self.to_uint8(image_or_path)
        score = self.score_uint8(img)
        # Compare in float32, as the graph does, so decisions agree with the exported model.
        decision = bool(np.float32(score) >= np.float32(self.threshold))
        path = str(image_or_path) if isinstance(image_or_path, (str, Path)) else None
        ood_score, in_dist = self.ood_of(img)
        return Prediction(score=score, decision=decision, label=self.classes[int(decision)],
                          threshold=self.threshold, path=path, ood_score=ood_score, in_distribution=in_dist)

    def observe(self, image_or_path: str | Path | np.ndarray) -> Observation:
        """The score, the decision, the OOD score and image statistics of one image (``monitor``)."""
        img = self.to_uint8(image_or_path)
        score = self.score_uint8(img)
        return self.observation(score, bool(np.float32(score) >= np.float32(self.threshold)), img)

    @property
    def positive_threshold(self) -> float:
        """The decision threshold."""
        return self.threshold

    def iter_video(self, path: str | Path, stride: int = 1) -> Iterator[Prediction]:
        """Score every ``stride``-th frame of a video (e.g. a cine loop), in order; each
        result's ``path`` is ``file#frame``.

        Raises:
            DataError: The video is missing, cannot be opened, or yields no decodable frame.
        """
        from lepton_vision.serve.media import iter_video_frames

        for index, rgb in iter_video_frames(path, stride=stride):
            p = self.predict(rgb)
            yield Prediction(p.score, p.decision, p.label, p.threshold, path=f"{path}#{index}",
                             ood_score=p.ood_score, in_distribution=p.in_distribution)


def write_predictions_csv(preds: Iterable[Prediction], out_path: str | Path) -> None:
    """Write predictions as CSV with columns path, score, decision (0/1), ood_score and
    in_distribution (0/1; both empty for exports without a reference), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "score", "decision", "ood_score", "in_distribution"])
    for p in preds:
        writer.writerow(["" if p.path is None else p.path, repr(float(p.score)), int(p.decision),
                         "" if p.ood_score is None else repr(float(p.ood_score)),
                         "" if p.in_distribution is None else int(p.in_distribution)])
    atomic_write_text(out_path, buf.getvalue())


def predict_files(export_dir: Path, inputs: list[Path], *, out: Path, backend: str = "saved_model",
                  threshold: float | None = None, keep_all: bool = False, annotate: Path | None = None,
                  video_stride: int | None = None) -> str:
    """``lepton-vision predict`` for a classification export: score image files and folders
    (recursively) into a CSV (path, score, decision); returns the summary line.

    Raises:
        LeptonError: Detection-only options, a missing path, or no image found.
    """
    from lepton_vision.config.errors import LeptonError
    from lepton_vision.serve.predictor import PREDICT_EXTENSIONS, collect_inputs

    used = [flag for flag, given in (("--all", keep_all), ("--annotate", annotate is not None),
                                     ("--video-stride", video_stride is not None)) if given]
    if used:
        raise LeptonError(f"{export_dir}: {', '.join(used)} only apply to object-detection exports; "
                          "this is a classification export.")
    p = ClassificationPredictor.from_bundle(export_dir, backend=backend, threshold=threshold)
    paths = collect_inputs(inputs, PREDICT_EXTENSIONS, check_named=False)
    preds = p.predict_many(paths)
    write_predictions_csv(preds, out)
    n_pos = sum(1 for x in preds if x.decision)
    n_ood = sum(1 for x in preds if x.in_distribution is False)
    ood = (f"; {n_ood} unlike the training data (ood_score > 1)" if p.ood else f"; {p.ood_note}")
    return f"{len(preds)} images scored, {n_pos} at or above threshold {p.threshold:.4g}{ood}; wrote {out}"

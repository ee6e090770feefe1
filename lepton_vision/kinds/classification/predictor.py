"""Load an exported bundle and score images: the one inference path for CLI, app and products.

The Predictor imports no training code. It reads ``bundle.json``, decodes files with the same
numpy preprocessing as training (:func:`preprocess.read_image` + :func:`preprocess.to_uint8`,
CT window from the bundle) and hands the uint8 image to the exported ``serve_uint8`` signature,
which resizes, scales and thresholds inside the graph. TensorFlow or LiteRT are imported only
when a bundle is loaded.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lepton_vision.data import preprocess
from lepton_vision.config.errors import DataError, ExportError
from lepton_vision.runio import atomic_write_text

SUPPORTED_SCHEMA_VERSIONS = (1,)
#: File extensions :meth:`Predictor.iter_folder` scores.
PREDICT_EXTENSIONS = tuple(preprocess.IMAGE_EXTENSIONS) + tuple(preprocess.DICOM_EXTENSIONS)
_SIGNATURE = "serve_uint8"

Backend = Literal["auto", "saved_model", "tflite", "tflite_int8"]
_BACKENDS = ("auto", "saved_model", "tflite", "tflite_int8")


@dataclass(frozen=True)
class Prediction:
    """The result for one image.

    Attributes:
        score: Probability of the positive class.
        decision: ``score >= threshold``.
        label: The class name the decision stands for.
        threshold: The threshold that was applied.
        path: The file scored, or None for an in-memory array.
    """

    score: float
    decision: bool
    label: str
    threshold: float
    path: str | None = None


class Predictor:
    """Scores images with an exported bundle (SavedModel or TFLite).

    Build it with :meth:`from_bundle`.
    """

    def __init__(self, export_dir: Path, bundle: dict[str, Any], backend: str, runner: Any,
                 threshold: float) -> None:
        self.export_dir = export_dir
        self.bundle = bundle
        self.backend = backend
        self._runner = runner
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

    # ---------------------------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, export_dir: str | Path, backend: Backend = "auto",
                    threshold: float | None = None, num_threads: int | None = None) -> Any:
        """Load ``export_dir/bundle.json`` and the model it describes, whatever its kind.

        A classification bundle gives a :class:`Predictor` (``predict`` -> :class:`Prediction`);
        an object-detection bundle gives a :class:`lepton_vision.kinds.detection.predictor.DetPredictor`
        (``predict`` -> ``FrameDetections``, ``threshold`` overriding the box score threshold).

        Args:
            export_dir: An export folder (``RUN/export``).
            backend: "tflite" (LiteRT, float32), "tflite_int8" (LiteRT, int8), "saved_model"
                (TensorFlow) or "auto": float TFLite when model.tflite exists and ai_edge_litert
                is installed, else the SavedModel.
            threshold: Override the bundle's operating threshold (0..1).
            num_threads: LiteRT interpreter threads (None: LiteRT's default).

        Raises:
            ExportError: The bundle is missing, unreadable, of an unknown schema version, or
                lacks the requested model file.
        """
        export_dir = Path(export_dir)
        if _load_bundle_json(export_dir).get("kind") == "object_detection":
            from lepton_vision.kinds.detection.predictor import DetPredictor

            return DetPredictor.from_bundle(export_dir, backend=backend, score_threshold=threshold,
                                            num_threads=num_threads)
        bundle = _read_bundle(export_dir)
        if backend not in _BACKENDS:
            raise ExportError(
                f"backend must be one of {', '.join(_BACKENDS)}. Got {backend!r}.",
                file=str(export_dir),
            )
        files = bundle.get("files", {})
        tfl = {name: export_dir / files.get(name, {}).get("path", default)
               for name, default in (("tflite", "model.tflite"), ("tflite_int8", "model_int8.tflite"))}
        sm_path = export_dir / files.get("saved_model", {}).get("path", "saved_model")
        if backend == "auto":
            backend = "tflite" if tfl["tflite"].is_file() and _has_litert() else "saved_model"
        if backend in tfl:
            path = tfl[backend]
            if not path.is_file():
                raise ExportError(
                    f"backend '{backend}' needs {path.name}, which is missing. Got files "
                    f"{sorted(p.name for p in export_dir.iterdir())}. Re-export with "
                    f"'lepton-vision export RUN --format {backend}' or use backend='saved_model'.",
                    file=str(export_dir),
                )
            from ai_edge_litert.interpreter import Interpreter

            runner = Interpreter(model_path=str(path), num_threads=num_threads).get_signature_runner(_SIGNATURE)
        else:
            if not (sm_path / "saved_model.pb").is_file():
                raise ExportError(
                    f"no SavedModel at {sm_path}. Re-run 'lepton-vision export'.",
                    file=str(export_dir),
                )
            import tensorflow as tf

            runner = tf.saved_model.load(str(sm_path)).signatures[_SIGNATURE]
        if threshold is None:
            threshold = float(bundle["threshold"]["value"])
        elif not 0.0 <= float(threshold) <= 1.0:
            raise ExportError(f"threshold override must be in [0, 1]. Got {threshold}.",
                              file=str(export_dir))
        return cls(export_dir, bundle, backend, runner, float(threshold))

    # ---------------------------------------------------------------------------------------
    def to_uint8(self, image_or_path: str | Path | np.ndarray) -> np.ndarray:
        """The uint8 HxWxC image the model is given (file decode, CT window, channels)."""
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
            return preprocess.to_uint8(raw, self.channels, self.window)
        except ValueError as exc:
            raise DataError(
                f"cannot convert pixels for the model: {exc}. Got dtype {raw.dtype}, shape "
                f"{raw.shape}; expected uint8/uint16 HxW or HxWx3, or float Hounsfield units.",
                file=where,
            ) from exc

    def score_uint8(self, img: np.ndarray) -> float:
        """Score a uint8 HxWxC image (any size) with the serve_uint8 signature."""
        img = np.ascontiguousarray(img, dtype=np.uint8)
        if self.backend.startswith("tflite"):
            out = self._runner(image=img)
        else:
            import tensorflow as tf

            out = self._runner(image=tf.constant(img))
        return float(np.asarray(out["score"]).reshape(-1)[0])

    def predict(self, image_or_path: str | Path | np.ndarray) -> Prediction:
        """Score one image: a file path, or a uint8 (or, for CT bundles, float HU) array."""
        score = self.score_uint8(self.to_uint8(image_or_path))
        # Compare in float32, as the graph does, so decisions agree with the exported model.
        decision = bool(np.float32(score) >= np.float32(self.threshold))
        path = str(image_or_path) if isinstance(image_or_path, (str, Path)) else None
        return Prediction(score=score, decision=decision, label=self.classes[int(decision)],
                          threshold=self.threshold, path=path)

    def predict_many(self, paths: Iterable[str | Path]) -> list[Prediction]:
        """Score several files in order."""
        return [self.predict(p) for p in paths]

    def iter_folder(self, folder: str | Path, recursive: bool = False) -> Iterator[Prediction]:
        """Score every supported image in a folder, in sorted path order.

        Args:
            folder: Folder to scan.
            recursive: Also scan subfolders.

        Raises:
            DataError: The folder does not exist.
        """
        for p in list_images(folder, recursive=recursive):
            yield self.predict(p)

    def iter_video(self, path: str | Path, stride: int = 1) -> Iterator[Prediction]:
        """Score every ``stride``-th frame of a video (e.g. a cine loop), in order; each
        result's ``path`` is ``file#frame``.

        Raises:
            DataError: The video is missing, cannot be opened, or yields no decodable frame.
        """
        from lepton_vision.kinds.detection.predictor import iter_video_frames

        for index, rgb in iter_video_frames(path, stride=stride):
            p = self.predict(rgb)
            yield Prediction(p.score, p.decision, p.label, p.threshold, path=f"{path}#{index}")


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Supported image files (PNG/JPEG/BMP/TIFF/DICOM) in a folder, sorted.

    Raises:
        DataError: The folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("folder not found; expected a folder of images", file=str(folder))
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in PREDICT_EXTENSIONS)


def write_predictions_csv(preds: Iterable[Prediction], out_path: str | Path) -> None:
    """Write predictions as CSV with columns path, score, decision (0/1), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "score", "decision"])
    for p in preds:
        writer.writerow(["" if p.path is None else p.path, repr(float(p.score)), int(p.decision)])
    atomic_write_text(out_path, buf.getvalue())


def bundle_kind(export_dir: str | Path) -> str:
    """The ``kind`` of a finished export ("binary_classification" when the bundle predates kinds).

    Raises:
        ExportError: No readable bundle.json of a known schema version.
    """
    return str(_load_bundle_json(Path(export_dir)).get("kind", "binary_classification"))


def _has_litert() -> bool:
    import importlib.util

    return importlib.util.find_spec("ai_edge_litert") is not None


def _load_bundle_json(export_dir: Path) -> dict[str, Any]:
    """bundle.json of a finished export, any kind (schema version checked)."""
    path = export_dir / "bundle.json"
    if not path.is_file():
        raise ExportError(
            "no bundle.json: this is not a finished export (bundle.json is written last, after "
            "the parity check). Got "
            + (f"files {sorted(p.name for p in export_dir.iterdir())}" if export_dir.is_dir()
               else "no such folder")
            + ". Run 'lepton-vision export RUN' or point at RUN/export.",
            file=str(export_dir),
        )
    try:
        bundle = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read the bundle: {exc}. Re-run the export.", file=str(path)) from exc
    version = bundle.get("schema_version") if isinstance(bundle, dict) else None
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise ExportError(
            f"unknown bundle schema_version. Got {version!r}; this lepton-vision reads "
            f"{list(SUPPORTED_SCHEMA_VERSIONS)}. Upgrade lepton-vision or re-export the model.",
            file=str(path),
        )
    return bundle


def _read_bundle(export_dir: Path) -> dict[str, Any]:
    bundle = _load_bundle_json(export_dir)
    path = export_dir / "bundle.json"
    if bundle.get("kind") == "object_detection":
        raise ExportError(
            "this is an object-detection bundle; load it with "
            "lepton_vision.kinds.detection.predictor.DetPredictor.from_bundle (the CLI 'predict' does so itself).",
            file=str(path),
        )
    missing = [k for k in ("classes", "threshold", "input") if k not in bundle]
    if missing:
        raise ExportError(f"bundle lacks {missing}. Re-run the export.", file=str(path))
    return bundle

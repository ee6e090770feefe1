"""What every kind's Predictor shares: open an export's model (SavedModel or LiteRT) and call it.

A predictor reads ``bundle.json`` (:func:`lepton_vision.export.bundle.load_bundle_json`), opens the
``serve_uint8`` signature of the backend asked for (:func:`open_runner`) and hands it uint8
images; the kind's predictor (``kinds/<kind>/predictor.py``) decodes files the way training did
and turns the outputs into its typed results. The Predictor imports no training code; TensorFlow
or LiteRT are imported only when a bundle is opened.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lepton_vision.config.errors import DataError, ExportError
from lepton_vision.data import preprocess
from lepton_vision.export import bundle as bundle_io
from lepton_vision.export.bundle import load_bundle_json

#: File extensions :meth:`BundlePredictor.iter_folder` reads.
PREDICT_EXTENSIONS = tuple(preprocess.IMAGE_EXTENSIONS) + tuple(preprocess.DICOM_EXTENSIONS)

Backend = Literal["auto", "saved_model", "tflite", "tflite_int8"]
BACKENDS = ("auto", "saved_model", "tflite", "tflite_int8")


def has_litert() -> bool:
    """Whether the LiteRT interpreter (``ai_edge_litert``) is installed."""
    import importlib.util

    return importlib.util.find_spec("ai_edge_litert") is not None


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files (PNG/JPEG/BMP/TIFF/DICOM) in a folder, sorted.

    Raises:
        DataError: The folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("folder not found; expected a folder of images", file=str(folder))
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in PREDICT_EXTENSIONS)


def collect_inputs(items: Iterable[str | Path], extensions: tuple[str, ...], what: str = "images",
                   check_named: bool = True) -> list[Path]:
    """Expand files and folders into the files to run, in order: a folder becomes its files with
    one of ``extensions`` (recursively, sorted); a named file is kept as given.

    ``check_named=False`` keeps a named file whatever its extension (DICOM files often have none;
    the decoder sniffs the content and names the file if it cannot read it).

    Raises:
        DataError: A path does not exist, a named file has another extension (``check_named``),
            or a folder holds none of ``what``.
    """
    out: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
            if not found:
                raise DataError(f"no {what} in this folder. Read extensions: {' '.join(extensions)}.", file=str(item))
            out += found
        elif item.is_file():
            if check_named and item.suffix.lower() not in extensions:
                raise DataError(f"unsupported file type '{item.suffix or '(no extension)'}'. Expected {what}: "
                                f"{' '.join(extensions)}.", file=str(item))
            out.append(item)
        else:
            raise DataError("no such file or folder", file=str(item))
    return out


def read_kind_bundle(export_dir: Path, kind: str, required: tuple[str, ...]) -> dict[str, Any]:
    """bundle.json of an export of ``kind`` holding the ``required`` keys.

    Raises:
        ExportError: Not a finished export, another kind, or a key is missing.
    """
    bundle = load_bundle_json(export_dir)
    path = export_dir / "bundle.json"
    found = bundle.get("kind", "binary_classification")
    if found != kind:
        raise ExportError(
            f"this is a '{found}' bundle, not a '{kind}' one. Open it with lepton_vision.Predictor.from_bundle, "
            "which picks the predictor of the bundle's kind.",
            file=str(path),
        )
    missing = [k for k in required if k not in bundle]
    if missing:
        raise ExportError(f"bundle lacks {missing}. Re-run the export.", file=str(path))
    return bundle


def open_runner(export_dir: Path, bundle: dict[str, Any], backend: str, num_threads: int | None,
                signature: str = bundle_io.DEFAULT_SIGNATURE, tflite_file: str | None = None) -> tuple[str, Any]:
    """(backend, signature runner) of ``signature`` (``serve_uint8``) in an export.

    ``backend``: "tflite" (LiteRT, float32), "tflite_int8" (LiteRT, int8), "saved_model"
    (TensorFlow) or "auto": float TFLite when model.tflite exists and ai_edge_litert is installed,
    else the SavedModel. ``tflite_file`` replaces the LiteRT file of either LiteRT backend (the
    float ``model_ood.tflite`` of ``serve_ood``).

    Raises:
        ExportError: An unknown backend, or the file it needs is missing.
    """
    if backend not in BACKENDS:
        raise ExportError(f"backend must be one of {', '.join(BACKENDS)}. Got {backend!r}.", file=str(export_dir))
    files = bundle.get("files", {})
    tfl = {name: export_dir / (tflite_file or files.get(name, {}).get("path", default))
           for name, default in (("tflite", bundle_io.TFLITE_FILE), ("tflite_int8", bundle_io.TFLITE_INT8_FILE))}
    sm_path = export_dir / files.get("saved_model", {}).get("path", bundle_io.SAVED_MODEL_DIR)
    if backend == "auto":
        backend = "tflite" if tfl["tflite"].is_file() and has_litert() else "saved_model"
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

        return backend, Interpreter(model_path=str(path), num_threads=num_threads).get_signature_runner(signature)
    if not (sm_path / "saved_model.pb").is_file():
        raise ExportError(f"no SavedModel at {sm_path}. Re-run 'lepton-vision export'.", file=str(export_dir))
    import tensorflow as tf

    return backend, tf.saved_model.load(str(sm_path)).signatures[signature]


def check_threshold_override(value: float, what: str, export_dir: Path) -> float:
    """An override of a bundle threshold, checked to lie in [0, 1].

    Raises:
        ExportError: Outside [0, 1].
    """
    if not 0.0 <= float(value) <= 1.0:
        raise ExportError(f"{what} override must be in [0, 1]. Got {value}.", file=str(export_dir))
    return float(value)


@dataclass
class Observation:
    """What ``lepton-vision monitor`` records of one input, whatever the kind.

    Attributes:
        score: The score whose distribution the bundle's reference holds (classification:
            ``score``; detection: ``image_score``).
        positive: The decision the product acts on (classification: ``score >= threshold``;
            detection: ``alarm``).
        ood_score: How unlike the training images the input is (None without a reference).
        in_distribution: ``ood_score <= 1`` (None without a reference).
        image_stats: The reference's image statistics of the input (``image_stats`` of
            ``serve_ood``; None without a reference).
    """

    score: float
    positive: bool
    ood_score: float | None = None
    in_distribution: bool | None = None
    image_stats: np.ndarray | None = None


class BundlePredictor(ABC):
    """The part of every kind's predictor that only calls the model.

    Attributes:
        export_dir: The export folder.
        bundle: Its bundle.json.
        backend: "saved_model", "tflite" or "tflite_int8" (never "auto" once open).
    """

    def __init__(self, export_dir: Path, bundle: dict[str, Any], backend: str, runner: Any, ood: bool = True) -> None:
        self.export_dir = export_dir
        self.bundle = bundle
        self.backend = backend
        self._runner = runner
        #: Whether results carry an OOD score: the export has a reference and it was not turned off.
        self.ood = bool(ood) and bool(bundle.get("reference"))
        self._ood_runner: Any = None
        self._ood_backend = ""

    @property
    def ood_note(self) -> str:
        """Why results have no OOD score ("" when they have one)."""
        if self.ood:
            return ""
        if not self.bundle.get("reference"):
            return ("no reference: this export predates OOD references (bundle.json has no 'reference'); "
                    "re-export it with 'lepton-vision export RUN' to get an OOD score")
        return "OOD scoring turned off (ood=False)"

    @staticmethod
    def _call(backend: str, runner: Any, img: np.ndarray) -> dict[str, np.ndarray]:
        img = np.ascontiguousarray(img, dtype=np.uint8)
        if backend.startswith("tflite"):
            out = runner(image=img)
        else:
            import tensorflow as tf

            out = runner(image=tf.constant(img))
        return {k: np.asarray(v) for k, v in out.items()}

    def run_uint8(self, img: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs of ``serve_uint8`` for one uint8 H x W x C image (numpy arrays)."""
        return self._call(self.backend, self._runner, img)

    def run_ood(self, img: np.ndarray) -> dict[str, np.ndarray] | None:
        """Outputs of ``serve_ood`` (``ood_score``, ``in_distribution``, ``image_stats``,
        ``features``) for the same uint8 image, or None without a reference.

        LiteRT backends use the float ``model_ood.tflite`` when the export has it, else (and for the
        SavedModel backend) the SavedModel's ``serve_ood``.
        """
        if not self.ood:
            return None
        if self._ood_runner is None:
            from lepton_vision.export.reference import OOD_SIGNATURE, OOD_TFLITE_FILE

            files = self.bundle["reference"].get("files", {})
            lite = files.get("tflite", {}).get("path") if isinstance(files.get("tflite"), dict) else None
            backend = "tflite" if self.backend.startswith("tflite") and lite and (self.export_dir / lite).is_file() \
                else "saved_model"
            self._ood_backend, self._ood_runner = open_runner(self.export_dir, self.bundle, backend, None,
                                                              OOD_SIGNATURE, lite or OOD_TFLITE_FILE)
        return self._call(self._ood_backend, self._ood_runner, img)

    def ood_of(self, img: np.ndarray) -> tuple[float | None, bool | None]:
        """(OOD score, in distribution) of a uint8 image, (None, None) without a reference."""
        out = self.run_ood(img)
        if out is None:
            return None, None
        return float(out["ood_score"].reshape(-1)[0]), bool(int(out["in_distribution"].reshape(-1)[0]))

    def observation(self, score: float, positive: bool, img: np.ndarray) -> Observation:
        """An :class:`Observation` of a scored uint8 image (one ``serve_ood`` call when the export
        has a reference)."""
        out = self.run_ood(img)
        if out is None:
            return Observation(score=float(score), positive=bool(positive))
        return Observation(score=float(score), positive=bool(positive),
                           ood_score=float(out["ood_score"].reshape(-1)[0]),
                           in_distribution=bool(int(out["in_distribution"].reshape(-1)[0])),
                           image_stats=np.asarray(out["image_stats"], np.float64).reshape(-1))

    @abstractmethod
    def predict(self, image_or_path: str | Path | np.ndarray) -> Any:
        """One image: a file path or an array (the kind's result type)."""

    @abstractmethod
    def observe(self, image_or_path: str | Path | np.ndarray) -> Observation:
        """One image as ``lepton-vision monitor`` records it (:class:`Observation`)."""

    @property
    @abstractmethod
    def positive_threshold(self) -> float | None:
        """The threshold on :attr:`Observation.score` behind :attr:`Observation.positive` (None:
        the export has none, e.g. a detector trained without empty frames)."""

    #: What :attr:`Observation.positive` is called in reports ("positive decision", "alarm").
    positive_name = "positive decision"

    def predict_many(self, paths: Iterable[str | Path]) -> list[Any]:
        """Several files, in order."""
        return [self.predict(p) for p in paths]

    def iter_folder(self, folder: str | Path, recursive: bool = False) -> Iterator[Any]:
        """Every supported image in a folder, in sorted path order.

        Raises:
            DataError: The folder does not exist.
        """
        for p in list_images(folder, recursive=recursive):
            yield self.predict(p)

"""The export bundle every kind writes: its files, bundle.json, and the SavedModel writer.

An export folder holds ``saved_model/`` (with the kind's signatures, ``serve_uint8`` first and
published as ``serving_default``), optional LiteRT/ONNX files, ``parity.json`` and
``bundle.json``, written LAST, so its presence means "complete and parity-checked". The bundle is
self-describing (``schema_version``, ``kind``, classes, input contract, thresholds, metrics,
versions); :func:`load_bundle_json` is the one reader of it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lepton_vision.config.errors import ExportError

#: bundle.json's schema; a reader refuses versions it does not know.
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
SAVED_MODEL_DIR = "saved_model"
TFLITE_FILE = "model.tflite"
TFLITE_INT8_FILE = "model_int8.tflite"
PARITY_FILE = "parity.json"
BUNDLE_FILE = "bundle.json"
#: The endpoint registered first; Keras' ExportArchive also publishes it as "serving_default".
DEFAULT_SIGNATURE = "serve_uint8"
KNOWN_FORMATS = ("saved_model", "tflite", "tflite_int8", "onnx")


def write_saved_model(model: Any, export_dir: Path, endpoints: dict[str, Callable[..., Any]], hint: str = "") -> Path:
    """Write ``model`` with its serving ``endpoints`` (registration order: the first becomes
    ``serving_default``) as ``export_dir/saved_model``: into a temp folder beside ``export_dir``,
    then renamed into place, so an interrupted export never leaves half a SavedModel.

    Raises:
        ExportError: Keras could not trace or write it (``hint`` says what to check).
    """
    import keras

    final = export_dir / SAVED_MODEL_DIR
    staging = Path(tempfile.mkdtemp(prefix=f".{export_dir.name}.saved_model.", dir=export_dir.parent))
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        for name, fn in endpoints.items():
            archive.add_endpoint(name, fn)
        archive.write_out(str(staging / SAVED_MODEL_DIR), verbose=False)
        if final.exists():
            final.rename(staging / "old")
        (staging / SAVED_MODEL_DIR).rename(final)
    except Exception as exc:
        raise ExportError(f"{final}: writing the SavedModel failed: {type(exc).__name__}: {exc}." + (f" {hint}" if hint else "")) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def tflite_runner(model: Path | bytes, num_threads: int | None = None) -> Any:
    """A LiteRT signature runner of ``serve_uint8`` for a .tflite file or its bytes."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(model, bytes):
        return Interpreter(model_content=model, num_threads=num_threads).get_signature_runner(DEFAULT_SIGNATURE)
    return Interpreter(model_path=str(model), num_threads=num_threads).get_signature_runner(DEFAULT_SIGNATURE)


def spec_json(spec: Any) -> dict[str, Any]:
    """A ``tf.TensorSpec`` as ``{"dtype", "shape"}`` (None for an unknown rank or dimension)."""
    shape = None if spec.shape.rank is None else [d for d in spec.shape.as_list()]
    return {"dtype": spec.dtype.name, "shape": shape}


_LOADED: dict[tuple[str, int, int], Any] = {}


def load_saved_model(sm_path: Path) -> Any:
    """``tf.saved_model.load`` of a freshly written SavedModel, loaded once per export.

    The export's checks (signatures, parity, the OOD parity) each need the reloaded model; loading
    a detector's SavedModel takes 5-10 s on 2 cores, so the last one loaded is kept, keyed by its
    path and its saved_model.pb's size and modification time (a rewrite is loaded afresh).
    """
    import tensorflow as tf

    pb = Path(sm_path) / "saved_model.pb"
    st = pb.stat()
    key = (str(Path(sm_path).resolve()), st.st_mtime_ns, st.st_size)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = tf.saved_model.load(str(sm_path))
    return _LOADED[key]


def signatures_json(sm_path: Path) -> dict[str, Any]:
    """Describe the signatures as TensorFlow sees them after reloading (not as we meant them)."""
    loaded = load_saved_model(sm_path)
    out: dict[str, Any] = {}
    for name, fn in sorted(loaded.signatures.items()):
        _, kwargs = fn.structured_input_signature
        out[name] = {
            "inputs": {k: spec_json(v) for k, v in sorted(kwargs.items())},
            "outputs": {k: spec_json(v) for k, v in sorted(fn.structured_outputs.items())},
        }
    return out


def export_versions() -> dict[str, str]:
    """Versions of the runtime an export was written with (TensorFlow, Keras, LiteRT, ...)."""
    import keras
    import tensorflow as tf

    from lepton_vision.version import __version__

    versions = {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "lepton_vision": __version__,
        "numpy": np.__version__,
    }
    from importlib.metadata import PackageNotFoundError, version

    try:
        versions["ai_edge_litert"] = version("ai-edge-litert")
    except PackageNotFoundError:
        versions["ai_edge_litert"] = None  # optional runtime: recorded as absent
    return versions


def bundle_kind(export_dir: str | Path) -> str:
    """The ``kind`` of a finished export ("binary_classification" when the bundle predates kinds).

    Raises:
        ExportError: No readable bundle.json of a known schema version.
    """
    return str(load_bundle_json(Path(export_dir)).get("kind", "binary_classification"))


def load_bundle_json(export_dir: Path) -> dict[str, Any]:
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

"""Gradio demos of an exported bundle: a CT-slice classifier or an object detector.

:func:`build_demo` reads ``EXPORT_DIR/bundle.json`` and lays out the page for its ``kind``;
:func:`launch_demo` serves it on 127.0.0.1 (no share link, no analytics, an upload size limit).
``lepton-vision demo EXPORT_DIR`` and ``apps/<task>.py`` both come here.

Everything the page computes goes through :class:`ClassificationDemo` and :class:`DetectionDemo`,
plain classes around the exported model's :class:`~lepton_vision.kinds.classification.predictor.Predictor` /
:class:`~lepton_vision.kinds.detection.predictor.DetPredictor`, so tests call them without a browser. Bad
input (no file, not an image, corrupt, wrong channel count, too many pixels, a CT slice given to
a detector) raises :class:`gradio.Error` with one sentence that names the file and says what was
expected; no traceback ever reaches the page.

Uploads are decoded here, not by Gradio (the events run with ``preprocess=False``), so a corrupt
file is answered by our message rather than a Pillow exception.
"""

from __future__ import annotations

import os

# Before gradio (and huggingface_hub) are imported: no analytics, update checks or hub lookups,
# so the server makes no outbound connection (stack.md section 8).
for _key, _value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"),
                     ("HF_HUB_DISABLE_TELEMETRY", "1"), ("NO_ALBUMENTATIONS_UPDATE", "1"),
                     ("TF_CPP_MIN_LOG_LEVEL", "2")):
    os.environ.setdefault(_key, _value)

import argparse  # noqa: E402
import csv  # noqa: E402
import functools  # noqa: E402
import html  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
import warnings  # noqa: E402
import weakref  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from lepton_vision.version import __version__  # noqa: E402
from lepton_vision.data import preprocess  # noqa: E402
from lepton_vision.kinds.detection.predictor import (  # noqa: E402
    BROWSER_VIDEO_CODECS,
    CLASS_COLORS_RGB,
    DET_IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    AnnotatedVideoWriter,
    DetPredictor,
    FrameDetections,
    draw_detections,
    iter_video_frames,
    video_info,
)
from lepton_vision.config.errors import DataError, LeptonError  # noqa: E402
from lepton_vision.kinds.classification.predictor import Predictor, _load_bundle_json  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
#: Largest upload Gradio accepts (images, DICOM and videos alike).
DEFAULT_MAX_FILE_SIZE = "100mb"
#: Largest image (pixels) the demo decodes; bigger ones are refused before decoding.
DEFAULT_MAX_PIXELS = 50_000_000
#: Frames of one video run at most (after the stride); longer videos are cut there.
MAX_VIDEO_FRAMES = 300
#: Examples taken per label from the run's samples.csv.
EXAMPLES_PER_CLASS = 3
#: Small frames are drawn at least this many pixels wide/high so labels stay legible.
_DISPLAY_MIN_SIDE = 640
#: CT slices smaller than this are shown enlarged (integer factor, nearest neighbour).
_CT_MIN_SIDE = 384
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_BACKENDS = ("auto", "saved_model", "tflite", "tflite_int8")
_CT_EXTENSIONS = tuple(preprocess.IMAGE_EXTENSIONS) + tuple(preprocess.DICOM_EXTENSIONS)
_METRIC_NAMES = {
    "roc_auc": "ROC AUC", "pr_auc": "PR AUC", "f1": "F1", "precision": "Precision",
    "sensitivity": "Sensitivity (recall)", "recall": "Recall", "specificity": "Specificity",
    "accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "ap50": "AP50",
    "ap50_95": "AP50:95", "image_auc": "Image-level AUC", "image_f1": "Image-level F1",
}
_POS_STYLE = "background:#fde2e1;color:#9b1c1c;border:2px solid #e02424"
_NEG_STYLE = "background:#def7ec;color:#03543f;border:2px solid #0e9f6e"


# ---------------------------------------------------------------------------------------------
# Inputs


def _input_path(value: Any) -> tuple[Path | None, str]:
    """(path, name to show) of what a Gradio file/image/video component sent.

    Accepts the raw payload (a dict or FileData with ``path`` and ``orig_name``), a path string
    or a :class:`~pathlib.Path`; ``(None, "")`` when nothing was given.
    """
    if value is None or value == "":
        return None, ""
    if isinstance(value, dict):
        path, name = value.get("path"), value.get("orig_name")
    elif isinstance(value, (str, Path)):
        path, name = value, None
    else:
        path, name = getattr(value, "path", None), getattr(value, "orig_name", None)
    if not path:
        return None, ""
    path = Path(str(path))
    return path, str(name or path.name)


def _friendly(err: LeptonError, name: str, path: Path | None = None) -> str:
    """One user sentence from a lepton-vision error: the upload's name, not its temp path."""
    from lepton_vision.data.readers.dicom import _FIX as dicom_fix

    text = err.message.replace(dicom_fix, "").strip()
    if path is not None:
        text = text.replace(str(path), name)
    text = text.replace("data.max_image_pixels", "the demo's pixel limit")
    text = text[0].upper() + text[1:] if text else "unreadable file"
    return f"{name}: {text}" if name else text


def _err(message: str, title: str = "Error") -> gr.Error:
    """A gr.Error for a user mistake: shown on the page, not logged with a traceback."""
    return gr.Error(message, title=title, print_exception=False)


def _too_big(name: str, w: int, h: int, limit: int) -> gr.Error:
    return _err(f"{name} is {w}×{h} = {w * h:,} pixels; this demo takes images of at most "
                    f"{limit:,} pixels. Downscale it and upload it again.", title="Image too large")


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from an image or DICOM header, without decoding pixels (None if unknown)."""
    try:
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return int(im.size[0]), int(im.size[1])
    except Exception:  # noqa: BLE001 - not something Pillow reads: try DICOM, else decode decides
        pass
    try:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        return int(ds.Columns), int(ds.Rows)
    except Exception:  # noqa: BLE001 - not DICOM either: read_image gives the message
        return None


def _check_suffix(path: Path, name: str, allowed: Sequence[str], what: str,
                  allow_dicom_magic: bool = False) -> None:
    suffix = Path(name).suffix.lower() or path.suffix.lower()
    if suffix in allowed:
        return
    if allow_dicom_magic:
        from lepton_vision.data.readers.dicom import is_dicom

        if is_dicom(path):
            return
    raise _err(f"{name} is not {what}. Upload one of: {' '.join(allowed)}.",
                   title="Unsupported file")


def _named_copy(path: Path, name: str) -> Path:
    """``path`` itself when its suffix matches ``name``'s, else a hard link/copy with ``name``'s
    suffix (Gradio keeps the upload's name, but a webcam capture or API call may not)."""
    suffix = Path(name).suffix.lower()
    if not suffix or path.suffix.lower() == suffix:
        return path
    target = path.with_name(f"{path.stem}-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        os.link(path, target)
    except OSError:
        shutil.copyfile(path, target)
    return target


def _read_pixels(path: Path, name: str, max_pixels: int) -> np.ndarray:
    """Raw pixels (uint8/uint16 image or float HU for DICOM), refusing oversized images first."""
    if not path.is_file():
        raise _err(f"{name}: the upload is gone from the server (expired?). Upload it again.",
                       title="File not found")
    if path.stat().st_size == 0:
        raise _err(f"{name} is empty (0 bytes). Upload an image file.", title="Empty file")
    size = _header_size(path)
    if size is not None and size[0] * size[1] > max_pixels:
        raise _too_big(name, size[0], size[1], max_pixels)
    try:
        raw = preprocess.read_image(_named_copy(path, name), max_pixels=max_pixels)
    except DataError as e:
        raise _err(_friendly(e, name, path), title="Cannot read this file") from None
    if raw.shape[0] * raw.shape[1] > max_pixels:
        raise _too_big(name, raw.shape[1], raw.shape[0], max_pixels)
    return raw


def _check_array(img: Any, name: str, max_pixels: int) -> np.ndarray:
    """A numpy image from a webcam/API call: 2-D or H x W x 1/3/4, 8 or 16 bit, within the limit."""
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 4:  # RGBA from a browser canvas: alpha dropped
        arr = arr[:, :, :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
        raise _err(f"{name} has shape {arr.shape}; expected a grey (H×W) or colour (H×W×3) "
                       "image.", title="Wrong channel count")
    if arr.dtype not in (np.uint8, np.uint16):
        raise _err(f"{name} has {arr.dtype} pixels; expected 8- or 16-bit.", title="Unsupported pixels")
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise _too_big(name, arr.shape[1], arr.shape[0], max_pixels)
    return arr


def _with_friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Event handler wrapper: gr.Error passes, LeptonError becomes gr.Error, anything else is
    logged with its traceback on the server and shown as one sentence (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except LeptonError as e:
            raise _err(_friendly(e, ""), title="Cannot process this input") from None
        except Exception as e:  # noqa: BLE001 - the page gets one line, the log the traceback
            log.exception("demo handler %s failed", fn.__name__)
            raise _err(f"Internal error ({type(e).__name__}) while processing this input; the "
                           "server log has the details.", title="Internal error") from None

    return wrapper


# ---------------------------------------------------------------------------------------------
# Model card and examples


def _fmt(v: Any, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.{digits}f}"


def _ci(lo_hi: Any) -> str:
    """``[lo, hi]`` with 3 decimals, or "–" when the bundle has no interval."""
    if not isinstance(lo_hi, (list, tuple)) or len(lo_hi) != 2 or all(v is None for v in lo_hi):
        return "–"
    return f"[{_fmt(lo_hi[0])}, {_fmt(lo_hi[1])}]"


def _policy_text(policy: Any) -> str:
    if not isinstance(policy, dict):
        return str(policy) if policy else "not recorded"
    name = str(policy.get("policy", "?"))
    value = policy.get("value")
    return name if value is None else f"{name} {value}"


def _int8_text(bundle: dict[str, Any]) -> str:
    q = bundle.get("files", {}).get("tflite_int8")
    if not q:
        return "no int8 file in this export."
    change = q.get("metric_change") or {}
    metric = _METRIC_NAMES.get(str(change.get("metric")), str(change.get("metric", "metric")))
    measured = (f" ({metric} {_fmt(change.get('float'))} float32 vs {_fmt(change.get('int8'))} int8, "
                f"drop {float(change.get('drop', 0.0)):+.4f})") if change else ""
    verdict = "**recommended**" if q.get("recommended", True) else "**not recommended**: use model.tflite"
    return f"`{q.get('path', 'model_int8.tflite')}` {verdict}{measured}."


def _backend_text(predictor: Any) -> str:
    files = predictor.bundle.get("files", {})
    name = {"saved_model": files.get("saved_model", {}).get("path", "saved_model"),
            "tflite": files.get("tflite", {}).get("path", "model.tflite"),
            "tflite_int8": files.get("tflite_int8", {}).get("path", "model_int8.tflite")}[predictor.backend]
    kind = {"saved_model": "TensorFlow SavedModel", "tflite": "LiteRT float32",
            "tflite_int8": "LiteRT int8"}[predictor.backend]
    return f"{kind} (`{name}`)"


def model_card_markdown(bundle: dict[str, Any], backend_text: str = "") -> str:
    """The model card of a bundle as Markdown: intended use, operating point, cross-validated
    metrics with their CIs, int8 recommendation, data fingerprint, recipe and versions."""
    kind = bundle.get("kind", "binary_classification")
    metrics = bundle.get("metrics") or {}
    ci = metrics.get("ci", 0.95)
    ci_pct = f"{float(ci) * 100:.0f} %" if isinstance(ci, (int, float)) else "95 %"
    unit = metrics.get("bootstrap_unit", "image")
    group = "sequences" if kind == "object_detection" else "patients"
    unit_text = {"group": group, "image": "images"}.get(str(unit), str(unit))
    lines = [f"### Model card: {bundle.get('title', bundle.get('task', 'model'))}", ""]
    if bundle.get("intended_use"):
        lines += [f"**Intended use.** {bundle['intended_use']}", ""]
    if kind == "object_detection":
        det = bundle.get("detection") or {}
        inside = []
        if det.get("nms_iou") is not None:
            inside.append(f"NMS inside the model at IoU {_fmt(det['nms_iou'], 2)}")
        if det.get("min_score") is not None:
            inside.append(f"boxes below {_fmt(det['min_score'], 2)} are never returned")
        if det.get("max_detections") is not None:
            inside.append(f"at most {det['max_detections']} per frame")
        lines += [
            f"**Operating point.** boxes count at score ≥ {_fmt(bundle.get('score_threshold'))} "
            f"(policy {_policy_text(bundle.get('threshold_policy'))} on out-of-fold boxes)"
            + (f"; {', '.join(inside)}." if inside else "."),
        ]
        if bundle.get("image_threshold") is not None:
            lines.append(f"\"Object present\" alarm at image score (highest box score) ≥ "
                         f"{_fmt(bundle['image_threshold'])}.")
        else:
            lines.append("No \"object present\" alarm: the training data had no empty frames.")
        cis = metrics.get("ci") if isinstance(metrics.get("ci"), dict) else {}
        lines += ["", f"**Cross-validated metrics** (out-of-fold; 95 % CI, bootstrap over {unit_text})", "",
                  "| metric | value | 95 % CI |", "|---|---|---|"]
        for key in ("ap50", "ap50_95", "precision", "recall", "f1"):
            if metrics.get(key) is not None:
                lines.append(f"| {_METRIC_NAMES[key]} | {_fmt(metrics[key])} | {_ci(cis.get(key))} |")
        il = bundle.get("image_level") or {}
        if il.get("available") and il.get("auc") is not None:
            lines.append(f"| Image-level AUC (object present) | {_fmt(il['auc'])} | {_ci(cis.get('image_auc'))} |")
        per_class = metrics.get("per_class") or {}
        if len(per_class) > 1:
            lines += ["", "Per class (no CI in the bundle; precision and recall at the box threshold):", "",
                      "| class | AP50 | precision | recall | ground-truth boxes |", "|---|---|---|---|---|"]
            lines += [f"| {c} | {_fmt(v.get('ap50'))} | {_fmt(v.get('precision'))} | {_fmt(v.get('recall'))} | "
                      f"{v.get('n_gt', '–')} |" for c, v in per_class.items()]
    else:
        thr = bundle.get("threshold") or {}
        classes = bundle.get("classes", ["negative", "positive"])
        lines.append(f"**Operating point.** `{classes[-1]}` when score ≥ {_fmt(thr.get('value'), 4)} "
                     f"(policy {_policy_text(thr.get('policy'))}, chosen on out-of-fold scores).")
        cal = bundle.get("calibration")
        if cal:
            lines.append(f"Scores are temperature-scaled inside the model (T = {_fmt(cal.get('temperature'))}).")
        pooled, mean_sd = metrics.get("pooled") or {}, metrics.get("mean_sd") or {}
        lines += ["", f"**Cross-validated metrics** (pooled out-of-fold; {ci_pct} CI, bootstrap over "
                  f"{unit_text})", "", "| metric | value | 95 % CI | mean ± SD over folds |", "|---|---|---|---|"]
        for key, m in pooled.items():
            if not isinstance(m, dict):
                continue
            ms = mean_sd.get(key) or {}
            spread = f"{_fmt(ms.get('mean'))} ± {_fmt(ms.get('sd'))}" if ms else "–"
            lines.append(f"| {_METRIC_NAMES.get(key, key)} | {_fmt(m.get('value'))} | "
                         f"{_ci([m.get('lo'), m.get('hi')])} | {spread} |")
    inp = bundle.get("input") or {}
    size = inp.get("image_size", ["?", "?"])
    win = inp.get("window")
    if win and "windows" in win:
        win_text = "; CT windows " + ", ".join(f"L {w['level']:g} / W {w['width']:g} HU" for w in win["windows"])
    elif win:
        win_text = f"; DICOM rendered with the CT window level {win['level']:g} HU, width {win['width']:g} HU"
    else:
        win_text = ""
    lines += ["", f"**Input.** {size[0]}×{size[1]} px network input, {inp.get('channels', '?')} channel(s)"
              f"{win_text}; resizing{' / letterboxing' if kind == 'object_detection' else ''} happens "
              "inside the model."]
    if backend_text:
        lines += ["", f"**Served by** {backend_text}. int8 file: {_int8_text(bundle)}"]
    else:
        lines += ["", f"**int8 file:** {_int8_text(bundle)}"]
    ds, rc = bundle.get("dataset") or {}, bundle.get("recipe") or {}
    provenance = []
    if ds:
        fp = str(ds.get("fingerprint", ""))
        provenance.append(f"**Data.** `{ds.get('name', '?')}`, {ds.get('n_samples', '?')} samples"
                          + (f", fingerprint `{fp[:16]}…`" if fp else ""))
    if rc:
        sha = str(rc.get("sha256", ""))
        provenance.append(f"recipe `{rc.get('name', '?')}`" + (f" (sha256 `{sha[:12]}…`, seed {rc.get('seed', '?')})"
                                                               if sha else ""))
    if provenance:
        lines += ["", " · ".join(provenance)]
    v = bundle.get("versions") or {}
    shown = [f"{k} {v[k]}" for k in ("lepton_vision", "tensorflow", "keras", "ai_edge_litert", "python") if k in v]
    if shown:
        lines += ["", f"**Versions at export.** {' · '.join(shown)} · demo: lepton-vision {__version__}, "
                     f"Gradio {gr.__version__}"]
    return "\n".join(lines)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "sample"


def pick_examples(export_dir: str | Path, per_class: int = EXAMPLES_PER_CLASS,
                  extensions: Sequence[str] | None = None) -> list[tuple[str, Path]]:
    """A few samples per label from the run's ``samples.csv`` (next to the export folder).

    Samples are spread over distinct groups (patients, sequences) in a fixed order, files that no
    longer exist are skipped. Returns ``[(label name, path), ...]`` grouped by label (sorted by
    the label column), or ``[]`` when there is no samples.csv.
    """
    csv_path = Path(export_dir).resolve().parent / "samples.csv"
    if not csv_path.is_file():
        return []
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_label: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        path = r.get("path") or ""
        if not path or (extensions and Path(path).suffix.lower() not in extensions):
            continue
        by_label.setdefault(str(r.get("label", "")), []).append(r)
    picked: list[tuple[str, Path]] = []
    for label in sorted(by_label, key=lambda s: (len(s), s)):
        group_rows = by_label[label]
        firsts: dict[str, dict[str, str]] = {}
        for r in group_rows:  # one sample per group (patient / sequence), the middle one
            firsts.setdefault(r.get("group") or r.get("sample_id") or r["path"], r)
        candidates = list(firsts.values())
        step = max(1, len(candidates) // max(1, per_class))
        chosen = [r for r in candidates[::step] if Path(r["path"]).is_file()][:per_class]
        picked += [(str(r.get("label_name") or label), Path(r["path"])) for r in chosen]
    return picked


def _stage_examples(items: Sequence[tuple[str, Path] | str | Path], into: Path) -> list[str]:
    """Copy example files into the demo's temp folder under ``<label>_<name>`` names (so Gradio
    may serve them and the data folder is never exposed); returns the copies' paths."""
    into.mkdir(parents=True, exist_ok=True)
    out = []
    for item in items:
        label, path = item if isinstance(item, tuple) else ("", Path(item))
        path = Path(path)
        if not path.is_file():
            continue
        stem = _safe_name(f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem)
        target = into / f"{_safe_name(label) + '_' if label else ''}{stem}{path.suffix.lower()}"
        shutil.copyfile(path, target)
        out.append(str(target))
    return out


# ---------------------------------------------------------------------------------------------
# Classification (CT slices)


@dataclass
class ClassificationResult:
    """What the CT page shows for one slice.

    Attributes:
        name: The uploaded file's name.
        score: Probability of the positive class (the exported model's ``score``).
        decision: ``score >= threshold``.
        label: The class the decision stands for.
        threshold: The threshold applied (the slider's value).
        model_image: uint8 H x W x C: the slice as the model gets it (DICOM windowed).
        display: ``model_image`` as RGB.
        image: ``display`` or, with Grad-CAM on, the heat-map overlay.
        heat: Grad-CAM map float32 [h, w] in [0, 1] at the network size, or None.
        latency_ms: Time of the model call.
        details: Markdown lines about the input and the model call.
    """

    name: str
    score: float
    decision: bool
    label: str
    threshold: float
    model_image: np.ndarray
    display: np.ndarray
    image: np.ndarray
    heat: np.ndarray | None
    latency_ms: float
    details: list[str] = field(default_factory=list)


class ClassificationDemo:
    """Scores uploaded slices with a classification bundle (the CT page's logic).

    Args:
        export_dir: An export folder (``RUN/export``) of kind ``binary_classification``.
        backend: Predictor backend (``auto``: LiteRT float32 when installed, else SavedModel).
        max_pixels: Refuse larger images.
        num_threads: LiteRT threads (None: LiteRT's default).
    """

    def __init__(self, export_dir: str | Path, backend: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
                 num_threads: int | None = None) -> None:
        self.export_dir = Path(export_dir)
        predictor = Predictor.from_bundle(self.export_dir, backend=backend, num_threads=num_threads)
        if not isinstance(predictor, Predictor):
            raise LeptonError(f"{self.export_dir}: this is an object-detection export; use DetectionDemo.")
        self.predictor: Predictor = predictor
        self.bundle = predictor.bundle
        self.classes = list(predictor.classes)
        self.threshold = float(predictor.threshold)
        self.max_pixels = int(max_pixels)
        self._lock = threading.Lock()
        self._explainer: Any = None
        keras_file = self.bundle.get("files", {}).get("keras_model", {}).get("path", "model.keras")
        self.cam_available = (self.export_dir / keras_file).is_file()
        self.cam_note = "" if self.cam_available else (
            f"Grad-CAM needs {keras_file}, which this export lacks (re-export with 'lepton-vision export RUN').")

    # -----------------------------------------------------------------------------------
    def decide(self, score: float, threshold: float | None = None) -> tuple[bool, str, float]:
        """(decision, label, threshold) for a score; float32 comparison as in the exported graph."""
        thr = self.threshold if threshold is None else float(threshold)
        if not 0.0 <= thr <= 1.0:
            raise _err(f"The threshold must be between 0 and 1. Got {thr}.", title="Bad threshold")
        decision = bool(np.float32(score) >= np.float32(thr))
        return decision, self.classes[int(decision)], thr

    def _load(self, image: Any) -> tuple[np.ndarray, str, list[str]]:
        """(uint8 H x W x C model image, name, notes) of an upload or array."""
        notes: list[str] = []
        if isinstance(image, np.ndarray):
            name = "image array"
            raw = _check_array(image, name, self.max_pixels) if not np.issubdtype(image.dtype, np.floating) else image
        else:
            path, name = _input_path(image)
            if path is None:
                raise _err("Upload a CT slice first (PNG, JPEG or DICOM).", title="No image")
            _check_suffix(path, name, _CT_EXTENSIONS, "a PNG, JPEG, BMP, TIFF or DICOM image",
                          allow_dicom_magic=True)
            raw = _read_pixels(path, name, self.max_pixels)
        if np.issubdtype(raw.dtype, np.floating):
            lo, hi = float(np.nanmin(raw)), float(np.nanmax(raw))
            notes.append(f"DICOM {raw.shape[1]}×{raw.shape[0]}, {lo:.0f} … {hi:.0f} HU")
            if self.predictor.window is None:
                raise _err(f"{name} holds Hounsfield units (DICOM), but this model was trained on "
                               "8-bit images and its export has no CT window. Upload a PNG or JPEG.",
                               title="DICOM not supported by this model")
            notes.append(_window_text(self.predictor.window))
        else:
            kind = "colour" if raw.ndim == 3 else "grey"
            notes.append(f"{kind} {raw.dtype.itemsize * 8}-bit image {raw.shape[1]}×{raw.shape[0]}, used as it "
                         "is (the CT window applies to DICOM Hounsfield units only)")
            if raw.ndim == 3 and self.predictor.channels == 1:
                gr.Warning(f"{name} is a colour image; this model takes one grey channel, so it was "
                           "converted to grey.")
                notes.append("converted to grey (the model takes 1 channel)")
        try:
            img = self.predictor.to_uint8(raw)
        except DataError as e:
            raise _err(_friendly(e, name), title="Wrong image format") from None
        return img, name, notes

    def classify(self, image: Any, threshold: float | None = None, show_cam: bool = False) -> ClassificationResult:
        """Score one slice: an upload payload, a file path or a uint8/HU array.

        Args:
            image: The upload (Gradio payload dict), a path, or an array.
            threshold: Decision threshold (default: the exported operating point).
            show_cam: Also compute the Grad-CAM overlay (needs model.keras in the export).

        Raises:
            gradio.Error: No file, not an image, unreadable, wrong channel count, too large.
        """
        img, name, notes = self._load(image)
        with self._lock:
            t0 = time.perf_counter()
            score = self.predictor.score_uint8(img)
            latency = (time.perf_counter() - t0) * 1000.0
        decision, label, thr = self.decide(score, threshold)
        display = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
        heat = None
        if show_cam:
            try:
                heat = self.gradcam(img)
            except gr.Error as e:  # the score stands; say why there is no overlay
                gr.Warning(str(e))
                notes.append(f"no Grad-CAM: {e}")
        shown = display if heat is None else self.overlay(img, heat)
        h, w = self.predictor.image_size
        notes.append(f"model input {h}×{w}×{self.predictor.channels}, {_backend_text(self.predictor)}, "
                     f"{latency:.1f} ms")
        return ClassificationResult(name=name, score=score, decision=decision, label=label, threshold=thr,
                                    model_image=img, display=display, image=shown, heat=heat, latency_ms=latency,
                                    details=notes)

    def gradcam(self, img_uint8: np.ndarray) -> np.ndarray:
        """Grad-CAM map (float32 [h, w] in [0, 1]) of the positive score, from model.keras.

        Raises:
            gradio.Error: The export has no Keras model, or it has no Grad-CAM layer.
        """
        if not self.cam_available:
            raise _err(self.cam_note, title="Grad-CAM not available")
        from lepton_vision.kinds.classification.explain import gradcam_with_scores, load_explainer

        with self._lock:
            if self._explainer is None:
                self._explainer = load_explainer(self.export_dir)
            ex = self._explainer
            x = preprocess.to_model_input(img_uint8, ex.size_hw)[None]
            try:
                heat, _ = gradcam_with_scores(ex.model, x, ex.layer)
            except LeptonError as e:
                raise _err(f"Grad-CAM is not available for this model: {e.message}",
                           title="Grad-CAM not available") from None
        return heat[0]

    @staticmethod
    def overlay(img_uint8: np.ndarray, heat: np.ndarray) -> np.ndarray:
        """The heat map blended over the slice (uint8 RGB)."""
        from lepton_vision.kinds.classification.explain import overlay

        return overlay(img_uint8, heat)


def enlarge(img: np.ndarray, min_side: int = _CT_MIN_SIDE) -> np.ndarray:
    """An integer-factor nearest-neighbour enlargement (up to 8x) of a small image, so the page
    shows it at a readable size without inventing pixels; images at least ``min_side`` high or
    wide are returned as they are."""
    h, w = img.shape[:2]
    if max(h, w) >= min_side:
        return img
    s = min(8, math.ceil(min_side / max(h, w)))
    return np.repeat(np.repeat(img, s, axis=0), s, axis=1)


def _window_text(window: Any) -> str:
    if window and isinstance(window[0], (tuple, list)):
        return "rendered with the bundle's CT windows " + ", ".join(f"L {lv:g} / W {wd:g} HU" for lv, wd in window)
    level, width = window
    return f"rendered with the bundle's CT window: level {level:g} HU, width {width:g} HU"


def decision_html(result_or_score: ClassificationResult | float, threshold: float, classes: Sequence[str]) -> str:
    """The decision badge: class, score and the threshold it was compared with."""
    score = result_or_score.score if isinstance(result_or_score, ClassificationResult) else float(result_or_score)
    decision = bool(np.float32(score) >= np.float32(threshold))
    label = html.escape(str(classes[int(decision)]))
    rel = "≥" if decision else "<"
    style = _POS_STYLE if decision else _NEG_STYLE
    return (f"<div id='ct-decision-badge' style='{style};border-radius:10px;padding:10px 14px'>"
            f"<div style='font-size:1.5em;font-weight:700'>{label}</div>"
            f"<div>score {score:.4f} {rel} threshold {threshold:.4f}</div></div>")


def _ct_blocks(demo: ClassificationDemo, examples: list[str], png_file: ImageFiles) -> gr.Blocks:
    b = demo.bundle
    classes = demo.classes
    pol = _policy_text((b.get("threshold") or {}).get("policy"))
    with gr.Blocks(title=f"{b.get('title', 'CT screening')} · lepton-vision", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(f"# {b.get('title', 'CT slice classifier')}\n{b.get('intended_use', '')}", elem_id="header")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                file_in = gr.File(label="CT slice: DICOM (.dcm), PNG or JPEG", file_count="single",
                                  file_types=list(_CT_EXTENSIONS), type="filepath", elem_id="ct-file")
                thr = gr.Slider(0.0, 1.0, value=round(demo.threshold, 4), step=0.0001,
                                label=f"Decision threshold ('{classes[-1]}' when score ≥ threshold)",
                                info=f"Starts at the exported operating point {demo.threshold:.4f} ({pol} "
                                     "on out-of-fold scores). Moving it re-decides without re-running the model.",
                                elem_id="ct-threshold")
                cam = gr.Checkbox(value=False, label="Grad-CAM overlay (where the model looked)",
                                  info=demo.cam_note or "Computed from model.keras; the first use loads TensorFlow "
                                                        "(a few seconds).",
                                  interactive=demo.cam_available, elem_id="ct-cam")
                run = gr.Button("Score slice", variant="primary", elem_id="ct-run")
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[file_in], elem_id="ct-examples",
                                label="Examples from the training data (file name = dataset label)",
                                examples_per_page=12)
            with gr.Column(scale=1):
                image_out = gr.Image(label="Slice as the model sees it", type="filepath",
                                     interactive=False, elem_id="ct-image")
                decision = gr.HTML(elem_id="ct-decision")
                with gr.Row():
                    score = gr.Textbox(label=f"Score (probability of '{classes[-1]}')", interactive=False,
                                       elem_id="ct-score")
                    label = gr.Textbox(label="Decision", interactive=False, elem_id="ct-label")
                details = gr.Markdown(elem_id="ct-details")
        with gr.Accordion("Model card", open=True, elem_id="model-card"):
            gr.Markdown(model_card_markdown(b, _backend_text(demo.predictor)))
        state = gr.State(None)

        def _outputs(r: ClassificationResult) -> tuple[Any, ...]:
            st = {"score": r.score, "display": r.display, "model_img": r.model_image, "heat": r.heat}
            return (png_file(enlarge(r.image)), decision_html(r, r.threshold, classes), f"{r.score:.4f}", r.label,
                    f"**{html.escape(r.name)}** · " + " · ".join(r.details), st)

        @_with_friendly_errors
        def on_score(file: Any, threshold: float, show_cam: bool) -> tuple[Any, ...]:
            return _outputs(demo.classify(file, threshold, bool(show_cam)))

        @_with_friendly_errors
        def on_file(file: Any, threshold: float, show_cam: bool) -> tuple[Any, ...]:
            if _input_path(file)[0] is None:  # cleared: clear the results, no error
                return None, "", "", "", "", None
            return _outputs(demo.classify(file, threshold, bool(show_cam)))

        @_with_friendly_errors
        def on_threshold(st: dict[str, Any] | None, threshold: float) -> tuple[Any, ...]:
            if not st:
                return gr.skip(), gr.skip()
            decision_, label_, thr_ = demo.decide(st["score"], threshold)
            return decision_html(st["score"], thr_, classes), label_

        @_with_friendly_errors
        def on_cam(st: dict[str, Any] | None, show_cam: bool) -> tuple[Any, ...]:
            if not st:
                return gr.skip(), gr.skip()
            if not show_cam:
                return png_file(enlarge(st["display"])), st
            if st.get("heat") is None:
                st = {**st, "heat": demo.gradcam(st["model_img"])}
            return png_file(enlarge(demo.overlay(st["model_img"], st["heat"]))), st

        outs = [image_out, decision, score, label, details, state]
        common = dict(preprocess=False, concurrency_id="model", show_progress="minimal")
        cleared = (None, "", "", "", "", None)
        run.click(on_score, [file_in, thr, cam], outs, **common)
        # A new file first clears the old result, so a refused upload never leaves one on screen.
        file_in.change(lambda: cleared, None, outs, queue=False, show_progress="hidden").then(
            on_file, [file_in, thr, cam], outs, **common)
        thr.change(on_threshold, [state, thr], [decision, label], preprocess=False, concurrency_limit=None,
                   show_progress="hidden")
        cam.change(on_cam, [state, cam], [image_out, state], **common)
    return blocks


# ---------------------------------------------------------------------------------------------
# Detection


def class_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Greedy class-wise NMS: indices (in descending score order) of the boxes kept.

    A box is dropped when it overlaps a higher-scoring box of the same class with IoU > ``iou``
    (the rule of TensorFlow's NMS, which the exported graph uses).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    suppressed = np.zeros(len(boxes), bool)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        rest = order[pos + 1:]
        rest = rest[(classes[rest] == classes[i]) & ~suppressed[rest]]
        if not len(rest):
            continue
        ix1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        iy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        ix2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        iy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
        union = area[i] + area[rest] - inter
        ious = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        suppressed[rest[ious > iou]] = True
    return np.asarray(keep, dtype=np.int64)


def filter_detections(det: FrameDetections, score_threshold: float, nms_iou: float,
                      exported_nms_iou: float) -> FrameDetections:
    """The boxes at or above ``score_threshold`` after an extra class-wise NMS at ``nms_iou``.

    The exported graph already ran NMS at ``exported_nms_iou``; at or above it the extra NMS
    cannot remove anything and is skipped, so the result equals the model's own output.
    """
    keep = det.above(score_threshold)
    boxes, scores, classes = det.boxes[keep], det.scores[keep], det.classes[keep]
    if float(nms_iou) < float(exported_nms_iou) and len(scores) > 1:
        idx = np.sort(class_nms(boxes, scores, classes, float(nms_iou)))
        boxes, scores, classes = boxes[idx], scores[idx], classes[idx]
    return replace(det, boxes=boxes, scores=scores, classes=classes, threshold=float(score_threshold),
                   count=int(len(scores)))


@dataclass
class DetectionResult:
    """What the detection page shows for one image.

    Attributes:
        name: The uploaded file's name (or "webcam frame").
        image: uint8 RGB with the boxes drawn (small frames enlarged for legibility).
        detections: Boxes at or above the score threshold after the extra NMS (original pixels).
        raw: Every box the model returned (score >= the bundle's min_score).
        frame: The input frame, uint8 RGB.
        score_threshold: The slider's box threshold.
        nms_iou: The slider's NMS IoU.
        per_class: ``{class: (boxes, max score)}`` over the shown boxes, every class listed.
        latency_ms: Time of the model call (letterbox, network and NMS inside the graph).
        decode_ms: Time to read and decode the upload.
    """

    name: str
    image: np.ndarray
    detections: FrameDetections
    raw: FrameDetections
    frame: np.ndarray
    score_threshold: float
    nms_iou: float
    per_class: dict[str, tuple[int, float]]
    latency_ms: float
    decode_ms: float

    @property
    def count(self) -> int:
        """Boxes shown."""
        return int(self.detections.count)


@dataclass
class VideoResult:
    """The annotated video and its summary.

    Attributes:
        path: The annotated video (VP8 WebM when OpenCV can write it, else mp4v MP4 / MJPG AVI).
        name: The uploaded file's name.
        frames_run: Frames the model ran on.
        frames_in_video: Frames the container reports (0 when unknown).
        stride: Every n-th frame was run.
        capped: The frame cap cut the video short.
        frames_with_boxes: Frames with at least one shown box.
        alarm_frames: Frames whose image score reached the bundle's image threshold.
        per_class: ``{class: (boxes over all frames, max score)}``.
        latency_ms: Model time per frame, one entry per frame run.
        seconds: Wall time of the whole run (decode, model, drawing, encoding).
    """

    path: Path
    name: str
    frames_run: int
    frames_in_video: int
    stride: int
    capped: bool
    frames_with_boxes: int
    alarm_frames: int
    per_class: dict[str, tuple[int, float]]
    latency_ms: list[float]
    seconds: float


class DetectionDemo:
    """Detects objects in uploaded images, webcam frames and videos (the detection page's logic).

    Args:
        export_dir: An export folder of kind ``object_detection``.
        backend: Predictor backend (``auto``: LiteRT float32 when installed, else SavedModel).
        max_pixels: Refuse larger images and video frames.
        max_video_frames: Frames of one video run at most.
        num_threads: LiteRT threads (None: LiteRT's default).
        work_dir: Where annotated videos are written (default: a temp folder removed with the demo).
    """

    def __init__(self, export_dir: str | Path, backend: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_video_frames: int = MAX_VIDEO_FRAMES, num_threads: int | None = None,
                 work_dir: str | Path | None = None) -> None:
        self.export_dir = Path(export_dir)
        predictor = Predictor.from_bundle(self.export_dir, backend=backend, num_threads=num_threads)
        if not isinstance(predictor, DetPredictor):
            raise LeptonError(f"{self.export_dir}: this is a classification export; use ClassificationDemo.")
        self.predictor: DetPredictor = predictor
        self.bundle = predictor.bundle
        self.classes = list(predictor.classes)
        self.score_threshold = float(predictor.score_threshold)
        det = self.bundle.get("detection") or {}
        self.nms_iou = float(det.get("nms_iou", 0.5))
        self.min_score = float(det.get("min_score", 0.0))
        self.max_pixels = int(max_pixels)
        self.max_video_frames = int(max_video_frames)
        self.colors = CLASS_COLORS_RGB if len(self.classes) > 1 else None
        self._lock = threading.Lock()
        self.work_dir = _work_dir(self, work_dir)

    # -----------------------------------------------------------------------------------
    def _frame(self, image: Any) -> tuple[np.ndarray, str]:
        if isinstance(image, np.ndarray):
            name = "webcam frame"
            arr = _check_array(image, name, self.max_pixels)
            return preprocess.to_uint8(arr, 3, None), name
        path, name = _input_path(image)
        if path is None:
            raise _err("Upload an image (or take a webcam picture) first.", title="No image")
        _check_suffix(path, name, DET_IMAGE_EXTENSIONS, "an image (PNG, JPEG, BMP or TIFF)",
                      allow_dicom_magic=True)
        raw = _read_pixels(path, name, self.max_pixels)
        if np.issubdtype(raw.dtype, np.floating):
            raise _err(f"{name} is a CT image (DICOM, Hounsfield units); this detector takes photos or "
                           f"video frames ({', '.join(DET_IMAGE_EXTENSIONS)}).", title="Not a photo")
        return preprocess.to_uint8(raw, 3, None), name

    def _run(self, rgb: np.ndarray, name: str, frame: int | None = None) -> tuple[FrameDetections, float]:
        with self._lock:
            t0 = time.perf_counter()
            det = self.predictor.predict_array(rgb, path=name, frame=frame)
            return det, (time.perf_counter() - t0) * 1000.0

    def _thresholds(self, score_threshold: float | None, nms_iou: float | None) -> tuple[float, float]:
        thr = self.score_threshold if score_threshold is None else float(score_threshold)
        iou = self.nms_iou if nms_iou is None else float(nms_iou)
        if not 0.0 <= thr <= 1.0 or not 0.0 < iou <= 1.0:
            raise _err(f"Score threshold must be in [0, 1] and NMS IoU in (0, 1]. Got {thr}, {iou}.",
                           title="Bad setting")
        return thr, iou

    def draw(self, rgb: np.ndarray, det: FrameDetections) -> np.ndarray:
        """The frame with ``det``'s boxes, class and score drawn; frames smaller than 640 px are
        enlarged (2x, 3x or 4x) first so the labels stay legible."""
        h, w = rgb.shape[:2]
        s = min(4, max(1, math.ceil(_DISPLAY_MIN_SIDE / max(h, w)))) if max(h, w) < _DISPLAY_MIN_SIDE else 1
        if s > 1:
            rgb = cv2.resize(rgb, (w * s, h * s), interpolation=cv2.INTER_LINEAR)
            det = replace(det, boxes=det.boxes * np.float32(s), width=w * s, height=h * s)
        # Labels sized to the frame's width: the page shows every frame about 600 px wide.
        width = rgb.shape[1]
        return draw_detections(rgb, det, threshold=det.threshold, colors=self.colors,
                               font_scale=max(0.4, width / 1200), thickness=max(1, round(width / 400)))

    def per_class(self, dets: Sequence[FrameDetections]) -> dict[str, tuple[int, float]]:
        """{class: (boxes, max score)} over the given (already filtered) detections."""
        out = {c: (0, 0.0) for c in self.classes}
        for d in dets:
            for cls, s in zip(d.classes, d.scores, strict=True):
                name = self.classes[int(cls)]
                n, top = out[name]
                out[name] = (n + 1, max(top, float(s)))
        return out

    def refilter(self, raw: FrameDetections, rgb: np.ndarray, name: str, score_threshold: float | None,
                 nms_iou: float | None, latency_ms: float = 0.0, decode_ms: float = 0.0) -> DetectionResult:
        """Apply the sliders to an earlier model output (no model call)."""
        thr, iou = self._thresholds(score_threshold, nms_iou)
        shown = filter_detections(raw, thr, iou, self.nms_iou)
        return DetectionResult(name=name, image=self.draw(rgb, shown), detections=shown, raw=raw, frame=rgb,
                               score_threshold=thr, nms_iou=iou, per_class=self.per_class([shown]),
                               latency_ms=latency_ms, decode_ms=decode_ms)

    def detect(self, image: Any, score_threshold: float | None = None, nms_iou: float | None = None) -> DetectionResult:
        """Detect objects in one image: an upload payload, a path, or a uint8 array (webcam).

        Raises:
            gradio.Error: No image, not an image, unreadable, a DICOM, wrong channels, too large.
        """
        self._thresholds(score_threshold, nms_iou)
        t0 = time.perf_counter()
        rgb, name = self._frame(image)
        decode = (time.perf_counter() - t0) * 1000.0
        raw, latency = self._run(rgb, name)
        return self.refilter(raw, rgb, name, score_threshold, nms_iou, latency, decode)

    def detect_video(self, video: Any, score_threshold: float | None = None, nms_iou: float | None = None,
                     stride: int = 1, progress: Callable[..., Any] | None = None) -> VideoResult:
        """Run every ``stride``-th frame of a video (at most ``max_video_frames``) and write it
        annotated.

        Args:
            video: The upload payload or a path.
            score_threshold: Box threshold (default: the exported one).
            nms_iou: Extra NMS IoU (default: the exported one, i.e. none).
            stride: Run every n-th frame (1..).
            progress: Called as ``progress((done, total), desc=...)`` after each frame
                (a :class:`gradio.Progress` draws the bar).

        Raises:
            gradio.Error: No file, not a video, unreadable, frames too large.
        """
        thr, iou = self._thresholds(score_threshold, nms_iou)
        stride = int(stride)
        if stride < 1:
            raise _err(f"The frame stride must be 1 or more. Got {stride}.", title="Bad setting")
        path, name = _input_path(video)
        if path is None:
            raise _err("Upload a video first.", title="No video")
        _check_suffix(path, name, VIDEO_EXTENSIONS, "a video")
        if not path.is_file() or path.stat().st_size == 0:
            raise _err(f"{name} is empty or gone from the server. Upload it again.", title="No video")
        n_frames, fps = video_info(path)
        planned = min(math.ceil(n_frames / stride), self.max_video_frames) if n_frames else self.max_video_frames
        out_base = self.work_dir / f"{_safe_name(Path(name).stem)}_annotated_{uuid.uuid4().hex[:8]}"
        writer = AnnotatedVideoWriter(out_base, (fps or 10.0) / stride, codecs=BROWSER_VIDEO_CODECS)
        shown: list[FrameDetections] = []
        latencies: list[float] = []
        alarms = 0
        last_index = -1
        t_start = time.perf_counter()
        try:
            with writer:
                for k, (index, rgb) in enumerate(iter_video_frames(path, stride=stride,
                                                                  max_frames=self.max_video_frames)):
                    if k == 0 and rgb.shape[0] * rgb.shape[1] > self.max_pixels:
                        raise _too_big(name, rgb.shape[1], rgb.shape[0], self.max_pixels)
                    raw, latency = self._run(rgb, name, frame=index)
                    d = filter_detections(raw, thr, iou, self.nms_iou)
                    writer.write(self.draw(rgb, d))
                    shown.append(d)
                    latencies.append(latency)
                    alarms += int(raw.alarm)
                    last_index = index
                    if progress is not None:
                        progress((k + 1, max(planned, k + 1)), desc=f"frame {index + 1}"
                                 + (f" of {n_frames}" if n_frames else ""), unit="frames")
        except DataError as e:
            raise _err(_friendly(e, name, path), title="Cannot read this video") from None
        if writer.path is None:
            raise _err(f"{name}: no frame could be decoded.", title="Cannot read this video")
        run_frames = len(shown)
        capped = run_frames >= self.max_video_frames and (n_frames == 0 or last_index + stride < n_frames)
        return VideoResult(path=writer.path, name=name, frames_run=run_frames, frames_in_video=n_frames,
                           stride=stride, capped=capped, frames_with_boxes=sum(d.count > 0 for d in shown),
                           alarm_frames=alarms, per_class=self.per_class(shown), latency_ms=latencies,
                           seconds=time.perf_counter() - t_start)

    # -----------------------------------------------------------------------------------
    def summary_markdown(self, r: DetectionResult) -> str:
        """One paragraph under the image: boxes, object-present score, timings."""
        parts = [f"**{html.escape(r.name)}** ({r.frame.shape[1]}×{r.frame.shape[0]}): "
                 f"**{r.count} box{'es' if r.count != 1 else ''}** at score ≥ {r.score_threshold:.3f}"]
        if r.nms_iou < self.nms_iou:
            parts.append(f"extra NMS at IoU {r.nms_iou:.2f} removed "
                         f"{int(r.raw.above(r.score_threshold).sum()) - r.count}")
        if self.predictor.image_threshold is not None:
            present = "yes" if r.raw.alarm else "no"
            parts.append(f"object present: **{present}** (image score {r.raw.image_score:.3f} vs "
                         f"{self.predictor.image_threshold:.3f})")
        parts.append(f"model {r.latency_ms:.1f} ms ({_backend_text(self.predictor)}), decode {r.decode_ms:.1f} ms")
        return " · ".join(parts)

    def video_markdown(self, v: VideoResult) -> str:
        """The video run in a few lines."""
        lat = np.asarray(v.latency_ms or [0.0])
        lines = [f"**{html.escape(v.name)}**: ran {v.frames_run} frames"
                 + (f" of {v.frames_in_video}" if v.frames_in_video else "")
                 + (f" (every {_ordinal(v.stride)} frame)" if v.stride > 1 else "")
                 + f"; {v.frames_with_boxes} with boxes; "
                 + ", ".join(f"{c} {n}" for c, (n, _) in v.per_class.items()) + " boxes in total."]
        if self.predictor.image_threshold is not None:
            lines.append(f"Object present in {v.alarm_frames} of {v.frames_run} frames.")
        if v.capped:
            lines.append(f"**Stopped at the {self.max_video_frames}-frame cap**; raise the stride to cover "
                         "the whole video.")
        lines.append(f"Model {np.median(lat):.1f} ms per frame (median; mean {lat.mean():.1f} ms); "
                     f"{v.frames_run / max(v.seconds, 1e-9):.1f} frames/s including decoding, drawing and "
                     f"encoding ({v.seconds:.1f} s).")
        return "\n\n".join(lines)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _work_dir(owner: object, work_dir: str | Path | None) -> Path:
    if work_dir is not None:
        path = Path(work_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix="lepton_demo_"))
    weakref.finalize(owner, shutil.rmtree, str(path), True)
    return path


class ImageFiles:
    """Result images as PNG files with unique names, written atomically, the last ``keep`` kept.

    Why not hand Gradio numpy arrays: it saves an array under a path derived from its content
    and rewrites that file on every request, in place. Under concurrent requests with the same
    result (50 users scoring the same example), one request's download then reads a file another
    request is rewriting ("Too little data for declared Content-Length"). A file path instead is
    copied into Gradio's cache once, under a temporary name renamed into place.
    """

    def __init__(self, folder: Path, keep: int = 512) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep = int(keep)
        self._recent: list[Path] = []
        self._lock = threading.Lock()

    def __call__(self, rgb: np.ndarray | None) -> str | None:
        if rgb is None:
            return None
        img = np.asarray(rgb)
        bgr = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        ok, data = cv2.imencode(".png", bgr)
        if not ok:
            raise gr.Error("could not encode the result image as PNG")
        path = self.folder / f"result_{uuid.uuid4().hex}.png"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data.tobytes())
        tmp.replace(path)
        with self._lock:
            self._recent.append(path)
            old, self._recent = self._recent[:-self.keep], self._recent[-self.keep:]
        for o in old:  # long since copied into Gradio's cache and served
            o.unlink(missing_ok=True)
        return str(path)


def _counts_table(per_class: dict[str, tuple[int, float]]) -> list[list[Any]]:
    return [[c, n, round(top, 3) if n else None] for c, (n, top) in per_class.items()]


def _det_blocks(demo: DetectionDemo, examples: list[str], png_file: ImageFiles) -> gr.Blocks:
    b = demo.bundle
    pol = _policy_text(b.get("threshold_policy"))
    headers = ["class", "boxes", "max score"]
    with gr.Blocks(title=f"{b.get('title', 'Object detection')} · lepton-vision", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(f"# {b.get('title', 'Object detection')}\n{b.get('intended_use', '')}", elem_id="header")
        with gr.Row():
            thr = gr.Slider(demo.min_score, 1.0, value=round(demo.score_threshold, 4), step=0.001,
                            label="Box score threshold",
                            info=f"Boxes below it are hidden. Starts at the exported {demo.score_threshold:.3f} "
                                 f"({pol} on out-of-fold boxes).", elem_id="det-threshold")
            iou = gr.Slider(0.05, 0.95, value=demo.nms_iou, step=0.05, label="NMS IoU",
                            info=f"The exported model already ran class-wise NMS at IoU {demo.nms_iou:.2f}. Lower "
                                 "values also merge less-overlapping boxes of one class; values at or above "
                                 f"{demo.nms_iou:.2f} change nothing.", elem_id="det-nms")
        with gr.Tabs():
            with gr.Tab("Image", id="image"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1):
                        img_in = gr.Image(label="Frame: upload, webcam or paste", type="filepath",
                                          sources=["upload", "webcam", "clipboard"], image_mode=None,
                                          height=360, elem_id="det-image-in")
                        run = gr.Button("Detect", variant="primary", elem_id="det-run")
                        if examples:
                            gr.Examples(examples=[[p] for p in examples], inputs=[img_in], elem_id="det-examples",
                                        label="Examples from the training data (file name = with/without objects)",
                                        examples_per_page=12)
                    with gr.Column(scale=1):
                        img_out = gr.Image(label="Detections", type="filepath", interactive=False,
                                           elem_id="det-image-out")
                        with gr.Row():
                            count = gr.Textbox(label="Boxes shown", interactive=False, elem_id="det-count")
                            img_score = gr.Textbox(label="Image score (object present)", interactive=False,
                                                   elem_id="det-image-score")
                            latency = gr.Textbox(label="Model latency (ms)", interactive=False,
                                                 elem_id="det-latency")
                        table = gr.Dataframe(headers=headers, datatype=["str", "number", "number"],
                                             label="Boxes per class", interactive=False, elem_id="det-counts")
                        summary = gr.Markdown(elem_id="det-summary")
            with gr.Tab("Video", id="video"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1):
                        # A file input, not gr.Video: any codec OpenCV decodes is run, also those the
                        # browser cannot preview (mp4v, MJPG AVI from cameras).
                        vid_in = gr.File(label="Video file (" + " ".join(VIDEO_EXTENSIONS) + ")",
                                         file_count="single", file_types=list(VIDEO_EXTENSIONS), type="filepath",
                                         elem_id="det-video-in")
                        stride = gr.Slider(1, 10, value=1, step=1, label="Run every n-th frame",
                                           info=f"At most {demo.max_video_frames} frames are run; longer videos "
                                                "stop there (the summary says so). The sliders above apply.",
                                           elem_id="det-stride")
                        vid_run = gr.Button("Detect in video", variant="primary", elem_id="det-video-run")
                    with gr.Column(scale=1):
                        vid_out = gr.Video(label="Annotated video", interactive=False, height=320,
                                           elem_id="det-video-out")
                        vid_table = gr.Dataframe(headers=headers, datatype=["str", "number", "number"],
                                                 label="Boxes per class (all frames)", interactive=False,
                                                 elem_id="det-video-counts")
                        vid_summary = gr.Markdown(elem_id="det-video-summary")
        with gr.Accordion("Model card", open=True, elem_id="model-card"):
            gr.Markdown(model_card_markdown(b, _backend_text(demo.predictor)))
        state = gr.State(None)

        def _outputs(r: DetectionResult) -> tuple[Any, ...]:
            st = {"raw": r.raw, "frame": r.frame, "name": r.name, "latency": r.latency_ms, "decode": r.decode_ms}
            return (png_file(r.image), str(r.count), f"{r.raw.image_score:.3f}", f"{r.latency_ms:.1f}",
                    _counts_table(r.per_class), demo.summary_markdown(r), st)

        empty = (None, "", "", "", _counts_table(demo.per_class([])), "", None)

        @_with_friendly_errors
        def on_detect(image: Any, threshold: float, nms: float) -> tuple[Any, ...]:
            return _outputs(demo.detect(image, threshold, nms))

        @_with_friendly_errors
        def on_image(image: Any, threshold: float, nms: float) -> tuple[Any, ...]:
            if _input_path(image)[0] is None:
                return empty
            return _outputs(demo.detect(image, threshold, nms))

        @_with_friendly_errors
        def on_sliders(st: dict[str, Any] | None, threshold: float, nms: float) -> tuple[Any, ...]:
            if not st:
                return tuple(gr.skip() for _ in range(7))
            return _outputs(demo.refilter(st["raw"], st["frame"], st["name"], threshold, nms,
                                          st["latency"], st["decode"]))

        @_with_friendly_errors
        def on_video(video: Any, threshold: float, nms: float, n: float,
                     progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008 - Gradio's API
            v = demo.detect_video(video, threshold, nms, int(n), progress=progress)
            return str(v.path), _counts_table(v.per_class), demo.video_markdown(v)

        outs = [img_out, count, img_score, latency, table, summary, state]
        common = dict(preprocess=False, concurrency_id="model")
        run.click(on_detect, [img_in, thr, iou], outs, **common)
        # A new frame first clears the old result, so a refused upload never leaves one on screen.
        img_in.change(lambda: empty, None, outs, queue=False, show_progress="hidden").then(
            on_image, [img_in, thr, iou], outs, **common)
        for slider in (thr, iou):
            slider.change(on_sliders, [state, thr, iou], outs, preprocess=False, concurrency_limit=None,
                          show_progress="hidden")
        vid_outs = [vid_out, vid_table, vid_summary]
        vid_run.click(on_video, [vid_in, thr, iou, stride], vid_outs, **common)
        vid_in.change(lambda: (None, _counts_table(demo.per_class([])), ""), None, vid_outs, queue=False,
                      show_progress="hidden")
    return blocks


# ---------------------------------------------------------------------------------------------
# Building and launching


def resolve_export_dir(path: str | Path) -> Path:
    """``path`` if it holds bundle.json, else ``path/export`` (a run directory) if that does.

    Raises:
        ExportError: Neither holds a readable bundle.json (the message says what was found).
    """
    path = Path(path)
    if not (path / "bundle.json").is_file() and (path / "export" / "bundle.json").is_file():
        path = path / "export"
    _load_bundle_json(path)  # raises the one-line ExportError
    return path


def build_demo(export_dir: str | Path, backend: str = "auto",
               examples: Sequence[str | Path | tuple[str, Path]] | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_video_frames: int = MAX_VIDEO_FRAMES,
               num_threads: int | None = None) -> gr.Blocks:
    """The demo page for an export, laid out for its bundle ``kind``.

    Args:
        export_dir: ``RUN/export`` (or ``RUN``).
        backend: "auto", "saved_model", "tflite" or "tflite_int8".
        examples: Example files (paths, or (label, path) pairs); None: a few per label from the
            run's samples.csv; []: no examples.
        max_pixels: Refuse larger images.
        max_video_frames: Frames of one video run at most (detection).
        num_threads: LiteRT threads.

    Returns:
        The Blocks (not launched); ``blocks.lepton_demo`` is the ClassificationDemo/DetectionDemo.

    Raises:
        LeptonError: No readable bundle, unknown backend or missing model file.
    """
    if backend not in _BACKENDS:
        raise LeptonError(f"backend must be one of {', '.join(_BACKENDS)}. Got {backend!r}.")
    export_dir = resolve_export_dir(export_dir)
    kind = _load_bundle_json(export_dir).get("kind", "binary_classification")
    if kind == "object_detection":
        demo: ClassificationDemo | DetectionDemo = DetectionDemo(
            export_dir, backend=backend, max_pixels=max_pixels, max_video_frames=max_video_frames,
            num_threads=num_threads)
        exts = DET_IMAGE_EXTENSIONS
    else:
        demo = ClassificationDemo(export_dir, backend=backend, max_pixels=max_pixels, num_threads=num_threads)
        exts = _CT_EXTENSIONS
    items = pick_examples(export_dir, extensions=exts) if examples is None else list(examples)
    work = demo.work_dir if isinstance(demo, DetectionDemo) else _work_dir(demo, None)
    staged = _stage_examples(items, work / "examples")
    png_file = ImageFiles(work / "results")
    blocks = (_det_blocks(demo, staged, png_file) if isinstance(demo, DetectionDemo)
              else _ct_blocks(demo, staged, png_file))
    blocks.lepton_demo = demo  # type: ignore[attr-defined]
    blocks.lepton_examples = [[p] for p in staged]  # type: ignore[attr-defined]
    return blocks


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``"user:password"`` -> ``(user, password)``; None stays None.

    Raises:
        LeptonError: Not of the form USER:PASSWORD with both parts non-empty.
    """
    if text is None:
        return None
    user, sep, password = str(text).partition(":")
    if not sep or not user or not password:
        missing = "the ':'" if not sep else ("the user name" if not user else "the password")
        raise LeptonError(f"--auth must be USER:PASSWORD with both parts non-empty, e.g. --auth "
                          f"reviewer:s3cret; the value given lacks {missing}.")
    return user, password


def launch_demo(export_dir: str | Path, host: str = DEFAULT_HOST, port: int | None = None,
                auth: tuple[str, str] | str | None = None, backend: str = "auto",
                max_file_size: str | int = DEFAULT_MAX_FILE_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS,
                examples: Sequence[str | Path | tuple[str, Path]] | None = None,
                prevent_thread_lock: bool = False, quiet: bool = False) -> Any:
    """Build and serve the demo: 127.0.0.1 by default, never a share link, no analytics.

    Args:
        export_dir: ``RUN/export`` (or ``RUN``).
        host: Interface to bind; anything but loopback exposes the demo to the network.
        port: Port (None: Gradio's default 7860, or the next free one).
        auth: ``(user, password)`` or ``"user:password"`` for a login page.
        backend: Predictor backend.
        max_file_size: Largest upload (e.g. "100mb").
        max_pixels: Largest image decoded.
        examples: See :func:`build_demo`.
        prevent_thread_lock: Return at once (tests, notebooks) instead of serving until Ctrl+C.
        quiet: Less console output.

    Returns:
        What ``gr.Blocks.launch`` returns (app, local URL, share URL None).
    """
    if isinstance(auth, str):
        auth = parse_auth(auth)
    export_dir = resolve_export_dir(export_dir)
    blocks = build_demo(export_dir, backend=backend, examples=examples, max_pixels=max_pixels)
    demo = blocks.lepton_demo  # type: ignore[attr-defined]
    bundle = demo.bundle
    if not quiet:
        print(f"lepton-vision demo: {bundle.get('task', '?')} ({bundle.get('kind', '?')}) from {export_dir}, "
              f"backend {demo.predictor.backend}; Ctrl+C stops it", flush=True)
    int8 = bundle.get("files", {}).get("tflite_int8", {})
    if demo.predictor.backend == "tflite_int8" and not int8.get("recommended", True):
        print("warning: this export's int8 model is marked NOT recommended (it lost more than the allowed "
              "metric drop); the page shows its predictions anyway. Use --backend tflite for the float model.",
              file=sys.stderr, flush=True)
    if host not in _LOOPBACK:
        print(f"warning: binding {host} makes the demo reachable from other machines"
              + ("" if auth else " WITHOUT a login (add --auth USER:PASSWORD)")
              + "; uploads are kept in Gradio's temp folder for up to 2 hours.", file=sys.stderr, flush=True)
    blocks.queue(default_concurrency_limit=1, max_size=64)
    # quiet: Gradio's own banner suggests share=True, which this demo never uses.
    result = blocks.launch(
        server_name=host, server_port=port, share=False, auth=auth,
        auth_message="lepton-vision demo: log in with the --auth credentials" if auth else None,
        max_file_size=max_file_size, show_error=False, inbrowser=False, ssr_mode=False, pwa=False,
        mcp_server=False, enable_monitoring=False, prevent_thread_lock=True, quiet=True,
        footer_links=["api", "settings"],
    )
    if not quiet:
        print(f"* Running on local URL:  {blocks.local_url}", flush=True)
    if not prevent_thread_lock:
        blocks.block_thread()  # until Ctrl+C
    return result


# ---------------------------------------------------------------------------------------------
# apps/<task>.py


def latest_export(task: str, runs_dir: str | Path) -> Path:
    """The newest finished export of ``task`` under ``runs_dir`` (``runs/*/export/bundle.json``).

    Raises:
        LeptonError: None found (the message says how to train one).
    """
    runs_dir = Path(runs_dir)
    found = []
    for bundle_path in runs_dir.glob("*/export/bundle.json"):
        try:
            task_of = json.loads(bundle_path.read_text(encoding="utf-8")).get("task")
        except (OSError, ValueError):
            continue
        if task_of == task:
            found.append((bundle_path.stat().st_mtime, bundle_path.parent))
    if not found:
        raise LeptonError(f"no finished {task} export under {runs_dir} (looked for */export/bundle.json); "
                          f"train it first: lepton-vision train recipes/{task}/baseline.yaml")
    return max(found)[1]


def app_main(task: str, argv: Sequence[str] | None = None, runs_dir: str | Path = "runs") -> int:
    """Command line of ``apps/<task>.py``: serve EXPORT_DIR, or the newest export of ``task``."""
    p = argparse.ArgumentParser(prog=f"apps/{task}.py", description=f"Gradio demo of a {task} export.")
    p.add_argument("export_dir", nargs="?", type=Path,
                   help=f"RUN/export (default: the newest {task} export under {runs_dir})")
    p.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default: 7860 or the next free one)")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="require this login")
    p.add_argument("--backend", choices=_BACKENDS, default="auto")
    args = p.parse_args(argv)
    try:
        export_dir = resolve_export_dir(args.export_dir) if args.export_dir else latest_export(task, runs_dir)
        found = _load_bundle_json(export_dir).get("task")
        if found != task:
            raise LeptonError(f"{export_dir} is a '{found}' export; this app serves {task}. Use "
                              f"apps/{found}.py or 'lepton-vision demo {export_dir}'.")
        launch_demo(export_dir, host=args.host, port=args.port, auth=parse_auth(args.auth), backend=args.backend)
    except LeptonError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0

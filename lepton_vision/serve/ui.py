"""The parts every kind's demo page is built from: reading uploads safely, friendly errors, the
model card, example files and result images.

Everything here is plain Python around Gradio's types, so a kind's page logic
(``kinds/<kind>/demo.py``) is tested without a browser. Bad input (no file, not an image,
corrupt, wrong channel count, too many pixels) raises :class:`gradio.Error` with one sentence
that names the file and says what was expected; no traceback ever reaches the page. Uploads are
decoded here, not by Gradio (the events run with ``preprocess=False``), so a corrupt file is
answered by our message rather than a Pillow exception.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import uuid
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import gradio as gr
import numpy as np

from lepton_vision.config.errors import DataError, LeptonError
from lepton_vision.data import preprocess
from lepton_vision.version import __version__

log = logging.getLogger("lepton_vision.serve.demo")


#: Largest image (pixels) the demo decodes; bigger ones are refused before decoding.
DEFAULT_MAX_PIXELS = 50_000_000


#: Frames of one video run at most (after the stride); longer videos are cut there.
MAX_VIDEO_FRAMES = 300


#: Examples taken per label from the run's samples.csv.
EXAMPLES_PER_CLASS = 3


METRIC_NAMES = {
    "roc_auc": "ROC AUC", "pr_auc": "PR AUC", "f1": "F1", "precision": "Precision",
    "sensitivity": "Sensitivity (recall)", "recall": "Recall", "specificity": "Specificity",
    "accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "ap50": "AP50",
    "ap50_95": "AP50:95", "image_auc": "Image-level AUC", "image_f1": "Image-level F1",
}


def input_path(value: Any) -> tuple[Path | None, str]:
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


def friendly(err: LeptonError, name: str, path: Path | None = None) -> str:
    """One user sentence from a lepton-vision error: the upload's name, not its temp path."""
    from lepton_vision.data.readers.dicom import FIX_HINT as dicom_fix

    text = err.message.replace(dicom_fix, "").strip()
    if path is not None:
        text = text.replace(str(path), name)
    text = text.replace("data.max_image_pixels", "the demo's pixel limit")
    text = text[0].upper() + text[1:] if text else "unreadable file"
    return f"{name}: {text}" if name else text


def user_error(message: str, title: str = "Error") -> gr.Error:
    """A gr.Error for a user mistake: shown on the page, not logged with a traceback."""
    return gr.Error(message, title=title, print_exception=False)


def too_big(name: str, w: int, h: int, limit: int) -> gr.Error:
    """The error for an image over the demo's pixel limit."""
    return user_error(f"{name} is {w}×{h} = {w * h:,} pixels; this demo takes images of at most "
                    f"{limit:,} pixels. Downscale it and upload it again.", title="Image too large")


def header_size(path: Path) -> tuple[int, int] | None:
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


def check_suffix(path: Path, name: str, allowed: Sequence[str], what: str,
                  allow_dicom_magic: bool = False) -> None:
    """Refuse a file whose extension is not in ``allowed`` (DICOM recognised by its magic bytes when allowed)."""
    suffix = Path(name).suffix.lower() or path.suffix.lower()
    if suffix in allowed:
        return
    if allow_dicom_magic:
        from lepton_vision.data.readers.dicom import is_dicom

        if is_dicom(path):
            return
    raise user_error(f"{name} is not {what}. Upload one of: {' '.join(allowed)}.",
                   title="Unsupported file")


def named_copy(path: Path, name: str) -> Path:
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


def read_pixels(path: Path, name: str, max_pixels: int) -> np.ndarray:
    """Raw pixels (uint8/uint16 image or float HU for DICOM), refusing oversized images first."""
    if not path.is_file():
        raise user_error(f"{name}: the upload is gone from the server (expired?). Upload it again.",
                       title="File not found")
    if path.stat().st_size == 0:
        raise user_error(f"{name} is empty (0 bytes). Upload an image file.", title="Empty file")
    size = header_size(path)
    if size is not None and size[0] * size[1] > max_pixels:
        raise too_big(name, size[0], size[1], max_pixels)
    try:
        raw = preprocess.read_image(named_copy(path, name), max_pixels=max_pixels)
    except DataError as e:
        raise user_error(friendly(e, name, path), title="Cannot read this file") from None
    if raw.shape[0] * raw.shape[1] > max_pixels:
        raise too_big(name, raw.shape[1], raw.shape[0], max_pixels)
    return raw


def check_array(img: Any, name: str, max_pixels: int) -> np.ndarray:
    """A numpy image from a webcam/API call: 2-D or H x W x 1/3/4, 8 or 16 bit, within the limit."""
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 4:  # RGBA from a browser canvas: alpha dropped
        arr = arr[:, :, :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
        raise user_error(f"{name} has shape {arr.shape}; expected a grey (H×W) or colour (H×W×3) "
                       "image.", title="Wrong channel count")
    if arr.dtype not in (np.uint8, np.uint16):
        raise user_error(f"{name} has {arr.dtype} pixels; expected 8- or 16-bit.", title="Unsupported pixels")
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise too_big(name, arr.shape[1], arr.shape[0], max_pixels)
    return arr


def read_upload(image: Any, *, array_name: str, missing: str, extensions: Sequence[str], what: str,
                max_pixels: int, allow_float_arrays: bool = False) -> tuple[np.ndarray, str]:
    """(raw pixels, name to show) of what a page received: an array (webcam, API) or an upload.

    Arrays are checked for shape, bit depth and size (float arrays pass as they are with
    ``allow_float_arrays``: Hounsfield units); uploads must have one of ``extensions`` (DICOM is
    also recognised by its magic bytes) and are decoded here, refusing oversized images first.

    Raises:
        gradio.Error: Nothing given (``missing``), a wrong type (``what`` says what was expected),
            an unreadable, empty or oversized file, or a bad array.
    """
    if isinstance(image, np.ndarray):
        if allow_float_arrays and np.issubdtype(image.dtype, np.floating):
            return image, array_name
        return check_array(image, array_name, max_pixels), array_name
    path, name = input_path(image)
    if path is None:
        raise user_error(missing, title="No image")
    check_suffix(path, name, extensions, what, allow_dicom_magic=True)
    return read_pixels(path, name, max_pixels), name


def with_friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Event handler wrapper: gr.Error passes, LeptonError becomes gr.Error, anything else is
    logged with its traceback on the server and shown as one sentence (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except LeptonError as e:
            raise user_error(friendly(e, ""), title="Cannot process this input") from None
        except Exception as e:  # noqa: BLE001 - the page gets one line, the log the traceback
            log.exception("demo handler %s failed", fn.__name__)
            raise user_error(f"Internal error ({type(e).__name__}) while processing this input; the "
                           "server log has the details.", title="Internal error") from None

    return wrapper


def fmt(v: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or '–' when missing or not finite."""
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.{digits}f}"


def ci_text(lo_hi: Any) -> str:
    """``[lo, hi]`` with 3 decimals, or "–" when the bundle has no interval."""
    if not isinstance(lo_hi, (list, tuple)) or len(lo_hi) != 2 or all(v is None for v in lo_hi):
        return "–"
    return f"[{fmt(lo_hi[0])}, {fmt(lo_hi[1])}]"


def policy_text(policy: Any) -> str:
    """A bundle's threshold policy in words (``min_sensitivity 0.95``)."""
    if not isinstance(policy, dict):
        return str(policy) if policy else "not recorded"
    name = str(policy.get("policy", "?"))
    value = policy.get("value")
    return name if value is None else f"{name} {value}"


def int8_text(bundle: dict[str, Any]) -> str:
    """The int8 file's recommendation and measured metric change, for the model card."""
    q = bundle.get("files", {}).get("tflite_int8")
    if not q:
        return "no int8 file in this export."
    change = q.get("metric_change") or {}
    metric = METRIC_NAMES.get(str(change.get("metric")), str(change.get("metric", "metric")))
    measured = (f" ({metric} {fmt(change.get('float'))} float32 vs {fmt(change.get('int8'))} int8, "
                f"drop {float(change.get('drop', 0.0)):+.4f})") if change else ""
    verdict = "**recommended**" if q.get("recommended", True) else "**not recommended**: use model.tflite"
    return f"`{q.get('path', 'model_int8.tflite')}` {verdict}{measured}."


def backend_text(predictor: Any) -> str:
    """The runtime and file a predictor serves from (``LiteRT float32 (`model.tflite`)``)."""
    files = predictor.bundle.get("files", {})
    name = {"saved_model": files.get("saved_model", {}).get("path", "saved_model"),
            "tflite": files.get("tflite", {}).get("path", "model.tflite"),
            "tflite_int8": files.get("tflite_int8", {}).get("path", "model_int8.tflite")}[predictor.backend]
    kind = {"saved_model": "TensorFlow SavedModel", "tflite": "LiteRT float32",
            "tflite_int8": "LiteRT int8"}[predictor.backend]
    return f"{kind} (`{name}`)"


def ood_markdown(predictor: Any, ood_score: float | None, in_distribution: bool | None) -> str:
    """How unlike the training images an input is, in words (Markdown), or why it was not checked."""
    if ood_score is None:
        return f"no out-of-distribution check ({predictor.ood_note})"
    if in_distribution:
        return f"like the training images (OOD score {ood_score:.2f} ≤ 1)"
    return (f"**⚠ unlike the training images** (OOD score {ood_score:.2f} > 1): the model was not trained on "
            "inputs like this one, so its answer may be meaningless")


def ood_warning_html(ood_score: float | None, in_distribution: bool | None, elem_id: str) -> str:
    """A visible warning block for an out-of-distribution input ("" when in distribution or unchecked)."""
    if in_distribution is not False or ood_score is None:
        return ""
    return (f"<div id='{elem_id}' role='alert' style='background:#fff4e5;color:#8a4b00;border:2px solid #f59e0b;"
            f"border-radius:10px;padding:8px 12px;margin-top:6px'><b>⚠ Out of distribution</b>: this input is "
            f"unlike the images the model was trained on (OOD score {ood_score:.2f} &gt; 1). "
            "Do not rely on the result.</div>")


def warn_if_ood(name: str, ood_score: float | None, in_distribution: bool | None) -> None:
    """A Gradio toast for an out-of-distribution input."""
    if in_distribution is False and ood_score is not None:
        gr.Warning(f"{name} is unlike the images this model was trained on (OOD score {ood_score:.2f} > 1); "
                   "do not rely on the result.")


def bootstrap_unit_text(bundle: dict[str, Any], group_noun: str) -> str:
    """What the bundle's CIs resampled, in words (``group_noun`` for groups: patients, sequences)."""
    unit = (bundle.get("metrics") or {}).get("bootstrap_unit", "image")
    return {"group": group_noun, "image": "images"}.get(str(unit), str(unit))


def card_markdown(bundle: dict[str, Any], kind_lines: list[str], backend_text: str = "") -> str:
    """A model card as Markdown: title and intended use, the kind's operating point and metrics
    (``kind_lines``), then the input contract, the int8 recommendation, data fingerprint, recipe
    and versions."""
    lines = [f"### Model card: {bundle.get('title', bundle.get('task', 'model'))}", ""]
    if bundle.get("intended_use"):
        lines += [f"**Intended use.** {bundle['intended_use']}", ""]
    lines += kind_lines
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
              f"{win_text}; resizing{' / letterboxing' if 'letterbox' in inp else ''} happens "
              "inside the model."]
    if backend_text:
        lines += ["", f"**Served by** {backend_text}. int8 file: {int8_text(bundle)}"]
    else:
        lines += ["", f"**int8 file:** {int8_text(bundle)}"]
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


def safe_name(text: str) -> str:
    """``text`` reduced to characters safe in a file name."""
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


def stage_examples(items: Sequence[tuple[str, Path] | str | Path], into: Path) -> list[str]:
    """Copy example files into the demo's temp folder under ``<label>_<name>`` names (so Gradio
    may serve them and the data folder is never exposed); returns the copies' paths."""
    into.mkdir(parents=True, exist_ok=True)
    out = []
    for item in items:
        label, path = item if isinstance(item, tuple) else ("", Path(item))
        path = Path(path)
        if not path.is_file():
            continue
        stem = safe_name(f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem)
        target = into / f"{safe_name(label) + '_' if label else ''}{stem}{path.suffix.lower()}"
        shutil.copyfile(path, target)
        out.append(str(target))
    return out


def work_dir(owner: object, work_dir: str | Path | None) -> Path:
    """``work_dir`` (created), or a temp folder removed when ``owner`` is garbage-collected."""
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

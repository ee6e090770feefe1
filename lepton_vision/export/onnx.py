"""ONNX export of a SavedModel signature (optional extra: ``pip install 'lepton-vision[onnx]'``).

tf2onnx converts the ``serve_uint8`` signature (raw uint8 image in, resize/letterbox, network,
threshold and, for detectors, NMS inside). Its trap (stack.md §5.3): on ops it cannot map it logs
``Unsupported ops`` and still exits 0 with a ``.onnx`` that onnxruntime then refuses. So a
conversion counts only when the log names no unsupported op, onnxruntime loads the file, and
its outputs match the SavedModel on real samples (checked by the caller, :mod:`export` and
:mod:`export_detection`, with the same tolerance as TFLite float).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lepton_vision.config.errors import ExportError

ONNX_FILE = "model.onnx"
OPSET = 17
INSTALL_HINT = "pip install 'lepton-vision[onnx]' (tf2onnx and onnxruntime)"
_UNSUPPORTED = re.compile(r"unsupported ops?|not supported|failed to convert node", re.IGNORECASE)


def onnx_available() -> str | None:
    """None when tf2onnx and onnxruntime are importable, else what is missing and how to add it."""
    missing = [m for m in ("tf2onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed: {INSTALL_HINT}" if missing else None


def session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session (``threads`` intra-op threads, or onnxruntime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run(sess: Any, image: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of the converted ``serve_uint8`` for one uint8 HxWxC image, by output name."""
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, (np.asarray(v) for v in sess.run(names, {"image": image}))))


def write_onnx(sm_path: Path, out: Path, signature: str = "serve_uint8", opset: int = OPSET,
               timeout_s: float = 900.0) -> Path:
    """Convert one SavedModel signature to ``out`` and check that onnxruntime loads it.

    Raises:
        ExportError: tf2onnx/onnxruntime missing, the converter failed or reported unsupported
            ops (even with exit code 0), or onnxruntime cannot load the result. No file is left
            at ``out`` then.
    """
    missing = onnx_available()
    if missing:
        raise ExportError(f"{out}: ONNX export needs {missing}.")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(sm_path), "--tag", "serve",
           "--signature_def", signature, "--opset", str(opset), "--output", str(tmp)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{out}: tf2onnx did not finish in {timeout_s:.0f} s.") from exc
    log = proc.stdout + proc.stderr
    bad = [ln.strip() for ln in log.splitlines() if _UNSUPPORTED.search(ln)]
    if proc.returncode != 0 or bad or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        detail = "; ".join(bad[:5]) or log.strip()[-800:]
        raise ExportError(
            f"{out}: tf2onnx could not convert signature '{signature}' (exit {proc.returncode}): "
            f"{detail}. The ONNX file is not written; SavedModel and TFLite are unaffected."
        )
    try:
        session(tmp)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(
            f"{out}: tf2onnx wrote a model that onnxruntime cannot load: {type(exc).__name__}: "
            f"{str(exc)[:500]}. The ONNX file is not written."
        ) from exc
    tmp.replace(out)
    return out


def export_or_reject(sm_path: Path, export_dir: Path, formats: tuple[str, ...] | list[str],
                     timings: dict[str, float]) -> tuple[Path | None, str | None]:
    """``model.onnx`` when ``onnx`` is among ``formats``: (path, None), or (None, why it was
    rejected). Without ``onnx`` an old file is removed and (None, None) returned. Records the
    seconds in ``timings["onnx"]``."""
    import time

    out = export_dir / ONNX_FILE
    if "onnx" not in formats:
        out.unlink(missing_ok=True)
        return None, None
    t = time.perf_counter()
    try:
        return write_onnx(sm_path, out, "serve_uint8"), None
    except ExportError as exc:
        return None, str(exc)
    finally:
        timings["onnx"] = round(time.perf_counter() - t, 2)


def check_or_reject(onnx_path: Path | None, rejected: str | None, parity: dict[str, Any],
                    check: Callable[[Path], dict[str, Any]], why: Callable[[dict[str, Any]], str],
                    notes: list[str]) -> tuple[Path | None, str | None]:
    """Keep the ONNX file only when onnxruntime agrees with the SavedModel.

    ``check(onnx_path)`` is the kind's parity of the ONNX file (a dict with ``pass``), recorded as
    ``parity["onnx"]``; a file that fails it is deleted and ``why(result)`` says why. A rejection
    (from the conversion or the check) is recorded in ``parity`` and ``notes``.

    Returns:
        (the ONNX file, or None; the rejection reason, or None).
    """
    if onnx_path is not None:
        parity["onnx"] = check(onnx_path)
        if not parity["onnx"]["pass"]:
            rejected = f"{onnx_path}: {why(parity['onnx'])}"
            onnx_path.unlink(missing_ok=True)
            onnx_path = None
    if rejected is not None:
        parity["onnx"] = {**parity.get("onnx", {}), "pass": False, "rejected": rejected}
        notes.append(f"ONNX export rejected: {rejected}")
    return onnx_path, rejected

"""Read one DICOM slice as float32 Hounsfield units.

pydicom does the parsing and the rescale (``RescaleSlope`` / ``RescaleIntercept``); this module
only decides what is acceptable (one grey-scale frame) and turns every pydicom failure into a
:class:`~lepton_vision.config.errors.DataError` that names the file, so a corrupt file in a folder of
thousands is found at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lepton_vision.config.errors import DataError

_MAGIC_OFFSET = 128
_MAGIC = b"DICM"
#: What to do about an unreadable DICOM file (appended to the reader's messages).
FIX_HINT = (
    "Re-export the file from the source system, or remove it "
    "(data.on_bad_file: skip leaves bad files out and counts them)."
)


def is_dicom(path: str | Path) -> bool:
    """Whether ``path`` looks like a DICOM file.

    Args:
        path: A file path.

    Returns:
        True for a ``.dcm`` extension (any case) or a file with ``DICM`` at byte 128.
    """
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as f:
            f.seek(_MAGIC_OFFSET)
            return f.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def _first(value: Any) -> float | None:
    """First value of a possibly multi-valued numeric element (WindowCenter may hold several)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _unreadable(path: Path, reason: str) -> DataError:
    return DataError(f"not a readable DICOM file ({reason}). {FIX_HINT}", file=str(path))


def read_dicom_hu(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a single-frame grey-scale DICOM image as Hounsfield units.

    Args:
        path: The DICOM file.

    Returns:
        ``(hu, meta)``: ``hu`` is an HxW float32 array (stored value x RescaleSlope +
        RescaleIntercept; slope 1 and intercept 0 when absent); ``meta`` holds ``rows``,
        ``cols``, ``patient_id``, ``instance_number``, ``slice_location``, ``modality``,
        ``window_center`` and ``window_width`` (``None`` when absent).

    Raises:
        DataError: The file is missing, not DICOM, truncated or corrupt, has no pixel data,
            is multi-frame, or is colour.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise DataError("DICOM file not found. Check the path and the dataset card's path.", file=str(path))
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as e:
        # pydicom's message suggests force=True, which is no advice for a user of this tool
        raise _unreadable(path, "no DICOM header: the 'DICM' marker at byte 128 is missing") from e
    except Exception as e:  # pydicom raises many types for damaged files; all mean "unreadable"
        raise _unreadable(path, f"{type(e).__name__}: {e}") from e

    if "PixelData" not in ds:
        raise _unreadable(path, "it has no pixel data")
    frames = _first(ds.get("NumberOfFrames", 1)) or 1
    if frames > 1:
        raise DataError(
            f"multi-frame DICOM ({int(frames)} frames) is not supported. Got NumberOfFrames={int(frames)}. "
            "Split it into one file per slice (e.g. with pydicom or dcmtk) first.",
            file=str(path),
        )
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise DataError(
            f"colour DICOM is not supported. Got SamplesPerPixel={samples} "
            f"({ds.get('PhotometricInterpretation', '?')}). Use grey-scale CT slices, or convert "
            "the images to PNG and use an image_folder or csv dataset.",
            file=str(path),
        )
    try:
        stored = ds.pixel_array
    except Exception as e:  # truncated pixel data, unsupported compression, bad attributes
        raise _unreadable(path, f"pixel data cannot be decoded: {type(e).__name__}: {e}") from e
    if stored.ndim != 2:
        raise _unreadable(path, f"expected one 2-D frame, got pixel array of shape {stored.shape}")

    slope = _first(ds.get("RescaleSlope", None))
    intercept = _first(ds.get("RescaleIntercept", None))
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    # float64 for the multiply-add so large stored values lose nothing before the cast
    hu = (stored.astype(np.float64) * slope + intercept).astype(np.float32)

    instance = _first(ds.get("InstanceNumber", None))
    meta: dict[str, Any] = {
        "rows": int(ds.get("Rows", hu.shape[0])),
        "cols": int(ds.get("Columns", hu.shape[1])),
        "patient_id": str(ds.get("PatientID", "")),
        "instance_number": None if instance is None else int(instance),
        "slice_location": _first(ds.get("SliceLocation", None)),
        "modality": str(ds.get("Modality", "")),
        "window_center": _first(ds.get("WindowCenter", None)),
        "window_width": _first(ds.get("WindowWidth", None)),
    }
    return hu, meta


def pseudonym(patient_id: str, salt: str) -> str:
    """A salted, non-reversible group id for a patient: ``"pt-" + sha256(salt + id)[:12]``.

    The salt is the dataset card's name, so the same patient gets the same group within a
    dataset, while the raw PatientID never reaches sample tables, logs, reports or bundles.

    Args:
        patient_id: The raw patient identifier (DICOM PatientID or a manifest group value).
        salt: The dataset card's name.

    Returns:
        ``pt-`` followed by 12 hex digits.
    """
    import hashlib

    return "pt-" + hashlib.sha256((salt + patient_id).encode("utf-8")).hexdigest()[:12]

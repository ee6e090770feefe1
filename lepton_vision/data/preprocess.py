"""Deterministic per-image operations shared by training, export and the predictor.

There is one preprocessing truth (house rule 6): decode -> raw pixels (:func:`read_image`) ->
uint8 HxWxC (:func:`to_uint8`: CT window, 16-bit scaling, channel conversion) -> optional format
normalisation (:func:`reencode`: one size, one codec) -> float32
[0, 1] at the network size (:func:`to_model_input`). The exported graph repeats the last step
with ``tf.image.resize(..., "bilinear", antialias=False) / 255``, which equals
``cv2.resize(..., INTER_LINEAR) / 255`` exactly, so training and serving see the same pixels.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import cv2
import numpy as np

from lepton_vision.config.errors import DataError
from lepton_vision.data.readers.volumes import SLICE_SEP, is_volume_file, split_slice

#: File extensions read as ordinary images (decoded by OpenCV).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: File extensions read as DICOM (pydicom); other files are also sniffed for the DICM preamble.
DICOM_EXTENSIONS = (".dcm", ".dicom")

#: ITU-R 601 luma weights, the ones tf.image.rgb_to_grayscale uses.
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float64)

DEFAULT_MAX_PIXELS = 50_000_000


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding pixels, or None if unknown.

    Pillow reads only the header on ``open``; used so a decompression bomb is refused before
    OpenCV allocates its full buffer. Files Pillow cannot parse are checked after decoding.
    """
    try:
        from PIL import Image
    except ImportError:  # Pillow is optional; the post-decode check still applies
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return int(im.size[0]), int(im.size[1])
    except Exception:  # noqa: BLE001 - any header failure falls back to the decode check
        return None


def _is_dicom(path: Path, suffix: str) -> bool:
    # A .dcm file that is not DICOM is still read as DICOM so its error says what is wrong.
    if suffix in DICOM_EXTENSIONS:
        return True
    from lepton_vision.data.readers.dicom import is_dicom

    return bool(is_dicom(path))


#: Images smaller than this on either side are refused as degenerate (a 1x1 "image" is a
#: tracking pixel or a broken export, not a scan or a frame).
MIN_IMAGE_SIDE = 4


def check_size(h: int, w: int, where: str) -> None:
    """Refuse an image with a side under :data:`MIN_IMAGE_SIDE` pixels (DataError naming it)."""
    if min(int(h), int(w)) < MIN_IMAGE_SIDE:
        raise DataError(
            f"image is {int(w)}x{int(h)} px; expected at least {MIN_IMAGE_SIDE} px on each side "
            "(an empty or 1-pixel image is a broken file, not a picture)",
            file=where,
        )


def _too_big(path: Path, h: int, w: int, max_pixels: int) -> DataError:
    return DataError(
        f"image is {w}x{h} = {w * h:,} pixels, more than data.max_image_pixels={max_pixels:,}. "
        "Downscale the file or raise data.max_image_pixels if it is genuine",
        file=str(path),
    )


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file into its raw pixels.

    Args:
        path: A PNG/JPEG/BMP/TIFF image, a DICOM file, or one axial slice of a NIfTI volume
            written ``<file.nii.gz>#z=<index>`` (see :func:`slice_path`).
        max_pixels: Refuse images with more pixels than this (decompression bombs).

    Returns:
        DICOM and NIfTI slices: float32 Hounsfield units, HxW (a NIfTI slice is oriented like
        the DICOM display: rows anterior to posterior, columns patient right to left). Other images: uint8 or uint16, HxW (grayscale)
        or HxWx3 RGB (alpha is dropped).

    Raises:
        DataError: The file is missing, empty, corrupt, of an unsupported kind or too large;
            the message names the file.
    """
    path, z = split_slice(path)
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    if is_volume_file(path):
        if z is None:
            raise DataError(
                f"a NIfTI volume holds many slices; name one as <file>{SLICE_SEP}<index> "
                "(0-based along the superior axis), or use a nifti dataset card",
                file=str(path),
            )
        from lepton_vision.data.readers.nifti import read_nifti_slice

        hu = read_nifti_slice(path, z)
        if hu.shape[0] * hu.shape[1] > max_pixels:
            raise _too_big(path, hu.shape[0], hu.shape[1], max_pixels)
        check_size(hu.shape[0], hu.shape[1], str(path))
        return hu
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS and _is_dicom(path, suffix):
        from lepton_vision.data.readers.dicom import read_dicom_hu

        hu, _meta = read_dicom_hu(path)
        if hu.shape[0] * hu.shape[1] > max_pixels:
            raise _too_big(path, hu.shape[0], hu.shape[1], max_pixels)
        check_size(hu.shape[0], hu.shape[1], str(path))
        return hu
    if suffix not in IMAGE_EXTENSIONS:
        raise DataError(
            f"unsupported file type '{suffix or '(no extension)'}'. Expected one of "
            f"{', '.join(IMAGE_EXTENSIONS + DICOM_EXTENSIONS)}",
            file=str(path),
        )
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise DataError("file is empty (0 bytes); expected an image", file=str(path))
    size = _header_size(path)
    if size is not None and size[0] * size[1] > max_pixels:
        raise _too_big(path, size[1], size[0], max_pixels)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(
            f"cannot decode the file as an image (corrupt or not really {suffix[1:].upper()}); "
            "expected a readable PNG/JPEG/BMP/TIFF",
            file=str(path),
        )
    if img.shape[0] * img.shape[1] > max_pixels:
        raise _too_big(path, img.shape[0], img.shape[1], max_pixels)
    check_size(img.shape[0], img.shape[1], str(path))
    if img.dtype not in (np.uint8, np.uint16):
        raise DataError(
            f"pixel type {img.dtype} is not supported; expected 8-bit or 16-bit images",
            file=str(path),
        )
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[:, :, 0]
        elif img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)  # alpha is dropped, not blended
        else:
            raise DataError(
                f"image has {img.shape[2]} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)",
                file=str(path),
            )
    return np.ascontiguousarray(img)


def _round_half_up(x: np.ndarray) -> np.ndarray:
    """floor(x + 0.5) clipped to 0..255 as uint8 (the one rounding rule of the pipeline)."""
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def window_hu(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map Hounsfield units to uint8 with a CT window.

    ``uint8 = clip(floor((hu - (level - width/2)) / width * 255 + 0.5), 0, 255)``, computed in
    float64 in exactly this order.

    Args:
        hu: Hounsfield units, any shape.
        level: Window centre in HU.
        width: Window width in HU (> 0).

    Returns:
        uint8 array of the same shape.
    """
    if not width > 0:
        raise ValueError(f"window width must be > 0, got {width}")
    x = np.asarray(hu, dtype=np.float64)
    return _round_half_up((x - (level - width / 2.0)) / width * 255.0)


def is_multi_window(window: object) -> bool:
    """Whether ``window`` is a sequence of (level, width) pairs rather than one pair."""
    return isinstance(window, (list, tuple)) and len(window) > 0 and isinstance(window[0], (list, tuple))


def to_uint8(
    raw: np.ndarray, channels: int,
    window: tuple[float, float] | tuple[tuple[float, float], ...] | None = None,
) -> np.ndarray:
    """Convert raw pixels from :func:`read_image` to uint8 HxWxC.

    Args:
        raw: float (HU, from DICOM), uint16 or uint8 pixels, HxW or HxWx3.
        channels: 1 (grayscale) or 3 (RGB).
        window: (level, width) in HU, or one (level, width) per channel (multi-window input);
            required for float (HU) input, ignored otherwise.

    Returns:
        uint8 HxWxC. uint16 is scaled 0..65535 -> 0..255 with floor(x + 0.5); RGB -> gray uses
        the weights [0.2989, 0.5870, 0.1140] with floor(x + 0.5); gray -> RGB repeats the plane.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    raw = np.asarray(raw)
    if raw.ndim not in (2, 3) or (raw.ndim == 3 and raw.shape[2] not in (1, 3)):
        raise ValueError(f"expected HxW or HxWx1/3 pixels, got shape {raw.shape}")
    if raw.dtype == np.uint8:
        img = raw
    elif raw.dtype == np.uint16:
        img = _round_half_up(raw.astype(np.float64) / 65535.0 * 255.0)
    elif np.issubdtype(raw.dtype, np.floating):
        if window is None:
            raise ValueError("float (Hounsfield unit) pixels need window=(level, width)")
        if is_multi_window(window):
            # one window per channel (e.g. lung / mediastinum / bone): more of the HU range
            if channels != len(window) or raw.ndim != 2:
                raise ValueError(f"{len(window)} windows need a single HxW HU slice and "
                                 f"channels={len(window)}; got shape {raw.shape}, channels {channels}")
            return np.ascontiguousarray(np.stack(
                [window_hu(raw, float(lv), float(wd)) for lv, wd in window], axis=2))
        img = window_hu(raw, float(window[0]), float(window[1]))
    else:
        raise ValueError(f"unsupported pixel type {raw.dtype}; expected uint8, uint16 or float HU")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == channels:
        return np.ascontiguousarray(img)
    if channels == 3:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    gray = img.astype(np.float64) @ GRAY_WEIGHTS
    return _round_half_up(gray)[:, :, None]


def reencode(img_uint8: np.ndarray, spec: dict | None) -> np.ndarray:
    """Format normalisation (recipe ``input.reencode``, bundle.json ``input.reencode``).

    Removes what the file format and the stored resolution say about an image: first a resample
    to ``spec["size"]`` (height, width; ``cv2.INTER_AREA``) when given, then an encode/decode
    round trip through ``spec["codec"]`` ("jpeg" at ``spec["quality"]``, "png", or "none").
    This is the documented pre-step of an export whose bundle has ``input.reencode``: the
    Predictor applies it before the SavedModel's ``serve_uint8``; a caller of the plain
    SavedModel applies this function (OpenCV) first.

    Args:
        img_uint8: uint8 HxWxC (C = 1 or 3, RGB order) from :func:`to_uint8`.
        spec: ``{"codec", "quality", "size"}`` or None (the image unchanged).

    Returns:
        uint8 HxWxC (the new size when ``size`` is given).
    """
    if not spec:
        return img_uint8
    img = np.asarray(img_uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    size = spec.get("size")
    if size is not None and (img.shape[0], img.shape[1]) != (int(size[0]), int(size[1])):
        img = cv2.resize(img, (int(size[1]), int(size[0])), interpolation=cv2.INTER_AREA)
        if img.ndim == 2:
            img = img[:, :, None]
    codec = spec.get("codec", "none")
    if codec in ("jpeg", "png"):
        bgr = img[:, :, 0] if channels == 1 else cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
        params = [cv2.IMWRITE_JPEG_QUALITY, int(spec.get("quality", 90))] if codec == "jpeg" else []
        ok, buf = cv2.imencode(".jpg" if codec == "jpeg" else ".png", np.ascontiguousarray(bgr), params)
        if not ok:
            raise ValueError(f"OpenCV could not encode a {img.shape} image as {codec}")
        back = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR)
        img = back[:, :, None] if channels == 1 else cv2.cvtColor(back, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def jpeg_blockiness(img: np.ndarray) -> float:
    """How much stronger pixel steps are on the 8-pixel JPEG block grid than off it (1: none).

    The trace a JPEG history leaves in the pixels, whatever the file is stored as now: the mean
    absolute difference between neighbouring pixels across block boundaries (columns/rows 7|8,
    15|16, ...) over the mean difference elsewhere, averaged over both directions. A resample to
    another size moves the grid off the pixels and brings the ratio back towards 1.
    """
    g = np.asarray(img, np.float32)
    if g.ndim == 3:
        g = g.mean(axis=2)
    ratios = []
    for d in (np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0)).T):
        if d.shape[1] < 16:
            continue
        on = (np.arange(d.shape[1]) % 8) == 7
        off_mean = float(d[:, ~on].mean())
        ratios.append(float(d[:, on].mean()) / max(off_mean, 1e-3))
    return float(np.mean(ratios)) if ratios else 1.0


def to_model_input(img_uint8: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 HxWxC image to the network size and scale to [0, 1].

    ``cv2.resize(img.astype(float32), (w, h), INTER_LINEAR) / 255`` with the channel axis kept;
    equal to ``tf.image.resize(tf.cast(img, float32), (h, w), "bilinear", antialias=False) / 255``.

    Args:
        img_uint8: uint8 HxWxC (C = 1 or 3).
        size_hw: (height, width) of the network input.

    Returns:
        float32 hxwxC in [0, 1].
    """
    img = np.asarray(img_uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    h, w = int(size_hw[0]), int(size_hw[1])
    out = cv2.resize(img.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    if out.ndim == 2:  # OpenCV drops a single channel axis
        out = out[:, :, None]
    return (out / np.float32(255.0)).astype(np.float32)


def load_for_model(
    path: str | Path,
    size_hw: tuple[int, int],
    channels: int,
    window: tuple[float, float] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reencode_spec: dict | None = None,
) -> np.ndarray:
    """Read a file and return the network input: float32 hxwxC in [0, 1] (after the format
    normalisation :func:`reencode` when ``reencode_spec`` is given).

    Raises:
        DataError: The file cannot be read (see :func:`read_image`).
    """
    return to_model_input(reencode(to_uint8(read_image(path, max_pixels), channels, window), reencode_spec), size_hw)


def content_hash(path: str | Path) -> str:
    """SHA-1 of the file's bytes (hex), for finding the same image twice in a dataset.

    A volume slice (``<file>#z=<i>``) is hashed by its decoded pixels, since every slice of a
    volume shares the file's bytes.
    """
    h = hashlib.sha1()
    file, z = split_slice(path)
    if z is not None:
        hu = read_image(path)
        h.update(f"{hu.shape}".encode())
        h.update(np.ascontiguousarray(hu).tobytes())
        return h.hexdigest()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Letterbox (object detection): keep the aspect ratio, pad right and bottom.

#: Grey used to pad letterboxed frames (YOLO practice); ignore regions are painted with it too.
LETTERBOX_PAD = 114.0


def letterbox_geometry(h0: int, w0: int, size_hw: tuple[int, int]) -> tuple[int, int]:
    """Size (new_h, new_w) of an h0 x w0 image scaled to fit size_hw, aspect ratio kept.

    The exported graph computes the same numbers with the same float32 arithmetic
    (``export_detection._letterbox_tf``), so training, export and app agree to the pixel.
    """
    H, W = int(size_hw[0]), int(size_hw[1])
    s = min(np.float32(H) / np.float32(h0), np.float32(W) / np.float32(w0))
    nh = int(min(H, max(1, np.floor(np.float32(h0) * s + np.float32(0.5)))))
    nw = int(min(W, max(1, np.floor(np.float32(w0) * s + np.float32(0.5)))))
    return nh, nw


def letterbox(img_uint8: np.ndarray, size_hw: tuple[int, int]) -> tuple[np.ndarray, tuple[float, float]]:
    """Letterbox a uint8 HxWx3 frame into the network input, top-left aligned.

    Bilinear ``cv2.resize`` on float32 (equal to ``tf.image.resize``, antialias off) into the
    top-left ``new_h x new_w`` corner; the rest is :data:`LETTERBOX_PAD`. Pixels stay in 0..255
    float32 (no rounding, so the graph's result matches).

    Returns:
        (float32 HxWx3 in 0..255, (sx, sy)): a box in original pixels times (sx, sy) is the box
        in network pixels; divide to map back.
    """
    img = np.asarray(img_uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    h0, w0 = img.shape[:2]
    nh, nw = letterbox_geometry(h0, w0, size_hw)
    H, W = int(size_hw[0]), int(size_hw[1])
    out = np.full((H, W, 3), LETTERBOX_PAD, dtype=np.float32)
    out[:nh, :nw] = cv2.resize(img.astype(np.float32), (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, (nw / w0, nh / h0)


def boxes_to_original(boxes: np.ndarray, scale_xy: tuple[float, float], h0: int, w0: int) -> np.ndarray:
    """Map xyxy boxes from letterboxed network pixels back to the original image, clipped."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / np.array(
        [scale_xy[0], scale_xy[1], scale_xy[0], scale_xy[1]], dtype=np.float32
    )
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, w0)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, h0)
    return b

"""Export a trained binary classifier: SavedModel with raw-image signatures, TFLite, bundle.json.

The exported SavedModel is what products embed, so the preprocessing and the operating threshold
live inside the graph: a caller hands over a raw uint8 image (any size), encoded PNG/JPEG bytes or
a CT slice in Hounsfield units and gets ``{"score", "decision"}`` back, without lepton-vision.

Layout of ``export_dir`` after a successful export::

    saved_model/    tf.saved_model with endpoints serve_uint8 (= serving_default), serve,
                    serve_bytes and (CT only) serve_hu
    model.tflite    float32, builtin ops only, converted from serve_uint8
    model_int8.tflite
                    full int8 (weights and activations, calibrated on training images), uint8
                    image in, float32 score out; its AUC change against float32 is measured
                    on labelled images and recorded (``quantization`` in bundle.json)
    model.onnx      optional (formats: onnx; needs the [onnx] extra): serve_uint8 via tf2onnx,
                    kept only when onnxruntime loads it and it matches the SavedModel
    model.keras     the Keras model itself, for Grad-CAM (lepton_vision.kinds.classification.explain)
    parity.json     Keras vs SavedModel vs TFLite scores on real samples, pass/fail
    bundle.json     self-description (input contract, threshold, metrics, versions); written
                    LAST, so its presence means "complete and parity-checked"

Signatures (B = batch, C = channels, h x w = network input size):

* ``serve_uint8`` (serving_default): ``image`` uint8 [H, W, C], one image of any size ->
  resized in the graph (bilinear, antialias=False), scaled by 1/255 -> ``score`` float32 [1],
  ``decision`` int32 [1] (1 when score >= threshold).
* ``serve``: ``images`` float32 [B, h, w, C] already preprocessed to [0, 1] -> score/decision [B].
* ``serve_bytes``: ``image_bytes`` tf.string [B], encoded PNG/JPEG/BMP/GIF -> decoded by
  ``tf.io.decode_image`` -> as serve_uint8 -> score/decision [B]. Note that TF's JPEG decoder
  differs from OpenCV's by a few grey levels; PNG is bit-exact.
* ``serve_hu`` (only when the model was trained on windowed CT): ``hu`` float32 [H, W]
  Hounsfield units -> ``uint8 = clip(floor((hu - (level - width/2)) / width * 255 + 0.5), 0, 255)``
  -> as serve_uint8.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lepton_vision.config.errors import ExportError
from lepton_vision.export import bundle as bundle_io
from lepton_vision.runio import atomic_save_model, atomic_write_bytes, atomic_write_json

#: bundle_info keys the bundle cannot do without (the Predictor needs them to label results).
REQUIRED_INFO = ("task", "classes", "positive_class")


def export_classifier(
    model: Any,
    export_dir: str | Path,
    *,
    image_size_hw: tuple[int, int],
    channels: int,
    window: tuple[float, float] | None,
    threshold: float,
    bundle_info: dict[str, Any],
    parity_images: Sequence[np.ndarray],
    reference_scores: np.ndarray | None = None,
    formats: Sequence[str] = ("saved_model", "tflite"),
    parity_atol: float = 1e-4,
    temperature: float | None = None,
    calibration_images: Sequence[np.ndarray] | None = None,
    quant_eval: dict[str, Any] | None = None,
    int8_max_drop: float = 0.02,
    ood: Any = None,
) -> dict[str, Any]:
    """Export a Keras binary classifier with preprocessing and threshold inside the graph.

    Args:
        model: Keras model: float32 [B, h, w, C] in [0, 1] -> sigmoid score [B, 1].
        export_dir: Folder to write (created; files from an earlier export are replaced).
        image_size_hw: Network input (height, width).
        channels: 1 or 3.
        window: CT window (level, width) in HU when the model takes windowed CT, else None.
        threshold: Operating threshold; decision = score >= threshold.
        bundle_info: Merged into bundle.json. Must hold ``task``, ``classes``
            ([negative, positive]) and ``positive_class``; may hold ``kind``, ``threshold_policy``,
            metrics with CIs, recipe hash, data fingerprint, versions, ...
        parity_images: Real samples as uint8 HxWxC (or HxW when C is 1) after
            ``preprocess.to_uint8``, i.e. what the training pipeline saw before resizing.
        reference_scores: Optional scores for ``parity_images`` from elsewhere (e.g. the model
            that produced the out-of-fold predictions); compared with the same tolerance.
        formats: Subset of :data:`bundle_io.KNOWN_FORMATS`; saved_model is required.
        parity_atol: Largest allowed absolute score difference between any two float backends
            (Keras, SavedModel, TFLite float32, ONNX).
        temperature: Temperature T fitted on out-of-fold scores; when given, the graph returns
            ``sigmoid(logit(clip(p, 1e-6, 1-1e-6)) / T)`` (``metrics.apply_temperature``) and
            ``threshold`` must already be on that calibrated scale.
        calibration_images: uint8 images (as ``parity_images``) for the int8 representative
            dataset; defaults to ``parity_images``.
        quant_eval: ``{"images": [...], "labels": [...], "evaluated_on": "..."}``: labelled
            images the int8 model is re-scored on (AUC change against the float model).
        int8_max_drop: Largest acceptable AUC drop of int8; beyond it the run warns and the
            bundle marks model_int8.tflite ``recommended: false``.
        ood: ``(reference, feature_model)``: adds the ``serve_ood`` signature (and
            ``model_ood.tflite`` with ``tflite``), ``reference.npz`` and bundle.json's
            ``reference`` (:mod:`lepton_vision.export.reference`); ``feature_model`` maps the
            model's input to its pooled features.

    Returns:
        ``{"export_dir", "files", "parity", "quantization", "warnings", "bundle", "timings_s"}``.

    Raises:
        ExportError: Bad arguments, a TFLite conversion that needs non-builtin ops, or a parity
            failure of a float backend (parity.json is written first, with ``"pass": false``).
            A rejected ONNX file or an int8 model beyond its tolerance is not an error: it is
            reported in ``warnings``, parity.json and bundle.json.
    """
    t_total = time.perf_counter()
    export_dir = Path(export_dir)
    h, w = (int(v) for v in image_size_hw)
    formats = tuple(formats)
    images = _check_args(export_dir, channels, formats, threshold, bundle_info, parity_images,
                         reference_scores)
    export_dir.mkdir(parents=True, exist_ok=True)
    # bundle.json marks a complete, parity-checked export: drop a stale one before touching the
    # models, so a failed re-export can never be loaded with the old description.
    (export_dir / bundle_io.BUNDLE_FILE).unlink(missing_ok=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    if temperature is not None and not (float(temperature) > 0 and math.isfinite(float(temperature))):
        raise ExportError(f"{export_dir}: temperature must be a positive number. Got {temperature}.")
    endpoints = _build_endpoints(model, (h, w), channels, window, float(threshold), temperature)
    if ood is not None:
        from lepton_vision.export.reference import OOD_SIGNATURE, ood_endpoint

        feature_model = ood[1]
        endpoints[OOD_SIGNATURE] = ood_endpoint(ood[0], lambda img: _resize(img, (h, w)),
                                                lambda x: feature_model(x / 255.0, training=False), channels)
    sm_path = bundle_io.write_saved_model(model, export_dir, endpoints,
                                          hint="Check that the model maps float32 [B,h,w,C] to a score [B,1].")
    timings["saved_model"] = time.perf_counter() - t

    tflite_path = None
    if "tflite" in formats:
        t = time.perf_counter()
        tflite_path = _write_tflite(sm_path, export_dir / bundle_io.TFLITE_FILE, images[0])
        timings["tflite"] = time.perf_counter() - t
    else:
        (export_dir / bundle_io.TFLITE_FILE).unlink(missing_ok=True)

    notes: list[str] = []
    int8_path = None
    (export_dir / bundle_io.TFLITE_INT8_FILE).unlink(missing_ok=True)
    if "tflite_int8" in formats:
        t = time.perf_counter()
        calib = images if calibration_images is None else [_as_hwc(im, channels) for im in calibration_images]
        int8_path, int8_mode = _write_tflite_int8(sm_path, export_dir / bundle_io.TFLITE_INT8_FILE, calib)
        timings["tflite_int8"] = time.perf_counter() - t

    from lepton_vision.export.onnx import check_or_reject, export_or_reject

    onnx_path, onnx_reject = export_or_reject(sm_path, export_dir, formats, timings)

    t = time.perf_counter()
    parity = _parity(model, sm_path, tflite_path, images, (h, w), reference_scores, parity_atol,
                     temperature)
    onnx_path, onnx_reject = check_or_reject(
        onnx_path, onnx_reject, parity, lambda f: _onnx_parity(f, images, parity["samples"], parity_atol),
        lambda r: f"onnxruntime scores differ from the SavedModel by {r['max_abs_diff']:.3g} > {parity_atol:g}",
        notes)
    timings["parity"] = time.perf_counter() - t

    quant = None
    if int8_path is not None:
        t = time.perf_counter()
        quant = _int8_check(model, int8_path, images, quant_eval, (h, w), float(threshold),
                            temperature, int8_max_drop)
        quant["int8_mode"] = int8_mode
        parity["tflite_int8"] = quant
        if not quant["verdict"]["recommended"]:
            notes.append(f"int8 model not recommended: {quant['verdict']['reason']}")
        timings["int8_check"] = time.perf_counter() - t
    atomic_write_json(export_dir / bundle_io.PARITY_FILE, parity)
    if not parity["pass"]:
        worst = parity["worst"]
        raise ExportError(
            f"{export_dir / bundle_io.PARITY_FILE}: parity check failed: sample {worst['sample']} differs by "
            f"{worst['diff']:.3g} ({worst['pair']}), more than parity_atol={parity_atol:g}. "
            "Got scores " + ", ".join(f"{k}={v:.6f}" for k, v in worst["scores"].items()) + ". "
            "A TFLite-only gap points at the converter; a reference gap means the exported model "
            "is not the one that was evaluated."
        )

    t = time.perf_counter()
    bundle = _bundle(sm_path, tflite_path, (h, w), channels, window, float(threshold), bundle_info)
    if int8_path is not None and quant is not None:
        bundle["files"]["tflite_int8"] = {
            "path": bundle_io.TFLITE_INT8_FILE,
            "signature": bundle_io.DEFAULT_SIGNATURE,
            "dtype": ("int8 weights and activations, uint8 image in, float32 score out"
                      if int8_mode == "full" else
                      "int8 where LiteRT has int8 kernels, float32 elsewhere; uint8 image in, "
                      "float32 score out"),
            "bytes": int8_path.stat().st_size,
            "recommended": quant["verdict"]["recommended"],
            "metric_change": {k: quant["change"][k] for k in ("metric", "float", "int8", "drop")},
        }
        bundle["quantization"] = {
            "evaluated_on": quant["evaluated_on"],
            "n_images": quant["change"]["n"],
            "change": quant["change"],
            "verdict": quant["verdict"],
        }
    if onnx_path is not None:
        from lepton_vision.export.onnx import OPSET

        bundle["files"]["onnx"] = {
            "path": onnx_path.name, "signature": bundle_io.DEFAULT_SIGNATURE, "opset": OPSET,
            "bytes": onnx_path.stat().st_size,
            "max_abs_diff_vs_saved_model": parity["onnx"]["max_abs_diff"],
        }
    if onnx_reject is not None:
        bundle["rejected_files"] = {"onnx": onnx_reject}
    bundle["calibration"] = (
        {"temperature": float(temperature),
         "formula": "score = sigmoid(logit(clip(p, 1e-6, 1 - 1e-6)) / temperature)"}
        if temperature is not None else None
    )
    # The Keras model too: Grad-CAM (lepton_vision.kinds.classification.explain) needs layer outputs, which the
    # SavedModel signatures do not expose. Saved to a temp name and renamed, like the rest.
    try:
        atomic_save_model(model, export_dir / "model.keras")
    except Exception as exc:
        raise ExportError(
            f"{export_dir / 'model.keras'}: saving the Keras model failed: "
            f"{type(exc).__name__}: {exc}. Custom layers must be registered Keras serializables."
        ) from exc
    bundle["files"]["keras_model"] = {"path": "model.keras",
                                      "bytes": (export_dir / "model.keras").stat().st_size}
    if ood is not None:
        t_ood = time.perf_counter()
        bundle["reference"] = _ood_files(export_dir, sm_path, ood, images, (h, w), "tflite" in formats)
        timings["ood"] = time.perf_counter() - t_ood
    else:
        from lepton_vision.export.reference import OOD_TFLITE_FILE, REFERENCE_FILE

        for name in (REFERENCE_FILE, OOD_TFLITE_FILE):
            (export_dir / name).unlink(missing_ok=True)
    atomic_write_json(export_dir / bundle_io.BUNDLE_FILE, bundle)
    timings["bundle"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_total
    return {
        "export_dir": str(export_dir),
        "files": bundle["files"],
        "parity": {k: parity[k] for k in ("pass", "max_abs_diff", "tolerance", "n_samples")},
        "quantization": bundle.get("quantization"),
        "warnings": notes,
        "bundle": bundle,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


# --------------------------------------------------------------------------------------------
# argument checks


def _check_args(
    export_dir: Path,
    channels: int,
    formats: tuple[str, ...],
    threshold: float,
    bundle_info: dict[str, Any],
    parity_images: Sequence[np.ndarray],
    reference_scores: np.ndarray | None,
) -> list[np.ndarray]:
    where = str(export_dir)
    unknown = [f for f in formats if f not in bundle_io.KNOWN_FORMATS]
    if unknown or "saved_model" not in formats:
        raise ExportError(
            f"{where}: export formats must include 'saved_model' and only use "
            f"{list(bundle_io.KNOWN_FORMATS)}. Got {list(formats)}. TFLite is converted from the SavedModel."
        )
    if channels not in (1, 3):
        raise ExportError(f"{where}: channels must be 1 or 3. Got {channels}.")
    if not (0.0 <= float(threshold) <= 1.0) or math.isnan(float(threshold)):
        raise ExportError(f"{where}: threshold must be in [0, 1]. Got {threshold}.")
    missing = [k for k in REQUIRED_INFO if k not in bundle_info]
    if missing:
        raise ExportError(
            f"{where}: bundle_info lacks {missing}. Got keys {sorted(bundle_info)}. "
            "Pass the task card's name, classes ([negative, positive]) and positive_class."
        )
    if len(bundle_info["classes"]) != 2 or bundle_info["classes"][1] != bundle_info["positive_class"]:
        raise ExportError(
            f"{where}: bundle_info classes must be [negative, positive] with positive_class second. "
            f"Got classes={list(bundle_info['classes'])}, positive_class={bundle_info['positive_class']!r}."
        )
    if len(parity_images) == 0:
        raise ExportError(f"{where}: the parity check needs at least one image. Got none.")
    images = []
    for i, img in enumerate(parity_images):
        img = np.asarray(img)
        if img.ndim == 2 and channels == 1:
            img = img[..., None]
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != channels:
            raise ExportError(
                f"{where}: parity image {i} must be uint8 HxWx{channels} (preprocess.to_uint8 output). "
                f"Got dtype {img.dtype}, shape {img.shape}."
            )
        images.append(img)
    if reference_scores is not None and np.asarray(reference_scores).reshape(-1).shape[0] != len(images):
        raise ExportError(
            f"{where}: reference_scores must have one score per parity image ({len(images)}). "
            f"Got {np.asarray(reference_scores).size}."
        )
    return images


# --------------------------------------------------------------------------------------------
# SavedModel


def _multi(window: Any) -> bool:
    from lepton_vision.data.preprocess import is_multi_window

    return is_multi_window(window)


def window_from_bundle(win: dict[str, Any] | None) -> Any:
    """The window argument of ``preprocess.to_uint8`` from a bundle's ``input.window``."""
    if win is None:
        return None
    if "windows" in win:
        return tuple((float(w["level"]), float(w["width"])) for w in win["windows"])
    return float(win["level"]), float(win["width"])


def _build_endpoints(model: Any, size_hw: tuple[int, int], channels: int,
                     window: tuple[float, float] | None, threshold: float,
                     temperature: float | None = None) -> dict[str, Any]:
    """The serving functions, in registration order (the first becomes serving_default)."""
    import tensorflow as tf

    h, w = size_hw
    thr = tf.constant(threshold, tf.float32)

    def prep(img_u8: tf.Tensor) -> tf.Tensor:
        # Same as preprocess.to_model_input: bilinear, no antialias, then scale.
        return _resize(img_u8, (h, w)) / 255.0

    def head(x: tf.Tensor) -> dict[str, tf.Tensor]:
        score = tf.reshape(model(x, training=False), [-1])
        if temperature is not None:
            # Same clip and formula as metrics.apply_temperature (the threshold is on this scale).
            p = tf.clip_by_value(score, 1e-6, 1.0 - 1e-6)
            score = tf.sigmoid((tf.math.log(p) - tf.math.log1p(-p)) / float(temperature))
        return {"score": score, "decision": tf.cast(score >= thr, tf.int32)}

    endpoints: dict[str, Any] = {}

    @tf.function(input_signature=[tf.TensorSpec([None, None, channels], tf.uint8, name="image")])
    def serve_uint8(image: tf.Tensor) -> dict[str, tf.Tensor]:
        # A wrong rank or channel count fails here, naming the expected shape, not deep inside.
        image = tf.ensure_shape(image, [None, None, channels], name="expect_HxWxC_uint8")
        return head(tf.expand_dims(prep(image), 0))

    endpoints["serve_uint8"] = serve_uint8

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, channels], tf.float32, name="images")])
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return head(images)

    endpoints["serve"] = serve

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        x = tf.map_fn(
            lambda s: prep(tf.io.decode_image(s, channels=channels, expand_animations=False)),
            image_bytes,
            fn_output_signature=tf.TensorSpec((h, w, channels), tf.float32),
        )
        return head(x)

    endpoints["serve_bytes"] = serve_bytes

    if window is not None:
        # One (level, width) pair, or one per channel (multi-window input).
        pairs = [(float(lv), float(wd)) for lv, wd in (window if _multi(window) else [window])]

        def win(hu64: tf.Tensor, level: float, width: float) -> tf.Tensor:
            # float64 like numpy's default, so floor(.+0.5) rounds the same way as preprocess.
            v = tf.floor((hu64 - (level - width / 2.0)) / width * 255.0 + 0.5)
            return tf.cast(tf.clip_by_value(v, 0.0, 255.0), tf.uint8)[..., None]

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="hu")])
        def serve_hu(hu: tf.Tensor) -> dict[str, tf.Tensor]:
            hu = tf.ensure_shape(hu, [None, None], name="expect_HxW_hounsfield")
            hu64 = tf.cast(hu, tf.float64)
            u8 = tf.concat([win(hu64, lv, wd) for lv, wd in pairs], axis=-1)
            if len(pairs) == 1 and channels == 3:
                u8 = tf.tile(u8, [1, 1, 3])
            return head(tf.expand_dims(prep(u8), 0))

        endpoints["serve_hu"] = serve_hu
    return endpoints


def _resize(img_u8: Any, size_hw: tuple[int, int]) -> Any:
    """The network input in pixels 0..255: bilinear without antialias, as preprocess.to_model_input."""
    import tensorflow as tf

    return tf.image.resize(tf.cast(img_u8, tf.float32), size_hw, method="bilinear", antialias=False)


def _ood_files(export_dir: Path, sm_path: Path, ood: Any, images: list[np.ndarray], size_hw: tuple[int, int],
               tflite: bool) -> dict[str, Any]:
    """reference.npz, model_ood.tflite and the OOD parity (formula vs SavedModel vs LiteRT)."""
    from lepton_vision.data import preprocess
    from lepton_vision.export.reference import check_ood_export, image_stats, ood_scores

    ref, feature_model = ood
    ref.save(export_dir)
    xs = [preprocess.to_model_input(im, size_hw) for im in images]
    feats = np.asarray(feature_model(np.stack(xs).astype(np.float32), training=False), np.float64)
    stats = np.stack([image_stats(x * 255.0, im.shape[:2]) for x, im in zip(xs, images)])
    return check_ood_export(export_dir, sm_path, ref, images, ood_scores(ref, feats, stats), tflite)


# --------------------------------------------------------------------------------------------
# TFLite


def _write_tflite(sm_path: Path, out: Path, probe_image: np.ndarray) -> Path:
    """Convert serve_uint8 to float32 TFLite (builtins only) and check LiteRT can run it."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(sm_path), signature_keys=[bundle_io.DEFAULT_SIGNATURE])
    # Builtins only: the Python LiteRT interpreter (and most edge runtimes) cannot run Flex ops.
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        flat = conv.convert()
    except Exception as exc:
        raise ExportError(
            f"{out}: TFLite conversion of '{bundle_io.DEFAULT_SIGNATURE}' with builtin ops failed: "
            f"{type(exc).__name__}: {str(exc)[:500]}. Drop 'tflite' from export.formats or use a "
            "backbone made of TFLite builtin ops."
        ) from exc
    try:
        _tflite_score(flat, probe_image)
    except Exception as exc:
        raise ExportError(
            f"{out}: the converted TFLite model does not run in ai_edge_litert: "
            f"{type(exc).__name__}: {exc}."
        ) from exc
    atomic_write_bytes(out, flat)
    return out


def _tflite_score(model_content: bytes | Any, image: np.ndarray) -> float:
    runner = bundle_io.tflite_runner(model_content) if isinstance(model_content, bytes) else model_content
    return float(np.asarray(runner(image=image)["score"]).reshape(-1)[0])


def _as_hwc(img: np.ndarray, channels: int) -> np.ndarray:
    img = np.asarray(img)
    return img[..., None] if img.ndim == 2 and channels == 1 else img


def _write_tflite_int8(sm_path: Path, out: Path, calibration: Sequence[np.ndarray]) -> tuple[Path, str]:
    """Full-integer TFLite of serve_uint8: uint8 image in, float32 score out.

    Calibrated on ``calibration`` (training images). Strict int8 kernels first ("full"); if
    an op has none (e.g. the log/sigmoid of temperature scaling), int8 where possible and
    float32 for the rest ("mixed"). Returns (path, mode).
    """
    import tensorflow as tf

    frames = [np.asarray(f, np.uint8) for f in calibration]
    if not frames:
        raise ExportError(f"{out}: int8 calibration needs at least one image. Got none.")

    def representative() -> Any:
        for f in frames:
            yield {"image": f}

    last: Exception | None = None
    for mode, ops in (("full", [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]),
                      ("mixed", [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS])):
        conv = tf.lite.TFLiteConverter.from_saved_model(str(sm_path), signature_keys=[bundle_io.DEFAULT_SIGNATURE])
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = ops
        conv.inference_input_type = tf.uint8
        try:
            with warnings.catch_warnings():
                # Calibration runs TF's own (deprecated) tf.lite.Interpreter: not the user's concern.
                warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
                flat = conv.convert()
            _tflite_score(flat, frames[0])
        except Exception as exc:  # try the next mode; report the last failure
            last = exc
            continue
        atomic_write_bytes(out, flat)
        return out, mode
    raise ExportError(
        f"{out}: int8 TFLite conversion of '{bundle_io.DEFAULT_SIGNATURE}' failed: {type(last).__name__}: "
        f"{str(last)[:500]}. Drop 'tflite_int8' from export.formats."
    )


def _onnx_parity(onnx_path: Path, images: list[np.ndarray], samples: list[dict[str, Any]],
                 atol: float) -> dict[str, Any]:
    """onnxruntime scores vs the SavedModel's on the parity images (same tolerance as TFLite)."""
    from lepton_vision.export import onnx as onnx_export

    sess = onnx_export.session(onnx_path)
    scores = np.array([float(onnx_export.run(sess, img)["score"].reshape(-1)[0]) for img in images])
    ref = np.array([s["saved_model"] for s in samples])
    diff = float(np.max(np.abs(scores - ref)))
    return {"pass": bool(diff <= atol), "tolerance": atol, "max_abs_diff": diff,
            "scores": scores.tolist()}


def _int8_check(model: Any, int8_path: Path, parity_images: list[np.ndarray],
                quant_eval: dict[str, Any] | None, size_hw: tuple[int, int], threshold: float,
                temperature: float | None, max_drop: float) -> dict[str, Any]:
    """Re-score labelled images through the int8 file and the float model: the metric change."""
    from lepton_vision.data import preprocess
    from lepton_vision.export.quantization import verdict
    from lepton_vision.kinds.classification.metrics import classification_change

    if quant_eval is None:  # no labels given: score agreement on the parity images only
        images, labels = parity_images, None
        evaluated_on = "the parity images (no labels given: score agreement only)"
    else:
        channels = parity_images[0].shape[-1]
        images = [_as_hwc(im, channels) for im in quant_eval["images"]]
        labels = np.asarray(quant_eval["labels"], dtype=int)
        evaluated_on = str(quant_eval.get("evaluated_on", "labelled images"))
    f_scores = []
    for i in range(0, len(images), 64):
        batch = np.stack([preprocess.to_model_input(im, size_hw) for im in images[i:i + 64]]).astype(np.float32)
        f_scores.append(np.asarray(model(batch, training=False), np.float64).reshape(-1))
    float_scores = np.concatenate(f_scores)
    if temperature is not None:
        from lepton_vision.kinds.classification.metrics import apply_temperature

        float_scores = np.asarray(apply_temperature(float_scores, float(temperature)), np.float64)
    runner = bundle_io.tflite_runner(int8_path.read_bytes())
    int8_scores = np.array([_tflite_score(runner, im) for im in images])
    if labels is None:
        diff = np.abs(float_scores - int8_scores)
        change = {"metric": "roc_auc", "n": len(images), "float": None, "int8": None, "drop": None,
                  "why": "no labels", "max_abs_score_diff": float(diff.max()),
                  "decision_agreement": float(np.mean((float_scores >= threshold) == (int8_scores >= threshold)))}
    else:
        change = classification_change(labels, float_scores, int8_scores, threshold)
    return {"evaluated_on": evaluated_on, "change": change, "verdict": verdict(change, max_drop)}


# --------------------------------------------------------------------------------------------
# parity


def _parity(model: Any, sm_path: Path, tflite_path: Path | None, images: list[np.ndarray],
            size_hw: tuple[int, int], reference_scores: np.ndarray | None,
            atol: float, temperature: float | None = None) -> dict[str, Any]:
    import tensorflow as tf

    from lepton_vision.data import preprocess

    batch = np.stack([preprocess.to_model_input(img, size_hw) for img in images]).astype(np.float32)
    scores: dict[str, np.ndarray] = {
        "keras": np.asarray(model(batch, training=False), dtype=np.float64).reshape(-1)
    }
    if temperature is not None:
        from lepton_vision.kinds.classification.metrics import apply_temperature

        scores["keras"] = np.asarray(apply_temperature(scores["keras"], float(temperature)), np.float64)
    serve = bundle_io.load_saved_model(sm_path).signatures[bundle_io.DEFAULT_SIGNATURE]
    scores["saved_model"] = np.array(
        [float(serve(image=tf.constant(img))["score"][0]) for img in images]
    )
    if tflite_path is not None:
        runner = bundle_io.tflite_runner(tflite_path.read_bytes())
        scores["tflite"] = np.array([_tflite_score(runner, img) for img in images])
    if reference_scores is not None:
        scores["reference"] = np.asarray(reference_scores, dtype=np.float64).reshape(-1)

    names = list(scores)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    max_abs = {f"{a}_vs_{b}": float(np.max(np.abs(scores[a] - scores[b]))) for a, b in pairs}
    # Worst single (sample, pair): what the error message names.
    worst_pair, worst_i, worst_d = "", 0, -1.0
    for a, b in pairs:
        d = np.abs(scores[a] - scores[b])
        if float(d.max()) > worst_d:
            worst_pair, worst_i, worst_d = f"{a} vs {b}", int(d.argmax()), float(d.max())
    samples = [
        {"index": i, "shape": list(img.shape), **{k: float(v[i]) for k, v in scores.items()}}
        for i, img in enumerate(images)
    ]
    return {
        "pass": bool(worst_d <= atol),
        "tolerance": atol,
        "n_samples": len(images),
        "backends": names,
        "max_abs_diff": max_abs,
        "worst": {
            "sample": worst_i,
            "pair": worst_pair,
            "diff": worst_d,
            "scores": {k: float(v[worst_i]) for k, v in scores.items()},
        },
        "samples": samples,
    }


# --------------------------------------------------------------------------------------------
# bundle


def _bundle(sm_path: Path, tflite_path: Path | None, size_hw: tuple[int, int], channels: int,
            window: tuple[float, float] | None, threshold: float,
            info: dict[str, Any]) -> dict[str, Any]:
    info = dict(info)
    policy = info.pop("threshold_policy", None)
    reencode_spec = info.pop("reencode", None)
    files: dict[str, Any] = {
        "saved_model": {"path": bundle_io.SAVED_MODEL_DIR, "default_signature": bundle_io.DEFAULT_SIGNATURE},
        "parity": {"path": bundle_io.PARITY_FILE},
    }
    if tflite_path is not None:
        files["tflite"] = {
            "path": bundle_io.TFLITE_FILE,
            "signature": bundle_io.DEFAULT_SIGNATURE,
            "dtype": "float32",
            "bytes": tflite_path.stat().st_size,
        }
    versions = {**bundle_io.export_versions(), **info.pop("versions", {})}
    bundle: dict[str, Any] = {
        "schema_version": bundle_io.SCHEMA_VERSION,
        "task": info.pop("task"),
        "kind": info.pop("kind", "binary_classification"),
        "classes": list(info.pop("classes")),
        "positive_class": info.pop("positive_class"),
        "threshold": {"value": threshold, "policy": policy},
        "input": {
            "image_size": list(size_hw),
            "channels": channels,
            "dtype": "uint8",
            "window": None if window is None else (
                {
                    "windows": [{"level": float(lv), "width": float(wd)} for lv, wd in window],
                    "formula": "channel c: uint8 = clip(floor((hu - (level_c - width_c/2)) / width_c "
                               "* 255 + 0.5), 0, 255)",
                } if _multi(window) else {
                    "level": float(window[0]),
                    "width": float(window[1]),
                    "formula": "uint8 = clip(floor((hu - (level - width/2)) / width * 255 + 0.5), 0, 255)",
                }
            ),
            "resize": "bilinear, antialias=False",
            "scale": "1/255",
        },
        "outputs": {
            "score": "sigmoid probability of the positive class",
            "decision": "1 when score >= threshold.value, else 0",
        },
        "default_signature": bundle_io.DEFAULT_SIGNATURE,
        "signatures": bundle_io.signatures_json(sm_path),
        "files": files,
        "versions": versions,
    }
    for key, value in info.items():
        if key in bundle:
            raise ExportError(
                f"bundle_info: key '{key}' would overwrite a field export_classifier writes itself. "
                f"Got {key}={value!r}. Remove it from bundle_info."
            )
        bundle[key] = value
    if reencode_spec:
        bundle["input"]["reencode"] = {
            **reencode_spec,
            "pre_step": "lepton_vision.data.preprocess.reencode(image, input.reencode) on the uint8 image "
                        "(after the CT window) before serve_uint8: resample to size (area), then an "
                        "encode/decode round trip through codec at quality (OpenCV)",
        }
    return bundle

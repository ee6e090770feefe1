"""Export a trained object detector: letterbox, decode and NMS inside the graph.

A product hands the SavedModel a raw frame (uint8 H x W x 3, any size, or encoded bytes) and gets
boxes in that frame's own pixels, without lepton-vision::

    saved_model/          endpoints serve_uint8 (= serving_default) and serve_bytes
    model.tflite          float32, builtin ops only (serve_uint8: any H x W, resized inside)
    model_int8.tflite     the network in int8 (weights and activations, calibrated on frames
                          from the data); letterbox, box decoding and NMS stay float32;
                          float input/output
    model.keras           the Keras detector (raw YOLO heads)
    parity.json           Keras vs SavedModel vs TFLite detections on real frames
    bundle.json           written LAST: classes, thresholds, input contract, metrics, versions

Outputs of every endpoint (K = max_detections; rows sorted by score, padded with zeros):

* ``boxes`` float32 [K, 4]: x1, y1, x2, y2 in the INPUT frame's pixels (clipped to it),
* ``scores`` float32 [K], ``classes`` int32 [K] (index into bundle classes, -1 = padding),
* ``num_detections`` int32: rows with score >= min_score,
* ``count`` int32: rows with score >= the box score threshold (the operating point),
* ``image_score`` float32: the highest box score (0 when none) — "object present" score,
* ``alarm`` int32: 1 when image_score >= the image-level threshold.

The graph letterboxes exactly like :func:`lepton_vision.data.preprocess.letterbox` (float32 scale,
bilinear without antialias, top-left, grey 114), so training, export and app see the same pixels.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lepton_vision.config.errors import ExportError
from lepton_vision.export import bundle as bundle_io
from lepton_vision.runio import atomic_save_model, atomic_write_bytes, atomic_write_json

#: Graph name scope of the network's own ops (int8 export quantises these and nothing else).
NETWORK_SCOPE = "lepton_network"
#: keras-cv YOLOv8 head layers whose ops stay float32 in the int8 file, with every op of the
#: network downstream of them: the last box and class convolutions, the class sigmoid, and the
#: concatenations/reshapes that join box logits and class probabilities into the network's
#: output. An int8 concatenation gives all its inputs one scale; the box logits span about
#: +-70, so the class probabilities (0..1) were rounded to steps of ~0.57 — three score levels.
#: That kept AP50 on training images (confident scores) but cost 0.04-0.18 on held-out USC
#: images. These ops are a few 1x1 convolutions and copies: float costs little.
HEAD_OUTPUT_LAYERS = ("_box_3_conv", "_class_3_conv", "_classifier")
#: Parity tolerances: float backends must agree to rounding; int8 by a looser, stated one
#: (image score within 0.1; box counts equal on 80 % of frames, where boxes scoring within
#: 0.03 of the threshold — a few int8 steps of a sigmoid — may flip either way).
FLOAT_TOLERANCE = {"image_score": 1e-3, "same_count_fraction": 1.0, "near_threshold": 1e-3}
INT8_TOLERANCE = {"image_score": 0.1, "same_count_fraction": 0.8, "near_threshold": 0.03}
OUTPUT_KEYS = ("boxes", "scores", "classes", "num_detections", "count", "image_score", "alarm")


def letterbox_tf(img_u8: Any, input_hw: tuple[int, int]) -> tuple[Any, Any, Any]:
    """Graph twin of ``preprocess.letterbox``: (float32 [H, W, 3] in 0..255, sx, sy)."""
    import tensorflow as tf

    from lepton_vision.data.preprocess import LETTERBOX_PAD

    H, W = int(input_hw[0]), int(input_hw[1])
    hw = tf.cast(tf.shape(img_u8)[:2], tf.float32)
    h0, w0 = hw[0], hw[1]
    s = tf.minimum(H / h0, W / w0)
    nh = tf.cast(tf.clip_by_value(tf.floor(h0 * s + 0.5), 1.0, float(H)), tf.int32)
    nw = tf.cast(tf.clip_by_value(tf.floor(w0 * s + 0.5), 1.0, float(W)), tf.int32)
    # A 3-D tensor: tf.image.resize adds and drops the batch axis with EXPAND_DIMS/SQUEEZE. Indexing
    # ([None], [0]) becomes a TFLite STRIDED_SLICE, which copies element by element: on a
    # 768x576 frame that alone took 11.5 of the float model's 27 ms (2 cores).
    x = tf.image.resize(tf.cast(img_u8, tf.float32), tf.stack([nh, nw]), "bilinear", antialias=False)
    # Pad with zeros around (x - pad) and add pad back: TFLite's PAD takes a constant of 0 only.
    x = tf.pad(x - LETTERBOX_PAD, [[0, H - nh], [0, W - nw], [0, 0]]) + LETTERBOX_PAD
    return tf.reshape(x, [H, W, 3]), tf.cast(nw, tf.float32) / w0, tf.cast(nh, tf.float32) / h0


def build_endpoints(model: Any, input_hw: tuple[int, int], policy: Any, score_threshold: float,
                    image_threshold: float | None) -> dict[str, Any]:
    """serve_uint8 and serve_bytes (registration order; the first is serving_default)."""
    import tensorflow as tf

    from lepton_vision.models.detectors import ADAPTERS, nms_padded

    adapter = ADAPTERS["yolov8"]
    box_thr = float(score_threshold)
    img_thr = float(image_threshold) if image_threshold is not None else 2.0  # 2.0: never alarms

    def detect(img_u8: Any) -> dict[str, Any]:
        x, sx, sy = letterbox_tf(img_u8, input_hw)
        boxes, scores = adapter.dense_predictions(model, tf.expand_dims(x, 0), training=False,
                                                  network_scope=NETWORK_SCOPE)
        b, s, c, n = nms_padded(tf.squeeze(boxes, 0), tf.squeeze(scores, 0), policy.max_detections,
                                policy.nms_iou, policy.min_score)
        hw = tf.cast(tf.shape(img_u8)[:2], tf.float32)
        b = b / tf.stack([sx, sy, sx, sy])
        b = tf.minimum(tf.maximum(b, 0.0), tf.stack([hw[1], hw[0], hw[1], hw[0]]))
        # A box predicted inside the letterbox padding clips to zero area in the frame: not a
        # detection (same rule as the out-of-fold predictions and the parity check).
        valid = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        s = tf.where(valid, s, 0.0)
        c = tf.where(valid & (s > 0.0), c, -1)
        n = tf.reduce_sum(tf.cast(s > 0.0, tf.int32))
        image_score = tf.reduce_max(tf.concat([s, tf.zeros([1], tf.float32)], 0))
        return {
            "boxes": b,
            "scores": s,
            "classes": c,
            "num_detections": n,
            "count": tf.reduce_sum(tf.cast(s >= box_thr, tf.int32)),
            "image_score": image_score,
            "alarm": tf.cast(image_score >= img_thr, tf.int32),
        }

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name="image")], autograph=False)
    def serve_uint8(image: Any) -> dict[str, Any]:
        # A wrong rank or channel count fails here, naming the expected shape, not deep inside.
        return detect(tf.ensure_shape(image, [None, None, 3], name="expect_HxWx3_uint8"))

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="image_bytes")], autograph=False)
    def serve_bytes(image_bytes: Any) -> dict[str, Any]:
        img = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        return detect(tf.ensure_shape(img, [None, None, 3]))

    return {"serve_uint8": serve_uint8, "serve_bytes": serve_bytes}


def _float_only_nodes(float_tflite: Path, float_layers: Sequence[str] = ()) -> list[str]:
    """Ops of a converted graph outside :data:`NETWORK_SCOPE` (letterbox, decode, NMS), the head's
    output ops (:data:`HEAD_OUTPUT_LAYERS` and everything downstream of them in the network), and
    the ops inside it whose name contains one of ``float_layers`` (Keras layer names appear in
    the op names), by the name of their first output tensor — the node names the TFLite
    quantiser understands."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(float_tflite))
    names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    ops = [op for op in interp._get_ops_details() if len(op["outputs"])]
    consumers: dict[int, list[dict[str, Any]]] = {}
    for op in ops:
        for i in op["inputs"]:
            consumers.setdefault(int(i), []).append(op)

    def in_network(op: dict[str, Any]) -> bool:
        return any(part.startswith(NETWORK_SCOPE + "/") for part in names[op["outputs"][0]].split(";"))

    def named(op: dict[str, Any], layers: Sequence[str]) -> bool:
        return any(layer in part for part in names[op["outputs"][0]].split(";") for layer in layers)

    keep = {op["index"] for op in ops if not in_network(op) or (float_layers and named(op, float_layers))}
    todo, seen = [op for op in ops if in_network(op) and named(op, HEAD_OUTPUT_LAYERS)], set()
    while todo:
        op = todo.pop()
        if op["index"] in seen:
            continue
        seen.add(op["index"])
        keep.add(op["index"])
        todo += [c for t in op["outputs"] for c in consumers.get(int(t), []) if in_network(c)]
    return [names[op["outputs"][0]] for op in ops if op["index"] in keep]


def _convert_tflite(sm_path: Path, out: Path, calibration: Sequence[np.ndarray] | None,
                    float_tflite: Path | None = None, float_layers: Sequence[str] = ()) -> Path:
    """serve_uint8 -> TFLite with builtin ops.

    With ``calibration`` frames: int8. Only the network is quantised; the ops of
    ``float_tflite`` outside :data:`NETWORK_SCOPE` are kept float32: box coordinates in frame
    pixels, the DFL softmax and NMS do not survive 8 bits. Measured image-score difference to
    the SavedModel: street-scene detector (16 frames), whole graph up to 0.45 (same box count
    on 12 % of frames), network only up to 0.04; USC pedestrian detector, whole graph up to
    0.74 (same count on 6 % of 16 frames), network only median 0.08 / 90th percentile 0.38
    (same count on 89 % of 64 frames). With the head's outputs float as well
    (:data:`HEAD_OUTPUT_LAYERS`), two USC fold models on 16 frames: worst image-score difference
    0.020 and 0.039 (0.379 and 0.083 without), same box count on every frame.
    """
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(sm_path), signature_keys=[bundle_io.DEFAULT_SIGNATURE])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        if calibration is None:
            flat = conv.convert()
        else:
            frames = list(calibration)

            def representative() -> Any:
                for f in frames:
                    yield {"image": f}

            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = representative
            # int8 where an int8 kernel exists, float elsewhere (NMS has no int8 kernel).
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
            if float_tflite is None:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
                    flat = conv.convert()
            else:
                options = tf.lite.experimental.QuantizationDebugOptions(
                    denylisted_nodes=_float_only_nodes(float_tflite, float_layers))
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
                    debugger = tf.lite.experimental.QuantizationDebugger(
                        converter=conv, debug_dataset=representative, debug_options=options)
                    flat = debugger.get_nondebug_quantized_model()
    except Exception as exc:
        raise ExportError(
            f"{out}: TFLite conversion with builtin ops failed: {type(exc).__name__}: {str(exc)[:500]}. "
            "Drop 'tflite' from export.formats."
        ) from exc
    atomic_write_bytes(out, flat)
    return out


def _as_numpy(out: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in out.items()}


def _match(a: dict[str, np.ndarray], b: dict[str, np.ndarray], thr: float, near_tol: float = 1e-3) -> dict[str, Any]:
    """Compare detections above ``thr``: count, and for each box of a the best IoU in b.

    ``near_tol``: boxes scoring within this of ``thr`` (in either backend) may explain a count
    difference."""
    from lepton_vision.kinds.detection.metrics import box_overlap, xyxy_to_xywh

    ka, kb = a["scores"] >= thr, b["scores"] >= thr
    ba, bb = a["boxes"][ka], b["boxes"][kb]
    if len(ba) and len(bb):
        iou = box_overlap(xyxy_to_xywh(ba), xyxy_to_xywh(bb), crowd=False).max(axis=1)
        min_iou = float(iou.min())
    else:
        min_iou = 1.0 if len(ba) == len(bb) else 0.0
    n = min(len(a["scores"]), len(b["scores"]))
    # Scores near the threshold may fall either side of it in another backend (float rounding,
    # int8 rounding, or near-ties in an undertrained model): such boxes may explain a count
    # difference; anything else is a real disagreement.
    near = int(np.sum(np.abs(a["scores"] - thr) <= near_tol) + np.sum(np.abs(b["scores"] - thr) <= near_tol))
    return {
        "count_a": int(ka.sum()), "count_b": int(kb.sum()), "min_iou": min_iou,
        "count_ok": bool(abs(int(ka.sum()) - int(kb.sum())) <= near),
        "max_score_diff": float(np.max(np.abs(a["scores"][:n] - b["scores"][:n]))) if n else 0.0,
        "image_score_diff": float(abs(float(a["image_score"]) - float(b["image_score"]))),
    }


def _parity(model: Any, sm_path: Path, tfl: dict[str, Path], frames: list[np.ndarray],
            input_hw: tuple[int, int], policy: Any, score_threshold: float) -> dict[str, Any]:
    import tensorflow as tf

    from lepton_vision.kinds.detection.train import make_predict_fn
    from lepton_vision.models.detectors import ADAPTERS
    from lepton_vision.data.preprocess import boxes_to_original, letterbox

    predict = make_predict_fn(model, ADAPTERS["yolov8"], policy.max_detections, policy.nms_iou, policy.min_score)
    serve = bundle_io.load_saved_model(sm_path).signatures[bundle_io.DEFAULT_SIGNATURE]
    runners = {name: bundle_io.tflite_runner(p) for name, p in tfl.items()}
    per: dict[str, list[dict[str, Any]]] = {f"saved_model_vs_{k}": [] for k in ["keras", *runners]}
    for img in frames:
        x, scale = letterbox(img, input_hw)
        d = predict(x[None])[0]
        k = len(d.scores)
        pad = policy.max_detections - k
        ob = boxes_to_original(d.boxes, scale, *img.shape[:2])
        sc = np.where((ob[:, 2] > ob[:, 0]) & (ob[:, 3] > ob[:, 1]), d.scores, 0.0).astype(np.float32)
        keras_out = {
            "boxes": np.pad(ob, [[0, pad], [0, 0]]),
            "scores": np.pad(sc, [0, pad]),
            "image_score": np.float32(sc.max() if k else 0.0),
        }
        sm = _as_numpy(serve(image=tf.constant(img)))
        per["saved_model_vs_keras"].append(_match(sm, keras_out, score_threshold))
        for name, r in runners.items():
            near = INT8_TOLERANCE["near_threshold"] if "int8" in name else FLOAT_TOLERANCE["near_threshold"]
            per[f"saved_model_vs_{name}"].append(_match(sm, _as_numpy(r(image=img)), score_threshold, near))
    summary: dict[str, Any] = {}
    ok = True
    for pair, rows in per.items():
        quant = "int8" in pair
        same_count = sum(r["count_ok"] for r in rows) / max(1, len(rows))
        worst_iou = min(r["min_iou"] for r in rows) if rows else 1.0
        worst_img = max(r["image_score_diff"] for r in rows) if rows else 0.0
        # Float backends must agree to rounding; int8 is judged by a looser, stated tolerance.
        tol = INT8_TOLERANCE if quant else FLOAT_TOLERANCE
        passed = worst_img <= tol["image_score"] and same_count >= tol["same_count_fraction"]
        ok &= passed or quant  # an int8 mismatch is reported, not fatal: the float model is the reference
        summary[pair] = {
            "pass": bool(passed), "tolerance": tol, "same_count_fraction": same_count,
            "worst_min_iou": worst_iou, "worst_image_score_diff": worst_img,
            "max_score_diff": max((r["max_score_diff"] for r in rows), default=0.0),
        }
    return {"pass": bool(ok), "n_frames": len(frames), "score_threshold": score_threshold, "pairs": summary}


def export_detector(
    model: Any,
    export_dir: str | Path,
    *,
    input_hw: tuple[int, int],
    score_threshold: float,
    image_threshold: float | None,
    policy: Any,
    bundle_info: dict[str, Any],
    parity_paths: Sequence[str],
    calibration_paths: Sequence[str],
    formats: Sequence[str] = ("saved_model", "tflite", "tflite_int8"),
    max_pixels: int = 50_000_000,
    quant_rows: Any = None,
    evaluated_on: str = "",
    int8_max_drop: float = 0.02,
    int8_float_layers: Sequence[str] = (),
    ood: Any = None,
) -> dict[str, Any]:
    """Export a detector with letterbox, decode, NMS and thresholds inside the graph.

    Args:
        model: The Keras detector (raw heads; adapter ``yolov8``).
        export_dir: Folder to write; an old bundle.json is removed first.
        input_hw: Network input (height, width).
        score_threshold: Box score threshold (``count``), from the cross-validated metrics.
        image_threshold: Image-level threshold (``alarm``), or None when the data had no empty
            frames to choose it on (``alarm`` is then always 0 and the bundle says so).
        policy: The task's DetectionPolicy (NMS IoU, max detections, min score).
        bundle_info: Merged into bundle.json (task, classes, metrics, recipe, dataset, ...).
        parity_paths: Real frames for the parity check.
        calibration_paths: Real frames for int8 calibration.
        formats: saved_model (required) and optionally tflite (float32), tflite_int8 and onnx.
        max_pixels: Refuse bigger images (decompression bombs).
        quant_rows: Sample-table rows (path, sample_id, label, boxes, classes, ignore) the int8
            model's AP50 change is measured on; None: not measured.
        evaluated_on: What ``quant_rows`` are to the exported model (held out or not).
        ood: ``(reference, feature_model)``: adds the ``serve_ood`` signature (and
            ``model_ood.tflite`` with ``tflite``), ``reference.npz`` and bundle.json's
            ``reference`` (:mod:`lepton_vision.export.reference`); ``feature_model`` maps
            letterboxed 0..255 frames to pooled backbone features.
        int8_float_layers: Parts of layer names whose ops stay float32 in the int8 file
            (``export.int8_float_layers``).
        int8_max_drop: Largest acceptable AP50 drop float32 -> int8; beyond it the run warns and
            the bundle marks model_int8.tflite ``recommended: false``.

    Returns:
        ``{"export_dir", "files", "parity", "quantization", "warnings", "timings_s"}``.

    Raises:
        ExportError: Conversion or parity of a float backend failed (parity.json is written
            first). A rejected ONNX file or an int8 model beyond tolerance is reported in
            ``warnings``, parity.json and bundle.json instead.
    """
    from lepton_vision.data.preprocess import read_image, to_uint8

    t_all = time.perf_counter()
    export_dir = Path(export_dir)
    if "saved_model" not in formats:
        raise ExportError(f"{export_dir}: export formats must include saved_model. Got {list(formats)}.")
    export_dir.mkdir(parents=True, exist_ok=True)
    (export_dir / bundle_io.BUNDLE_FILE).unlink(missing_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    endpoints = build_endpoints(model, input_hw, policy, score_threshold, image_threshold)
    if ood is not None:
        from lepton_vision.export.reference import OOD_SIGNATURE, ood_endpoint

        feature_model = ood[1]
        endpoints[OOD_SIGNATURE] = ood_endpoint(ood[0], lambda img: letterbox_tf(img, input_hw)[0],
                                                lambda x: feature_model(x, training=False), 3)
    sm_path = bundle_io.write_saved_model(model, export_dir, endpoints)
    timings["saved_model"] = round(time.perf_counter() - t, 2)
    atomic_save_model(model, export_dir / "model.keras")

    def frames(paths: Sequence[str]) -> list[np.ndarray]:
        return [to_uint8(read_image(p, max_pixels), 3, None) for p in paths]

    tfl: dict[str, Path] = {}
    for name in (bundle_io.TFLITE_FILE, bundle_io.TFLITE_INT8_FILE, "model.onnx"):
        (export_dir / name).unlink(missing_ok=True)
    if "tflite" in formats or "tflite_int8" in formats:
        t = time.perf_counter()
        # The float file is also the int8 conversion's map of which ops stay float32.
        tfl["tflite"] = _convert_tflite(sm_path, export_dir / bundle_io.TFLITE_FILE, None)
        timings["tflite"] = round(time.perf_counter() - t, 2)
    if "tflite_int8" in formats:
        t = time.perf_counter()
        tfl["tflite_int8"] = _convert_tflite(sm_path, export_dir / bundle_io.TFLITE_INT8_FILE, frames(calibration_paths),
                                             float_tflite=tfl["tflite"], float_layers=int8_float_layers)
        timings["tflite_int8"] = round(time.perf_counter() - t, 2)
    notes: list[str] = []
    from lepton_vision.export.onnx import check_or_reject, export_or_reject

    onnx_path, onnx_reject = export_or_reject(sm_path, export_dir, formats, timings)
    t = time.perf_counter()
    parity_frames = frames(parity_paths)
    parity = _parity(model, sm_path, tfl, parity_frames, input_hw, policy, score_threshold)
    onnx_path, onnx_reject = check_or_reject(
        onnx_path, onnx_reject, parity, lambda f: _onnx_parity(f, sm_path, parity_frames, score_threshold),
        lambda r: (f"onnxruntime detections differ from the SavedModel (same count on "
                   f"{r['same_count_fraction']:.0%} of frames, image score diff {r['worst_image_score_diff']:.3g})"),
        notes)
    timings["parity"] = round(time.perf_counter() - t, 2)
    quant = None
    if "tflite_int8" in tfl and quant_rows is not None and len(quant_rows):
        t = time.perf_counter()
        quant = _int8_check(tfl, quant_rows, evaluated_on, list(bundle_info["classes"]), policy,
                            int8_max_drop, max_pixels)
        parity["tflite_int8"] = quant
        if not quant["verdict"]["recommended"]:
            notes.append(f"int8 model not recommended: {quant['verdict']['reason']}")
        timings["int8_check"] = round(time.perf_counter() - t, 2)
    if "tflite" not in formats and "tflite" in tfl:
        tfl.pop("tflite").unlink(missing_ok=True)  # only needed to convert and judge int8
        parity["pairs"].pop("saved_model_vs_tflite", None)
    atomic_write_json(export_dir / bundle_io.PARITY_FILE, parity)
    if not parity["pass"]:
        bad = {k: v for k, v in parity["pairs"].items() if not v["pass"]}
        raise ExportError(
            f"{export_dir}: exported detector disagrees with the Keras model on real frames: {bad}. "
            f"See {export_dir / bundle_io.PARITY_FILE}."
        )
    files: dict[str, Any] = {"saved_model": {"path": bundle_io.SAVED_MODEL_DIR, "default_signature": bundle_io.DEFAULT_SIGNATURE},
                             "keras": {"path": "model.keras"}, "parity": {"path": bundle_io.PARITY_FILE}}
    for name, p in tfl.items():
        files[name] = {"path": p.name, "signature": bundle_io.DEFAULT_SIGNATURE, "bytes": p.stat().st_size,
                       "dtype": ("int8 network; letterbox, decoding and NMS float32; float input/output"
                                 if "int8" in name else "float32"),
                       # int8 may miss its looser tolerance without failing the export: say so here.
                       "parity_pass": bool(parity["pairs"][f"saved_model_vs_{name}"]["pass"])}
    if quant is not None:
        files["tflite_int8"]["recommended"] = quant["verdict"]["recommended"]
        files["tflite_int8"]["metric_change"] = {k: quant["change"][k] for k in ("metric", "float", "int8", "drop")}
    elif "tflite_int8" in files:
        # Without labelled frames, the parity tolerance is the only evidence.
        files["tflite_int8"]["recommended"] = files["tflite_int8"]["parity_pass"]
    if onnx_path is not None:
        from lepton_vision.export.onnx import OPSET

        files["onnx"] = {"path": onnx_path.name, "signature": bundle_io.DEFAULT_SIGNATURE, "opset": OPSET,
                         "bytes": onnx_path.stat().st_size,
                         "worst_image_score_diff_vs_saved_model": parity["onnx"]["worst_image_score_diff"]}
    info = dict(bundle_info)
    bundle = {
        "schema_version": bundle_io.SCHEMA_VERSION,
        "task": info.pop("task"),
        "kind": info.pop("kind", "object_detection"),
        "classes": list(info.pop("classes")),
        "score_threshold": float(score_threshold),
        "image_threshold": None if image_threshold is None else float(image_threshold),
        "input": {"image_size": list(input_hw), "channels": 3, "dtype": "uint8", "any_size": True,
                  "letterbox": "scale to fit keeping aspect ratio (float32), bilinear antialias=False, "
                               "top-left, pad 114"},
        "outputs": {
            "boxes": "x1, y1, x2, y2 in the input frame's pixels",
            "scores": "box confidence", "classes": "index into classes (-1 = padding)",
            "num_detections": "rows with score >= detection.min_score",
            "count": "rows with score >= score_threshold",
            "image_score": "max box score (object present)",
            "alarm": "1 when image_score >= image_threshold"
                     + (" (no image threshold: the data had no empty frames; alarm is always 0)"
                        if image_threshold is None else ""),
        },
        "default_signature": bundle_io.DEFAULT_SIGNATURE,
        "signatures": bundle_io.signatures_json(sm_path),
        "files": files,
        "versions": {**bundle_io.export_versions(), **info.pop("versions", {})},
        **info,
    }
    if quant is not None:
        bundle["quantization"] = {"evaluated_on": quant["evaluated_on"], "n_images": quant["change"]["n"],
                                  "change": quant["change"], "verdict": quant["verdict"]}
    if onnx_reject is not None:
        bundle["rejected_files"] = {"onnx": onnx_reject}
    from lepton_vision.export.reference import OOD_TFLITE_FILE, REFERENCE_FILE

    if ood is not None:
        t = time.perf_counter()
        bundle["reference"] = _ood_files(export_dir, sm_path, ood, parity_frames, input_hw, "tflite" in formats)
        timings["ood"] = round(time.perf_counter() - t, 2)
    else:
        for name in (REFERENCE_FILE, OOD_TFLITE_FILE):
            (export_dir / name).unlink(missing_ok=True)
    atomic_write_json(export_dir / bundle_io.BUNDLE_FILE, bundle)  # last: the export is complete
    timings["total"] = round(time.perf_counter() - t_all, 2)
    return {"export_dir": str(export_dir), "files": files, "parity": parity["pass"],
            "quantization": bundle.get("quantization"), "warnings": notes, "timings_s": timings}


def _ood_files(export_dir: Path, sm_path: Path, ood: Any, frames: list[np.ndarray], input_hw: tuple[int, int],
               tflite: bool) -> dict[str, Any]:
    """reference.npz, model_ood.tflite and the OOD parity (formula vs SavedModel vs LiteRT)."""
    from lepton_vision.data.preprocess import letterbox
    from lepton_vision.export.reference import check_ood_export, image_stats, ood_scores

    ref, feature_model = ood
    ref.save(export_dir)
    xs = [letterbox(f, input_hw)[0].astype(np.float32) for f in frames]
    feats = np.asarray(feature_model(np.stack(xs), training=False), np.float64)
    stats = np.stack([image_stats(x, f.shape[:2]) for x, f in zip(xs, frames)])
    return check_ood_export(export_dir, sm_path, ref, frames, ood_scores(ref, feats, stats), tflite)


def _onnx_parity(onnx_path: Path, sm_path: Path, frames: list[np.ndarray], score_threshold: float) -> dict[str, Any]:
    """onnxruntime vs SavedModel detections on the parity frames, judged like TFLite float."""
    import tensorflow as tf

    from lepton_vision.export import onnx as onnx_export

    sess = onnx_export.session(onnx_path)
    serve = bundle_io.load_saved_model(sm_path).signatures[bundle_io.DEFAULT_SIGNATURE]
    rows = [_match(_as_numpy(serve(image=tf.constant(img))), onnx_export.run(sess, img), score_threshold,
                   FLOAT_TOLERANCE["near_threshold"]) for img in frames]
    same = sum(r["count_ok"] for r in rows) / max(1, len(rows))
    worst = max((r["image_score_diff"] for r in rows), default=0.0)
    return {"pass": bool(worst <= FLOAT_TOLERANCE["image_score"] and same >= FLOAT_TOLERANCE["same_count_fraction"]),
            "tolerance": FLOAT_TOLERANCE, "same_count_fraction": same, "worst_image_score_diff": worst,
            "worst_min_iou": min((r["min_iou"] for r in rows), default=1.0)}


def _int8_check(tfl: dict[str, Path], rows: Any, evaluated_on: str, class_names: list[str], policy: Any,
                max_drop: float, max_pixels: int) -> dict[str, Any]:
    """AP50 of TFLite float32 vs int8 on labelled frames (boxes in original pixels)."""
    from lepton_vision.data.preprocess import read_image, to_uint8
    from lepton_vision.export.quantization import verdict
    from lepton_vision.kinds.detection.metrics import detection_change

    runners = {k: bundle_io.tflite_runner(tfl[k]) for k in ("tflite", "tflite_int8")}
    outs: dict[str, list[dict[str, np.ndarray]]] = {k: [] for k in runners}
    for path in rows["path"]:
        img = to_uint8(read_image(path, max_pixels), 3, None)
        for k, r in runners.items():
            outs[k].append(_as_numpy(r(image=img)))
    change = detection_change(rows, outs["tflite"], outs["tflite_int8"], class_names, policy.max_detections)
    return {"evaluated_on": evaluated_on, "change": change, "verdict": verdict(change, max_drop)}

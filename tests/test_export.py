"""Export: signatures, parity Keras vs SavedModel vs TFLite, bundle.json, forced parity failure."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from lepton_vision.data import preprocess
from lepton_vision.config.errors import ExportError

pytestmark = pytest.mark.tf

SIZE = (32, 40)  # (h, w): not square, so a swapped h/w would show
WINDOW = (-600.0, 1500.0)
THRESHOLD = 0.5
INFO = {
    "task": "ct_screening",
    "kind": "binary_classification",
    "classes": ["normal", "nodule"],
    "positive_class": "nodule",
    "threshold_policy": "max_f1",
    "metrics": {"auc": {"value": 0.9, "ci": [0.8, 0.95]}},
    "recipe_hash": "abc123",
}


def sample_images(channels: int, n: int = 4, seed: int = 1) -> list[np.ndarray]:
    """uint8 HxWxC images of varied sizes (smaller and larger than the network input)."""
    rng = np.random.default_rng(seed)
    shapes = [(50, 70), (20, 25), (32, 40), (97, 61)]
    return [rng.integers(0, 256, (*shapes[i % 4], channels), dtype=np.uint8) for i in range(n)]


def keras_scores(model, images) -> np.ndarray:
    batch = np.stack([preprocess.to_model_input(im, SIZE) for im in images])
    return np.array(model(batch, training=False)).reshape(-1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_factory):
    model = tiny_model_factory(SIZE, 3)
    images = sample_images(3)
    export_dir = tmp_path_factory.mktemp("run") / "export"
    from lepton_vision.kinds.classification.export import export_classifier

    result = export_classifier(
        model, export_dir, image_size_hw=SIZE, channels=3, window=WINDOW, threshold=THRESHOLD,
        bundle_info=INFO, parity_images=images, reference_scores=keras_scores(model, images),
    )
    import tensorflow as tf

    loaded = tf.saved_model.load(str(export_dir / "saved_model"))
    return {"model": model, "images": images, "dir": export_dir, "result": result, "loaded": loaded}


def test_files_and_timings(exported):
    d = exported["dir"]
    assert (d / "saved_model" / "saved_model.pb").is_file()
    assert (d / "model.tflite").stat().st_size > 0
    # No staging folders left beside or inside the export.
    assert not [p for p in d.parent.iterdir() if p.name.startswith(".")]
    assert not [p for p in d.iterdir() if p.name.startswith(".")]
    t = exported["result"]["timings_s"]
    assert set(t) == {"saved_model", "tflite", "parity", "bundle", "total"}
    assert t["total"] >= t["saved_model"] > 0


def test_signatures_match_keras(exported):
    import tensorflow as tf

    sigs = exported["loaded"].signatures
    assert {"serve", "serve_uint8", "serve_bytes", "serve_hu", "serving_default"} <= set(sigs)
    model, images = exported["model"], exported["images"]
    ref = keras_scores(model, images)
    assert np.ptp(ref) > 1e-4, "scores must vary across images for the comparison to mean anything"
    u8 = np.array([float(sigs["serve_uint8"](image=tf.constant(im))["score"][0]) for im in images])
    default = np.array([float(sigs["serving_default"](image=tf.constant(im))["score"][0]) for im in images])
    batch = np.stack([preprocess.to_model_input(im, SIZE) for im in images])
    out = sigs["serve"](images=tf.constant(batch))
    np.testing.assert_allclose(u8, ref, atol=1e-5)
    np.testing.assert_allclose(default, u8, atol=0)  # serving_default is serve_uint8
    np.testing.assert_allclose(out["score"].numpy(), ref, atol=1e-5)
    assert out["score"].shape == (len(images),)
    assert out["decision"].dtype == tf.int32
    np.testing.assert_array_equal(out["decision"].numpy(), (out["score"].numpy() >= THRESHOLD).astype(int))


def test_serve_bytes_png_equals_serve_uint8(exported):
    import tensorflow as tf

    sigs = exported["loaded"].signatures
    images = exported["images"]
    pngs = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in images]
    out = sigs["serve_bytes"](image_bytes=tf.constant(pngs))
    u8 = [float(sigs["serve_uint8"](image=tf.constant(im))["score"][0]) for im in images]
    np.testing.assert_allclose(out["score"].numpy(), u8, atol=1e-6)


def test_serve_hu_equals_numpy_window(exported):
    import tensorflow as tf

    sigs = exported["loaded"].signatures
    rng = np.random.default_rng(3)
    for shape in [(48, 56), (30, 30)]:
        hu = rng.integers(-1100, 600, shape).astype(np.float32)
        hu[0, :4] = [-1350.0, 150.0, -1349.5, -600.0]  # window edges and the centre
        u8 = preprocess.to_uint8(hu, 3, WINDOW)
        a = float(sigs["serve_hu"](hu=tf.constant(hu))["score"][0])
        b = float(sigs["serve_uint8"](image=tf.constant(u8))["score"][0])
        # Different graphs round differently (~5e-6), hence 1e-5 and not equality ...
        assert abs(a - b) <= 1e-5
        # ... which still tells the contract's rounding from truncation (a one-level shift).
        low = WINDOW[0] - WINDOW[1] / 2
        trunc = np.clip(np.floor((hu.astype(np.float64) - low) / WINDOW[1] * 255), 0, 255)
        trunc_u8 = np.repeat(trunc.astype(np.uint8)[..., None], 3, axis=2)
        c = float(sigs["serve_uint8"](image=tf.constant(trunc_u8))["score"][0])
        assert abs(a - c) > 1e-4


def test_tflite_equals_saved_model(exported):
    from ai_edge_litert.interpreter import Interpreter

    import tensorflow as tf

    runner = Interpreter(model_path=str(exported["dir"] / "model.tflite")).get_signature_runner("serve_uint8")
    sig = exported["loaded"].signatures["serve_uint8"]
    for im in exported["images"]:
        lite = runner(image=im)
        tfo = sig(image=tf.constant(im))
        assert abs(float(lite["score"][0]) - float(tfo["score"][0])) <= 1e-4
        assert int(lite["decision"][0]) == int(tfo["decision"][0])


def test_tflite_graph_copies_no_image_with_strided_slice(exported, image_slices):
    """As for the detector (tests/test_det_predictor.py): the resize and the batch axis use
    EXPAND_DIMS/SQUEEZE, never an element-by-element STRIDED_SLICE copy of an image."""
    assert not image_slices(exported["dir"] / "model.tflite", (300, 420, 3), SIZE[0] * SIZE[1])


def test_parity_and_bundle_json(exported):
    d = exported["dir"]
    parity = json.loads((d / "parity.json").read_text())
    assert parity["pass"] is True and parity["n_samples"] == 4
    assert set(parity["backends"]) == {"keras", "saved_model", "tflite", "reference"}
    assert max(parity["max_abs_diff"].values()) <= 1e-4
    bundle = json.loads((d / "bundle.json").read_text())
    assert bundle["schema_version"] == 1
    for key in ("task", "kind", "classes", "positive_class", "threshold", "input", "signatures",
                "files", "versions", "metrics", "recipe_hash", "default_signature"):
        assert key in bundle, key
    assert bundle["threshold"] == {"value": THRESHOLD, "policy": "max_f1"}
    assert bundle["input"]["image_size"] == list(SIZE)
    assert bundle["input"]["channels"] == 3 and bundle["input"]["dtype"] == "uint8"
    assert bundle["input"]["window"]["level"] == WINDOW[0]
    assert bundle["input"]["resize"] == "bilinear, antialias=False"
    assert {"tensorflow", "keras", "lepton_vision"} <= set(bundle["versions"])
    sig = bundle["signatures"]["serve_uint8"]
    assert sig["inputs"]["image"] == {"dtype": "uint8", "shape": [None, None, 3]}
    assert set(sig["outputs"]) == {"score", "decision"}
    assert bundle["signatures"]["serve_hu"]["inputs"]["hu"]["dtype"] == "float32"
    assert bundle["files"]["tflite"]["path"] == "model.tflite"


def test_forced_parity_failure_raises_and_records(exported, tmp_path):
    from lepton_vision.kinds.classification.export import export_classifier

    model, images = exported["model"], exported["images"]
    off = keras_scores(model, images)
    off[2] += 0.5
    export_dir = tmp_path / "export"
    with pytest.raises(ExportError, match=r"sample 2 differs by 0\.5"):
        export_classifier(model, export_dir, image_size_hw=SIZE, channels=3, window=None,
                          threshold=THRESHOLD, bundle_info=INFO, parity_images=images,
                          reference_scores=off, formats=("saved_model",))
    parity = json.loads((export_dir / "parity.json").read_text())
    assert parity["pass"] is False
    assert parity["worst"]["sample"] == 2 and "reference" in parity["worst"]["pair"]
    assert not (export_dir / "bundle.json").exists()  # a failed export is not loadable
    assert not (export_dir / "model.tflite").exists()


def test_grayscale_export_without_window(tmp_path, tiny_model_factory):
    """C=1 model: no serve_hu, HxW parity images accepted, TFLite runs on HxWx1."""
    from lepton_vision.kinds.classification.export import export_classifier

    model = tiny_model_factory(SIZE, 1, seed=2)
    images = [im[:, :, 0] for im in sample_images(1, n=2)]
    res = export_classifier(model, tmp_path / "export", image_size_hw=SIZE, channels=1, window=None,
                            threshold=0.3, bundle_info={**INFO, "threshold_policy": "fixed"},
                            parity_images=images)
    assert res["parity"]["pass"]
    bundle = res["bundle"]
    assert "serve_hu" not in bundle["signatures"] and bundle["input"]["window"] is None
    assert bundle["signatures"]["serve_uint8"]["inputs"]["image"]["shape"] == [None, None, 1]


def test_bad_arguments_are_export_errors(exported, tmp_path):
    from lepton_vision.kinds.classification.export import export_classifier

    kw = dict(image_size_hw=SIZE, channels=3, window=None, threshold=0.5,
              parity_images=exported["images"])
    with pytest.raises(ExportError, match="bundle_info lacks"):
        export_classifier(exported["model"], tmp_path / "e", bundle_info={"task": "x"}, **kw)
    with pytest.raises(ExportError, match="must include 'saved_model'"):
        export_classifier(exported["model"], tmp_path / "e", bundle_info=INFO, formats=("tflite",), **kw)
    with pytest.raises(ExportError, match="parity image 0 must be uint8"):
        export_classifier(exported["model"], tmp_path / "e", bundle_info=INFO,
                          **{**kw, "parity_images": [np.zeros((8, 8, 3), np.float32)]})
    assert not os.path.exists(tmp_path / "e" / "saved_model")


# --------------------------------------------------------------------------------------------
# int8 and ONNX


def _labelled(model, n: int = 48, seed: int = 5) -> tuple[list[np.ndarray], np.ndarray]:
    """Images of varied brightness with labels the tiny model can rank (mean > 0.5 = positive)."""
    rng = np.random.default_rng(seed)
    images = [np.clip(rng.normal(rng.uniform(60, 200), 30, (40, 48, 3)), 0, 255).astype(np.uint8)
              for _ in range(n)]
    labels = np.array([int(im.mean() > 128) for im in images])
    return images, labels


@pytest.fixture(scope="module")
def exported_all(tmp_path_factory, tiny_model_factory):
    from lepton_vision.kinds.classification.export import export_classifier

    model = tiny_model_factory(SIZE, 3)
    images, labels = _labelled(model)
    export_dir = tmp_path_factory.mktemp("run_all") / "export"
    result = export_classifier(
        model, export_dir, image_size_hw=SIZE, channels=3, window=None, threshold=THRESHOLD,
        bundle_info=INFO, parity_images=sample_images(3),
        formats=("saved_model", "tflite", "tflite_int8", "onnx"),
        calibration_images=images[:16],
        quant_eval={"images": images, "labels": labels, "evaluated_on": "test images"},
    )
    return {"model": model, "dir": export_dir, "result": result, "images": images, "labels": labels}


def test_int8_file_takes_uint8_and_records_metric_change(exported_all):
    from ai_edge_litert.interpreter import Interpreter

    d = exported_all["dir"]
    runner = Interpreter(model_path=str(d / "model_int8.tflite")).get_signature_runner("serve_uint8")
    assert runner.get_input_details()["image"]["dtype"] == np.uint8
    assert any(t["dtype"] == np.int8 for t in Interpreter(model_path=str(d / "model_int8.tflite")).get_tensor_details()), \
        "weights/activations must be int8"
    bundle = json.loads((d / "bundle.json").read_text())
    f = bundle["files"]["tflite_int8"]
    assert f["bytes"] == (d / "model_int8.tflite").stat().st_size
    q = bundle["quantization"]
    c = q["change"]
    assert q["evaluated_on"] == "test images" and c["n"] == len(exported_all["labels"])
    # The AUCs are the real ones on these labels: recompute them independently.
    from sklearn.metrics import roc_auc_score

    scores8 = np.array([float(runner(image=im)["score"][0]) for im in exported_all["images"]])
    assert c["int8"] == pytest.approx(roc_auc_score(exported_all["labels"], scores8), abs=1e-12)
    keras = keras_scores(exported_all["model"], exported_all["images"])
    assert c["float"] == pytest.approx(roc_auc_score(exported_all["labels"], keras), abs=1e-9)
    assert c["drop"] == pytest.approx(c["float"] - c["int8"])
    assert f["recommended"] is bool(c["drop"] <= 0.02) and f["metric_change"]["drop"] == c["drop"]
    parity = json.loads((d / "parity.json").read_text())
    assert parity["tflite_int8"]["change"] == c


def test_onnx_matches_saved_model(exported_all):
    import onnxruntime as ort
    import tensorflow as tf

    d = exported_all["dir"]
    bundle = json.loads((d / "bundle.json").read_text())
    assert bundle["files"]["onnx"]["path"] == "model.onnx" and "rejected_files" not in bundle
    sess = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    serve = tf.saved_model.load(str(d / "saved_model")).signatures["serve_uint8"]
    for im in exported_all["images"][:6]:
        onnx_score = sess.run(["score"], {"image": im})[0][0]
        assert onnx_score == pytest.approx(float(serve(image=tf.constant(im))["score"][0]), abs=1e-4)
    assert json.loads((d / "parity.json").read_text())["onnx"]["pass"] is True


def test_int8_beyond_tolerance_is_marked_not_recommended(exported_all, tmp_path):
    from lepton_vision.kinds.classification.export import export_classifier

    images, labels = exported_all["images"], exported_all["labels"]
    # A negative tolerance: any int8 result is "beyond" it, so the not-recommended path runs.
    res = export_classifier(
        exported_all["model"], tmp_path / "export", image_size_hw=SIZE, channels=3, window=None,
        threshold=THRESHOLD, bundle_info=INFO, parity_images=sample_images(3),
        formats=("saved_model", "tflite_int8"), calibration_images=images[:8],
        quant_eval={"images": images, "labels": labels, "evaluated_on": "test"}, int8_max_drop=-1.0,
    )
    bundle = json.loads((tmp_path / "export" / "bundle.json").read_text())
    assert bundle["files"]["tflite_int8"]["recommended"] is False
    assert "NOT RECOMMENDED" in bundle["quantization"]["verdict"]["reason"]
    assert any("int8 model not recommended" in w for w in res["warnings"])
    assert "tflite" not in bundle["files"] and not (tmp_path / "export" / "model.tflite").exists()


def test_onnx_converter_that_succeeds_with_unsupported_ops_does_not_pass(exported_all, tmp_path):
    """serve_bytes decodes images (DecodeImage), which ONNX lacks: tf2onnx logs it and exits 0."""
    from lepton_vision.export.onnx import write_onnx

    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="serve_bytes") as err:
        write_onnx(exported_all["dir"] / "saved_model", out, signature="serve_bytes")
    assert "not written" in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


# --------------------------------------------------------------------------------------------
# wrong inputs into the exported model


@pytest.mark.parametrize("name, array, expect", [
    ("float pixels", np.zeros((20, 24, 3), np.float32), "expected to be a uint8 tensor"),
    ("a batch (rank 4)", np.zeros((1, 20, 24, 3), np.uint8), r"expected shape \[\?,\?,3\]"),
    ("grey (rank 2)", np.zeros((20, 24), np.uint8), r"expected shape \[\?,\?,3\]"),
    ("RGBA", np.zeros((20, 24, 4), np.uint8), r"expected shape \[\?,\?,3\]"),
])
def test_saved_model_signature_refuses_wrong_inputs_at_the_boundary(exported, name, array, expect):
    """Wrong dtype, rank or channel count fail at the signature's first op with the expected
    spec in the message, not deep inside a resize or a convolution."""
    import tensorflow as tf

    serve = exported["loaded"].signatures["serve_uint8"]
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError), match=expect) as err:
        serve(image=tf.constant(array))
    assert "convolution" not in str(err.value) and "ResizeBilinear" not in str(err.value), name


def test_tflite_still_converts_with_the_input_check(exported):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(exported["dir"] / "model.tflite")).get_signature_runner("serve_uint8")
    assert runner(image=exported["images"][0])["score"].shape == (1,)


def test_int8_calibration_leaves_out_the_images_a_best_fold_export_is_judged_on(tmp_path):
    import pandas as pd

    from lepton_vision.export.quantization import calibration_rows, evaluation_rows

    table = pd.DataFrame({"path": [f"img{i}.png" for i in range(50)], "fold": [i % 5 for i in range(50)],
                          "label": [i % 2 for i in range(50)]})
    final = tmp_path / "final.json"
    final.write_text(json.dumps({"mode": "best_fold", "fold": 2}))
    held_out, what = evaluation_rows(table, final, n_max=100, seed=0)
    assert what.startswith("held out") and set(held_out["fold"]) == {2}
    calib = calibration_rows(table, final, n_max=100, seed=1)
    assert len(calib) == 40 and not set(calib["path"]) & set(held_out["path"])  # the exported fold's training images
    assert len(calibration_rows(table, final, n_max=8, seed=1)) == 8
    # After a refit every image trained the model: all are candidates, drawn as before (table.sample).
    final.write_text(json.dumps({"mode": "refit", "epochs": 3}))
    refit = calibration_rows(table, final, n_max=64, seed=1)
    assert len(refit) == 50 and set(refit["fold"]) == set(range(5))
    assert list(calibration_rows(table, final, n_max=10, seed=7)["path"]) == list(table.sample(n=10, random_state=7)["path"])

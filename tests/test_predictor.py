"""Predictor on an exported bundle: PNG and DICOM files, both backends, plain-TensorFlow use."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lepton_vision.data import preprocess
from lepton_vision.config.errors import DataError, ExportError

pytestmark = pytest.mark.tf

SIZE = (32, 32)
WINDOW = (-600.0, 1500.0)
THRESHOLD = 0.5
INFO = {
    "task": "ct_screening",
    "classes": ["normal", "nodule"],
    "positive_class": "nodule",
    "threshold_policy": "max_f1",
}

@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_model_factory, write_ct_dicom):
    from lepton_vision.kinds.classification.export import export_classifier

    root = tmp_path_factory.mktemp("pred")
    rng = np.random.default_rng(5)
    model = tiny_model_factory(SIZE)
    pngs = []
    for i, shape in enumerate([(40, 52), (25, 30), (64, 48)]):
        rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        p = root / "imgs" / f"img{i}.png"
        p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        pngs.append(p)
    dcm = root / "imgs" / "slice.dcm"
    write_ct_dicom(dcm, rng.integers(0, 1700, (36, 44)))
    (root / "imgs" / "notes.txt").write_text("not an image")  # must be ignored by iter_folder
    parity = [preprocess.to_uint8(preprocess.read_image(p), 3, WINDOW) for p in [*pngs, dcm]]
    export_dir = root / "export"
    export_classifier(model, export_dir, image_size_hw=SIZE, channels=3, window=WINDOW,
                      threshold=THRESHOLD, bundle_info=INFO, parity_images=parity,
                      formats=("saved_model", "tflite", "tflite_int8"))
    return {"model": model, "dir": export_dir, "pngs": pngs, "dcm": dcm, "root": root}


def keras_score(model, path: Path) -> float:
    x = preprocess.load_for_model(path, SIZE, 3, WINDOW)
    return float(np.asarray(model(x[None], training=False)).reshape(-1)[0])


@pytest.mark.parametrize("backend", ["saved_model", "tflite"])
def test_predictor_equals_keras(bundle, backend):
    from lepton_vision.kinds.classification.predictor import Prediction, ClassificationPredictor

    pred = ClassificationPredictor.from_bundle(bundle["dir"], backend=backend)
    assert pred.backend == backend
    paths = [*bundle["pngs"], bundle["dcm"]]
    results = pred.predict_many(paths)
    scores = [r.score for r in results]
    ref = [keras_score(bundle["model"], p) for p in paths]
    assert np.ptp(ref) > 1e-4
    np.testing.assert_allclose(scores, ref, atol=1e-4)
    for r, p in zip(results, paths):
        assert isinstance(r, Prediction) and r.path == str(p) and r.threshold == THRESHOLD
        assert r.decision == (r.score >= THRESHOLD)
        assert r.label == ("nodule" if r.decision else "normal")
    # Arrays: uint8 HxW / HxWx3 and float HU (the bundle has a window) go the same way.
    gray = preprocess.read_image(bundle["pngs"][0])[:, :, 0]
    assert pred.predict(gray).score == pytest.approx(
        pred.predict(np.repeat(gray[:, :, None], 3, axis=2)).score, abs=1e-6)
    hu = preprocess.read_image(bundle["dcm"])
    assert pred.predict(hu).score == pytest.approx(results[-1].score, abs=1e-6)
    assert pred.predict(hu).path is None


def test_auto_backend_prefers_tflite(bundle):
    from lepton_vision.kinds.classification.predictor import ClassificationPredictor

    assert ClassificationPredictor.from_bundle(bundle["dir"]).backend == "tflite"


def test_threshold_override_changes_decisions(bundle):
    from lepton_vision.kinds.classification.predictor import ClassificationPredictor

    paths = [*bundle["pngs"], bundle["dcm"]]
    low = ClassificationPredictor.from_bundle(bundle["dir"], threshold=0.0).predict_many(paths)
    high = ClassificationPredictor.from_bundle(bundle["dir"], threshold=1.0).predict_many(paths)
    assert all(r.decision and r.label == "nodule" and r.threshold == 0.0 for r in low)
    assert not any(r.decision for r in high)
    with pytest.raises(ExportError, match="threshold override"):
        ClassificationPredictor.from_bundle(bundle["dir"], threshold=1.5)


def test_iter_folder_and_csv(bundle, tmp_path):
    from lepton_vision.kinds.classification.predictor import ClassificationPredictor, write_predictions_csv

    pred = ClassificationPredictor.from_bundle(bundle["dir"], backend="tflite")
    results = list(pred.iter_folder(bundle["root"] / "imgs"))
    names = [Path(r.path).name for r in results]
    assert names == ["img0.png", "img1.png", "img2.png", "slice.dcm"]
    out = tmp_path / "preds.csv"
    write_predictions_csv(results, out)
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == [r.path for r in results]
    assert [float(r["score"]) for r in rows] == [r.score for r in results]
    assert [int(r["decision"]) for r in rows] == [int(r.decision) for r in results]
    with pytest.raises(DataError, match="folder not found"):
        list(pred.iter_folder(tmp_path / "nope"))


def test_bad_inputs_give_clear_errors(bundle, tmp_path):
    from lepton_vision.kinds.classification.predictor import ClassificationPredictor

    pred = ClassificationPredictor.from_bundle(bundle["dir"], backend="saved_model")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match="broken.png"):
        pred.predict(bad)
    with pytest.raises(DataError, match="image array"):
        pred.predict(np.zeros((4, 4, 5), np.uint8))

    with pytest.raises(ExportError, match="no bundle.json"):
        ClassificationPredictor.from_bundle(tmp_path)
    copy = tmp_path / "export_v9"
    copy.mkdir()
    b = json.loads((bundle["dir"] / "bundle.json").read_text())
    (copy / "bundle.json").write_text(json.dumps({**b, "schema_version": 9}))
    with pytest.raises(ExportError, match="schema_version. Got 9"):
        ClassificationPredictor.from_bundle(copy)
    (copy / "bundle.json").write_text(json.dumps(b))
    with pytest.raises(ExportError, match="model.tflite, which is missing"):
        ClassificationPredictor.from_bundle(copy, backend="tflite")


def test_float_array_without_window_is_refused(tmp_path, tiny_model_factory):
    from lepton_vision.kinds.classification.export import export_classifier
    from lepton_vision.kinds.classification.predictor import ClassificationPredictor

    imgs = [np.full((20, 20, 3), 100, np.uint8)]
    export_classifier(tiny_model_factory(SIZE, seed=1), tmp_path / "e", image_size_hw=SIZE, channels=3,
                      window=None, threshold=0.5, bundle_info=INFO, parity_images=imgs,
                      formats=("saved_model",))
    pred = ClassificationPredictor.from_bundle(tmp_path / "e")
    assert pred.backend == "saved_model"  # no model.tflite -> auto falls back
    with pytest.raises(DataError, match="no CT window"):
        pred.predict(np.zeros((20, 20), np.float32))


def test_plain_tensorflow_example_matches_predictor(bundle, tmp_path, readme_example):
    from lepton_vision import Predictor

    png = bundle["pngs"][2]
    stdout, out = readme_example("plain-tf-example", tmp_path, str(bundle["dir"]), str(png))
    expected = Predictor.from_bundle(bundle["dir"], backend="saved_model").predict(png)
    assert abs(out["score"][0] - expected.score) <= 1e-4
    assert bool(out["decision"][0]) == expected.decision
    assert stdout.splitlines()[0].split()[0] == expected.label


@pytest.mark.parametrize("backend", ["tflite", "tflite_int8"])
def test_litert_example_matches_predictor(bundle, tmp_path, backend, readme_example):
    from lepton_vision import Predictor

    files = {"tflite": "model.tflite", "tflite_int8": "model_int8.tflite"}
    for png in bundle["pngs"]:
        _, out = readme_example("litert-example", tmp_path, str(bundle["dir"]), str(png), files[backend])
        expected = Predictor.from_bundle(bundle["dir"], backend=backend).predict(png)
        assert abs(out["score"][0] - expected.score) <= 1e-6  # same file, same runtime
        assert bool(out["decision"][0]) == expected.decision


def test_every_bundle_field_is_in_the_readme_schema(bundle, readme_schema_fields):
    fields = json.loads((bundle["dir"] / "bundle.json").read_text())
    undocumented = set(fields) - readme_schema_fields
    assert not undocumented, f"bundle.json fields missing from the README schema table: {undocumented}"
    assert set(fields["files"]) <= {"saved_model", "tflite", "tflite_int8", "onnx", "keras_model", "parity"}


def test_predictor_imports_no_training_code(bundle, tmp_path):
    """A product that scores with LiteRT pays for neither TensorFlow nor Keras nor our training code."""
    code = (
        "import sys; from lepton_vision import Predictor; "
        "p = Predictor.from_bundle(sys.argv[1], backend='tflite'); r = p.predict(sys.argv[2]); "
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'keras_cv', 'albumentations', 'lepton_vision.kinds.classification.train', "
        "'lepton_vision.engine.crossval', 'lepton_vision.data.pipeline', 'sklearn') if m in sys.modules); "
        "print(r.score, heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(bundle["dir"]), str(bundle["pngs"][0])],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    score, heavy = proc.stdout.strip().split(" ", 1)
    assert heavy == "[]" and 0.0 <= float(score) <= 1.0


@pytest.mark.parametrize("array, expect", [
    (np.zeros((20, 20, 2), np.uint8), "expected HxW or HxWx1/3"),
    (np.zeros((1, 20, 20, 3), np.uint8), "expected HxW or HxWx1/3"),
    (np.zeros((20, 20), bool), "unsupported pixel type bool"),
    (np.zeros((20, 20), np.int64), "unsupported pixel type int64"),
    (np.zeros((0, 20), np.uint8), "at least 4 px"),
    (np.zeros((1, 1, 3), np.uint8), "at least 4 px"),
])
@pytest.mark.parametrize("backend", ["saved_model", "tflite"])
def test_predictor_refuses_wrong_arrays_with_a_data_error(bundle, array, expect, backend):
    from lepton_vision import Predictor

    pred = Predictor.from_bundle(bundle["dir"], backend=backend)
    with pytest.raises(DataError, match=expect) as err:
        pred.predict(array)
    assert "image array" in str(err.value)


@pytest.mark.parametrize("backend", ["saved_model", "tflite"])
def test_format_normalisation_in_the_bundle_runs_before_the_model(bundle, tmp_path, backend):
    """An export trained with ``input.reencode`` (bundle ``input.reencode``): the Predictor applies
    the same resample + JPEG round trip (preprocess.reencode, the documented pre-step) before the
    model, for files and arrays alike, so it scores what training saw."""
    import shutil

    from lepton_vision import Predictor

    spec = {"codec": "jpeg", "quality": 40, "size": [20, 24]}
    export = tmp_path / "export"
    shutil.copytree(bundle["dir"], export)
    meta = json.loads((export / "bundle.json").read_text())
    meta["input"]["reencode"] = {**spec, "pre_step": "lepton_vision.data.preprocess.reencode"}
    (export / "bundle.json").write_text(json.dumps(meta))
    plain = Predictor.from_bundle(bundle["dir"], backend=backend, ood=False)
    normalised = Predictor.from_bundle(export, backend=backend, ood=False)
    for path in bundle["pngs"]:
        seen = preprocess.reencode(preprocess.to_uint8(preprocess.read_image(path), 3, WINDOW), spec)
        assert seen.shape == (20, 24, 3)
        want = float(np.asarray(bundle["model"](preprocess.to_model_input(seen, SIZE)[None], training=False)).reshape(-1)[0])
        got = normalised.predict(path).score
        assert got == pytest.approx(want, abs=1e-5)
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        assert normalised.predict(rgb).score == pytest.approx(got, abs=1e-6)
        assert abs(plain.predict(path).score - got) > 1e-6  # the pre-step changes what the model sees

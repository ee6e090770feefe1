"""Out-of-distribution scores: the reference an export stores and the score every prediction carries.

The numpy tests check the formula and the threshold on Gaussian features; the tf tests check it on
exports of generated data (a CT run through the CLI, a person detector on street scenes): foreign
images and corrupted images are flagged, new images of the training kind are not (levels stated
in tests/ood_exports.py), and exports from before references still load and predict.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lepton_vision.config.errors import ExportError
from lepton_vision.export import reference as R

# ---------------------------------------------------------------------------------------------
# The formula (numpy, no TensorFlow)


def _gaussian(rng: np.random.Generator, n: int, d: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Correlated Gaussian features (a few strong directions) and plausible image statistics."""
    basis = np.linspace(3.0, 0.1, d)
    feats = rng.normal(size=(n, d)) * basis
    stats = np.column_stack([rng.normal(0.4, 0.05, n), rng.normal(0.2, 0.03, n), rng.normal(7.0, 0.5, n),
                             np.full(n, np.log(240.0)), np.full(n, np.log(320.0))])
    return feats, stats


def test_threshold_flags_about_the_stated_rate_of_new_images_and_catches_shifts():
    rng = np.random.default_rng(0)
    feats, stats = _gaussian(rng, 800)
    groups = np.repeat(np.arange(200), 4)
    ref = R.fit_reference(feats, stats, groups, rng.random(800), seed=1)
    new_f, new_s = _gaussian(rng, 4000)
    flagged = np.mean(R.ood_scores(ref, new_f, new_s) > 1)
    # 2 % stated; the final reference is fitted on more images than the held-back folds, so fewer.
    assert 0.002 <= flagged <= 0.05, flagged
    assert ref.summary["false_flag_rate"] == R.FALSE_FLAG_RATE
    assert ref.summary["held_back_flagged"] <= R.FALSE_FLAG_RATE + 1e-9
    assert ref.summary["n_fit"] == 800 and ref.summary["n_groups"] == 200
    # Features far along the main direction or spread along the wrong ones, an image twice as
    # dark, another image size: all flagged.
    shifted = new_f.copy()
    shifted[:, 0] += 30.0  # 10 sd of that direction
    assert np.mean(R.ood_scores(ref, shifted, new_s) > 1) > 0.95
    other = rng.normal(size=new_f.shape) * np.linspace(0.1, 3.0, new_f.shape[1])  # weak directions strong
    assert np.mean(R.ood_scores(ref, other, new_s) > 1) > 0.95
    dark = new_s.copy()
    dark[:, 0] /= 2
    assert np.mean(R.ood_scores(ref, new_f, dark) > 1) > 0.95
    small = new_s.copy()
    small[:, 3:] = np.log([64.0, 64.0])
    assert np.all(R.ood_scores(ref, new_f, small) > 1)


def test_the_recipe_false_flag_rate_reaches_the_reference():
    """export.ood_false_flag_rate is passed through fit_from_images: a higher rate flags more."""
    from lepton_vision.config.recipe import ExportSpec

    assert ExportSpec().ood_false_flag_rate == R.FALSE_FLAG_RATE
    rng = np.random.default_rng(5)
    images = [rng.integers(60, 200, (24, 24, 1), dtype=np.uint8) for _ in range(300)]
    project = rng.normal(size=(24 * 24, 16))
    kwargs = dict(prep_np=lambda im: im.astype(np.float32),
                  features_np=lambda x: x.reshape(len(x), -1) @ project, seed=0, score_name="score")
    groups = np.repeat(np.arange(100), 3)
    loose, feats, stats = R.fit_from_images(images, groups, rng.random(300), false_flag_rate=0.2, **kwargs)
    strict, _, _ = R.fit_from_images(images, groups, rng.random(300), **kwargs)
    assert loose.summary["false_flag_rate"] == 0.2 and strict.summary["false_flag_rate"] == R.FALSE_FLAG_RATE
    assert 0.1 <= loose.summary["held_back_flagged"] <= 0.2 + 1e-9
    assert np.mean(R.ood_scores(loose, feats, stats) > 1) > np.mean(R.ood_scores(strict, feats, stats) > 1)


def test_too_little_data_is_said_not_faked():
    rng = np.random.default_rng(0)
    feats, stats = _gaussian(rng, 10)
    with pytest.raises(R.TooFewImages, match="at least 12 training images"):
        R.fit_reference(feats, stats, np.arange(10), np.zeros(10), seed=0)
    feats, stats = _gaussian(rng, 40)
    with pytest.raises(R.TooFewImages, match="1 group"):
        R.fit_reference(feats, stats, np.zeros(40, int), np.zeros(40), seed=0)


def test_reference_file_round_trips_small_and_refuses_what_it_cannot_read(tmp_path):
    rng = np.random.default_rng(0)
    feats, stats = _gaussian(rng, 300, d=1280)  # the widest backbone feature
    ref = R.fit_reference(feats, stats, np.arange(300) // 3, rng.random(5000), seed=0)
    path = ref.save(tmp_path)
    assert path.stat().st_size < 1_000_000  # ships with the export
    back = R.load_reference(tmp_path, {"reference": ref.summary})
    assert len(back.scores) == R.SCORE_SAMPLE
    np.testing.assert_allclose(R.ood_scores(back, feats[:50], stats[:50]), R.ood_scores(ref, feats[:50], stats[:50]),
                               rtol=1e-4)
    assert R.load_reference(tmp_path, {}) is None  # an export from before references
    data = dict(np.load(path))
    data["version"] = np.int32(99)
    np.savez(path, **data)
    with pytest.raises(ExportError, match="unknown reference version 99"):
        R.load_reference(tmp_path, {"reference": ref.summary})
    path.write_bytes(b"not a zip")
    with pytest.raises(ExportError, match="reference.npz"):
        R.load_reference(tmp_path, {"reference": ref.summary})


# ---------------------------------------------------------------------------------------------
# Exports of generated data (TensorFlow)


def _flagged(predictor, images: list[np.ndarray]) -> float:
    return float(np.mean([predictor.predict(im).in_distribution is False for im in images]))


def _grey(images: list[np.ndarray]) -> list[np.ndarray]:
    import cv2

    return [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)[..., None] for im in images]


def _rgb(images: list[np.ndarray]) -> list[np.ndarray]:
    return [np.repeat(im, 3, axis=2) for im in images]


@pytest.mark.tf
def test_ct_export_flags_street_scenes_and_corrupted_slices_not_new_patients(ood_ct_run, ood_data):
    from lepton_vision import Predictor

    p = Predictor.from_bundle(ood_ct_run / "export")
    bundle = p.bundle
    ref = bundle["reference"]
    assert ref["parity"]["pass"] and set(ref["parity"]["worst_relative_error"]) == {"saved_model", "tflite"}
    assert (ood_ct_run / "export" / ref["file"]).stat().st_size < 1_000_000
    assert ref["n_fit"] == ood_data.CT_TRAIN_PATIENTS * ood_data.CT_SLICES and ref["score"] == "score"
    new = ood_data.new_ct_slices()
    assert len(new) == 180
    scenes = _grey(ood_data.street_frames(0, 60))
    noise, blur = ood_data.NOISE_SIGMA["ct"], ood_data.BLUR_SIGMA["ct"]
    rates = {"new patients": _flagged(p, new), "street scenes": _flagged(p, scenes),
             f"noise sigma {noise}": _flagged(p, ood_data.noisy(new, noise)),
             f"blur sigma {blur}": _flagged(p, ood_data.blurred(new, blur))}
    assert rates["new patients"] <= 0.05, rates
    assert rates["street scenes"] >= 0.95, rates
    assert rates[f"noise sigma {noise}"] >= 0.90 and rates[f"blur sigma {blur}"] >= 0.90, rates


@pytest.mark.tf
def test_person_export_flags_ct_slices_and_corrupted_frames_not_new_frames(det_demo_export, ood_data):
    """The demo's person detector (YOLOv8 tiny, 128 px input) with its reference of 64 generated
    scenes (tests/demo_exports.py): new scenes of the same kind, CT slices, corrupted new scenes."""
    from lepton_vision import Predictor

    p = Predictor.from_bundle(det_demo_export["dir"], backend="saved_model")
    assert p.bundle["reference"]["parity"]["pass"] and p.bundle["reference"]["score"] == "image_score"
    new = ood_data.det_new_frames()
    ct = _rgb(ood_data.new_ct_slices()[:60])
    noise, blur = ood_data.NOISE_SIGMA["person"], ood_data.BLUR_SIGMA["person"]
    rates = {"new frames": _flagged(p, new), "CT slices": _flagged(p, ct),
             f"noise sigma {noise}": _flagged(p, ood_data.noisy(new, noise)),
             f"blur sigma {blur}": _flagged(p, ood_data.blurred(new, blur))}
    assert rates["new frames"] <= 0.05, rates
    assert rates["CT slices"] >= 0.95, rates
    assert rates[f"noise sigma {noise}"] >= 0.90 and rates[f"blur sigma {blur}"] >= 0.90, rates


@pytest.mark.tf
def test_ood_signature_is_the_formula_in_numpy(ood_ct_run, ood_data):
    """serve_ood (SavedModel) and model_ood.tflite return the numpy formula's score and features."""
    import tensorflow as tf

    from lepton_vision.export.bundle import load_bundle_json

    export = ood_ct_run / "export"
    bundle = load_bundle_json(export)
    ref = R.load_reference(export, bundle)
    serve = tf.saved_model.load(str(export / "saved_model")).signatures[R.OOD_SIGNATURE]
    for im in [*ood_data.new_ct_slices()[:3], _grey(ood_data.street_frames(0, 4))[0]]:
        out = {k: v.numpy() for k, v in serve(image=tf.constant(im)).items()}
        expected = R.ood_scores(ref, out["features"][None], R.image_stats(
            tf.image.resize(im.astype(np.float32), bundle["input"]["image_size"], antialias=False).numpy(), im.shape[:2]))
        np.testing.assert_allclose(out["ood_score"], expected[0], rtol=1e-3, atol=1e-3)
        assert int(out["in_distribution"]) == int(expected[0] <= 1)


def _without_reference(export: Path, dest: Path) -> Path:
    """A copy of ``export`` as it was before references: no reference in bundle.json, no files."""
    shutil.copytree(export, dest)
    bundle = json.loads((dest / "bundle.json").read_text())
    info = bundle.pop("reference")
    for name in (info["file"], R.OOD_TFLITE_FILE):
        (dest / name).unlink(missing_ok=True)
    bundle["signatures"].pop(R.OOD_SIGNATURE, None)
    (dest / "bundle.json").write_text(json.dumps(bundle))
    return dest


@pytest.mark.tf
def test_exports_without_reference_still_load_and_predict(ct_demo_export, det_demo_export, tmp_path, capsys):
    from lepton_vision import Predictor
    from lepton_vision.cli import main
    from lepton_vision.kinds.detection.predictor import to_coco_results

    ct = _without_reference(ct_demo_export["dir"], tmp_path / "ct")
    p = Predictor.from_bundle(ct)
    r = p.predict(ct_demo_export["dicoms"][0])
    assert r.ood_score is None and r.in_distribution is None and 0.0 <= r.score <= 1.0
    assert "no reference" in p.ood_note and "re-export" in p.ood_note
    out = tmp_path / "preds.csv"
    assert main(["predict", str(ct), str(ct_demo_export["dicoms"][0]), "--out", str(out)]) == 0
    assert "no reference" in capsys.readouterr().out
    row = pd.read_csv(out, keep_default_na=False).iloc[0]
    assert row["ood_score"] == "" and row["in_distribution"] == ""
    # monitor needs the reference: one clear line, exit 1, nothing written
    assert main(["monitor", str(ct), str(ct_demo_export["dicoms"][0]), "--out", str(tmp_path / "mon")]) == 1
    err = capsys.readouterr().err
    assert "no reference" in err and "re-export" in err and "Traceback" not in err
    assert not (tmp_path / "mon").exists()

    det = _without_reference(det_demo_export["dir"], tmp_path / "det")
    d = Predictor.from_bundle(det).predict(det_demo_export["frames"][0])
    assert d.ood_score is None and d.count >= 0
    assert all("ood_score" not in row for row in to_coco_results([d], threshold=0.0))


@pytest.mark.tf
def test_predictions_carry_the_ood_score_and_it_can_be_turned_off(ct_demo_export, det_demo_export):
    from lepton_vision import Predictor
    from lepton_vision.kinds.detection.predictor import to_coco_results

    p = Predictor.from_bundle(ct_demo_export["dir"])
    dicom = p.predict(ct_demo_export["dicoms"][0])
    noise = p.predict(ct_demo_export["png"])  # uniform noise: nothing like the slices
    assert dicom.in_distribution is True and dicom.ood_score <= 1
    assert noise.in_distribution is False and noise.ood_score > 1
    off = Predictor.from_bundle(ct_demo_export["dir"], ood=False)
    assert off.predict(ct_demo_export["png"]).ood_score is None and "turned off" in off.ood_note

    d = Predictor.from_bundle(det_demo_export["dir"])
    frame = d.predict(det_demo_export["frames"][0])
    foreign = d.predict(ct_demo_export["png"])
    assert frame.in_distribution is True and foreign.in_distribution is False
    rows = to_coco_results([frame], threshold=0.0)
    assert rows and all(r["in_distribution"] is True and r["ood_score"] <= 1 for r in rows)

"""End to end through the real CLI on tiny generated CT data (tf tier).

One run (2 folds, 2 epochs, 32 px, 8 patients; the session's shared ``tiny_ct_run``, built once
per code version) is shared by the tests below: artefacts, predict parity with the final model,
evaluate without TensorFlow, resume after an interruption, and re-export. Tests that change the
run work on a copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lepton_vision.cli import main

pytestmark = pytest.mark.tf

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "train.epochs=2",
    "cv.n_splits=2",
    "input.image_size=[32, 32]",
    "evaluate.n_bootstrap=50",
    "export.parity_samples=8",
    "train.verbose=false",
]


@pytest.fixture(scope="module")
def project(tiny_ct_run):
    assert tiny_ct_run["overrides"] == TINY  # the shared run was made with these settings
    root = tiny_ct_run["root"]
    mp = pytest.MonkeyPatch()
    mp.setenv("LEPTON_GENERATED_ROOT", str(root / "generated"))
    mp.setenv("LEPTON_HOME", str(root))
    yield root, tiny_ct_run["recipe"], tiny_ct_run["run"]
    mp.undo()


def _copy(run: Path, dest: Path) -> Path:
    """A copy of the shared run to change."""
    shutil.copytree(run, dest)
    return dest


def test_run_directory_holds_every_artefact(project, readme_schema_fields):
    _, _, run = project
    for rel in [
        "recipe.resolved.yaml", "run.json", "samples.csv", "data_report.json", "folds.csv",
        "oof_predictions.csv", "metrics.json", "report.html", "final/model.keras",
        "export/saved_model/saved_model.pb", "export/model.tflite", "export/bundle.json",
        "export/parity.json", "folds/0/history.csv", "folds/0/best.keras", "folds/1/result.json",
        "plots/roc.png", "plots/calibration.png", "plots/gradcam.png", "export/model.keras",
        "export/reference.npz", "export/model_ood.tflite",
    ]:
        assert (run / rel).exists(), rel
    folds = pd.read_csv(run / "folds.csv", keep_default_na=False)
    assert set(folds["fold"]) == {0, 1}
    # no patient in two folds
    assert folds.groupby("group")["fold"].nunique().max() == 1
    metrics = json.loads((run / "metrics.json").read_text())
    auc = metrics["pooled"]["roc_auc"]
    assert 0.0 <= auc["lo"] <= auc["value"] <= auc["hi"] <= 1.0
    parity = json.loads((run / "export/parity.json").read_text())
    assert parity["pass"] is True
    bundle = json.loads((run / "export/bundle.json").read_text())
    assert bundle["threshold"]["value"] == pytest.approx(metrics["final_threshold"])
    assert bundle["positive_class"] == "abnormal"
    # A product engineer writes a loader from the README: every field must be documented there.
    assert not set(bundle) - readme_schema_fields, set(bundle) - readme_schema_fields
    assert (run / "export/model_int8.tflite").is_file() and "quantization" in bundle
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html and "AUC" in html
    assert "<h2>Export</h2>" in html and "int8 check on" in html


def test_run_records_training_cost(project):
    _, _, run = project
    for fdir in ("folds/0", "folds/1", "final"):
        hist = pd.read_csv(run / fdir / "history.csv")
        assert (hist["images_per_s"] > 0).all() and (hist["peak_rss_mb"] > 100).all(), fdir
    cost = json.loads((run / "run.json").read_text())["training_cost"]
    assert [f["fold"] for f in cost["folds"]] == [0, 1] and cost["final_model"]["epochs"] >= 1
    h0 = pd.read_csv(run / "folds/0/history.csv")
    assert cost["folds"][0]["seconds"] == pytest.approx(h0["seconds"].sum(), abs=0.1)
    assert cost["total_seconds"] > 0 and cost["median_images_per_s"] > 0 and cost["peak_rss_mb"] > 100
    html = (run / "report.html").read_text()
    assert "<h2>Training cost</h2>" in html and "training images/s" in html
    assert (run / "plots/training_cost.png").stat().st_size > 5_000


def test_every_run_audits_shortcuts_before_training(project):
    _, _, run = project
    audit = json.loads((run / "data_report.json").read_text())["shortcut_audit"]
    assert audit["target"] == "label" and audit["n_samples"] == 32 and audit["level"] == 0.65
    # generated DICOM phantoms: one format, one size; nothing to flag, so no strata
    assert audit["flagged"] == [] and {"file_format", "width", "height"} <= set(audit["skipped"])
    assert json.loads((run / "metrics.json").read_text())["strata"] == {}
    html = (run / "report.html").read_text()
    assert "<h2>Shortcut audit</h2>" in html and "Shortcut warning" not in html


def test_predict_reproduces_final_model_scores(project, tmp_path):
    from lepton_vision.backend import import_keras
    from lepton_vision.data.preprocess import load_for_model

    _, _, run = project
    samples = pd.read_csv(run / "samples.csv", keep_default_na=False)
    paths = list(samples["path"][:10])
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run / "export"), *paths, "--out", str(out)]) == 0
    preds = pd.read_csv(out)
    assert list(preds.columns) == ["path", "score", "decision", "ood_score", "in_distribution"]
    assert np.isfinite(preds["ood_score"]).all() and set(preds["in_distribution"]) <= {0, 1}
    _, keras = import_keras()
    model = keras.models.load_model(run / "final/model.keras", compile=False)
    x = np.stack([load_for_model(p, (32, 32), 1, (-600.0, 1500.0)) for p in paths])
    expected = model.predict(x, verbose=0)[:, 0]
    np.testing.assert_allclose(preds["score"].to_numpy(), expected, atol=1e-4)


def test_evaluate_rescores_with_another_policy(project, tmp_path):
    _, _, run = project
    out = tmp_path / "m.json"
    assert main(["evaluate", str(run), "--policy", "min_specificity:0.9", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["policy"] == {"policy": "min_specificity", "value": 0.9}
    original = json.loads((run / "metrics.json").read_text())
    assert m["pooled"]["roc_auc"]["value"] == pytest.approx(original["pooled"]["roc_auc"]["value"])


def test_resume_skips_finished_folds_and_gives_the_same_result(project, tmp_path):
    _, recipe, shared = project
    run = _copy(shared, tmp_path / "run")
    fold0 = run / "folds/0/best.keras"
    mtime0 = fold0.stat().st_mtime_ns
    before = pd.read_csv(run / "oof_predictions.csv", keep_default_na=False)
    # simulate a run killed during fold 2: fold 1's marker and everything after it are gone
    (run / "folds/1/result.json").unlink()
    for rel in ("oof_predictions.csv", "metrics.json", "report.html"):
        (run / rel).unlink()
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "export")
    rc = main(["train", str(recipe), *sum((["--set", s] for s in TINY), []), "--resume", str(run)])
    assert rc == 0
    assert fold0.stat().st_mtime_ns == mtime0, "fold 1 was recomputed"
    after = pd.read_csv(run / "oof_predictions.csv", keep_default_na=False)
    assert list(after["sample_id"]) == list(before["sample_id"])
    np.testing.assert_allclose(after["score"], before["score"], atol=1e-6)


def test_resume_with_a_different_recipe_is_refused(project, capsys, tmp_path):
    _, recipe, shared = project
    run = _copy(shared, tmp_path / "run")
    rc = main(["train", str(recipe), *sum((["--set", s] for s in TINY), []), "--set", "seed=9", "--resume", str(run)])
    assert rc == 1
    assert "seed" in capsys.readouterr().err


def test_export_command_re_exports(project, tmp_path):
    _, _, shared = project
    run = _copy(shared, tmp_path / "run")
    before = json.loads((run / "export/bundle.json").read_text())
    shutil.rmtree(run / "export")
    # (the recipe's own formats are what the run exported: test_run_directory_holds_every_artefact)
    assert main(["export", str(run), "--format", "saved_model"]) == 0
    after = json.loads((run / "export/bundle.json").read_text())
    assert after["threshold"] == before["threshold"] and after["reference"]["n_fit"] == before["reference"]["n_fit"]
    assert not (run / "export/model.tflite").exists() and "tflite" not in after["files"]
    # --format replaces the recipe's formats: ONNX added, float TFLite left out.
    assert main(["export", str(run), "--format", "tflite_int8,onnx"]) == 0
    again = json.loads((run / "export/bundle.json").read_text())
    assert set(again["files"]) >= {"saved_model", "tflite_int8", "onnx"} and "tflite" not in again["files"]
    assert not (run / "export/model.tflite").exists() and (run / "export/model.onnx").is_file()
    # The refit model saw every image: the int8 check says so instead of posing as held-out.
    assert again["quantization"]["evaluated_on"].startswith("in-sample")
    assert again["quantization"]["change"]["drop"] is not None
    assert main(["export", str(run), "--format", "tflite,pb"]) == 1


def test_export_fold_judges_int8_on_that_folds_held_out_images(project, tmp_path, capsys):
    """`export RUN --fold K`: fold K's model exported into folds/<K-1>/export, its int8 change
    measured on that fold's validation images (held out) instead of the refit model's training
    images; the run's own export is untouched; a fold without a model is a one-line error."""
    _, _, shared = project
    run = _copy(shared, tmp_path / "run")
    before = (run / "export/bundle.json").read_bytes()
    assert main(["export", str(run), "--fold", "2", "--format", "tflite_int8"]) == 0
    assert (run / "export/bundle.json").read_bytes() == before
    bundle = json.loads((run / "folds/1/export/bundle.json").read_text())
    q = bundle["quantization"]
    folds = pd.read_csv(run / "folds.csv", dtype={"sample_id": str})
    assert q["evaluated_on"].startswith("held out: validation images of fold 2")
    assert q["n_images"] == int((folds["fold"] == 1).sum()) and q["change"]["drop"] is not None
    assert json.loads((run / "folds/1/final.json").read_text())["mode"] == "best_fold"
    assert "held out" in capsys.readouterr().out
    assert main(["export", str(run), "--fold", "3"]) == 1
    err = capsys.readouterr().err
    assert "--fold 3" in err and "folds with a model: [1, 2]" in err


def test_check_reports_versions_and_devices(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "tensorflow" in out and "devices" in out and "LEPTON_DATA_ROOT" in out


def test_predict_on_a_folder_of_dicoms_and_evaluate_keeps_metrics_json(project, tmp_path):
    _, _, shared = project
    run = _copy(shared, tmp_path / "run")
    samples = pd.read_csv(run / "samples.csv", keep_default_na=False)
    folder = Path(samples["path"][0]).parent  # one patient's DICOM slices
    out = tmp_path / "p.csv"
    assert main(["predict", str(run / "export"), str(folder), "--out", str(out)]) == 0
    preds = pd.read_csv(out)
    assert len(preds) == len(list(folder.glob("*.dcm"))) and preds["score"].between(0, 1).all()
    before = (run / "metrics.json").read_text()
    assert main(["evaluate", str(run), "--policy", "youden"]) == 0
    assert (run / "metrics_youden.json").is_file()
    assert (run / "metrics.json").read_text() == before


@pytest.fixture(scope="module")
def best_fold_calibrated(project, tmp_path_factory):
    """One run with final.mode: best_fold and temperature scaling (1 epoch), for the two tests below."""
    _, recipe, _ = project
    run = tmp_path_factory.mktemp("bf") / "run"
    args = ["train", str(recipe), *sum((["--set", s] for s in TINY), []), "--set", "final.mode=best_fold",
            "--set", "evaluate.temperature_scaling=true", "--set", "train.epochs=1",
            "--set", "export.formats=[saved_model]", "--out", str(run)]
    assert main(args) == 0
    return run


def test_best_fold_final_model_is_the_best_fold(best_fold_calibrated):
    run = best_fold_calibrated
    final = json.loads((run / "final/final.json").read_text())
    results = [json.loads((run / f"folds/{k}/result.json").read_text()) for k in (0, 1)]
    best = max(results, key=lambda r: r["best_val_auc"])
    assert final["mode"] == "best_fold" and final["fold"] == best["fold"]
    assert json.loads((run / "export/parity.json").read_text())["pass"] is True


def test_temperature_scaling_is_applied_inside_the_export(best_fold_calibrated, tmp_path):
    from lepton_vision.backend import import_keras
    from lepton_vision.data.preprocess import load_for_model
    from lepton_vision.kinds.classification.metrics import apply_temperature

    run = best_fold_calibrated
    metrics = json.loads((run / "metrics.json").read_text())
    bundle = json.loads((run / "export/bundle.json").read_text())
    t = metrics["temperature"]
    assert bundle["calibration"]["temperature"] == pytest.approx(t)
    assert bundle["threshold"]["value"] == pytest.approx(metrics["final_threshold_calibrated"])
    samples = pd.read_csv(run / "samples.csv", keep_default_na=False)
    paths = list(samples["path"][:6])
    out = tmp_path / "p.csv"
    assert main(["predict", str(run / "export"), *paths, "--out", str(out)]) == 0
    _, keras = import_keras()
    model = keras.models.load_model(run / "final/model.keras", compile=False)
    x = np.stack([load_for_model(p, (32, 32), 1, (-600.0, 1500.0)) for p in paths])
    expected = apply_temperature(model.predict(x, verbose=0)[:, 0].astype(np.float64), t)
    np.testing.assert_allclose(pd.read_csv(out)["score"].to_numpy(), expected, atol=1e-4)


def test_multi_window_recipe_trains_and_exports(project, tmp_path):
    _, recipe, _ = project
    run = tmp_path / "mw"
    args = ["train", str(recipe), *sum((["--set", s] for s in TINY), []), "--set", "train.epochs=1",
            "--set", "input.channels=3",
            "--set", "input.window=[{preset: lung}, {preset: mediastinum}, {preset: bone}]",
            "--out", str(run)]
    assert main(args) == 0
    bundle = json.loads((run / "export/bundle.json").read_text())
    assert len(bundle["input"]["window"]["windows"]) == 3 and bundle["input"]["channels"] == 3
    assert json.loads((run / "export/parity.json").read_text())["pass"] is True


@pytest.mark.parametrize("recipe_name", ["synthetic_series", "synthetic_nifti"])
def test_volume_recipes_report_slice_and_patient_level(project, tmp_path, recipe_name):
    root, _, _ = project
    run = tmp_path / recipe_name
    args = ["train", str(root / f"recipes/ct_screening/{recipe_name}.yaml"),
            *sum((["--set", s] for s in TINY), []), "--set", "train.epochs=1", "--set", "export.formats=[saved_model]",
            "--out", str(run)]
    assert main(args) == 0
    m = json.loads((run / "metrics.json").read_text())
    for level in (m["pooled"], m["patient"]["pooled"]):
        for key in ("roc_auc", "sensitivity", "specificity"):
            assert level[key]["lo"] <= level[key]["value"] <= level[key]["hi"]
    assert m["patient"]["n"] == 8 and 0 <= m["calibration"]["ece"]["value"] <= 1
    assert (run / "plots/gradcam.png").is_file() and (run / "plots/calibration.png").is_file()
    samples = pd.read_csv(run / "samples.csv", keep_default_na=False)
    assert samples["group"].str.startswith("pt-").all()  # pseudonymised patient ids

"""The shortcut audit: metadata-only models on the run's folds (no TensorFlow).

Planted confounds on tiny generated data: one class saved as JPEG (flagged by name), and the same
data all as PNG (not flagged); the statistics (within-fold AUC, its bootstrap CI, strata) on
small arrays; and a CLI run where the audit lands in data_report.json, metrics.json and the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from lepton_vision.evaluate import shortcuts as S


def _dataset(folder: Path, jpeg_class: int | None, n_groups: int = 40, per_group: int = 3, seed: int = 0) -> pd.DataFrame:
    """Slices whose label is NOT visible in the pixels (same noise texture for both classes);
    ``jpeg_class`` (if any) is saved as JPEG quality 80, the other class as PNG."""
    rng = np.random.default_rng(seed)
    rows = []
    folder.mkdir(parents=True, exist_ok=True)
    for g in range(n_groups):
        label = g % 2
        for i in range(per_group):
            img = np.clip(rng.normal(120, 30, (48, 48)), 0, 255).astype(np.uint8)
            ext = ".jpg" if jpeg_class is not None and label == jpeg_class else ".png"
            path = folder / f"p{g:02d}_{i}{ext}"
            cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 80] if ext == ".jpg" else [])
            rows.append({"sample_id": path.name, "path": str(path), "label": label, "group": f"p{g:02d}"})
    table = pd.DataFrame(rows)
    table["fold"] = table["group"].map({f"p{g:02d}": g % 5 for g in range(n_groups)})
    return table


def test_jpeg_quality_is_read_from_the_quantisation_table(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    for q in (30, 75, 95):
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        assert ok and S.jpeg_quality(buf.tobytes()) == pytest.approx(q, abs=1.5)
    assert S.jpeg_quality(b"\x89PNG\r\n") is None
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), img)
    meta = S.file_metadata(png)
    assert meta["file_format"] == "png" and meta["jpeg_quality"] is None and meta["width"] == 32
    assert meta["bit_depth"] == 8 and meta["channels"] == 1 and meta["file_size_kb"] > 0


def test_planted_format_confound_is_flagged_by_name(tmp_path):
    table = _dataset(tmp_path / "confounded", jpeg_class=1)
    audit = S.audit_table(table, target_name="label", level=0.65, n_bootstrap=200, ci=0.95, seed=0)
    fmt = audit["features"]["file_format"]
    assert fmt["flagged"] and fmt["auc"]["value"] > 0.95 and fmt["auc"]["lo"] > 0.65
    assert "file_format" in audit["flagged"] and audit["combined"]["flagged"]
    # strata: the row positions of each format, covering every sample once
    strata = audit["strata"]["file_format"]
    assert set(strata) == {"png", "jpeg"} and sum(len(v) for v in strata.values()) == len(table)
    lines = S.summary_lines(audit)
    assert any(line.startswith("WARNING shortcut: file_format alone predicts the label") for line in lines)
    # pixels do not carry the label here, and neither do sizes: those are not flagged
    assert not audit["features"]["intensity_mean"]["flagged"]
    assert "width" in audit["skipped"] and "dicom_manufacturer" in audit["skipped"]


def test_without_a_confound_nothing_is_flagged(tmp_path):
    table = _dataset(tmp_path / "clean", jpeg_class=None, seed=1)
    audit = S.audit_table(table, target_name="label", level=0.65, n_bootstrap=200, ci=0.95, seed=0)
    assert audit["flagged"] == [] and not audit["combined"]["flagged"]
    assert "file_format" in audit["skipped"]  # every file is a PNG
    assert all(f["auc"]["lo"] < 0.65 for f in audit["features"].values())
    assert S.stratified(audit, table, lambda ids: {}) == {}


def test_within_fold_auc_matches_sklearn_per_fold_and_ignores_fold_calibration():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = y + rng.normal(0, 1, 200)
    folds = np.arange(200) % 4
    one = S.within_fold_auc(y, s, folds, np.ones((1, 200)))[0]
    pairs = [(y[folds == k] == 1).sum() * (y[folds == k] == 0).sum() for k in range(4)]
    expected = sum(roc_auc_score(y[folds == k], s[folds == k]) * p for k, p in zip(range(4), pairs)) / sum(pairs)
    assert one == pytest.approx(expected)
    # shifting one fold's scores (another model's calibration) changes nothing
    shifted = s + np.where(folds == 2, 5.0, 0.0)
    assert S.within_fold_auc(y, shifted, folds, np.ones((1, 200)))[0] == pytest.approx(one)
    # weights: a resample equals the AUC on the repeated samples
    w = rng.integers(0, 3, (1, 200))
    rep = np.repeat(np.arange(200), w[0])
    again = S.within_fold_auc(y[rep], s[rep], folds[rep], np.ones((1, len(rep))))[0]
    assert S.within_fold_auc(y, s, folds, w)[0] == pytest.approx(again)


def test_audit_of_a_single_class_target_says_not_applicable(tmp_path):
    table = _dataset(tmp_path / "one", jpeg_class=None).assign(label=1)
    audit = S.audit_table(table, target_name="object present", level=0.65, n_bootstrap=10, ci=0.95, seed=0)
    assert "nothing for metadata to predict" in audit["not_applicable"] and audit["flagged"] == []


def test_rate_with_ci_and_numeric_strata():
    hits = np.r_[np.ones(30), np.zeros(10)]
    r = S.rate_with_ci(hits, None, 300, 0.95, 0)
    assert r["value"] == pytest.approx(0.75) and r["lo"] < 0.75 < r["hi"]
    strata = S.strata_of(pd.Series([1.0, 2.0, 3.0, 4.0, np.nan, 8.0, 9.0, 10.0]), "numeric")
    assert "missing" in strata and sum(len(v) for v in strata.values()) == 8


@pytest.mark.tf
def test_a_run_on_confounded_data_reports_the_audit_and_strata(tmp_path, monkeypatch, repo):
    """A real train (stopped after metrics) on 40 patients whose abnormal slices are JPEGs: the
    audit is in data_report.json, the per-stratum metrics in metrics.json (and again from
    ``evaluate``), and the report section shows both; with input.reencode the audit of what the
    model is given is there too."""
    import shutil

    import yaml

    from lepton_vision.engine.crossval import rescore_run, run_train
    from lepton_vision.evaluate.report import shortcut_section

    root = tmp_path / "proj"
    shutil.copytree(repo / "tasks", root / "tasks")
    data_root = tmp_path / "data"
    table = _dataset(data_root / "confounded" / "images", jpeg_class=1)
    manifest = table.assign(path=[str(Path(p).relative_to(data_root / "confounded")) for p in table["path"]],
                            label=np.where(table["label"] == 1, "abnormal", "normal"))[["path", "label", "group"]]
    manifest.to_csv(data_root / "confounded" / "labels.csv", index=False)
    (root / "datasets" / "confounded").mkdir(parents=True)
    (root / "datasets" / "confounded" / "dataset.yaml").write_text(yaml.safe_dump({
        "schema_version": 1, "name": "confounded", "description": "test: abnormal slices saved as JPEG",
        "format": "csv", "root": "data", "path": "confounded", "manifest": "labels.csv",
        "columns": {"path": "path", "label": "label", "group": "group"}, "classes": ["normal", "abnormal"],
        "group_by": "patient", "licence": "test data", "source": "generated by the test"}))
    recipe = root / "recipes" / "confounded.yaml"
    recipe.parent.mkdir()
    recipe.write_text(yaml.safe_dump({
        "schema_version": 1, "name": "confounded", "task": "ct_screening", "dataset": "confounded", "seed": 1,
        "input": {"image_size": [32, 32], "channels": 1,
                  "reencode": {"codec": "jpeg", "quality": 90, "size": [40, 40]}}, "model": {"backbone": "small_cnn"},
        "train": {"epochs": 1, "batch_size": 16, "verbose": False}, "cv": {"n_splits": 2},
        "evaluate": {"n_bootstrap": 50}, "data": {"audit": {"n_bootstrap": 100}}}))
    monkeypatch.setenv("LEPTON_DATA_ROOT", str(data_root))
    monkeypatch.setenv("LEPTON_HOME", str(root))
    run = run_train(recipe, out=tmp_path / "run", stop_after="metrics")
    audit = json.loads((run / "data_report.json").read_text())["shortcut_audit"]
    assert audit["flagged"][0] in ("file_format", "jpeg_quality") and "file_format" in audit["flagged"]
    assert audit["features"]["file_format"]["auc"]["lo"] > 0.65 and audit["seconds"] < 60
    metrics = json.loads((run / "metrics.json").read_text())
    png = metrics["strata"]["file_format"]["png"]
    jpeg = metrics["strata"]["file_format"]["jpeg"]
    # PNG slices are all normal, JPEG all abnormal: each stratum has the one rate it defines
    assert png["n"] == 60 and png["n_pos"] == 0 and png["roc_auc"]["value"] is None
    assert 0.0 <= png["specificity"]["value"] <= 1.0 and png["sensitivity"]["value"] is None
    assert jpeg["n_pos"] == 60 and jpeg["sensitivity"]["value"] is not None
    again = rescore_run(run)
    assert again["strata"] == metrics["strata"]
    html = shortcut_section(audit, metrics["strata"])
    assert "Shortcut warning" in html and "<b>file_format</b>" in html and "file_format stratum" in html
    # input.reencode: the audit again on what the model is given (every image 40x40, JPEG q90)
    seen = json.loads((run / "data_report.json").read_text())["shortcut_audit_seen"]
    assert {"file_format", "jpeg_quality", "file_size_kb", "width", "height"} <= set(seen["skipped"])
    assert set(seen["features"]) <= set(S.PIXEL_FEATURES) and set(seen["flagged"]) <= set(S.PIXEL_FEATURES)
    assert seen["input"]["reencode"] == {"codec": "jpeg", "quality": 90, "size": [40, 40]}
    html = shortcut_section(audit, metrics["strata"], seen)
    assert "after the format normalisation (input.reencode: codec jpeg, quality 90, size [40, 40])" in html


def _smooth_dataset(folder: Path, jpeg_class: int | None, seed: int = 0) -> pd.DataFrame:
    """Like :func:`_dataset` but smooth images (JPEG q80 keeps their intensity statistics), so the
    only trace of the format is in the file and in the 8x8 block pattern of the pixels."""
    rng = np.random.default_rng(seed)
    rows = []
    folder.mkdir(parents=True, exist_ok=True)
    for g in range(40):
        label = g % 2
        for i in range(3):
            img = np.clip(cv2.GaussianBlur(rng.normal(120, 60, (48, 48)), (0, 0), 2.0), 0, 255).astype(np.uint8)
            ext = ".jpg" if jpeg_class is not None and label == jpeg_class else ".png"
            path = folder / f"p{g:02d}_{i}{ext}"
            cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 80] if ext == ".jpg" else [])
            rows.append({"sample_id": path.name, "path": str(path), "label": label, "group": f"p{g:02d}"})
    table = pd.DataFrame(rows)
    table["fold"] = table["group"].map({f"p{g:02d}": g % 5 for g in range(40)})
    return table


def test_reencode_resamples_then_round_trips_through_one_codec():
    from lepton_vision.data.preprocess import reencode

    rng = np.random.default_rng(0)
    gray = np.clip(cv2.GaussianBlur(rng.normal(120, 60, (50, 70)), (0, 0), 2.0), 0, 255).astype(np.uint8)[..., None]
    assert reencode(gray, None) is gray
    out = reencode(gray, {"codec": "none", "quality": 90, "size": [32, 40]})
    assert out.shape == (32, 40, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], cv2.resize(gray[..., 0], (40, 32), interpolation=cv2.INTER_AREA))
    lossless = reencode(gray, {"codec": "png", "quality": 90, "size": None})
    np.testing.assert_array_equal(lossless, gray)
    ok, buf = cv2.imencode(".jpg", gray[..., 0], [cv2.IMWRITE_JPEG_QUALITY, 30])
    jpeg = reencode(gray, {"codec": "jpeg", "quality": 30, "size": None})
    np.testing.assert_array_equal(jpeg[..., 0], cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE))
    assert not np.array_equal(jpeg, gray)
    rgb = np.repeat(gray, 3, axis=2)
    rgb[..., 0] = 255 - rgb[..., 0]  # channels differ: the RGB order must survive the BGR codec
    back = reencode(rgb, {"codec": "jpeg", "quality": 95, "size": [25, 35]})
    assert back.shape == (25, 35, 3)
    assert np.abs(back[..., 0].astype(int) - (255 - back[..., 1].astype(int))).mean() < 6


def test_jpeg_blockiness_sees_a_jpeg_history_in_the_pixels():
    from lepton_vision.data.preprocess import jpeg_blockiness

    rng = np.random.default_rng(1)
    img = np.clip(cv2.GaussianBlur(rng.normal(120, 60, (64, 64)), (0, 0), 2.0), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 60])
    jpeg = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    assert jpeg_blockiness(img) == pytest.approx(1.0, abs=0.1)
    assert jpeg_blockiness(jpeg) > jpeg_blockiness(img) + 0.2
    # resampled to another size, the block grid no longer falls on the 8-pixel lattice
    moved = cv2.resize(jpeg, (52, 52), interpolation=cv2.INTER_AREA)
    assert jpeg_blockiness(moved) < jpeg_blockiness(jpeg) - 0.15


def test_the_audit_of_what_the_model_sees_shows_the_format_signal_gone(tmp_path):
    """One class stored as JPEG q80: the file audit flags the format; after input.reencode with a
    resample (every image 40x40, JPEG q90) nothing is flagged and the file-level features do not
    reach the model; a re-encode at the stored size keeps the old 8x8 grid in the pixels, and
    the audit says so (jpeg_blockiness flagged)."""
    table = _smooth_dataset(tmp_path / "confounded", jpeg_class=1)
    raw = S.audit_table(table, target_name="label", level=0.65, n_bootstrap=100, ci=0.95, seed=0)
    assert {"file_format", "jpeg_blockiness"} <= set(raw["flagged"])
    seen_of = {"channels": 1, "window": None}
    resampled = S.audit_table(table, target_name="label", level=0.65, n_bootstrap=100, ci=0.95, seed=0,
                              seen={**seen_of, "reencode": {"codec": "jpeg", "quality": 90, "size": [40, 40]}})
    assert resampled["flagged"] == [] and not resampled["combined"]["flagged"]
    assert {"file_format", "jpeg_quality", "file_size_kb", "width"} <= set(resampled["skipped"])
    assert resampled["input"]["reencode"]["size"] == [40, 40]
    assert any(line.startswith("shortcut audit of the model's input (after input.reencode) (ok)")
               for line in S.summary_lines(resampled))
    same_size = S.audit_table(table, target_name="label", level=0.65, n_bootstrap=100, ci=0.95, seed=0,
                              seen={**seen_of, "reencode": {"codec": "jpeg", "quality": 90, "size": None}})
    assert same_size["flagged"] == ["jpeg_blockiness"]
    assert any(line.startswith("WARNING shortcut left after input.reencode: jpeg_blockiness")
               for line in S.summary_lines(same_size))


def test_reencode_in_a_recipe_is_validated(tmp_path):
    from lepton_vision.config.errors import RecipeError
    from lepton_vision.config.recipe import recipe_from_text

    head = "schema_version: 1\nname: t\ntask: ct_screening\ndataset: synthetic_ct\n"
    r = recipe_from_text(head, ["input.reencode={codec: jpeg, quality: 85, size: [256, 256]}"])
    assert r.input.reencode_spec() == {"codec": "jpeg", "quality": 85, "size": [256, 256]}
    assert recipe_from_text(head).input.reencode_spec() is None
    with pytest.raises(RecipeError, match=r"input\.reencode\.quality"):
        recipe_from_text(head, ["input.reencode={codec: jpeg, quality: 0}"])
    with pytest.raises(RecipeError, match=r"input\.reencode\.codec"):
        recipe_from_text(head, ["input.reencode={codec: webp}"])

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
    ``evaluate``), and the report section shows both."""
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
        "input": {"image_size": [32, 32], "channels": 1}, "model": {"backbone": "small_cnn"},
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

"""Bad data through the real `train` command: one clear message, exit 1, no traceback, and
nothing is trained (no TensorFlow is needed to find these problems)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from lepton_vision.cli import main

REPO = Path(__file__).resolve().parents[1]

CARD = """\
schema_version: 1
name: tiny
format: {fmt}
path: tiny
{extra}
classes: [normal, abnormal]
licence: test data
"""

RECIPE = """\
schema_version: 1
name: tiny
task: ct_screening
dataset: tiny
input: {image_size: [32, 32], channels: 1}
cv: {n_splits: 3}
train: {epochs: 1, verbose: false}
"""


def _project(tmp_path: Path, monkeypatch, fmt: str = "image_folder", extra: str = "",
             n_per_class: int = 6) -> tuple[Path, Path]:
    shutil.copytree(REPO / "tasks", tmp_path / "tasks")
    (tmp_path / "datasets/tiny").mkdir(parents=True)
    (tmp_path / "datasets/tiny/dataset.yaml").write_text(CARD.format(fmt=fmt, extra=extra))
    (tmp_path / "recipes/ct_screening").mkdir(parents=True)
    recipe = tmp_path / "recipes/ct_screening/tiny.yaml"
    recipe.write_text(RECIPE)
    data = tmp_path / "data/tiny"
    rng = np.random.default_rng(0)
    for cls in ("normal", "abnormal"):
        (data / cls).mkdir(parents=True)
        for i in range(n_per_class):
            cv2.imwrite(str(data / cls / f"{i}.png"), rng.integers(0, 255, (40, 40), dtype=np.uint8))
    monkeypatch.setenv("LEPTON_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path))
    return recipe, data


def _train(recipe: Path, tmp_path: Path, capsys) -> tuple[int, str]:
    rc = main(["train", str(recipe), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def test_corrupt_png_is_named(tmp_path, monkeypatch, capsys):
    recipe, data = _project(tmp_path, monkeypatch)
    (data / "abnormal/3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rc, err = _train(recipe, tmp_path, capsys)
    assert rc == 1
    assert "abnormal/3.png" in err and "on_bad_file" in err
    assert not (tmp_path / "run/folds.csv").exists()


def test_missing_dataset_folder_is_named(tmp_path, monkeypatch, capsys):
    recipe, data = _project(tmp_path, monkeypatch)
    shutil.rmtree(data)
    rc, err = _train(recipe, tmp_path, capsys)
    assert rc == 1 and str(data) in err and "LEPTON_DATA_ROOT" in err


def test_class_too_small_for_the_folds(tmp_path, monkeypatch, capsys):
    recipe, data = _project(tmp_path, monkeypatch)
    for p in sorted((data / "abnormal").glob("*.png"))[2:]:
        p.unlink()
    rc, err = _train(recipe, tmp_path, capsys)
    assert rc == 1 and "abnormal" in err and "n_splits" in err


def test_csv_without_label_column(tmp_path, monkeypatch, capsys):
    recipe, data = _project(tmp_path, monkeypatch, fmt="csv", extra="manifest: labels.csv")
    rows = ["file,finding"] + [f"{c}/{i}.png,{c}" for c in ("normal", "abnormal") for i in range(6)]
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    rc, err = _train(recipe, tmp_path, capsys)
    assert rc == 1 and "labels.csv" in err and "label" in err and "finding" in err


def test_skip_policy_counts_and_names_excluded_files(tmp_path, monkeypatch, capsys):
    recipe, data = _project(tmp_path, monkeypatch)
    (data / "normal/0.png").write_bytes(b"garbage")
    recipe.write_text(RECIPE + "data: {on_bad_file: skip}\n")
    rc = main(["data", "check", str(recipe)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "11 samples" in out and "1 excluded" in out and "normal/0.png" in out


def test_label_not_in_class_list_names_the_row(tmp_path, monkeypatch, capsys):
    recipe, data = _project(tmp_path, monkeypatch, fmt="csv", extra="manifest: labels.csv")
    rows = ["path,label"] + [f"{c}/{i}.png,{c}" for c in ("normal", "abnormal") for i in range(6)]
    rows[4] = "normal/3.png,abnormall"
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    rc, err = _train(recipe, tmp_path, capsys)
    assert rc == 1 and "labels.csv" in err and "line 5" in err and "'abnormall'" in err
    assert "Did you mean 'abnormal'?" in err


@pytest.mark.parametrize("bad", ["train.epochs=0", "model.backbone=resnet9000", "augment=[{name: Flipp}]"])
def test_bad_overrides_fail_before_any_data_work(tmp_path, monkeypatch, capsys, bad):
    recipe, _ = _project(tmp_path, monkeypatch)
    rc = main(["train", str(recipe), "--set", bad, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 1 and "(from --set)" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_data_has_hu_only_for_dicom_or_nifti():
    import pandas as pd

    from lepton_vision.kinds.classification.kind import data_has_hu

    assert not data_has_hu(pd.DataFrame({"path": ["/a/x.png", "/a/y.JPG"]}))
    assert data_has_hu(pd.DataFrame({"path": ["/a/x.png", "/a/s.DCM"]}))
    assert data_has_hu(pd.DataFrame({"path": ["/a/v.nii.gz#z=3"]}))

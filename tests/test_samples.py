"""samples.read_samples: readers, label mapping, bad-file policy, every error names what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from lepton_vision.config.cards import DatasetCard, TaskCard
from lepton_vision.config.errors import DataError
from lepton_vision.data.readers.dicom import pseudonym
from lepton_vision.data.samples import TABLE_COLUMNS, read_samples


TASK = TaskCard.model_validate(
    {
        "schema_version": 1,
        "name": "screen",
        "kind": "binary_classification",
        "title": "Screen",
        "modality": "grayscale",
        "classes": ["normal", "abnormal"],
        "positive_class": "abnormal",
        "threshold": {"policy": "max_f1"},
    }
)


def card(**kw: Any) -> DatasetCard:
    base = {
        "schema_version": 1,
        "name": "toy",
        "format": "image_folder",
        "path": "unused",
        "classes": ["normal", "abnormal"],
        "licence": "test",
    }
    base.update(kw)
    return DatasetCard.model_validate(base)


def png(path: Path, value: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size), value, np.uint8))
    return path


def folder_dataset(root: Path, classes=("normal", "abnormal"), n: int = 3) -> Path:
    for c in classes:
        for i in range(n):
            png(root / c / f"{c}_{i}.png", value=i)
    return root


def read(c: DatasetCard, d: Path, **kw):
    return read_samples(c, d, TASK, d / "dataset.yaml", progress=False, **kw)


def test_image_folder_happy(tmp_path):
    d = folder_dataset(tmp_path / "ds")
    png(d / "abnormal" / "sub" / "deep.png")
    (d / "normal" / "notes.txt").write_text("x")
    (d / "normal" / ".DS_Store").write_text("x")
    s = read(card(), d)
    t = s.table
    assert list(t.columns) == list(TABLE_COLUMNS)
    assert len(t) == 7 and t["sample_id"].is_unique
    assert "abnormal/sub/deep.png" in set(t["sample_id"])
    row = t.set_index("sample_id").loc["abnormal/abnormal_0.png"]
    assert row["label"] == 1 and row["label_name"] == "abnormal" and row["group"] == ""
    assert Path(row["path"]).is_absolute() and Path(row["path"]).is_file()
    assert t.set_index("sample_id").loc["normal/normal_0.png", "label"] == 0
    assert s.counts["per_class"] == {"normal": 3, "abnormal": 4}
    assert s.counts["n_ignored"] == 1 and s.counts["ignored"] == ["normal/notes.txt"]
    assert s.excluded == []


def test_class_map(tmp_path):
    d = folder_dataset(tmp_path / "ds", classes=("neg", "pos"))
    s = read(card(classes=["neg", "pos"], class_map={"neg": "normal", "pos": "abnormal"}), d)
    assert set(zip(s.table["label_name"], s.table["label"])) == {("normal", 0), ("abnormal", 1)}


def test_unknown_class_folder_suggests(tmp_path):
    d = folder_dataset(tmp_path / "ds", classes=("normal", "abnormall"))
    with pytest.raises(DataError) as err:
        read(card(), d)
    msg = str(err.value)
    assert "folder 'abnormall' is not a class" in msg and "Did you mean 'abnormal'?" in msg
    assert "class 'abnormal' has no folder" in msg


def test_missing_folder_suggests_data_root(tmp_path):
    with pytest.raises(DataError) as err:
        read(card(), tmp_path / "nowhere")
    assert "nowhere" in str(err.value) and "LEPTON_DATA_ROOT" in str(err.value)


def test_empty_dataset(tmp_path):
    (tmp_path / "ds" / "normal").mkdir(parents=True)
    (tmp_path / "ds" / "abnormal").mkdir()
    with pytest.raises(DataError, match="no images"):
        read(card(), tmp_path / "ds")


def test_bad_files_error_lists_every_one(tmp_path):
    d = folder_dataset(tmp_path / "ds")
    (d / "normal" / "broken.png").write_bytes(b"not an image")
    (d / "abnormal" / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError) as err:
        read(card(), d)
    msg = str(err.value)
    assert "2 of 8 files" in msg
    assert "normal/broken.png: cannot decode" in msg
    assert "abnormal/empty.jpg: file is empty" in msg
    assert "data.on_bad_file: skip" in msg and "data_report.json" in msg


def test_bad_files_skip_are_reported(tmp_path):
    d = folder_dataset(tmp_path / "ds")
    (d / "normal" / "broken.png").write_bytes(b"not an image")
    s = read(card(), d, on_bad_file="skip")
    assert len(s.table) == 6 and "normal/broken.png" not in set(s.table["sample_id"])
    assert s.counts["n_excluded"] == 1 and s.counts["n_listed"] == 7
    (ex,) = s.excluded
    assert ex["sample_id"] == "normal/broken.png" and "cannot decode" in ex["reason"]
    assert ex["path"].endswith("broken.png")


def test_many_bad_files_are_capped(tmp_path):
    d = folder_dataset(tmp_path / "ds", n=1)
    for i in range(60):
        (d / "normal" / f"bad{i:02d}.png").write_bytes(b"x")
    with pytest.raises(DataError) as err:
        read_samples(card(), d, TASK, d / "dataset.yaml", progress=True)
    msg = str(err.value)
    assert "60 of 62 files" in msg and "... and 10 more" in msg
    assert msg.count("cannot decode") == 50


def test_too_large_image_is_a_bad_file(tmp_path):
    d = folder_dataset(tmp_path / "ds")
    png(d / "normal" / "huge.png", size=40)
    with pytest.raises(DataError, match="huge.png: image is 40x40"):
        read(card(), d, max_pixels=1000)


# ------------------------------------------------------------------ CSV


def csv_dataset(root: Path, text: str, n: int = 4) -> Path:
    for i in range(n):
        png(root / "img" / f"{i}.png", value=i)
    (root / "labels.csv").write_text(text)
    return root


def csv_card(**kw: Any) -> DatasetCard:
    cols = {"path": "file", "label": "diagnosis", "group": "patient"}
    cols.update(kw.pop("columns", {}))
    return card(format="csv", manifest="labels.csv", columns=cols, **kw)


def test_csv_happy_with_groups_and_extras(tmp_path):
    d = csv_dataset(
        tmp_path / "ds",
        "file,diagnosis,patient,age,label\n"
        "img/0.png,normal,p1,50,x\n"
        "img/1.png,abnormal,p1,50,y\n"
        "img/2.png,abnormal,,61,z\n"
        "./img/3.png,normal,p2,70,w\n",
    )
    s = read(csv_card(), d)
    t = s.table
    assert list(t.columns) == [*TABLE_COLUMNS, "age", "csv_label"]
    assert t["sample_id"].tolist() == ["img/0.png", "img/1.png", "img/2.png", "img/3.png"]
    assert t["label"].tolist() == [0, 1, 1, 0]
    assert t["group"].tolist() == ["p1", "p1", "row-img/2.png", "p2"]
    assert t["age"].tolist() == ["50", "50", "61", "70"]
    assert s.counts["own_group"] == 1 and s.counts["n_groups"] == 3


def test_csv_missing_column_names_csv_and_columns(tmp_path):
    d = csv_dataset(tmp_path / "ds", "file,diagnosys,patient\nimg/0.png,normal,p1\n")
    with pytest.raises(DataError) as err:
        read(csv_card(), d)
    msg = str(err.value)
    assert "labels.csv" in msg and "column 'diagnosis' is missing" in msg
    assert "Did you mean 'diagnosys'?" in msg and "Got columns: diagnosys, file, patient" in msg


def test_csv_bad_label_names_spreadsheet_line(tmp_path):
    d = csv_dataset(
        tmp_path / "ds",
        "file,diagnosis,patient\nimg/0.png,normal,p1\nimg/1.png,abnormall,p2\nimg/2.png,abnormal,p3\n",
    )
    with pytest.raises(DataError) as err:
        read(csv_card(), d)
    msg = str(err.value)
    assert "labels.csv" in msg
    assert "line 3" in msg and "label 'abnormall'" in msg and "Did you mean 'abnormal'?" in msg


def test_csv_duplicate_paths(tmp_path):
    d = csv_dataset(
        tmp_path / "ds",
        "file,diagnosis,patient\nimg/0.png,normal,p1\nimg/1.png,abnormal,p2\nimg/0.png,normal,p1\n",
    )
    with pytest.raises(DataError) as err:
        read(csv_card(), d)
    assert "'img/0.png' is listed 2 times, on lines 2, 4" in str(err.value)


def test_csv_missing_file_has_line(tmp_path):
    d = csv_dataset(tmp_path / "ds", "file,diagnosis,patient\nimg/0.png,normal,p1\nimg/gone.png,abnormal,p2\n")
    with pytest.raises(DataError) as err:
        read(csv_card(), d)
    assert "line 3" in str(err.value) and "img/gone.png: file not found" in str(err.value)


def test_csv_missing_manifest(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(DataError, match="manifest not found") as err:
        read(csv_card(), tmp_path / "ds")
    assert "labels.csv" in str(err.value)


def test_csv_without_group_column(tmp_path):
    d = csv_dataset(tmp_path / "ds", "file,diagnosis\nimg/0.png,normal\nimg/1.png,abnormal\n")
    s = read(csv_card(columns={"group": None}), d)
    assert s.table["group"].tolist() == ["", ""]


# ------------------------------------------------------------------ DICOM


def test_dicom_folder_groups_by_patient(tmp_path, write_ct_dicom):
    d = tmp_path / "ds"
    stored = np.full((8, 8), 1024, np.int16)
    for c, pids in (("normal", ["A", "B"]), ("abnormal", ["C"])):
        for pid in pids:
            for k in range(2):
                write_ct_dicom(d / c / pid / f"s{k}.dcm", stored, patient_id=pid)
    s = read(card(format="dicom"), d)
    t = s.table.set_index("sample_id")
    assert len(t) == 6
    # the group is the salted pseudonym of the PatientID, never the raw id
    assert t.loc["normal/A/s0.dcm", "group"] == pseudonym("A", "toy") and t.loc["abnormal/C/s1.dcm", "label"] == 1
    assert t.loc["normal/A/s0.dcm", "group"].startswith("pt-") and "A" not in set(t["group"])
    assert s.counts["n_groups"] == 3
    (d / "normal" / "A" / "junk.dcm").write_bytes(b"junk")
    with pytest.raises(DataError, match="normal/A/junk.dcm"):
        read(card(format="dicom"), d)

"""DICOM series and NIfTI volume readers, and the synthetic volume layouts (TF-free)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest

from lepton_vision.config.cards import DatasetCard, SyntheticSpec, TaskCard
from lepton_vision.config.errors import DataError
from lepton_vision.data.preprocess import read_image, to_uint8
from lepton_vision.data.readers.volumes import slice_path
from lepton_vision.data.readers.dicom_series import scan_series
from lepton_vision.data.samples import read_samples
from lepton_vision.data.synthetic.ct import generate_ct_dataset

N_PATIENTS, N_SLICES = 3, 4
TASK = TaskCard.model_validate(
    {
        "schema_version": 1,
        "name": "ct",
        "kind": "binary_classification",
        "title": "t",
        "modality": "ct",
        "classes": ["normal", "abnormal"],
        "positive_class": "abnormal",
        "threshold": {"policy": "max_f1"},
    }
)


def spec(layout: str) -> SyntheticSpec:
    return SyntheticSpec(
        generator="ct_phantom", n_patients=N_PATIENTS, slices_per_patient=N_SLICES, image_size=64, seed=3, layout=layout
    )


@pytest.fixture(scope="module")
def gen(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("volumes")
    out = {}
    for layout in ("slices", "dicom_series", "nifti"):
        out[layout] = root / layout
        generate_ct_dataset(out[layout], spec(layout), progress=False)
    return out


def card(**kw: Any) -> DatasetCard:
    base = {"schema_version": 1, "name": "vols", "path": "unused", "classes": ["normal", "abnormal"], "licence": "t"}
    return DatasetCard.model_validate(base | kw)


def read(c: DatasetCard, d: Path):
    return read_samples(c, d, TASK, d / "dataset.yaml", progress=False)


def test_layouts_write_their_manifest(gen):
    assert (gen["slices"] / "labels.csv").is_file() and not (gen["slices"] / "series.csv").exists()
    assert (gen["dicom_series"] / "series.csv").is_file()
    assert (gen["nifti"] / "volumes.csv").is_file()
    assert len(list(gen["nifti"].glob("*.nii.gz"))) == N_PATIENTS


def test_nifti_slice_equals_dicom_slice(gen):
    for j in range(N_SLICES):
        hu_dcm = read_image(gen["slices"] / "SYN0001" / f"{j:03d}.dcm")
        hu_nii = read_image(slice_path(gen["nifti"] / "SYN0001.nii.gz", N_SLICES - 1 - j))
        assert hu_nii.dtype == np.float32 and hu_nii.shape == hu_dcm.shape
        np.testing.assert_array_equal(hu_nii, hu_dcm)
        np.testing.assert_array_equal(to_uint8(hu_nii, 1, (-600, 1500)), to_uint8(hu_dcm, 1, (-600, 1500)))


def test_nifti_is_reoriented_to_ras(gen, tmp_path):
    img = nib.load(gen["nifti"] / "SYN0000.nii.gz")
    lps = img.as_reoriented(np.array([[0, -1], [1, -1], [2, 1]]))  # stored L->R, P->A
    assert nib.aff2axcodes(lps.affine) == ("L", "P", "S")
    nib.save(lps, tmp_path / "lps.nii.gz")
    for z in range(N_SLICES):
        a = read_image(slice_path(tmp_path / "lps.nii.gz", z))
        np.testing.assert_array_equal(a, read_image(slice_path(gen["nifti"] / "SYN0000.nii.gz", z)))


def test_synthetic_layouts_read_back_with_the_same_labels(gen):
    flat = read(card(format="csv", manifest="labels.csv", columns={"group": "patient_id"}), gen["slices"])
    series = read(card(format="dicom_series", manifest="series.csv"), gen["dicom_series"])
    nifti = read(card(format="nifti", manifest="volumes.csv", columns={"group": "patient_id"}), gen["nifti"])
    want = flat.table.set_index("sample_id")["label"]
    for s in (series, nifti):
        assert s.counts["n_samples"] == N_PATIENTS * N_SLICES and s.counts["n_excluded"] == 0
        assert s.counts["label_level"] == "slice" and s.counts["n_volumes"] == N_PATIENTS
        assert s.counts["n_groups"] == N_PATIENTS
        assert all(g.startswith("pt-") for g in s.table["group"])
    assert series.counts["skipped_non_image"] == 0 and series.counts["no_rescale_tags"] == 0
    # the series reader orders slices by position: its sample ids are the slice files
    assert series.table.set_index("sample_id")["label"].sort_index().equals(want.sort_index())
    t = nifti.table
    for row in t.itertuples():
        pid = row.volume.removesuffix(".nii.gz")
        assert row.label == want[f"{pid}/{N_SLICES - 1 - row.slice_index:03d}.dcm"]
    assert t["sample_id"].iloc[0].endswith("#z=0")


def _copy_series(src: Path, dst: Path, seed: int = 0) -> list[Path]:
    """Copy a series with shuffled file names and instance numbers; return the files top to bottom."""
    dst.mkdir(parents=True)
    files = sorted(src.glob("*.dcm"))  # 000.dcm is the top slice
    perm = np.random.default_rng(seed).permutation(len(files))
    out = []
    for f, k in zip(files, perm):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = int(k) + 1
        ds.save_as(dst / f"x{k}.dcm")
        out.append(dst / f"x{k}.dcm")
    return out


def test_series_ordered_by_position_not_names(gen, tmp_path):
    top_down = _copy_series(gen["slices"] / "SYN0002", tmp_path / "s1")
    scan = scan_series(tmp_path / "s1")
    assert scan.ordered_by == "position" and scan.files == top_down[::-1]


def test_series_folder_mode_skips_non_image_and_hashes_ids(gen, tmp_path):
    d = tmp_path / "ds"
    _copy_series(gen["slices"] / "SYN0000", d / "normal" / "scan_a")
    _copy_series(gen["slices"] / "SYN0001", d / "abnormal" / "scan_b")
    pr = pydicom.dcmread(next((d / "normal" / "scan_a").glob("*.dcm")))
    del pr.PixelData
    pr.SOPClassUID = pr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.11.1"  # presentation state
    pr.save_as(d / "normal" / "scan_a" / "pr.dcm")
    s = read(card(format="dicom_series"), d)
    assert s.counts["n_samples"] == 2 * N_SLICES and s.counts["skipped_non_image"] == 1
    assert s.counts["label_level"] == "volume"
    flat = s.table.astype(str).to_numpy().ravel()
    assert not any("SYN000" in v for v in flat)  # the raw PatientID is nowhere in the table
    assert s.table["group"].nunique() == 2


def test_series_mixing_two_series_is_refused(gen, tmp_path):
    d = tmp_path / "ds"
    _copy_series(gen["slices"] / "SYN0000", d / "normal" / "mixed")
    shutil.copy(gen["slices"] / "SYN0001" / "000.dcm", d / "normal" / "mixed" / "other.dcm")
    (d / "abnormal").mkdir()
    with pytest.raises(DataError, match="mixes 2 series") as e:
        read(card(format="dicom_series"), d)
    assert "normal/mixed" in str(e.value) and "one folder per series" in str(e.value)


def test_series_without_rescale_tags_is_counted(gen, tmp_path):
    d = tmp_path / "ds"
    files = _copy_series(gen["slices"] / "SYN0000", d / "s")
    ds = pydicom.dcmread(files[0])
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.save_as(files[0])
    (d / "m.csv").write_text("series,slice_index,label\ns,,normal\n")
    s = read(card(format="dicom_series", manifest="m.csv"), d)
    assert s.counts["no_rescale_tags"] == 1 and s.counts["n_samples"] == N_SLICES


def test_nifti_4d_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3, 2), np.int16), np.eye(4)), tmp_path / "v4.nii.gz")
    (tmp_path / "m.csv").write_text("volume,slice_index,label,group\nv4.nii.gz,0,normal,p\n")
    with pytest.raises(DataError, match=r"expected a 3-D volume, got shape \(8, 8, 3, 2\)") as e:
        read(card(format="nifti", manifest="m.csv"), tmp_path)
    assert "v4.nii.gz" in str(e.value)


def test_nifti_manifest_errors_name_rows(gen, tmp_path):
    for f in gen["nifti"].glob("*.nii.gz"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "m.csv").write_text("volume,slice_index,label\nSYN0000.nii.gz,1,normal\nSYN0000.nii.gz,9,abnormal\n")
    with pytest.raises(DataError, match="out of range") as e:
        read(card(format="nifti", manifest="m.csv"), tmp_path)
    assert "line 3" in str(e.value) and f"has {N_SLICES} slices" in str(e.value)
    (tmp_path / "m.csv").write_text("volume,slice_index,label\nSYN0000.nii.gz,,normal\nSYN0000.nii.gz,,abnormal\n")
    with pytest.raises(DataError, match="different labels") as e:
        read(card(format="nifti", manifest="m.csv"), tmp_path)
    assert "lines 2, 3" in str(e.value)


def test_nifti_volume_level_labels(gen, tmp_path):
    for f in gen["nifti"].glob("*.nii.gz"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "m.csv").write_text("volume,slice_index,label\nSYN0000.nii.gz,,normal\nSYN0001.nii.gz,,abnormal\n")
    s = read(card(format="nifti", manifest="m.csv"), tmp_path)
    assert s.counts["label_level"] == "volume" and s.counts["group_from"] == "volume"
    assert s.counts["per_class"] == {"normal": N_SLICES, "abnormal": N_SLICES}
    assert s.table["group"].nunique() == 2

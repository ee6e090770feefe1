"""Synthetic chest CT: files, HU plausibility, labels, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from lepton_vision.data.synthetic import ct as synthetic
from lepton_vision.config.cards import SyntheticSpec
from lepton_vision.data.readers.dicom import read_dicom_hu


def _spec(seed: int = 3, **kw: object) -> SyntheticSpec:
    base = dict(generator="ct_phantom", n_patients=3, slices_per_patient=4, image_size=64, seed=seed)
    base.update(kw)
    return SyntheticSpec(**base)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ct")
    summary = synthetic.generate_ct_dataset(out, _spec(), progress=False)
    return out, summary


def test_layout_and_labels(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    labels = pd.read_csv(out / "labels.csv")
    assert list(labels.columns) == ["path", "label", "patient_id", "slice_index", "nodule_count"]
    assert len(labels) == 12 == summary["n_slices"]
    assert summary["n_patients"] == 3 and summary["seconds"] > 0
    assert (out / "README.txt").read_text().startswith("Synthetic chest CT")
    for row in labels.itertuples():
        assert (out / row.path).is_file()
        assert row.path == f"{row.patient_id}/{row.slice_index:03d}.dcm"
        assert row.label == ("abnormal" if row.nodule_count > 0 else "normal")
    assert summary["n_abnormal_slices"] == int((labels.label == "abnormal").sum())
    per_patient = labels.groupby("patient_id").nodule_count.max()
    # round(0.5 * 3) = 2 abnormal patients, each with at least one abnormal slice; one normal patient
    assert (per_patient > 0).sum() == 2 and (per_patient == 0).sum() == 1
    assert labels.label.isin(["normal", "abnormal"]).all()


def test_dicom_tags_and_hu_ranges(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    labels = pd.read_csv(out / "labels.csv")
    import pydicom

    ds = pydicom.dcmread(out / labels.path[1])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.PatientID.startswith("SYN") and ds.InstanceNumber == 2
    assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    uids = {pydicom.dcmread(out / p).SOPInstanceUID for p in labels.path}
    assert len(uids) == len(labels)

    for path in labels.path:
        hu, meta = read_dicom_hu(out / path)
        assert hu.shape == (64, 64) and hu.dtype == np.float32
        assert meta["modality"] == "CT" and meta["window_center"] == -600
        # regions found from the image itself: body = filled soft-tissue outline
        body = ndimage.binary_fill_holes(ndimage.binary_opening(hu > -400, iterations=1))
        air = ~ndimage.binary_dilation(body, iterations=3)
        lungs = body & (hu < -500)
        assert abs(float(np.median(hu[air])) + 1000) < 40
        assert lungs[:, :32].sum() > 20 and lungs[:, 32:].sum() > 20  # one lung on each side
        assert -950 < float(np.median(hu[lungs])) < -750
        # spine: bone on the midline behind the lungs
        rows = np.flatnonzero(lungs.any(axis=1))
        behind = hu[int(np.median(rows)) :, 26:38]
        assert float(behind.max()) > 300


def test_same_seed_same_pixels_other_seed_differs(dataset: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = dataset
    synthetic.generate_ct_dataset(tmp_path / "again", _spec(), progress=False)
    synthetic.generate_ct_dataset(tmp_path / "other", _spec(seed=4), progress=False)
    labels = pd.read_csv(out / "labels.csv")
    pd.testing.assert_frame_equal(labels, pd.read_csv(tmp_path / "again" / "labels.csv"))
    differs = 0
    for path in labels.path:
        a, _ = read_dicom_hu(out / path)
        np.testing.assert_array_equal(a, read_dicom_hu(tmp_path / "again" / path)[0])
        if (tmp_path / "other" / path).exists():
            differs += not np.array_equal(a, read_dicom_hu(tmp_path / "other" / path)[0])
    assert differs > 0
    assert (out / labels.path[0]).read_bytes() == (tmp_path / "again" / labels.path[0]).read_bytes()


def test_patient_does_not_depend_on_n_patients() -> None:
    small = synthetic.simulate_patient_slices(_spec(n_patients=3, slices_per_patient=2), 1, True)
    large = synthetic.simulate_patient_slices(_spec(n_patients=9, slices_per_patient=2), 1, True)
    for (a, na), (b, nb) in zip(small, large):
        np.testing.assert_array_equal(a, b)
        assert na == nb


def test_nodules_raise_density_inside_lungs() -> None:
    spec = _spec(slices_per_patient=3, image_size=96)
    normal = synthetic.simulate_patient_slices(spec, 0, False)
    abnormal = synthetic.simulate_patient_slices(spec, 0, True)
    assert all(n == 0 for _, n in normal)
    shown = [(a, n) for a, n in abnormal if n > 0]
    assert shown, "an abnormal patient must show at least one nodule in its slab"
    # same anatomy and noise draw except the nodules: where they differ, the abnormal slice is denser
    for (a, n), (b, _) in zip(abnormal, normal):
        diff = a - b
        if n == 0:
            assert np.abs(diff).max() < 1e-6
        else:
            assert diff.max() > 300  # nodule (-100..100 HU) replacing lung (about -850 HU)

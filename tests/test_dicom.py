"""DICOM reader: HU rescale, metadata, and DataError for bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmwrite
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from lepton_vision.config.errors import DataError
from lepton_vision.data.readers.dicom import is_dicom, read_dicom_hu


def _write(path: Path, stored: np.ndarray, **attrs: object) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientID = "P1"
    ds.Rows, ds.Columns = stored.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = stored.tobytes()
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    path.write_bytes(buf.getvalue())
    return path


def test_rescale_slope_and_intercept_applied(tmp_path: Path) -> None:
    stored = np.array([[0, 100], [500, 1000]], dtype=np.uint16)
    f = _write(tmp_path / "a.dcm", stored, RescaleSlope=2, RescaleIntercept=-1000, InstanceNumber=3,
               SliceLocation=-12.5, WindowCenter=[-600, 40], WindowWidth=[1500, 400])
    hu, meta = read_dicom_hu(f)
    assert hu.dtype == np.float32 and hu.shape == (2, 2)
    np.testing.assert_array_equal(hu, np.array([[-1000, -800], [0, 1000]], dtype=np.float32))
    assert meta["rows"] == 2 and meta["cols"] == 2
    assert meta["patient_id"] == "P1" and meta["modality"] == "CT"
    assert meta["instance_number"] == 3 and meta["slice_location"] == -12.5
    assert meta["window_center"] == -600 and meta["window_width"] == 1500


def test_no_rescale_tags_means_identity(tmp_path: Path) -> None:
    stored = np.array([[-5, 7]], dtype=np.int16)
    hu, meta = read_dicom_hu(_write(tmp_path / "b.dcm", stored))
    np.testing.assert_array_equal(hu, [[-5.0, 7.0]])
    assert meta["window_center"] is None and meta["instance_number"] is None


def test_truncated_file_raises_data_error_naming_file(tmp_path: Path) -> None:
    f = _write(tmp_path / "cut.dcm", np.zeros((32, 32), dtype=np.uint16), RescaleIntercept=-1024)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 700])
    with pytest.raises(DataError, match="not a readable DICOM file") as e:
        read_dicom_hu(f)
    assert "cut.dcm" in str(e.value)


def test_header_cut_raises_data_error(tmp_path: Path) -> None:
    f = _write(tmp_path / "head.dcm", np.zeros((8, 8), dtype=np.uint16))
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(DataError, match="head.dcm: not a readable DICOM file"):
        read_dicom_hu(f)


def test_not_dicom_raises_data_error(tmp_path: Path) -> None:
    f = tmp_path / "notes.dcm"
    f.write_text("this is not a DICOM file\n" * 20)
    with pytest.raises(DataError, match="notes.dcm: not a readable DICOM file"):
        read_dicom_hu(f)


def test_missing_file_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.dcm"):
        read_dicom_hu(tmp_path / "nope.dcm")


def test_multiframe_and_colour_rejected(tmp_path: Path) -> None:
    multi = _write(tmp_path / "multi.dcm", np.zeros((2, 4, 4), dtype=np.uint16), NumberOfFrames=2)
    with pytest.raises(DataError, match=r"multi\.dcm: multi-frame"):
        read_dicom_hu(multi)
    rgb = np.zeros((4, 4, 3), dtype=np.uint16)
    colour = _write(tmp_path / "rgb.dcm", rgb, SamplesPerPixel=3, PhotometricInterpretation="RGB",
                    PlanarConfiguration=0)
    with pytest.raises(DataError, match=r"rgb\.dcm: colour DICOM"):
        read_dicom_hu(colour)


def test_is_dicom(tmp_path: Path) -> None:
    real = _write(tmp_path / "slice.bin", np.zeros((4, 4), dtype=np.uint16))
    assert is_dicom(real)  # by magic bytes
    assert is_dicom(tmp_path / "anything.DCM")  # by extension
    text = tmp_path / "a.txt"
    text.write_text("x" * 300)
    assert not is_dicom(text)
    assert not is_dicom(tmp_path / "missing.png")

"""Shared fixtures. The suite is tiered by markers: default (no TensorFlow), tf, slow."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# No network at test time: albumentations' update check, Gradio analytics, the HF hub.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def repo() -> Path:
    """The repository root (holds tasks/, datasets/, recipes/)."""
    return REPO


def real_data_root() -> Path | None:
    """$LEPTON_DATA_ROOT or ../shared/data when present, else None (real-data tests skip)."""
    env = os.environ.get("LEPTON_DATA_ROOT")
    if env and Path(env).is_dir():
        return Path(env)
    return SHARED_DATA if SHARED_DATA.is_dir() else None


def _write_ct_dicom(path: Path, stored: np.ndarray, patient_id: str = "P1", intercept: float = -1024.0) -> Path:
    """Write a minimal single-frame CT DICOM with pydicom (int16 stored values, HU = stored + intercept)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientID = patient_id
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = intercept
    ds.PixelData = stored.astype("<i2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _tiny_model(size: tuple[int, int], channels: int = 3, seed: int = 0):
    """Input float32 [h,w,C] in [0,1] -> conv -> GAP -> Dense(1, sigmoid), fitted a few steps."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((*size, channels), name="image", dtype="float32")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="score")(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    xs = rng.random((32, *size, channels), dtype=np.float32)
    ys = (xs.mean(axis=(1, 2, 3)) > 0.5).astype(np.float32)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy")
    model.fit(xs, ys, epochs=2, batch_size=16, verbose=0)
    return model


@pytest.fixture(scope="session")
def write_ct_dicom():
    """``write_ct_dicom(path, stored, patient_id="P1", intercept=-1024.0) -> path``."""
    return _write_ct_dicom


@pytest.fixture(scope="session")
def tiny_model_factory():
    """``tiny_model_factory(size_hw, channels=3, seed=0) -> keras.Model`` (tf tests only)."""
    return _tiny_model

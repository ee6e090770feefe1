"""Shared fixtures. The suite is tiered by markers: default (no TensorFlow), tf, slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    """The python block after ``<!-- marker`` in README.md or, when README.md lacks the marker, in
    the first docs/*.md (sorted) that has it (so the documented code is what is tested)."""
    for page in [README, *sorted((README.parent / "docs").glob("*.md"))]:
        text = page.read_text()
        if f"<!-- {marker}" in text:
            after = text.split(f"<!-- {marker}", 1)[1]
            return after.split("```python\n", 1)[1].split("```", 1)[0]
    raise LookupError(f"no '<!-- {marker}' marker in README.md or docs/*.md: the tested example block is gone")


def _run_readme_example(marker: str, tmp_path: Path, *args: str) -> tuple[str, dict]:
    """Run a README example in a subprocess outside the repo; (stdout, its last-line JSON)."""
    script = tmp_path / f"{marker}.py"
    script.write_text(readme_block(marker))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # cwd outside the repo, so nothing can import lepton_vision from the working directory.
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, json.loads(proc.stdout.strip().splitlines()[-1])


def _schema_fields() -> set[str]:
    """Field names in the first column of the bundle schema table in docs/export.md."""
    text = (README.parent / "docs" / "export.md").read_text().split("## The bundle schema", 1)[1].split("**Signatures**", 1)[0]
    names = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            names |= {n.split(".")[0] for n in line.split("|")[1].replace("`", "").replace(",", " ").split()}
    return names


@pytest.fixture(scope="session")
def readme_example():
    """``readme_example(marker, tmp_path, *args) -> (stdout, last-line JSON)``: run a README block."""
    return _run_readme_example


@pytest.fixture(scope="session")
def readme_schema_fields() -> set[str]:
    """Top-level field names documented in the README's bundle schema table."""
    return _schema_fields()



def make_tiny_ct_project(root: Path) -> Path:
    """Copy tasks/datasets/recipes into ``root`` with the synthetic CT cards shrunk to 8 patients
    x 4 slices at 64 px; returns the CT baseline recipe path."""
    import shutil

    import yaml

    repo = Path(__file__).resolve().parents[1]
    for d in ("tasks", "datasets", "recipes"):
        shutil.copytree(repo / d, root / d)
    for name in ("synthetic_ct", "synthetic_ct_series", "synthetic_ct_nifti"):
        card = root / f"datasets/{name}/dataset.yaml"
        data = yaml.safe_load(card.read_text())
        data["synthetic"].update(n_patients=8, slices_per_patient=4, image_size=64)
        card.write_text(yaml.safe_dump(data, sort_keys=False))
    return root / "recipes/ct_screening/baseline.yaml"


@pytest.fixture(scope="session")
def tiny_ct_project():
    """``tiny_ct_project(root) -> recipe path`` (see :func:`make_tiny_ct_project`)."""
    return make_tiny_ct_project

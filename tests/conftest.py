"""Shared fixtures. The suite is tiered by markers: default (no TensorFlow), tf, slow."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
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
#: Built test artefacts (tiny trained models, exports, runs) shared by test sessions and xdist
#: workers; an entry is reused only while the code, cards, recipes and test builders that made it
#: are unchanged.
TEST_CACHE = Path(os.environ.get("LEPTON_TEST_CACHE", REPO / "test-artifacts" / "fixture-cache"))


def _code_key(*parts: str) -> str:
    """Hash of everything a built test artefact depends on: the package, the cards and recipes,
    this file and the test builders, plus ``parts``."""
    h = hashlib.sha256()
    files = [p for root in ("lepton_vision", "tasks", "datasets", "recipes") for p in sorted((REPO / root).rglob("*"))
             if p.is_file() and p.suffix in (".py", ".yaml", ".yml") and "__pycache__" not in p.parts]
    for p in [*files, Path(__file__), REPO / "tests" / "demo_exports.py", REPO / "tests" / "ood_exports.py"]:
        h.update(str(p.relative_to(REPO)).encode())
        h.update(p.read_bytes())
    for part in parts:
        h.update(part.encode())
    return h.hexdigest()[:16]


def cached_build(name: str, build: Callable[[Path], None], *key_parts: str) -> Path:
    """A folder ``build(folder)`` filled once per code version and then reused by every test session
    and xdist worker (a file lock makes the others wait for the first build).

    An entry is complete when ``build`` returned (a marker is written last), so an interrupted
    build is redone; older entries of ``name`` are removed. Consumers must not modify the folder:
    copy what they change.
    """
    key = _code_key(name, *key_parts)
    folder = TEST_CACHE / f"{name}-{key}"
    done = folder / ".complete"
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    with open(TEST_CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            for old in TEST_CACHE.glob(f"{name}-*"):
                shutil.rmtree(old, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            done.write_text(key)
    return folder


#: Modules that take minutes (CI stage 2, measured): collected first in that stage, so that with pytest-xdist's
#: loadscope the longest start first and the short ones fill in at the end (a long module picked
#: up last left the other worker idle for minutes).
LONGEST_FIRST = ("test_scale_out_e2e.py", "test_baseline_slow.py", "test_detection_e2e.py", "test_interruption.py")
#: CI stage 1: the modules that build a shared cached artefact (:func:`cached_build`) start first, one
#: per worker, so that no two workers reach the same unbuilt artefact together (the second would
#: wait on the lock, idle: 130 s for the detector export when xdist's order put test_serve beside
#: test_det_predictor). Then the long modules; the many short ones fill in at the end. The order
#: holds because addopts turns off xdist's reordering of modules by their number of tests.
BUILDERS_FIRST = ("test_det_predictor.py",  # det-demo-export (later: serve, monitor, ood, browser)
                  "test_train_e2e.py",      # tiny-ct-run (later: pretrain)
                  "test_ood.py",            # ood-ct-run and ct-demo-export (later: monitor, serve, demo_load)
                  "test_pretrain.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Module order for pytest-xdist (:data:`LONGEST_FIRST` in the slow stage, :data:`BUILDERS_FIRST`
    otherwise); ``full`` tests (the unmodified default recipe, minutes) run only when asked for:
    ``-m full``."""
    markexpr = config.getoption("markexpr") or ""
    first = LONGEST_FIRST if "slow" in markexpr and "not slow" not in markexpr else BUILDERS_FIRST
    rank = {name: i for i, name in enumerate(first)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a module kept
    if "full" in markexpr:
        return
    skip = pytest.mark.skip(reason="the unmodified default recipe, about 8 min on 2 cores: run it with pytest -m full")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)


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


# tests/demo_exports.py and tests/ood_exports.py are imported by name (pyproject's pytest
# ``pythonpath`` puts tests/ on sys.path), inside the fixtures so that collecting stays light.


@pytest.fixture(scope="session")
def ood_data():
    """tests/ood_exports.py: the OOD tests' builders, image sets and stated corruption levels."""
    import ood_exports

    return ood_exports


@pytest.fixture(scope="session")
def ood_ct_run(ood_data) -> Path:
    """The OOD tests' CT run folder (40 generated patients through ``lepton-vision train``), shared."""
    return cached_build("ood-ct-run", ood_data.make_ct_run) / "run"


@pytest.fixture(scope="session")
def ct_demo_export() -> dict:
    """A tiny CT classifier export with DICOM/PNG samples and a samples.csv (tests/demo_exports.py),
    built once per code version and shared by the serve, load and browser tests (read-only)."""
    import demo_exports

    folder = cached_build("ct-demo-export", lambda root: demo_exports.make_ct_export(root, _write_ct_dicom))
    return demo_exports.ct_export_files(folder)


def _image_slices(tflite_file: Path, frame_shape: tuple[int, ...], min_pixels: int) -> list[tuple[int, ...]]:
    """Input shapes of the STRIDED_SLICE ops of ``tflite_file`` (its input resized to
    ``frame_shape``) that are image-like: rank >= 3 with at least ``min_pixels`` elements per
    channel. A STRIDED_SLICE copies element by element in LiteRT; indexing an image tensor in the
    graph ([None], [0]) produces one (11.5 of 27 ms of the person detector on a 768x576 frame)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite_file))
    interp.resize_tensor_input(interp.get_input_details()[0]["index"], list(frame_shape))
    interp.allocate_tensors()
    shapes = {t["index"]: tuple(int(d) for d in t["shape"]) for t in interp.get_tensor_details()}
    sliced = [shapes[op["inputs"][0]] for op in interp._get_ops_details() if op["op_name"] == "STRIDED_SLICE"]
    return [s for s in sliced if len(s) >= 3 and np.prod(s) / s[-1] >= min_pixels]


@pytest.fixture(scope="session")
def image_slices():
    """``image_slices(tflite_file, frame_shape, min_pixels)`` (see :func:`_image_slices`)."""
    return _image_slices


@pytest.fixture(scope="session")
def det_demo_export() -> dict:
    """A tiny detector export with frames, a video and a samples.csv (tests/demo_exports.py), built
    once per code version and shared by the serve and browser tests (read-only)."""
    import demo_exports

    folder = cached_build("det-demo-export", demo_exports.make_det_export)
    return demo_exports.det_export_files(folder)


class _env:
    """Set environment variables for a ``with`` block, then restore them."""

    def __init__(self, **values: str) -> None:
        self.values, self.saved = values, {}

    def __enter__(self) -> None:
        for k, v in self.values.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = v

    def __exit__(self, *exc: object) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: The tiny CT run every end-to-end classification test shares (2 folds, 2 epochs, 32 px, 8 patients).
TINY_CT_RUN = ["train.epochs=2", "cv.n_splits=2", "input.image_size=[32, 32]", "evaluate.n_bootstrap=50",
               "export.parity_samples=8", "train.verbose=false"]
#: The tiny detection run (2 folds grouped by sequence, 1 epoch, 64x96 input, 20 street frames).
TINY_DET_RUN = ["train.epochs=1", "cv.n_splits=2", "input.image_size=[64, 96]", "evaluate.n_bootstrap=50",
                "export.parity_samples=4", "final.mode=best_fold", "train.verbose=false"]


def make_tiny_det_project(root: Path) -> Path:
    """Copy tasks/datasets/recipes into ``root`` with synthetic_street shrunk to 20 frames of 120x80
    in sequences of two, a quarter of them empty; returns the person baseline recipe path."""
    import yaml

    for d in ("tasks", "datasets", "recipes"):
        shutil.copytree(REPO / d, root / d)
    card = root / "datasets/synthetic_street/dataset.yaml"
    data = yaml.safe_load(card.read_text())
    data["synthetic"].update(n_images=20, frame_size=[120, 80], sequence_length=2, empty_fraction=0.25)
    card.write_text(yaml.safe_dump(data, sort_keys=False))
    return root / "recipes/person_detection/baseline.yaml"


def _cached_cli_run(name: str, make_project: Callable[[Path], Path], overrides: list[str]) -> dict:
    """A run through the real CLI on a tiny project, built once per code version (see
    :func:`cached_build`): ``{"root", "recipe", "run", "overrides"}``. The project's generated data
    and the run are read-only for the tests: copy the run before changing it."""

    def build(folder: Path) -> None:
        from lepton_vision.cli import main

        root = folder / "proj"
        root.mkdir()
        recipe = make_project(root)
        (folder / "recipe.txt").write_text(str(recipe.relative_to(root)))
        with _env(LEPTON_GENERATED_ROOT=str(root / "generated"), LEPTON_HOME=str(root)):
            rc = main(["train", str(recipe), *sum((["--set", s] for s in overrides), []), "--out", str(folder / "run")])
        assert rc == 0, f"the shared {name} run failed"

    folder = cached_build(name, build, *overrides)
    root = folder / "proj"
    return {"root": root, "recipe": root / (folder / "recipe.txt").read_text(), "run": folder / "run",
            "overrides": list(overrides)}


@pytest.fixture(scope="session")
def tiny_ct_run() -> dict:
    """The shared tiny CT run (:data:`TINY_CT_RUN` through ``lepton-vision train``)."""
    return _cached_cli_run("tiny-ct-run", make_tiny_ct_project, TINY_CT_RUN)


@pytest.fixture(scope="session")
def tiny_det_run() -> dict:
    """The shared tiny detection run (:data:`TINY_DET_RUN` through ``lepton-vision train``)."""
    return _cached_cli_run("tiny-det-run", make_tiny_det_project, TINY_DET_RUN)

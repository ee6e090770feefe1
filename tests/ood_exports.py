"""Exports and image sets for the out-of-distribution tests (tests/test_ood.py); not a test module.

* CT: a real ``lepton-vision train`` run of the CT baseline recipe on 40 generated patients x 6
  slices (64 px slices, 32 px input, 2 folds x 1 epoch): the export's reference is fitted by the
  training pipeline itself.
* Person: the demo detector of tests/demo_exports.py (a tiny YOLOv8 fitted on generated
  rectangle scenes, exported with the real exporter and a reference of 64 such frames fitted the
  way the detection kind fits it: pooled P5 features, groups = sequences); new frames of the same
  kind come from :func:`det_new_frames`.

The images the tests score are generated here too: new patients and new street sequences (never
seen by the reference), the other task's images (foreign input) and corruptions of the new
images at stated levels.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]

CT_TRAIN_PATIENTS, CT_SLICES, CT_SIZE = 40, 6, 64
#: New patients the OOD tests score (indices after the training patients; never in the reference).
CT_NEW_PATIENTS = 30
CT_WINDOW = (-600.0, 1500.0)  # the CT baseline recipe's window (level, width)
CT_OVERRIDES = ["train.epochs=1", "cv.n_splits=2", "input.image_size=[32, 32]", "evaluate.n_bootstrap=50",
                "export.parity_samples=8", "export.formats=[saved_model, tflite]", "train.verbose=false"]

#: Street frames (the CT export's foreign input).
STREET_FRAME, STREET_SEQ = (160, 120), 2

#: Corruption levels the tests state: additive Gaussian noise (grey levels, sigma) and Gaussian
#: blur (pixels, sigma, at the image's own resolution).
NOISE_SIGMA = {"ct": 40.0, "person": 60.0}
BLUR_SIGMA = {"ct": 2.0, "person": 3.0}


def _ct_spec(n_patients: int) -> Any:
    from lepton_vision.config.cards import SyntheticSpec

    return SyntheticSpec(generator="ct_phantom", n_patients=n_patients, slices_per_patient=CT_SLICES,
                         image_size=CT_SIZE, seed=7)


def _street_spec(n_images: int) -> Any:
    from lepton_vision.config.cards import SyntheticSpec

    return SyntheticSpec(generator="street_scenes", n_images=n_images, frame_size=STREET_FRAME,
                         sequence_length=STREET_SEQ, empty_fraction=0.25, seed=7)


def ct_window_uint8(hu: np.ndarray) -> np.ndarray:
    """HU -> the uint8 grey [H, W, 1] the CT export takes (the recipe's window)."""
    level, width = CT_WINDOW
    lo = level - width / 2
    return np.clip(np.rint((hu - lo) / width * 255.0), 0, 255).astype(np.uint8)[..., None]


def new_ct_slices() -> list[np.ndarray]:
    """uint8 [64, 64, 1] slices of the patients after the training ones (new patients)."""
    from lepton_vision.data.synthetic.ct import iter_ct_slices

    n = CT_TRAIN_PATIENTS + CT_NEW_PATIENTS
    return [ct_window_uint8(hu) for hu, _ in iter_ct_slices(_ct_spec(n), CT_TRAIN_PATIENTS * CT_SLICES, n * CT_SLICES)]


#: The monitor tests' stream: slices of new patients in patient order, and how its drifted twin darkens.
MONITOR_PATIENTS, MONITOR_WINDOW = 60, 120
#: Brightness factor at the stream's start and end (linear in between) of the drifted stream.
DRIFT_BRIGHTNESS = (1.0, 0.3)


def monitor_ct_slices() -> list[np.ndarray]:
    """uint8 [64, 64, 1] slices of :data:`MONITOR_PATIENTS` new patients, patient after patient
    (after the training and OOD-test patients)."""
    from lepton_vision.data.synthetic.ct import iter_ct_slices

    first = CT_TRAIN_PATIENTS + CT_NEW_PATIENTS
    n = first + MONITOR_PATIENTS
    return [ct_window_uint8(hu) for hu, _ in iter_ct_slices(_ct_spec(n), first * CT_SLICES, n * CT_SLICES)]


def darkening(images: list[np.ndarray]) -> list[np.ndarray]:
    """The stream with its brightness falling linearly over time (:data:`DRIFT_BRIGHTNESS`)."""
    start, end = DRIFT_BRIGHTNESS
    factors = np.linspace(start, end, len(images))
    return [np.clip(np.rint(im.astype(np.float32) * f), 0, 255).astype(np.uint8) for im, f in zip(images, factors)]


def street_frames(start: int, stop: int) -> list[np.ndarray]:
    """uint8 RGB street frames ``start .. stop - 1`` of the generator the person export saw."""
    from lepton_vision.data.synthetic.scenes import iter_scene_frames

    return [rgb for rgb, _, _ in iter_scene_frames(_street_spec(stop), start, stop)]


#: New frames the person OOD test scores against the demo detector's reference (never in it).
DET_NEW_FRAMES = 80


def det_new_frames(n: int = DET_NEW_FRAMES, seed: int = 1234) -> list[np.ndarray]:
    """New 120x160 frames like the demo detector's reference frames (tests/demo_exports.py)."""
    import demo_exports

    return demo_exports.det_reference_frames(np.random.default_rng(seed), n)


def noisy(images: list[np.ndarray], sigma: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.clip(im.astype(np.float32) + rng.normal(0, sigma, im.shape), 0, 255).astype(np.uint8) for im in images]


def blurred(images: list[np.ndarray], sigma: float) -> list[np.ndarray]:
    return [cv2.GaussianBlur(im, (0, 0), sigma).reshape(im.shape) for im in images]


def make_ct_run(folder: Path) -> None:
    """``lepton-vision train`` of the CT baseline on 40 generated patients (see the module doc)."""
    import yaml

    from lepton_vision.cli import main

    root = folder / "proj"
    for d in ("tasks", "datasets", "recipes"):
        shutil.copytree(REPO / d, root / d)
    card = root / "datasets/synthetic_ct/dataset.yaml"
    data = yaml.safe_load(card.read_text())
    data["synthetic"].update(n_patients=CT_TRAIN_PATIENTS, slices_per_patient=CT_SLICES, image_size=CT_SIZE)
    card.write_text(yaml.safe_dump(data, sort_keys=False))
    old = {k: os.environ.get(k) for k in ("LEPTON_GENERATED_ROOT", "LEPTON_HOME")}
    os.environ.update(LEPTON_GENERATED_ROOT=str(root / "generated"), LEPTON_HOME=str(root))
    try:
        rc = main(["train", str(root / "recipes/ct_screening/baseline.yaml"),
                   *sum((["--set", s] for s in CT_OVERRIDES), []), "--out", str(folder / "run")])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert rc == 0, "the OOD CT run failed"

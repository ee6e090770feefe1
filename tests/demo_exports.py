"""Tiny exports for the demo tests (tests/test_serve.py, tests/test_browser.py); not a test module.

Each builder trains a very small model for a few steps, exports it with the real exporters and
writes the run's ``samples.csv`` next to the export (the demo's example gallery reads it), so the
demo runs on the same files a real run leaves behind. conftest and the test modules ``import
demo_exports`` (pyproject's pytest ``pythonpath`` puts tests/ on sys.path), so it is loaded once
per process.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

CT_SIZE = (32, 32)
CT_WINDOW = (-600.0, 1500.0)
#: Between the fitted model's scores of the two labels' slices (about 0.94 and 0.996).
CT_THRESHOLD = 0.97
DET_INPUT_HW = (128, 128)
DET_SCORE_THR = 0.3
DET_IMAGE_THR = 0.4

CT_INFO: dict[str, Any] = {
    "task": "ct_screening",
    "kind": "binary_classification",
    "title": "CT screening (test export)",
    "intended_use": "Test fixture. Not for diagnosis.",
    "classes": ["normal", "abnormal"],
    "positive_class": "abnormal",
    "threshold_policy": {"policy": "min_sensitivity", "value": 0.95},
    "metrics": {
        "pooled": {"roc_auc": {"value": 0.81, "lo": 0.72, "hi": 0.89},
                   "sensitivity": {"value": 0.95, "lo": 0.9, "hi": 0.99}},
        "mean_sd": {"roc_auc": {"mean": 0.8, "sd": 0.05}},
        "ci": 0.95,
        "bootstrap_unit": "group",
    },
    "recipe": {"name": "ct_screening-test", "sha256": "ab" * 32, "seed": 7},
    "dataset": {"name": "test_ct", "fingerprint": "cd" * 32, "n_samples": 6},
    "versions": {"lepton_vision": "0.1.0", "tensorflow": "2.21.0"},
}


def _ct_model(seed: int = 0) -> Any:
    """float32 [32, 32, 1] in [0, 1] -> conv 'last_conv' -> GAP -> Dense(1, sigmoid), fitted briefly so
    the score rises with brightness (Grad-CAM then has positive evidence) and Grad-CAM finds its layer."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((*CT_SIZE, 1), name="image", dtype="float32")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="last_conv")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="score")(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    base = rng.random((64, 1, 1, 1)).astype(np.float32)  # brightness decides the label
    xs = np.clip(base + rng.normal(0, 0.1, (64, *CT_SIZE, 1)), 0, 1).astype(np.float32)
    ys = (base.reshape(-1) > 0.5).astype(np.float32)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy")
    model.fit(xs, ys, epochs=8, batch_size=16, verbose=0)
    return model


def make_ct_export(root: Path, write_ct_dicom: Any) -> dict[str, Any]:
    """A 1-channel CT classifier export (SavedModel + float TFLite + model.keras) with DICOM and PNG
    samples, a samples.csv of six DICOM slices (three per label) and a corrupt PNG."""
    from lepton_vision.data import preprocess
    from lepton_vision.kinds.classification.export import export_classifier

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    data = root / "data"
    rows, dicoms = [], []
    for i in range(6):
        label = i % 2
        # Brighter (denser) slices for the positive label, so the fitted model separates them.
        base = 700 + 600 * label
        stored = np.clip(rng.normal(base, 250, (48, 40)), 0, 2400).astype(np.int16)
        path = write_ct_dicom(data / f"P{i:02d}" / "000.dcm", stored, patient_id=f"P{i:02d}")
        dicoms.append(path)
        rows.append({"sample_id": f"P{i:02d}/000.dcm", "path": str(path), "label": label,
                     "label_name": ["normal", "abnormal"][label], "group": f"P{i:02d}"})
    gray = rng.integers(0, 256, (40, 36), dtype=np.uint8)
    png = data / "slice_gray.png"
    cv2.imwrite(str(png), gray)
    colour = data / "slice_colour.png"
    cv2.imwrite(str(colour), rng.integers(0, 256, (30, 30, 3), dtype=np.uint8))
    corrupt = data / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not a PNG image" * 4)
    text = data / "notes.txt"
    text.write_text("not an image")
    parity = [preprocess.to_uint8(preprocess.read_image(p), 1, CT_WINDOW) for p in [*dicoms[:3], png]]
    export_dir = root / "run" / "export"
    model = _ct_model()
    export_classifier(model, export_dir, image_size_hw=CT_SIZE, channels=1, window=CT_WINDOW,
                      threshold=CT_THRESHOLD, bundle_info=CT_INFO, parity_images=parity,
                      formats=("saved_model", "tflite"), ood=_ct_reference(model, np.random.default_rng(11)))
    _write_samples(root / "run" / "samples.csv", rows)
    return ct_export_files(root)


def _ct_reference(model: Any, rng: np.random.Generator) -> tuple[Any, Any]:
    """An OOD reference of 200 windowed slices drawn like the DICOM samples (each its own
    patient), so the samples are in distribution and the uniform-noise PNGs are not."""
    import keras

    from lepton_vision.data import preprocess
    from lepton_vision.export.reference import fit_from_images

    feature_model = keras.Model(model.input, model.layers[-2].output)
    level, width = CT_WINDOW
    slices = []
    for i in range(200):
        hu = np.clip(rng.normal(700 + 600 * (i % 2), 250, (48, 40)), 0, 2400) - 1024.0
        slices.append(np.clip(np.rint((hu - level + width / 2) / width * 255), 0, 255).astype(np.uint8)[..., None])
    ref, _, _ = fit_from_images(slices, [f"P{i}" for i in range(200)], np.linspace(0.9, 1.0, 200),
                                prep_np=lambda im: preprocess.to_model_input(im, CT_SIZE) * np.float32(255),
                                features_np=lambda b: feature_model(b / np.float32(255), training=False), seed=0,
                                score_name="score")
    return ref, feature_model


def ct_export_files(root: Path) -> dict[str, Any]:
    """The files of a :func:`make_ct_export` folder, by role."""
    data = root / "data"
    return {"dir": root / "run" / "export", "dicoms": [data / f"P{i:02d}" / "000.dcm" for i in range(6)],
            "png": data / "slice_gray.png", "colour": data / "slice_colour.png", "corrupt": data / "corrupt.png",
            "text": data / "notes.txt", "root": root}


def scene(rng: np.random.Generator, h: int, w: int, noise: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """A grey frame (pixel noise of SD ``noise``; 0: flat) with 1-3 dark upright rectangles
    ("people") and their xyxy boxes."""
    img = np.clip(rng.normal(150, noise, (h, w, 3)), 0, 255) if noise else np.full((h, w, 3), 150.0)
    boxes = []
    for _ in range(int(rng.integers(1, 4))):
        bw, bh = int(rng.integers(w // 10, w // 5)), int(rng.integers(h // 4, h // 2))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        img[y: y + bh, x: x + bw] = rng.integers(0, 60, 3)
        boxes.append([x, y, x + bw, y + bh])
    return img.astype(np.uint8), np.array(boxes, np.float32)


def write_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def write_video(path: Path, frames: list[np.ndarray], fps: float = 5.0, fourcc: str = "mp4v") -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} {path.suffix}"
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def make_det_export(root: Path) -> dict[str, Any]:
    """The one tiny detector export of the suite: a 128 px YOLOv8 'tiny' person detector fitted for
    a few epochs on rectangles and exported to every format (SavedModel, float and int8 TFLite
    with the head kept float, ONNX) with an OOD reference. Around it: the demo's frames (with and
    without objects), a samples.csv, a short video and a corrupt PNG; and, for the Predictor tests
    (tests/test_det_predictor.py), labelled frames of three sizes in ``run/frames`` on which the
    int8 AP50 change is measured (``run/export_result.json`` holds those rows).

    An untrained YOLOv8 scores every anchor ~equally (ties make NMS, hence the backends' box
    counts, arbitrary), so it is fitted briefly: scores then differ per box. One export serves
    both the demo and the Predictor tests (it was two: ~2 min of CI worker time each).
    """
    import keras
    import pandas as pd

    from lepton_vision.config.cards import DetectionPolicy
    from lepton_vision.models.detectors import adapter_for
    from lepton_vision.kinds.detection.export import export_detector
    from lepton_vision.config.recipe import DetectorSpec

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = 32
    x = np.zeros((n, *DET_INPUT_HW, 3), np.float32)
    boxes = -np.ones((n, 4, 4), np.float32)
    classes = -np.ones((n, 4), np.float32)
    for i in range(n):
        img, b = scene(rng, *DET_INPUT_HW)
        x[i], boxes[i, : len(b)], classes[i, : len(b)] = img, b, 0
    spec = DetectorSpec(size="tiny")
    adapter = adapter_for(spec)
    model = adapter.build(spec, 1, DET_INPUT_HW, 0)
    adapter.compile(model, spec, keras.optimizers.Adam(2e-3))
    model.fit(x, {"boxes": boxes, "classes": classes}, batch_size=8, epochs=8, verbose=0)
    ood = _det_reference(model, np.random.default_rng(99))
    run = root / "run"
    # The Predictor tests' labelled frames (three heights), also the parity and calibration frames.
    labelled = [scene(rng, 96 + 16 * (i % 3), 160) for i in range(8)]
    labelled_paths = [write_png(run / "frames" / f"f{i}.png", img) for i, (img, _) in enumerate(labelled)]
    quant_rows = pd.DataFrame({
        "sample_id": [f"f{i}" for i in range(len(labelled))], "path": [str(p) for p in labelled_paths],
        "label": 1, "boxes": [json.dumps(b.tolist()) for _, b in labelled],
        "classes": [json.dumps([0] * len(b)) for _, b in labelled], "ignore": "[]",
    })
    frames_dir = root / "frames"
    scenes = [scene(rng, 120, 160) for _ in range(5)]
    frames = [write_png(frames_dir / f"f{i}.png", img) for i, (img, _) in enumerate(scenes)]
    empty = write_png(frames_dir / "empty.png", np.clip(rng.normal(150, 20, (120, 160, 3)), 0, 255).astype(np.uint8))
    export_dir = run / "export"
    result = export_detector(
        model, export_dir, input_hw=DET_INPUT_HW, score_threshold=DET_SCORE_THR, image_threshold=DET_IMAGE_THR,
        policy=DetectionPolicy(),
        bundle_info={"task": "person_detection", "kind": "object_detection", "classes": ["person"],
                     "title": "Person detection (test export)", "intended_use": "Test fixture.",
                     "threshold_policy": {"policy": "max_f1", "value": None},
                     "detection": DetectionPolicy().model_dump(mode="json"),
                     "metrics": {"ap50": 0.4, "ap50_95": 0.1, "precision": 0.5, "recall": 0.4, "f1": 0.44,
                                 "ci": {"ap50": [0.3, 0.5]}, "bootstrap_unit": "group"},
                     "dataset": {"name": "test_street", "fingerprint": "ef" * 32, "n_samples": 6}},
        parity_paths=[str(p) for p in labelled_paths[:3]], calibration_paths=[str(p) for p in labelled_paths[:3]],
        formats=("saved_model", "tflite", "tflite_int8", "onnx"), ood=ood, quant_rows=quant_rows,
        evaluated_on="test frames",
        int8_float_layers=("yolo_v8_head",),  # export.int8_float_layers (checked in the int8 file)
    )
    (run / "export_result.json").write_text(json.dumps({"rows": quant_rows.to_dict(orient="list"),
                                                        "warnings": result["warnings"]}))
    rows = [{"sample_id": p.name, "path": str(p), "label": 1, "label_name": "objects", "group": f"s{i}"}
            for i, p in enumerate(frames)]
    rows.append({"sample_id": empty.name, "path": str(empty), "label": 0, "label_name": "empty", "group": "s9"})
    _write_samples(run / "samples.csv", rows)
    write_video(root / "clip.mp4", [img for img, _ in scenes] * 2)
    corrupt = root / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not a PNG image" * 4)
    np.savez(root / "scenes.npz", **{f"image{i}": img for i, (img, _) in enumerate(scenes)},
             **{f"boxes{i}": b for i, (_, b) in enumerate(scenes)})
    return det_export_files(root)


def det_reference_frames(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Frames drawn like the demo's frames: 120x160 rectangle scenes, one in five empty (the
    reference's training frames, and new frames of the same kind for the OOD tests)."""
    return [scene(rng, 120, 160)[0] if i % 5 else np.clip(rng.normal(150, 20, (120, 160, 3)), 0, 255).astype(np.uint8)
            for i in range(n)]


def _det_reference(model: Any, rng: np.random.Generator) -> tuple[Any, Any]:
    """An OOD reference of 64 frames like the demo's frames (:func:`det_reference_frames`;
    sequences of two)."""
    from lepton_vision.data.preprocess import letterbox
    from lepton_vision.export.reference import fit_from_images
    from lepton_vision.kinds.detection.kind import feature_model

    frames = det_reference_frames(rng, 64)
    features = feature_model(model)
    ref, _, _ = fit_from_images(frames, [f"s{i // 2}" for i in range(64)], np.linspace(0.0, 0.5, 64),
                                prep_np=lambda im: letterbox(im, DET_INPUT_HW)[0].astype(np.float32),
                                features_np=lambda b: features(b, training=False), seed=0, score_name="image_score")
    return ref, features


def det_export_files(root: Path) -> dict[str, Any]:
    """The files of a :func:`make_det_export` folder, by role (``scenes``: the frames' pixels and boxes)."""
    with np.load(root / "scenes.npz") as z:
        n = len([k for k in z.files if k.startswith("image")])
        scenes = [(z[f"image{i}"], z[f"boxes{i}"]) for i in range(n)]
    return {"dir": root / "run" / "export", "frames": [root / "frames" / f"f{i}.png" for i in range(n)],
            "empty": root / "frames" / "empty.png", "video": root / "clip.mp4", "corrupt": root / "corrupt.png",
            "root": root, "scenes": scenes}


def _write_samples(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def bundle(export_dir: Path) -> dict[str, Any]:
    return json.loads((Path(export_dir) / "bundle.json").read_text())


# --------------------------------------------------------------------------------------------
# A running demo (browser and load tests)

OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
START_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DemoServer:
    """`python -m lepton_vision demo EXPORT --port N` in a subprocess, with its output collected."""

    def __init__(self, export_dir: Path, tmp: Path, *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, **OFFLINE_ENV, "GRADIO_TEMP_DIR": str(tmp / "gradio")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lepton_vision", "demo", str(export_dir), "--port", str(self.port), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp)
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()
        t0 = time.monotonic()
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() - t0 > START_TIMEOUT_S:
                self.stop()
                raise RuntimeError(f"the demo did not start within {START_TIMEOUT_S} s (exit {self.proc.returncode}):\n"
                            + "".join(self.lines[-40:]))
        self.start_s = time.monotonic() - t0

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if f"127.0.0.1:{self.port}" in line and "Running on" in line:
                self._ready.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

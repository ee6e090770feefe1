"""Detection report: plots and a self-contained report.html from a tiny fake run."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from lepton_vision.config.cards import DetectionPolicy
from lepton_vision.kinds.detection.metrics import score_detection_oof
from lepton_vision.kinds.detection.report import worst_images, write_detection_report
from lepton_vision.config.recipe import Threshold
from lepton_vision.runio import RunDir

CLASSES = ["person", "car"]
DET_COLS = ["sample_id", "fold", "class_id", "class_name", "score", "x1", "y1", "x2", "y2"]


def fake_run(root: Path, n: int = 12, empty_every: int | None = 4, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Images drawn with cv2 (filled rectangles = objects), their D1 rows and noisy detections."""
    rng = np.random.default_rng(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    samples, dets, images = [], [], []
    for i in range(n):
        sid = f"frame{i:02d}.png"
        img = np.full((48, 64, 3), 40, np.uint8)
        boxes, classes = [], []
        if empty_every is None or i % empty_every:
            for c in range(int(rng.integers(1, 3))):
                x, y = int(rng.integers(0, 40)), int(rng.integers(0, 28))
                box = [x, y, x + 20, y + 16]
                cv2.rectangle(img, (box[0], box[1]), (box[2] - 1, box[3] - 1), (200, 200, 60), -1)
                boxes.append([float(v) for v in box])
                classes.append(c % 2)
        cv2.imwrite(str(img_dir / sid), img)
        fold = (i // 4) % 2  # every fold gets empty frames
        scores = []
        for b, c in zip(boxes, classes):
            if rng.random() < 0.8:  # found, a little off
                s = float(rng.uniform(0.5, 1))
                j = rng.normal(0, 1.5, 4)
                dets.append({"sample_id": sid, "fold": fold, "class_id": c, "class_name": CLASSES[c], "score": s,
                             "x1": b[0] + j[0], "y1": b[1] + j[1], "x2": b[2] + j[2], "y2": b[3] + j[3]})
                scores.append(s)
        if rng.random() < 0.5:  # a false positive
            s = float(rng.uniform(0.05, 0.9))
            dets.append({"sample_id": sid, "fold": fold, "class_id": 1, "class_name": "car", "score": s,
                         "x1": 2.0, "y1": 30.0, "x2": 14.0, "y2": 44.0})
            scores.append(s)
        samples.append({"sample_id": sid, "path": str(img_dir / sid), "label": int(bool(boxes)),
                        "label_name": "objects" if boxes else "empty", "group": "", "width": 64, "height": 48,
                        "n_boxes": len(boxes), "boxes": json.dumps(boxes), "classes": json.dumps(classes),
                        "ignore": json.dumps([[50.0, 0.0, 64.0, 10.0]] if i == 1 else [])})
        images.append({"sample_id": sid, "path": str(img_dir / sid), "group": "", "fold": fold,
                       "label": int(bool(boxes)), "n_gt": len(boxes), "image_score": max(scores, default=0.0)})
    return pd.DataFrame(samples), pd.DataFrame(dets, columns=DET_COLS), pd.DataFrame(images)


def _report(tmp_path: Path, **kw) -> tuple[dict, str, RunDir]:
    samples, dets, images = fake_run(tmp_path / "data", **kw)
    metrics = score_detection_oof(samples, dets, images, CLASSES, DetectionPolicy(), Threshold(policy="max_f1"),
                                  n_bootstrap=50)
    run = RunDir(tmp_path / "run")
    histories = {k: pd.DataFrame({"epoch": [1, 2, 3], "loss": [3.0, 2.0, 1.5], "val_loss": [3.2, 2.4, 2.1],
                                  "box_loss": [1.0, 0.8, 0.6], "val_box_loss": [1.1, 0.9, 0.8], "lr": [1e-3] * 3})
                 for k in (0, 1)}
    info = {"title": "Tiny <detection> run", "recipe_name": "tiny", "versions": {"numpy": np.__version__},
            "data": {"n_samples": len(samples)}, "recipe_yaml": "seed: 0\n"}
    path = write_detection_report(run, metrics, samples, dets, images, CLASSES, histories, info)
    return metrics, path.read_text(encoding="utf-8"), run


def test_report_embeds_numbers_and_plots(tmp_path: Path) -> None:
    metrics, html, run = _report(tmp_path)
    assert run.report.is_file()
    assert f"{metrics['ap50']:.3f}" in html and f"{metrics['ap50_95']:.3f}" in html
    assert f"{metrics['image_level']['auc']:.3f}" in html
    assert "Tiny &lt;detection&gt; run" in html  # escaped
    for name in ("pr_curves", "image_roc", "score_hist", "examples", "training_curves"):
        png = run.plots_dir / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        # the very same bytes are embedded (self-contained report)
        assert base64.b64encode(png.read_bytes()).decode("ascii") in html, name
    assert html.count("data:image/png;base64,") == 5
    assert "src=\"http" not in html and "<link" not in html
    for c in CLASSES:
        assert c in html


def test_report_without_empty_frames_has_no_image_roc(tmp_path: Path) -> None:
    metrics, html, run = _report(tmp_path, empty_every=None)
    assert metrics["image_level"]["available"] is False
    assert not (run.plots_dir / "image_roc.png").exists()
    assert "every image has objects (no empty frames)" in html
    assert html.count("data:image/png;base64,") == 4


def test_report_survives_an_unreadable_image(tmp_path: Path) -> None:
    samples, dets, images = fake_run(tmp_path / "data")
    # frame01 always has objects; delete the worst image so it would be in the panel
    metrics = score_detection_oof(samples, dets, images, CLASSES, DetectionPolicy(), Threshold(policy="max_f1"), 0)
    victim = samples["path"].iloc[1]
    Path(victim).unlink()
    run = RunDir(tmp_path / "run")
    html = write_detection_report(run, metrics, samples, dets, images, CLASSES, {}, {}).read_text(encoding="utf-8")
    assert "frame01.png" in html and "unreadable" in html
    assert (run.plots_dir / "examples.png").is_file()


def test_worst_images_first() -> None:
    counts = pd.DataFrame({"sample_id": ["a", "b", "c"], "fold": [0, 0, 1], "threshold": [0.5] * 3,
                           "n_gt": [1, 2, 0], "tp": [1, 0, 0], "fp": [0, 1, 3], "fn": [0, 2, 0], "n_det": [1, 1, 3]})
    assert worst_images(counts, 2)["sample_id"].tolist() == ["b", "c"]


@pytest.mark.parametrize("channels", [1, 3])
def test_draw_boxes_colours(channels: int) -> None:
    from lepton_vision.kinds.detection.report import _display_rgb, draw_boxes

    raw = np.zeros((40, 80), np.uint8) if channels == 1 else np.zeros((40, 80, 3), np.uint8)
    out = draw_boxes(_display_rgb(raw), np.array([[10, 10, 30, 30]]), np.zeros((0, 4)),
                     np.array([[50, 5, 70, 35]]), np.array([0.9]), ["car"])
    assert out.shape == (160, 320, 3) and out.dtype == np.uint8
    assert tuple(out[40, 40]) == (0, 190, 0)  # GT edge, scaled x4
    assert tuple(out[100, 200]) == (220, 30, 30)  # detection's left edge

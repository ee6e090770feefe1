"""Grad-CAM: localisation on a task decided by a known region, map contract, panel, CLI."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from lepton_vision.errors import LeptonError

pytestmark = pytest.mark.tf

SIZE = 64
SQUARE = 8


def make_square_images(n: int, rng: np.random.Generator, pos_frac: float = 0.5):
    """Noisy images; positives hold a bright 8x8 square at a random place, every image a dimmer
    distractor ring elsewhere. Returns (x [n,64,64,1] float32, y [n], square top-left or None)."""
    x = np.empty((n, SIZE, SIZE, 1), np.float32)
    y = np.zeros(n, np.float32)
    boxes: list[tuple[int, int] | None] = []
    for i in range(n):
        img = np.clip(rng.normal(0.3, 0.06, (SIZE, SIZE)), 0, 1).astype(np.float32)
        positive = bool(rng.random() < pos_frac)
        sy, sx = (int(v) for v in rng.integers(2, SIZE - SQUARE - 2, 2))
        while True:
            cy, cx = (int(v) for v in rng.integers(10, SIZE - 10, 2))
            if abs(cy - (sy + 4)) > 12 or abs(cx - (sx + 4)) > 12:
                break
        cv2.circle(img, (cx, cy), 6, 0.6, 1)
        if positive:
            img[sy:sy + SQUARE, sx:sx + SQUARE] = 0.9
            y[i] = 1
        x[i, ..., 0] = img
        boxes.append((sy, sx) if positive else None)
    return x, y, boxes


@pytest.fixture(scope="module")
def small_cnn_32():
    from lepton_vision.backbones import build_classifier

    return build_classifier("small_cnn", (32, 32), 1, seed=0)


def test_gradcam_equals_cam_for_a_gap_dense_head():
    """With GAP -> Dense(sigmoid), Grad-CAM of the logit is the class activation map
    relu(sum_k w_k A_k) exactly (up to the per-image scale), so this pins the maths."""
    import keras

    from lepton_vision.backbones import build_classifier
    from lepton_vision.explain import gradcam

    rng = np.random.default_rng(0)
    x, y, _ = make_square_images(64, rng)
    model = build_classifier("small_cnn", (SIZE, SIZE), 1, dropout=0.0, width=0.5, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    xt, _, _ = make_square_images(6, rng, pos_frac=1.0)
    feats = np.asarray(keras.Model(model.inputs, model.get_layer("last_conv").output)(xt))
    w = np.asarray(model.get_layer("score").kernel).reshape(-1)
    heat = gradcam(model, xt)
    assert heat.shape == (6, SIZE, SIZE) and heat.dtype == np.float32
    for f, h in zip(feats, heat):
        cam = np.maximum(f @ w, 0)
        cam = cv2.resize(cam.astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(h, cam / cam.max(), atol=1e-4)
        assert h.min() >= 0.0 and h.max() == pytest.approx(1.0)


def test_zero_evidence_map_stays_zero(small_cnn_32):
    from lepton_vision.explain import gradcam

    head = small_cnn_32.get_layer("score")
    head.kernel.assign(np.zeros(head.kernel.shape, np.float32))
    x = np.random.default_rng(0).random((3, 32, 32, 1), dtype=np.float32)
    heat = gradcam(small_cnn_32, x)
    assert heat.shape == (3, 32, 32)
    assert np.all(np.isfinite(heat)) and not heat.any()


def test_unknown_layer_names_the_layers_and_suggests(small_cnn_32):
    from lepton_vision.explain import gradcam

    with pytest.raises(LeptonError) as e:
        gradcam(small_cnn_32, np.zeros((1, 32, 32, 1), np.float32), layer="last_cnv")
    msg = str(e.value)
    assert "last_cnv" in msg and "Did you mean 'last_conv'" in msg and "block1_conv" in msg


def test_overlay_shape_and_blend():
    from lepton_vision.explain import overlay

    gray = np.full((40, 50, 1), 100, np.uint8)
    out = overlay(gray, np.zeros((8, 8), np.float32))
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    hot = overlay(gray, np.ones((8, 8), np.float32))
    # jet(1.0) is dark red: red goes up, blue goes down against the grey.
    assert hot[..., 0].mean() > out[..., 0].mean() and hot[..., 2].mean() < out[..., 2].mean()


def _write_pngs(folder, x):
    paths = []
    for i, img in enumerate(x):
        p = folder / f"patient_0123456789_abcdefghij_{i:03d}.png"
        cv2.imwrite(str(p), np.round(img[..., 0] * 255).astype(np.uint8))
        paths.append(str(p))
    return paths


def test_gradcam_panel_counts_and_png(tmp_path):
    from lepton_vision.backbones import build_classifier
    from lepton_vision.explain import write_gradcam_panel

    x, _, _ = make_square_images(12, np.random.default_rng(1))
    x = np.stack([cv2.resize(im, (32, 32))[..., None] for im in x])
    paths = _write_pngs(tmp_path, x)
    # 5 TP, 2 FP, 0 FN at threshold 0.5; a TP whose file is gone is skipped, the next stands in.
    labels = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1]
    scores = [0.9, 0.8, 0.95, 0.7, 0.6, 0.55, 0.99, 0.1, 0.2, 0.3, 0.4, 0.97]
    oof = pd.DataFrame({"sample_id": [f"s{i}" for i in range(12)], "path": paths, "group": "",
                        "label": labels, "fold": 0, "score": scores})
    gone = tmp_path / "gone.png"
    oof.loc[11, "path"] = str(gone)
    model = build_classifier("small_cnn", (32, 32), 1, seed=0)
    out = tmp_path / "plots" / "gradcam.png"
    res = write_gradcam_panel(model, oof, 0.5, (32, 32), 1, None, out, per_group=4)
    assert (res["tp"], res["fp"], res["fn"]) == (4, 2, 0)
    assert res["path"] == str(out) and len(res["skipped"]) == 1 and "gone.png" in res["skipped"][0]
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 400
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from lepton_vision.backbones import build_classifier
    from lepton_vision.export import export_classifier

    model = build_classifier("small_cnn", (32, 32), 1, seed=0)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 48, 1), dtype=np.uint8) for _ in range(2)]
    d = tmp_path_factory.mktemp("exp") / "export"
    export_classifier(model, d, image_size_hw=(32, 32), channels=1, window=None, threshold=0.5,
                      bundle_info={"task": "t", "classes": ["neg", "pos"], "positive_class": "pos"},
                      parity_images=images, formats=("saved_model",))
    png = d.parent / "img.png"
    cv2.imwrite(str(png), images[0][..., 0])
    return {"dir": d, "png": png, "model": model}


def test_export_holds_the_keras_model(tiny_export):
    import json

    from lepton_vision.explain import load_explainer

    bundle = json.loads((tiny_export["dir"] / "bundle.json").read_text())
    assert bundle["files"]["keras_model"]["path"] == "model.keras"
    e = load_explainer(tiny_export["dir"])
    assert (e.size_hw, e.channels, e.window, e.threshold) == ((32, 32), 1, None, 0.5)
    score, heat, rgb = e.explain(tiny_export["png"])
    ref = float(np.asarray(tiny_export["model"](
        (cv2.resize(cv2.imread(str(tiny_export["png"]), 0).astype(np.float32), (32, 32))
         / 255.0)[None, ..., None], training=False)).reshape(-1)[0])
    assert score == pytest.approx(ref, abs=1e-5)
    assert heat.shape == (32, 32) and rgb.shape == (40, 48, 3)


def test_explain_cli(tiny_export, tmp_path, capsys):
    from lepton_vision.cli import main

    out = tmp_path / "heat.png"
    assert main(["explain", str(tiny_export["dir"]), str(tiny_export["png"]), "--out", str(out)]) == 0
    assert cv2.imread(str(out)).shape == (40, 48, 3)
    assert "score" in capsys.readouterr().out
    assert main(["explain", str(tiny_export["dir"]), str(tmp_path / "nope.png"), "--out", str(out)]) == 1
    assert "nope.png" in capsys.readouterr().err


def test_not_a_run_or_export(tmp_path):
    from lepton_vision.explain import load_explainer

    with pytest.raises(LeptonError, match="not a run directory"):
        load_explainer(tmp_path)

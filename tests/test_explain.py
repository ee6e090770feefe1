"""Grad-CAM: localisation on a task decided by a known region, map contract, panel, CLI."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from lepton_vision.config.errors import LeptonError

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
    from lepton_vision.models.backbones import build_classifier

    return build_classifier("small_cnn", (32, 32), 1, seed=0)


def test_gradcam_equals_cam_for_a_gap_dense_head():
    """With GAP -> Dense(sigmoid), Grad-CAM of the logit is the class activation map
    relu(sum_k w_k A_k) exactly (up to the per-image scale), so this pins the maths."""
    import keras

    from lepton_vision.models.backbones import build_classifier
    from lepton_vision.kinds.classification.explain import gradcam

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
    from lepton_vision.kinds.classification.explain import gradcam

    head = small_cnn_32.get_layer("score")
    head.kernel.assign(np.zeros(head.kernel.shape, np.float32))
    x = np.random.default_rng(0).random((3, 32, 32, 1), dtype=np.float32)
    heat = gradcam(small_cnn_32, x)
    assert heat.shape == (3, 32, 32)
    assert np.all(np.isfinite(heat)) and not heat.any()


def test_unknown_layer_names_the_layers_and_suggests(small_cnn_32):
    from lepton_vision.kinds.classification.explain import gradcam

    with pytest.raises(LeptonError) as e:
        gradcam(small_cnn_32, np.zeros((1, 32, 32, 1), np.float32), layer="last_cnv")
    msg = str(e.value)
    assert "last_cnv" in msg and "Did you mean 'last_conv'" in msg and "block1_conv" in msg


def test_overlay_shape_and_blend():
    from lepton_vision.kinds.classification.explain import overlay

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
    from lepton_vision.models.backbones import build_classifier
    from lepton_vision.kinds.classification.explain import write_gradcam_panel

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
    from lepton_vision.models.backbones import build_classifier
    from lepton_vision.kinds.classification.export import export_classifier

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

    from lepton_vision.kinds.classification.explain import load_explainer

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
    from lepton_vision.kinds.classification.explain import load_explainer

    with pytest.raises(LeptonError, match="not a run directory"):
        load_explainer(tmp_path)


# Localisation. small_cnn's last_conv is 8x8 at 64 px (stride 8) and each of its cells sees a
# 38 px window of the input. Every cell whose window holds the whole object responds about
# equally, so the class activation map has a flat top about 38 - OBJECT + 1 px wide around the
# object; its argmax can only be trusted to fall inside the object's box (+- 2 px) when that top
# fits in the box: 39 - OBJECT <= OBJECT + 4, i.e. OBJECT >= 18 px. Measured (3-6 training seeds,
# 80 held-out positives each, accuracy 1.0 throughout): 8 px squares 29-68 % of peaks inside,
# 16 px 49-100 %, 20 px 95-100 %. So the object is 20 px: Grad-CAM cannot resolve finer than
# the layer it explains, and the test asks exactly what this layer can tell.
OBJECT = 20
MARGIN = 2


def make_deciding_region_images(
    n: int, rng: np.random.Generator, pos_frac: float = 0.5, decoy: bool = False
):
    """Images whose class is decided by one known region and by nothing else.

    Every image is the same kind of noisy background with two distractors (thin rings or bars,
    as bright as 0.5-0.7), so structure as such says nothing about the class; positives add a
    bright OBJECT x OBJECT square at a random place, away from the distractors.

    With ``decoy=True`` the square is in every image and says nothing; the class is decided by
    a bright disc elsewhere instead (a model whose evidence is not the square's box).

    Returns:
        (x [n,64,64,1] float32, y [n], boxes: square top-left (row, col) or None).
    """
    x = np.empty((n, SIZE, SIZE, 1), np.float32)
    y = np.zeros(n, np.float32)
    boxes: list[tuple[int, int] | None] = []
    half = OBJECT / 2
    for i in range(n):
        img = np.clip(rng.normal(0.3, 0.06, (SIZE, SIZE)), 0, 1).astype(np.float32)
        positive = bool(rng.random() < pos_frac)
        sy, sx = (int(v) for v in rng.integers(2, SIZE - OBJECT - 2, 2))
        for _ in range(2):
            while True:
                cy, cx = (int(v) for v in rng.integers(8, SIZE - 8, 2))
                far = abs(cy - (sy + half)) > half + 8 or abs(cx - (sx + half)) > half + 8
                if not positive or far:
                    break
            shade = float(rng.uniform(0.5, 0.7))
            if rng.random() < 0.5:
                cv2.circle(img, (cx, cy), int(rng.integers(4, 7)), shade, 1)
            else:
                cv2.line(img, (cx - 6, cy), (cx + 6, cy), shade, 1)
        if decoy and positive:
            while True:  # the deciding disc, clear of the square's box
                cy, cx = (int(v) for v in rng.integers(8, SIZE - 8, 2))
                if abs(cy - (sy + half)) > half + 8 or abs(cx - (sx + half)) > half + 8:
                    break
            cv2.circle(img, (cx, cy), 7, 0.9, -1)
        if positive or decoy:
            img[sy:sy + OBJECT, sx:sx + OBJECT] = 0.9
        y[i] = float(positive)
        x[i, ..., 0] = img
        boxes.append((sy, sx) if positive or decoy else None)
    return x, y, boxes


def peak_in_box_rate(heat: np.ndarray, boxes, shift: int = 0) -> float:
    """Fraction of maps whose argmax lies in the object's box grown by MARGIN px; ``shift``
    rolls each map by that many pixels down and right first (a deliberately wrong map)."""
    hits = 0
    for h, (sy, sx) in zip(heat, boxes):
        r, c = np.unravel_index(np.argmax(np.roll(h, shift, axis=(0, 1))), h.shape)
        hits += (sy - MARGIN <= r < sy + OBJECT + MARGIN) and (sx - MARGIN <= c < sx + OBJECT + MARGIN)
    return hits / len(boxes)


@pytest.fixture(scope="module")
def localisation_case():
    """small_cnn trained on the deciding-region task, plus held-out images it never saw."""
    import keras

    from lepton_vision.models.backbones import build_classifier

    def trained(decoy: bool) -> dict:
        rng = np.random.default_rng(0)
        x, y, _ = make_deciding_region_images(512, rng, decoy=decoy)
        model = build_classifier("small_cnn", (SIZE, SIZE), 1, dropout=0.0, width=0.5, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
        model.fit(x, y, epochs=6, batch_size=32, verbose=0)
        xv, yv, _ = make_deciding_region_images(200, rng, decoy=decoy)
        xp, _, boxes = make_deciding_region_images(80, rng, pos_frac=1.0, decoy=decoy)
        return {"model": model, "xv": xv, "yv": yv, "xp": xp, "boxes": boxes}

    return {"square": trained(decoy=False), "decoy": trained(decoy=True)}


def _held_out_accuracy(case: dict) -> float:
    scores = np.asarray(case["model"].predict(case["xv"], verbose=0)).reshape(-1)
    return float(((scores >= 0.5) == (case["yv"] == 1)).mean())


def test_gradcam_peak_localises_the_deciding_region(localisation_case):
    from lepton_vision.kinds.classification.explain import gradcam

    case = localisation_case["square"]
    # The model must have learnt the task, or a good map would prove nothing about Grad-CAM.
    assert _held_out_accuracy(case) >= 0.95
    heat = gradcam(case["model"], case["xp"])
    assert len(case["boxes"]) >= 60
    assert peak_in_box_rate(heat, case["boxes"]) >= 0.90
    # The criterion can fail: the same maps shifted by 16 px (two CAM cells) miss the box.
    assert peak_in_box_rate(heat, case["boxes"], shift=16) <= 0.30


def test_gradcam_localisation_fails_for_a_model_that_ignores_the_region(localisation_case):
    """Negative control: same architecture and training, same square in every image, but the
    class is decided by a disc elsewhere. Its maps must not point at the square."""
    from lepton_vision.kinds.classification.explain import gradcam

    case = localisation_case["decoy"]
    assert _held_out_accuracy(case) >= 0.95
    heat = gradcam(case["model"], case["xp"])
    assert peak_in_box_rate(heat, case["boxes"]) <= 0.30

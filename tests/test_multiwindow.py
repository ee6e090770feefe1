"""Multi-window CT input: three HU windows as three channels, in the recipe, preprocessing,
the exported graph (serve_hu) and the Predictor."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lepton_vision.config.errors import RecipeError
from lepton_vision.data.preprocess import to_uint8, window_hu
from lepton_vision.config.recipe import recipe_from_text

BASE = "schema_version: 1\nname: t\ntask: ct_screening\ndataset: synthetic_ct\n"
THREE = "[{preset: lung}, {preset: mediastinum}, {preset: bone}]"


def test_recipe_accepts_three_windows_with_three_channels():
    r = recipe_from_text(BASE + f"input: {{channels: 3, window: {THREE}}}\n")
    assert r.input.window_spec() == ((-600.0, 1500.0), (40.0, 400.0), (400.0, 1800.0))
    assert recipe_from_text(BASE).input.window_spec() == (-600.0, 1500.0)


@pytest.mark.parametrize("text, expect", [
    (f"input: {{channels: 1, window: {THREE}}}\n", "set channels: 3"),
    ("input: {channels: 3, window: [{preset: lung}, {preset: bone}]}\n", "exactly 3 windows"),
])
def test_recipe_rejects_bad_window_lists(text, expect):
    with pytest.raises(RecipeError, match=expect):
        recipe_from_text(BASE + text)


def test_to_uint8_stacks_one_window_per_channel():
    hu = np.array([[-1000.0, -600.0], [40.0, 700.0]], np.float32)
    wins = ((-600.0, 1500.0), (40.0, 400.0), (400.0, 1800.0))
    out = to_uint8(hu, 3, wins)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    for c, (lv, wd) in enumerate(wins):
        np.testing.assert_array_equal(out[..., c], window_hu(hu, lv, wd))
    with pytest.raises(ValueError):
        to_uint8(hu, 1, wins)


@pytest.mark.tf
def test_serve_hu_and_predictor_apply_the_three_windows(tmp_path, tiny_model_factory):
    import tensorflow as tf

    from lepton_vision.kinds.classification.export import export_classifier
    from lepton_vision.kinds.classification.predictor import ClassificationPredictor

    size = (32, 32)
    wins = ((-600.0, 1500.0), (40.0, 400.0), (400.0, 1800.0))
    model = tiny_model_factory(size, 3, seed=3)
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 1500, (40, 36)).astype(np.float32)
    display = to_uint8(hu, 3, wins)
    export_classifier(model, tmp_path / "e", image_size_hw=size, channels=3, window=wins, threshold=0.5,
                      bundle_info={"task": "t", "classes": ["normal", "abnormal"], "positive_class": "abnormal"},
                      parity_images=[display])
    bundle = json.loads((tmp_path / "e/bundle.json").read_text())
    assert [w["level"] for w in bundle["input"]["window"]["windows"]] == [-600.0, 40.0, 400.0]
    sigs = tf.saved_model.load(str(tmp_path / "e/saved_model")).signatures
    via_hu = float(sigs["serve_hu"](hu=tf.constant(hu))["score"][0])
    via_u8 = float(sigs["serve_uint8"](image=tf.constant(display))["score"][0])
    assert via_hu == pytest.approx(via_u8, abs=1e-5)
    p = ClassificationPredictor.from_bundle(tmp_path / "e", backend="saved_model")
    assert p.predict(hu).score == pytest.approx(via_u8, abs=1e-5)

"""Backbones: every name builds flat at 32 px, Grad-CAM's layer is reachable, weights files load."""

from __future__ import annotations

import numpy as np
import pytest

from lepton_vision.models.backbones import BACKBONE_NAMES, BACKBONES, build_classifier, load_weights_file
from lepton_vision.config.errors import RecipeError

pytestmark = pytest.mark.tf


def _keras():
    from lepton_vision.backend import import_keras

    return import_keras()[1]


def _images(n: int, channels: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, size, size, channels)).astype(np.float32)


def test_table_matches_names():
    assert tuple(BACKBONES) == BACKBONE_NAMES


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_builds_flat_with_gradcam_layer(name, channels):
    keras = _keras()
    model = build_classifier(name, (32, 32), channels, seed=0)
    assert model.input_shape == (None, 32, 32, channels)
    assert model.inputs[0].name.startswith("image")
    out = np.asarray(model(_images(3, channels), training=False))
    assert out.shape == (3, 1)
    assert np.all((out > 0) & (out < 1))
    assert model.get_layer("score").dtype_policy.compute_dtype == "float32"
    # Flat graph: the feature map and the score come from the same inputs (stack.md section 7).
    grad_model = keras.Model(model.inputs, [model.get_layer("last_conv").output, model.output])
    feats, score = grad_model([_images(2, channels)])
    assert feats.shape[0] == 2 and len(feats.shape) == 4
    np.testing.assert_allclose(np.asarray(score), np.asarray(model(_images(2, channels))), atol=1e-6)
    # No nested Model layer: keras.applications was built on our input tensor.
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)


def test_input_mapping_per_backbone():
    scale = {
        "mobilenet_v3_small": (2.0, -1.0),
        "mobilenet_v2": (2.0, -1.0),
        "efficientnet_b0": (255.0, 0.0),
    }
    for name, (s, o) in scale.items():
        layer = build_classifier(name, (32, 32), 3).get_layer("to_backbone_range")
        assert (float(layer.scale), float(layer.offset)) == (s, o)
    small = build_classifier("small_cnn", (32, 32), 1)
    assert "to_backbone_range" not in [la.name for la in small.layers]


def test_same_seed_same_weights_and_width():
    a = build_classifier("small_cnn", (32, 32), 1, seed=3)
    b = build_classifier("small_cnn", (32, 32), 1, seed=3)
    c = build_classifier("small_cnn", (32, 32), 1, seed=4)
    x = _images(4, 1)
    np.testing.assert_array_equal(np.asarray(a(x)), np.asarray(b(x)))
    assert not np.allclose(np.asarray(a(x)), np.asarray(c(x)))
    half = build_classifier("small_cnn", (32, 32), 1, width=0.5)
    assert half.get_layer("block4_conv").filters == 64
    assert half.count_params() < a.count_params()


def test_cnn6_sees_the_whole_slice_where_small_cnn_sees_a_patch():
    """cnn6 pools five times: at 128 px its last map is 4x4 and each unit sees 158 px, so changing
    a corner of the slice changes the centre unit; small_cnn's centre unit (16x16 map, 38 px)
    does not see the corner at all."""
    x = _images(1, 1, size=128, seed=5)
    changed = x.copy()
    changed[:, :16, :16] = 1.0 - changed[:, :16, :16]

    def centre_change(name):
        model = build_classifier(name, (128, 128), 1, seed=0)
        sub = _keras().Model(model.inputs, model.get_layer("last_conv").output)
        a, b = np.asarray(sub(x, training=False)), np.asarray(sub(changed, training=False))
        c = a.shape[1] // 2
        return a.shape[1:3], float(np.abs(a[0, c, c] - b[0, c, c]).max())

    shape6, change6 = centre_change("cnn6")
    shape4, change4 = centre_change("small_cnn")
    assert tuple(shape6) == (4, 4) and tuple(shape4) == (16, 16)
    assert change6 > 1e-4
    assert change4 == 0.0
    a = build_classifier("cnn6", (128, 128), 1, seed=0)
    b = build_classifier("small_cnn", (128, 128), 1, seed=0)
    assert a.count_params() > b.count_params()
    assert build_classifier("cnn6", (128, 128), 1, width=0.5).get_layer("block6_conv").filters == 96


def test_whole_model_weights_round_trip(tmp_path):
    src = build_classifier("small_cnn", (32, 32), 1, seed=1)
    path = tmp_path / "m.weights.h5"
    src.save_weights(str(path))
    loaded = build_classifier("small_cnn", (32, 32), 1, weights=str(path), seed=2)
    x = _images(5, 1)
    np.testing.assert_array_equal(np.asarray(src(x)), np.asarray(loaded(x)))


def test_partial_load_other_channel_count(tmp_path):
    src = build_classifier("small_cnn", (32, 32), 1, seed=1)
    path = tmp_path / "gray.weights.h5"
    src.save_weights(str(path))
    rgb = build_classifier("small_cnn", (32, 32), 3, seed=2)
    assert load_weights_file(rgb, path).startswith("backbone")
    # Everything after the first convolution fits and is loaded; the first conv cannot be.
    for name in ("block2_conv", "block4_bn", "score"):
        for a, b in zip(src.get_layer(name).get_weights(), rgb.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert rgb.get_layer("block1_conv").get_weights()[0].shape[2] == 3


def test_bare_keras_applications_backbone_file(tmp_path):
    keras = _keras()
    keras.utils.set_random_seed(7)
    bare = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(32, 32, 3), include_preprocessing=False
    )
    path = tmp_path / "bare.weights.h5"
    bare.save_weights(str(path))
    model = build_classifier("mobilenet_v3_small", (32, 32), 3, weights=str(path), seed=0)
    with_weights = [la for la in bare.layers if la.weights]
    assert len(with_weights) > 30
    for layer in with_weights:
        for a, b in zip(layer.get_weights(), model.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_weights_that_fit_nothing(tmp_path):
    keras = _keras()
    other = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5), keras.layers.Dense(9)])
    path = tmp_path / "other.weights.h5"
    other.save_weights(str(path))
    with pytest.raises(RecipeError, match="no layer .*other.weights.h5"):
        build_classifier("small_cnn", (32, 32), 1, weights=str(path))


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(RecipeError, match="model.weights: weights file not found.*nope.weights.h5"):
        build_classifier("small_cnn", (32, 32), 1, weights=str(missing))


def test_bad_settings_are_recipe_errors():
    with pytest.raises(RecipeError, match="Did you mean 'mobilenet_v2'"):
        build_classifier("mobilenet_v22", (32, 32), 3)
    with pytest.raises(RecipeError, match="model.width"):
        build_classifier("efficientnet_b0", (32, 32), 3, width=0.5)
    for plain in ("small_cnn", "cnn6"):
        with pytest.raises(RecipeError, match=f"{plain} has no ImageNet weights"):
            build_classifier(plain, (32, 32), 3, weights="imagenet")
    with pytest.raises(RecipeError, match=r"input.image_size: cnn6 pools 5 times and needs at least 32 px.*Got 24x64"):
        build_classifier("cnn6", (24, 64), 1)
    assert build_classifier("small_cnn", (24, 24), 1).output_shape == (None, 1)
    with pytest.raises(RecipeError, match="input.channels"):
        build_classifier("small_cnn", (32, 32), 2)


def _legacy_no_top_file(tmp_path, keras, builder, name: str, **kwargs):
    """A keras.applications backbone written in the legacy HDF5 layout of the ImageNet
    ``*_no_top.h5`` downloads (root attribute layer_names, one group per layer with weight_names)."""
    import h5py

    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(11)
    bare = builder(include_top=False, weights=None, input_shape=(32, 32, 3), **kwargs)
    path = tmp_path / name
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, bare)
    return bare, path


@pytest.mark.parametrize("channels", [3, 1])
def test_legacy_keras_applications_no_top_h5_loads_by_layer_name(tmp_path, channels):
    from lepton_vision.models.backbones import is_legacy_h5
    from lepton_vision.models.finetune import load_start_weights, resolve_weights_source

    keras = _keras()
    bare, path = _legacy_no_top_file(tmp_path, keras, keras.applications.MobileNetV2,
                                     "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5", alpha=0.35)
    assert is_legacy_h5(path) and not is_legacy_h5(tmp_path / "missing.h5")
    assert resolve_weights_source(str(path), tmp_path) == path  # accepted as a start point
    model = build_classifier("mobilenet_v2", (32, 32), channels, weights="none", width=0.35, seed=0)
    loaded = load_start_weights(model, path)  # what lepton-vision train does with model.weights
    assert loaded.startswith("backbone (") and "legacy .h5" in loaded
    with_weights = [la for la in bare.layers if la.weights]
    first_conv = with_weights[0]
    assert len(with_weights) > 40
    for layer in with_weights:
        for a, b in zip(layer.get_weights(), model.get_layer(layer.name).get_weights()):
            if channels == 1 and layer is first_conv and a.ndim == 4:
                a = a.sum(axis=2, keepdims=True)  # grey input: RGB filters summed (= grey tiled to RGB)
            np.testing.assert_array_equal(a, b)
    # the grey model on a grey image computes what the RGB backbone computes on it tiled to RGB
    if channels == 1:
        x = _images(2, 1)
        grey = keras.Model(model.input, model.get_layer("last_conv").output).predict(x, verbose=0)
        rgb = bare.predict(np.repeat(x, 3, axis=-1), verbose=0)
        np.testing.assert_allclose(grey, rgb, atol=1e-4)


def test_legacy_h5_of_another_backbone_is_refused(tmp_path):
    keras = _keras()
    _, path = _legacy_no_top_file(tmp_path, keras, keras.applications.MobileNetV2, "mnv2_no_top.h5", alpha=0.35)
    with pytest.raises(RecipeError, match="no layer of .*mnv2_no_top.h5.* by name"):
        build_classifier("efficientnet_b0", (32, 32), 3, weights=str(path))

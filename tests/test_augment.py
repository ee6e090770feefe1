"""augment: recipe checks with did-you-mean, seeded pipelines on float32 1- and 3-channel images."""

from __future__ import annotations

import numpy as np
import pytest

from lepton_vision.data.augment import apply_augment, augment_problems, build_augment, transform_names
from lepton_vision.config.errors import RecipeError
from lepton_vision.config.recipe import recipe_from_text

COMMON = [
    {"name": "HorizontalFlip", "p": 0.5, "params": {}},
    {"name": "VerticalFlip", "p": 0.5, "params": {}},
    {"name": "Affine", "p": 0.7, "params": {"rotate": [-10, 10], "scale": [0.9, 1.1]}},
    {"name": "RandomBrightnessContrast", "p": 0.5, "params": {}},
    {"name": "GaussNoise", "p": 0.5, "params": {"std_range": [0.01, 0.05]}},
    {"name": "RandomResizedCrop", "p": 0.5, "params": {"size": [32, 32], "scale": [0.7, 1.0]}},
    {"name": "CoarseDropout", "p": 0.5, "params": {}},
]


def op(name, p=0.5, **params):
    return {"name": name, "p": p, "params": params}


def test_transform_names_are_real_image_transforms():
    names = transform_names()
    assert {"HorizontalFlip", "Affine", "CoarseDropout"} <= set(names)
    assert not {"Compose", "OneOf", "BasicTransform", "DualTransform", "Lambda", "RandomCrop3D"} & set(names)


def test_unknown_name_suggests():
    ((loc, msg),) = augment_problems([op("HorizontalFlp")])
    assert loc == ("augment", 0, "name")
    assert "'HorizontalFlp'" in msg and "Did you mean 'HorizontalFlip'?" in msg


def test_bad_params_are_mapped_to_the_parameter():
    probs = dict(
        augment_problems(
            [
                op("HorizontalFlip"),
                op("Affine", scale=[1, 2, 3], scael=1.2),
                op("RandomResizedCrop"),
                op("GaussNoise", std_range=[0.5, 0.1]),
                op("RandomResizedCrop", size=[32, 32], scale=[0.5, "x"]),
                {"name": "HorizontalFlip", "p": 0.5, "params": {"p": 0.3}},
            ]
        )
    )
    assert "Tuple should have at most 2 items" in probs[("augment", 1, "params", "scale")]
    assert "Got [1, 2, 3]" in probs[("augment", 1, "params", "scale")]
    assert "Did you mean 'scale'?" in probs[("augment", 1, "params", "scael")]
    assert "required parameter 'size' is missing" in probs[("augment", 2, "params")]
    assert "less than the second" in probs[("augment", 3, "params", "std_range")]
    assert "scale[1]" in probs[("augment", 4, "params", "scale")]
    assert "p is set next to name" in probs[("augment", 5, "params", "p")]
    assert len(probs) == 6


def test_trial_on_recipe_channels_and_size():
    assert augment_problems(COMMON, channels=1, image_size=(32, 32)) == []
    assert augment_problems(COMMON, channels=3, image_size=(32, 32)) == []
    probs = dict(augment_problems([op("HueSaturationValue"), op("RandomResizedCrop", size=[16, 16])], 1, (32, 32)))
    assert "fails on a float32 32x32x1 image" in probs[("augment", 0)]
    assert "changes the image shape from 32x32x1 to 16x16x1" in probs[("augment", 1)]
    assert augment_problems([op("HueSaturationValue")], channels=3) == []
    # without image_size the size is not judged (the dummy image is 64x64)
    assert augment_problems([op("RandomResizedCrop", size=[128, 128])], channels=3) == []


@pytest.mark.parametrize("channels", [1, 3])
def test_build_and_apply_is_seeded_and_keeps_shape(channels):
    assert build_augment([], seed=0) is None
    img = np.random.default_rng(0).random((32, 32, channels), dtype=np.float32)
    assert apply_augment(None, img) is img
    outs = []
    for _ in range(2):
        compose = build_augment(COMMON, seed=7)
        outs.append([apply_augment(compose, img) for _ in range(5)])
    for a, b in zip(*outs):
        assert a.dtype == np.float32 and a.shape == img.shape
        assert 0.0 <= a.min() and a.max() <= 1.0
        np.testing.assert_array_equal(a, b)
    other = [apply_augment(build_augment(COMMON, seed=8), img) for _ in range(5)]
    assert any(not np.array_equal(a, b) for a, b in zip(outs[0], other))


def test_apply_clips_to_unit_range():
    compose = build_augment([op("RandomBrightnessContrast", p=1.0, brightness_limit=[0.9, 0.9], contrast_limit=0)], 0)
    out = apply_augment(compose, np.full((8, 8, 1), 0.5, np.float32))
    assert out.max() == 1.0 and out.dtype == np.float32


def test_build_refuses_bad_list():
    with pytest.raises(RecipeError, match=r"augment\[0\].name"):
        build_augment([op("Flipp")], seed=0)


def test_recipe_reports_augment_problems_with_lines():
    text = """schema_version: 1
name: x
task: t
dataset: d
augment:
  - name: HorizontalFlp
  - name: Affine
    p: 0.3
    params:
      scale: [1, 2, 3]
      rotat: 5
"""
    with pytest.raises(RecipeError) as err:
        recipe_from_text(text, file="r.yaml")
    msg = str(err.value)
    assert "r.yaml: 3 problems in augment" in msg
    assert "line 6    augment[0].name: unknown albumentations transform 'HorizontalFlp'. Did you mean 'HorizontalFlip'?" in msg
    assert "line 10   augment[1].params.scale:" in msg
    assert "line 11   augment[1].params.rotat: Affine has no parameter 'rotat'. Did you mean 'rotate'?" in msg


def _tiles(n=6, h=64, w=128):
    """n images, each with one box filled with its own grey level (class i -> (i + 1) / 10)."""
    imgs = np.zeros((n, h, w, 3), np.float32)
    boxes, classes = [], []
    for i in range(n):
        x1, y1 = 8 + 12 * i, 8 + 4 * i
        imgs[i, y1 : y1 + 30, x1 : x1 + 40] = (i + 1) / 10
        boxes.append(np.array([[x1, y1, x1 + 40, y1 + 30]], np.float32))
        classes.append(np.array([i]))
    return imgs, boxes, classes


# No sizes: Mosaic assembles frames of the network input size it is built for.
MOSAIC = [op("Mosaic", p=1.0), op("HorizontalFlip", p=0.5)]


def _mosaic_batches(seed):
    from lepton_vision.data.augment import build_box_augment
    from lepton_vision.data.pipeline import make_detection_dataset

    imgs, boxes, classes = _tiles()
    ds = make_detection_dataset(imgs, boxes, classes, 3, training=True, augment=build_box_augment(MOSAIC, 1, image_size=(64, 128)),
                                seed=seed, max_boxes=8)
    return [(x.numpy(), y["boxes"].numpy(), y["classes"].numpy()) for _ in range(3) for x, y in ds]


def test_mosaic_tiles_other_training_images_and_their_boxes_move_with_them():
    from lepton_vision.data.augment import build_box_augment, partners_needed

    assert partners_needed(build_box_augment(MOSAIC, 1, image_size=(64, 128))) == 3
    assert partners_needed(build_box_augment([op("HorizontalFlip")], 1)) == 0
    batches = _mosaic_batches(seed=5)
    n_boxes, mixed = 0, 0
    for x, b, c in batches:
        for img, bb, cc in zip(x, b, c):
            keep = cc >= 0
            mixed += len(set(cc[keep].astype(int))) > 1
            for (x1, y1, x2, y2), k in zip(bb[keep], cc[keep].astype(int)):
                # Each box still frames its own image's grey patch (at the same scale: cell = input).
                patch = img[int(np.ceil(y1)) : int(y2), int(np.ceil(x1)) : int(x2)]
                assert patch.size and np.allclose(patch, 255 * (k + 1) / 10, atol=1.0), (k, (x1, y1, x2, y2))
                n_boxes += 1
    assert n_boxes > 20 and mixed > 5  # frames combine boxes of several training images
    # Seeded: the same seed gives the same mosaics, another seed others.
    again, other = _mosaic_batches(seed=5), _mosaic_batches(seed=6)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(batches, again))
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(batches, other))


def test_mosaic_is_checked_against_the_input_size_and_refused_outside_detection():
    probs = dict(augment_problems([op("Mosaic", p=1.0, target_size=[32, 32], cell_shape=[32, 32])], 3, (64, 128)))
    assert "set target_size: [64, 128]" in probs[("augment", 0)]
    assert augment_problems(MOSAIC, channels=3, image_size=(64, 128)) == []
    assert augment_problems(MOSAIC, channels=3, image_size=(32, 96)) == []
    text = """schema_version: 1
name: x
task: t
dataset: d
input: {image_size: [64, 128]}
augment:
  - {name: Mosaic, p: 0.5}
"""
    with pytest.raises(RecipeError, match=r"augment\[0\].name: Mosaic combines several training images and their "
                                          r"boxes: only detection recipes \(model.detector\) can use it"):
        recipe_from_text(text, file="r.yaml")
    recipe_from_text(text + "model:\n  detector: {architecture: yolov8, size: tiny}\n", file="r.yaml")

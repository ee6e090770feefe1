"""Domain randomisation of the synthetic generators and their streaming API."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from lepton_vision.data.synthetic import ct as synthetic
from lepton_vision.data.synthetic import scenes as ss
from lepton_vision.config.cards import SyntheticSpec

STREET = {"generator": "street_scenes", "n_images": 8, "frame_size": (96, 64), "sequence_length": 3,
          "empty_fraction": 0.25, "seed": 3}
ROAD = {"generator": "road_scenes", "n_images": 8, "frame_size": (192, 64), "sequence_length": 3,
        "empty_fraction": 0.25, "seed": 5}
CT = {"generator": "ct_phantom", "n_patients": 2, "slices_per_patient": 2, "image_size": 64, "seed": 4}


def _frames(spec: SyntheticSpec, start: int = 0, stop: int | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return list(ss.iter_scene_frames(spec, start, spec.n_images if stop is None else stop))


def test_randomization_field_defaults_to_zero_and_is_bounded() -> None:
    assert SyntheticSpec(generator="road_scenes").randomization == 0.0
    with pytest.raises(ValueError):
        SyntheticSpec(generator="road_scenes", randomization=1.5)
    with pytest.raises(ValueError):
        SyntheticSpec(generator="road_scenes", randomization=-0.1)


@pytest.mark.parametrize("kw", [STREET, ROAD], ids=["street", "road"])
def test_stream_at_zero_is_the_written_dataset(kw: dict, tmp_path: Path) -> None:
    spec = SyntheticSpec(**kw)
    ss.generate_scene_dataset(tmp_path, spec, progress=False)
    coco = json.loads((tmp_path / "annotations.json").read_text())
    assert "randomization" not in coco["info"]["settings"]  # default data files unchanged
    names = ss.CLASSES[spec.generator]
    stream = _frames(spec)
    assert len(stream) == spec.n_images
    for im, (rgb, boxes, classes) in zip(coco["images"], stream, strict=True):
        disk = cv2.cvtColor(cv2.imread(str(tmp_path / "images" / im["file_name"])), cv2.COLOR_BGR2RGB)
        assert np.array_equal(disk, rgb)
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        want = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=np.float32).reshape(-1, 4)
        assert boxes.dtype == np.float32 and boxes.shape == (len(anns), 4)
        assert classes.dtype == np.int64 and classes.tolist() == [a["category_id"] - 1 for a in anns]
        assert np.array_equal(boxes, want)
        assert all(0 <= c < len(names) for c in classes)
    # a window in the middle of a sequence is the same frames
    for k, (rgb, boxes, _) in enumerate(_frames(spec, 4, 7), start=4):
        assert np.array_equal(rgb, stream[k][0]) and np.array_equal(boxes, stream[k][1])
        assert np.array_equal(rgb, ss.render_scene_frame(spec, k)[0])


@pytest.mark.parametrize("kw", [STREET, ROAD], ids=["street", "road"])
def test_full_randomization_differs_and_is_deterministic(kw: dict) -> None:
    plain = _frames(SyntheticSpec(**kw))
    spec = SyntheticSpec(**kw, randomization=1.0)
    a, b = _frames(spec), _frames(spec)
    for (ra, ba, ca), (rb, bb, cb) in zip(a, b, strict=True):
        assert np.array_equal(ra, rb) and np.array_equal(ba, bb) and np.array_equal(ca, cb)
    assert sum(not np.array_equal(x[0], y[0]) for x, y in zip(a, plain, strict=True)) == len(a)
    assert ss.settings_dump(spec)["randomization"] == 1.0


@pytest.mark.parametrize("kw", [STREET, ROAD], ids=["street", "road"])
@pytest.mark.parametrize("r", [0.5, 1.0])
def test_randomized_boxes_are_the_owner_map_extent(kw: dict, r: float) -> None:
    spec = SyntheticSpec(**{**kw, "n_images": 12}, randomization=r)
    W, H = spec.frame_size
    stream = _frames(spec)
    empties = ss.empty_frames(spec)
    n_boxes = 0
    for i, (rgb, boxes, classes) in enumerate(stream):
        assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
        _, owner, objs = ss.render_scene_frame(spec, i)
        assert len(objs) == len(boxes) == len(classes)
        assert (len(boxes) == 0) == (i in empties)
        for o, box in zip(objs, boxes, strict=True):
            ys, xs = np.nonzero(owner == o.owner_id)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert 0 <= box[0] < box[2] <= W and 0 <= box[1] < box[3] <= H
            assert o.area >= ss.MIN_VISIBLE_FRACTION * o.full_area
            n_boxes += 1
    assert n_boxes > 0


def test_road_classes_are_closer_to_balanced_with_randomization() -> None:
    def shares(r: float) -> np.ndarray:
        spec = SyntheticSpec(generator="road_scenes", n_images=60, frame_size=(192, 64), sequence_length=3,
                             empty_fraction=0.1, seed=21, randomization=r)
        counts = np.zeros(3)
        for _, _, classes in ss.iter_scene_frames(spec, 0, spec.n_images):
            counts += np.bincount(classes, minlength=3)
        return counts / counts.sum()

    s0, s1 = shares(0.0), shares(1.0)
    assert s0[0] > 0.45  # the default data is car-heavy
    # distance from a uniform third each shrinks by a clear margin, no class is rare
    dev0, dev1 = np.abs(s0 - 1 / 3).max(), np.abs(s1 - 1 / 3).max()
    assert dev1 < 0.1 and dev1 < dev0 - 0.05
    assert s1.min() > 0.25 and s1[0] < s0[0] - 0.1


def test_stream_setup_is_cheap_for_many_frames() -> None:
    spec = SyntheticSpec(**{**ROAD, "n_images": 100_000}, randomization=0.7)
    t = time.perf_counter()
    assert len(ss.empty_frames(spec)) == 25_000
    first = next(ss.iter_scene_frames(spec, 99_990, 99_991))
    assert time.perf_counter() - t < 10.0
    assert first[0].shape == (64, 192, 3)
    with pytest.raises(ValueError):
        ss.iter_scene_frames(spec, 5, 100_001)
    # top-level functions: another process can be handed them
    assert pickle.loads(pickle.dumps(ss.iter_scene_frames)) is ss.iter_scene_frames
    assert pickle.loads(pickle.dumps(synthetic.iter_ct_slices)) is synthetic.iter_ct_slices


def test_ct_stream_at_zero_matches_the_dicom(tmp_path: Path) -> None:
    spec = SyntheticSpec(**CT)
    synthetic.generate_ct_dataset(tmp_path, spec, progress=False)
    labels = pd.read_csv(tmp_path / "labels.csv")
    assert "randomization" not in (tmp_path / "README.txt").read_text()
    stream = list(synthetic.iter_ct_slices(spec, 0, 4))
    assert len(stream) == 4
    for i, (hu, label) in enumerate(stream):
        row = labels.iloc[i]
        assert row["path"] == f"SYN{i // 2:04d}/{i % 2:03d}.dcm"
        ds = pydicom.dcmread(tmp_path / row["path"])
        disk = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert hu.dtype == np.float32 and hu.shape == (64, 64)
        assert np.abs(hu - disk).max() <= 0.5 + 1e-3  # DICOM stores rounded integers
        assert label == int(row["label"] == "abnormal")
    hu, label = next(synthetic.iter_ct_slices(spec, 3, 4))
    assert np.array_equal(hu, stream[3][0]) and label == stream[3][1]
    with pytest.raises(ValueError):
        synthetic.iter_ct_slices(spec, 0, 5)


def test_ct_randomized_labels_mark_visible_nodules_and_hu_is_plausible() -> None:
    spec = SyntheticSpec(**{**CT, "n_patients": 4, "slices_per_patient": 3, "seed": 12}, randomization=1.0)
    flags = synthetic._abnormal_flags(spec)
    plain = list(synthetic.iter_ct_slices(SyntheticSpec(**{**CT, "n_patients": 4, "slices_per_patient": 3, "seed": 12}), 0, 12))
    stream = list(synthetic.iter_ct_slices(spec, 0, 12))
    again = list(synthetic.iter_ct_slices(spec, 0, 12))
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(stream, again, strict=True))
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(stream, plain, strict=True))
    assert any(label for _, label in stream)
    for i, (hu, label) in enumerate(stream):
        pi, j = divmod(i, 3)
        if not flags[pi]:
            assert label == 0
        assert -1100 <= hu.min() and hu.max() <= 3100
        assert abs(float(hu[0, 0]) + 1000) < 60  # corner: air outside the scanned circle
        # the label is exactly whether nodules change the (noise-free) phantom of this slice
        p = synthetic._make_patient(spec, pi, flags[pi])
        z = float(p.z_slices[j])
        rng = lambda: np.random.default_rng(np.random.SeedSequence(entropy=spec.seed, spawn_key=(pi, 1000 + j)))  # noqa: E731
        with_nodules, shown = synthetic.render_phantom(p, z, spec.image_size, rng())
        p.nodules = []
        without, _ = synthetic.render_phantom(p, z, spec.image_size, rng())
        assert label == int(shown > 0) == int(np.abs(with_nodules - without).max() > 20.0)

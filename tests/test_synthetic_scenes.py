"""Synthetic street and road scenes: COCO layout, exact boxes, groups, determinism."""

from __future__ import annotations

import itertools
import math
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from lepton_vision.data.synthetic import scenes as ss
from lepton_vision.config.cards import SyntheticSpec
from lepton_vision.config.errors import DataError

STREET = {"generator": "street_scenes", "n_images": 12, "frame_size": (160, 120), "sequence_length": 4,
          "empty_fraction": 0.25, "seed": 3}
ROAD = {"generator": "road_scenes", "n_images": 12, "frame_size": (288, 96), "sequence_length": 4,
        "empty_fraction": 0.25, "seed": 5}


def _generate(out: Path, **kw: object) -> tuple[Path, dict, dict]:
    summary = ss.generate_scene_dataset(out, SyntheticSpec(**kw), progress=False)
    return out, summary, json.loads((out / "annotations.json").read_text())


@pytest.fixture(scope="module", params=["street", "road"])
def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticSpec, Path, dict, dict]:
    kw = STREET if request.param == "street" else ROAD
    out, summary, coco = _generate(tmp_path_factory.mktemp(request.param), **kw)
    return SyntheticSpec(**kw), out, summary, coco


def _rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, path
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def test_coco_layout_and_counts(dataset: tuple[SyntheticSpec, Path, dict, dict]) -> None:
    spec, out, summary, coco = dataset
    names = list(ss.CLASSES[spec.generator])
    assert coco["categories"] == [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(names)]
    assert len(coco["images"]) == spec.n_images == summary["n_images"]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(im["file_name"] for im in coco["images"])
    W, H = spec.frame_size
    for im in coco["images"]:
        assert (im["width"], im["height"]) == (W, H)
        assert _rgb(out / "images" / im["file_name"]).shape == (H, W, 3)
    ids = [a["id"] for a in coco["annotations"]]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) == summary["n_boxes"] > 0
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert all(isinstance(v, int) for v in a["bbox"]), a
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W and y + h <= H, a
        assert 0 < a["area"] <= w * h and a["iscrowd"] == 0
    per_class = {n: sum(a["category_id"] == i + 1 for a in coco["annotations"]) for i, n in enumerate(names)}
    assert per_class == summary["per_class"]
    # exactly round(empty_fraction * n) frames have no object, every other frame has one
    with_boxes = {a["image_id"] for a in coco["annotations"]}
    n_empty = spec.n_images - len(with_boxes)
    assert n_empty == round(spec.empty_fraction * spec.n_images) == summary["n_empty"]
    assert {im["id"] for im in coco["images"]} - with_boxes == {i + 1 for i in ss.empty_frames(spec)}
    assert (out / "README.txt").read_text().startswith("Synthetic")


def test_groups_are_sequences(dataset: tuple[SyntheticSpec, Path, dict, dict]) -> None:
    spec, out, summary, coco = dataset
    groups: dict[str, list[dict]] = {}
    for im in coco["images"]:
        seq, frame = Path(im["file_name"]).stem.split("_")
        assert im["group_id"] == f"seq{seq}" and im["frame_index"] == int(frame)
        groups.setdefault(im["group_id"], []).append(im)
    assert len(groups) == summary["n_groups"] == 3
    assert all(len(v) == spec.sequence_length for v in groups.values())
    # frames of one sequence share the background: they are far more alike than frames of
    # different sequences
    frames = {g: [_rgb(out / "images" / im["file_name"]).astype(np.float32) for im in v] for g, v in groups.items()}
    keys = sorted(frames)
    within = np.mean([np.abs(frames[g][0] - frames[g][1]).mean() for g in keys])
    between = np.mean([np.abs(frames[a][0] - frames[b][0]).mean() for a, b in itertools.pairwise(keys)])
    assert within * 2 < between, (within, between)


def test_boxes_are_the_visible_mask_extent(dataset: tuple[SyntheticSpec, Path, dict, dict]) -> None:
    spec, out, _, coco = dataset
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    checked = 0
    for idx, im in enumerate(coco["images"]):
        rgb, owner, objs = ss.render_scene_frame(spec, idx)
        assert np.array_equal(rgb, _rgb(out / "images" / im["file_name"])), im["file_name"]
        anns = by_image.get(im["id"], [])
        assert len(anns) == len(objs)
        assert set(np.unique(owner)) <= {0} | {o.owner_id for o in objs}
        for a, o in zip(anns, objs, strict=True):
            ys, xs = np.nonzero(owner == o.owner_id)
            assert len(xs) == a["area"] > 0
            x0, y0 = int(xs.min()), int(ys.min())
            assert a["bbox"] == [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1], (im["file_name"], a)
            assert a["category_id"] == o.category_id
            # hidden objects were removed, not boxed
            assert a["area"] >= ss.MIN_VISIBLE_FRACTION * o.full_area
            checked += 1
    assert checked == len(coco["annotations"])


def test_objects_are_drawn_where_the_boxes_are(dataset: tuple[SyntheticSpec, Path, dict, dict]) -> None:
    """An object's pixels differ from what the same frame shows with no objects at all."""
    spec, _out, _, _coco = dataset
    seq = ss.make_sequence(spec, 0)
    bare, _, none = ss.render_frame(seq, spec.seed, 0, 0, True, spec.generator == "street_scenes")
    assert none == []
    rgb, owner, objs = ss.render_frame(seq, spec.seed, 0, 0, False, spec.generator == "street_scenes")
    assert objs
    for o in objs:
        m = owner == o.owner_id
        assert np.abs(rgb[m].astype(int) - bare[m].astype(int)).mean() > 8


def test_same_spec_same_bytes(tmp_path: Path) -> None:
    spec = dict(STREET, n_images=6, sequence_length=3)
    a, _, _ = _generate(tmp_path / "a", **spec)
    b, _, _ = _generate(tmp_path / "b", **spec)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    c, _, _ = _generate(tmp_path / "c", **dict(spec, seed=spec["seed"] + 1))
    assert (a / "annotations.json").read_bytes() != (c / "annotations.json").read_bytes()


def test_road_has_every_class_and_street_people_are_big_enough(dataset: tuple[SyntheticSpec, Path, dict, dict]) -> None:
    spec, _, summary, coco = dataset
    H = spec.frame_size[1]
    if spec.generator == "road_scenes":
        assert [c["name"] for c in coco["categories"]] == ["car", "pedestrian", "cyclist"]
        assert all(n > 0 for n in summary["per_class"].values()), summary["per_class"]
    else:
        heights = np.array([a["bbox"][3] for a in coco["annotations"]])
        # occlusion and frame edges shorten boxes; most people are still at least 15% of the frame
        assert np.median(heights) >= 0.15 * H and heights.max() <= H


def test_regenerating_replaces_the_dataset(tmp_path: Path) -> None:
    spec = dict(ROAD, n_images=4, sequence_length=2)
    out, _, first = _generate(tmp_path / "r", **spec)
    _, summary, second = _generate(out, **dict(spec, n_images=5))
    assert len(second["images"]) == 5 == summary["n_images"] and first["images"] == second["images"][:4]


def test_wrong_generator_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        ss.generate_scene_dataset(tmp_path, SyntheticSpec(generator="ct_phantom"), progress=False)
    assert "ct_phantom" in str(e.value) and "street_scenes" in str(e.value)
    assert not (tmp_path / "annotations.json").exists()


def test_owner_map_is_what_each_object_changed(dataset: tuple[SyntheticSpec, Path, dict, dict]) -> None:
    """Independent of how the owner map is built: removing an object changes exactly its pixels.

    With blur, noise and colour cast off, the pixels that change when one object is left out
    must lie inside its owner mask and cover (almost) all of it; pixels hidden by an occluder
    drawn later must not be in the mask.
    """
    spec, *_ = dataset
    street = spec.generator == "street_scenes"
    checked = 0
    for q in range(2):
        seq = replace(ss.make_sequence(spec, q), blur=0.0, noise=0.0, cast=np.ones(3))
        for j in range(spec.sequence_length):
            items = ss._frame_items(seq, j, False, street, [], set())
            rgb, owner, objs = ss._render(seq, items, np.random.default_rng(0))
            for o in objs:
                if o.area == 0:  # fully hidden (render_frame would drop it)
                    continue
                without = ss._render(seq, [it for it in items if it.key != o.key], np.random.default_rng(0))[0]
                changed = np.any(rgb != without, axis=2)
                mask = owner == o.owner_id
                assert not np.any(changed & ~mask), (q, j, o.key)
                assert changed[mask].mean() > 0.97, (q, j, o.key, changed[mask].mean())
                checked += 1
    assert checked >= 4


# ------------------------------------------------------------------------------------------
# KITTI-style road scenes: amodal boxes, perspective cars, parked rows (synthetic_road_kitti)
# ------------------------------------------------------------------------------------------

KITTI_STYLE = {"boxes": "amodal", "min_visible": 0.25, "car_model": "perspective", "parked_rows": 1.0}


def test_kitti_card_loads_and_its_settings_reach_the_generator() -> None:
    from lepton_vision.config.cards import load_dataset_card

    card = load_dataset_card(Path(__file__).resolve().parents[1] / "datasets" / "synthetic_road_kitti" / "dataset.yaml")
    assert card.synthetic is not None
    assert {k: getattr(card.synthetic, k) for k in KITTI_STYLE} == dict(KITTI_STYLE, parked_rows=0.6)
    assert ss.settings_dump(card.synthetic)["boxes"] == "amodal"


def test_new_scene_fields_at_their_defaults_leave_the_settings_dump_as_before() -> None:
    spec = SyntheticSpec(**ROAD)
    assert set(ss.settings_dump(spec)) == {"generator", "n_images", "frame_size", "empty_fraction", "sequence_length",
                                           "n_patients", "slices_per_patient", "image_size",
                                           "abnormal_patient_fraction", "seed", "layout"}
    assert spec.unused_later_fields() == {"boxes", "min_visible", "car_model", "parked_rows"}
    assert SyntheticSpec(**ROAD, boxes="amodal").unused_later_fields() == {"min_visible", "car_model", "parked_rows"}


@pytest.mark.parametrize("field,value", [("car_model", "perspective"), ("parked_rows", 0.5)])
def test_road_only_fields_are_refused_for_street_scenes(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{field} is for generator road_scenes"):
        SyntheticSpec(**STREET, **{field: value})


@pytest.mark.parametrize("r", [0.0, 0.5])
def test_amodal_boxes_hold_the_hidden_parts_and_equal_the_visible_box_when_nothing_hides(r: float) -> None:
    spec = SyntheticSpec(**{**ROAD, "n_images": 24, "frame_size": (320, 96)}, **KITTI_STYLE, randomization=r)
    W, H = spec.frame_size
    whole = hidden = 0
    for i, (_, boxes, _) in enumerate(ss.iter_scene_frames(spec, 0, spec.n_images)):
        _, owner, objs = ss.render_scene_frame(spec, i)
        assert len(objs) == len(boxes)
        for o, box in zip(objs, boxes, strict=True):
            ys, xs = np.nonzero(owner == o.owner_id)
            visible = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            x0, y0, x1, y1 = box.tolist()
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
            # the box holds every visible pixel ...
            assert x0 <= visible[0] and y0 <= visible[1] and x1 >= visible[2] and y1 >= visible[3], (i, box, visible)
            assert o.area >= spec.min_visible * o.full_area
            if o.area == o.full_area:  # ... and is exactly the visible box when nothing hides or clips it
                assert box.tolist() == visible
                whole += 1
            elif (x1 - x0) * (y1 - y0) > (visible[2] - visible[0]) * (visible[3] - visible[1]):
                hidden += 1
    assert whole > 0 and hidden > 0, (whole, hidden)


def test_amodal_box_is_the_whole_car_behind_an_occluder() -> None:
    """A car hidden in part by a nearer one is boxed to the extent it has when drawn alone."""
    spec = SyntheticSpec(**{**ROAD, "frame_size": (320, 96)}, **KITTI_STYLE)
    seq = ss.make_sequence(spec, 0)
    cam, look = seq.camera, ss._random_car(np.random.default_rng(0))
    far = ss._Item(16.0, ss._car3d_prims(cam, 2.0, 16.0, 0.0, look, 1.0), 1, "far")
    near = ss._Item(9.0, ss._car3d_prims(cam, 1.2, 9.0, 0.0, look, 1.0), 1, "near")
    alone = ss._render(seq, [far], np.random.default_rng(1))[2][0]
    _, owner, (o_far, o_near) = ss._render(seq, [far, near], np.random.default_rng(1))
    assert o_far.area < 0.9 * alone.area  # the near car hides part of it ...
    assert o_far.bbox == alone.bbox  # ... and its box does not shrink
    ys, xs = np.nonzero(owner == o_far.owner_id)
    assert (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1) < o_far.bbox[2] * o_far.bbox[3]


def test_perspective_car_beside_the_lane_shows_its_side() -> None:
    cam = ss._Camera(640, 192, f=380.0, horizon=80.0, vx=320.0, cam_h=1.65)
    look = ss._CarLook(body=(200, 40, 40), width=1.8, height=1.45, length=4.4, glass=(40, 50, 60))

    def extent(X: float, yaw: float) -> tuple[float, float]:
        area, (x0, y0, x1, y1) = ss._full_extent(ss._car3d_prims(cam, X, 12.0, yaw, look, 1.0))
        assert area > 0
        return x1 - x0, y1 - y0

    ahead_w, ahead_h = extent(0.0, 0.0)
    rear_width_px = cam.f * look.width / (12.0 - look.length / 2)
    assert abs(ahead_w - rear_width_px) < 0.12 * rear_width_px  # straight ahead: the rear only
    side_w, side_h = extent(4.5, 0.0)
    assert side_w > 1.3 * ahead_w and abs(side_h - ahead_h) < 0.15 * ahead_h  # beside the lane: rear + side
    crossing_w, _ = extent(0.0, math.pi / 2)
    assert crossing_w > 2.0 * ahead_w  # crossing: the car's length
    assert ss._car3d_prims(cam, 0.0, 1.0, 0.0, look, 1.0) == []  # reaching behind the camera: left out


def test_parked_rows_line_the_kerb_and_hide_each_other() -> None:
    spec = SyntheticSpec(**{**ROAD, "n_images": 40, "frame_size": (320, 96), "sequence_length": 1}, **KITTI_STYLE)
    plain = SyntheticSpec(**{**ROAD, "n_images": 40, "frame_size": (320, 96), "sequence_length": 1},
                          **dict(KITTI_STYLE, parked_rows=0.0))
    rows = 0
    for q in range(spec.n_images):
        seq, base = ss.make_sequence(spec, q), ss.make_sequence(plain, q)
        parked = [a for a in seq.actors if a.key.startswith("k")]
        # rows come on top of the scene's other actors, which are drawn exactly as without rows
        assert [a.key for a in seq.actors if not a.key.startswith("k")] == [a.key for a in base.actors]
        for side in ("kr", "kl"):
            row = sorted((a for a in parked if a.key.startswith(side)), key=lambda a: a.Z)
            if not row:
                continue
            rows += 1
            assert len(row) >= 2 and len({round(a.X) for a in row}) <= 2  # one kerb line
            assert all(b.Z - a.Z >= a.look.length for a, b in itertools.pairwise(row))  # nose to tail
            assert all(a.vX == a.vZ == 0.0 for a in row)
    assert rows >= spec.n_images  # right kerb always (p = 1), left kerb 70 % of the time
    occluded = sum(o.area < o.full_area for i in range(12) for o in ss.render_scene_frame(spec, i)[2])
    assert occluded >= 8

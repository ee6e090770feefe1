"""readers.detection: COCO / VOC / YOLO / KITTI -> D1 box table; every bad input names file and fix."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from lepton_vision.config.cards import DatasetCard, TaskCard, load_dataset_card
from lepton_vision.config.errors import DataError, RecipeError
from lepton_vision.data.readers.detection import (
    DETECTION_COLUMNS,
    DROP_REASONS,
    boxes_of,
    read_detection_samples,
)
from lepton_vision.data.samples import read_samples

REPO = Path(__file__).resolve().parents[1]
W, H = 40, 30


def task(classes: list[str]) -> TaskCard:
    return TaskCard.model_validate(
        {
            "schema_version": 1,
            "name": "spot",
            "kind": "object_detection",
            "title": "Spot",
            "modality": "rgb",
            "classes": classes,
            "primary_metric": "ap50",
            "threshold": {"policy": "max_f1"},
        }
    )


TASK = task(["car", "person"])


def card(**kw: Any) -> DatasetCard:
    base: dict[str, Any] = {
        "schema_version": 1,
        "name": "toy",
        "format": "coco",
        "path": "unused",
        "annotations": "annotations.json",
        "classes": ["car", "person"],
        "licence": "test",
    }
    base.update(kw)
    return DatasetCard.model_validate(base)


def png(path: Path, w: int = W, h: int = H, value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))
    return path


def read(c: DatasetCard, d: Path, t: TaskCard = TASK, **kw: Any):
    return read_detection_samples(c, d, t, d / "dataset.yaml", progress=False, **kw)


def row(s, sid: str) -> dict[str, Any]:
    return s.table.set_index("sample_id").loc[sid].to_dict()


def boxes(s, sid: str) -> tuple[list, list, list]:
    b, c, i = boxes_of(row(s, sid))
    return b.tolist(), c.tolist(), i.tolist()


# ---------------------------------------------------------------------------------------------
# COCO


def coco_dataset(root: Path, *, annotations: list[dict] | None = None, images: list[dict] | None = None,
                 categories: list[dict] | None = None) -> Path:
    png(root / "images" / "a.png")
    png(root / "images" / "sub" / "b.png")
    png(root / "images" / "c.png")
    png(root / "images" / "stray.png")  # in the folder, not in the JSON
    doc = {
        "images": images if images is not None else [
            {"id": 1, "file_name": "a.png", "width": W, "height": H, "seq": "s1",
             "dontcare_boxes": [[30, 20, 5, 5]]},
            {"id": 2, "file_name": "sub/b.png", "width": W, "height": H, "seq": "s1"},
            {"id": 3, "file_name": "c.png", "width": W, "height": H, "seq": "s2"},
        ],
        "annotations": annotations if annotations is not None else [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [20.5, 4, 5, 12.25]},
            {"id": 12, "image_id": 2, "category_id": 2, "bbox": [0, 0, 6, 6], "iscrowd": 1},
            {"id": 13, "image_id": 2, "category_id": 3, "bbox": [1, 1, 3, 3]},
        ],
        "categories": categories if categories is not None else [
            {"id": 1, "name": "car"}, {"id": 2, "name": "person"}, {"id": 3, "name": "Truck"},
        ],
    }
    (root / "annotations.json").write_text(json.dumps(doc, indent=1))
    return root


COCO_CARD = {"classes": ["car", "person", "Truck"], "class_map": {"Truck": "ignore"}, "columns": {"group": "seq"}}


def test_coco_boxes_classes_ignore_groups_and_counts(tmp_path: Path) -> None:
    d = coco_dataset(tmp_path)
    s = read(card(**COCO_CARD), d)
    assert list(s.table.columns) == list(DETECTION_COLUMNS)
    assert list(s.table["sample_id"]) == ["a.png", "sub/b.png", "c.png"]
    assert boxes(s, "a.png") == ([[2, 3, 12, 11], [20.5, 4, 25.5, 16.25]], [0, 1], [[30, 20, 35, 25]])
    # iscrowd=1 and a class mapped to 'ignore' are ignore regions, not objects
    assert boxes(s, "sub/b.png") == ([], [], [[0, 0, 6, 6], [1, 1, 4, 4]])
    r = row(s, "sub/b.png")
    assert (r["label"], r["label_name"], r["n_boxes"], r["group"]) == (0, "empty", 0, "s1")
    r = row(s, "a.png")
    assert (r["label"], r["label_name"], r["width"], r["height"]) == (1, "objects", W, H)
    assert r["path"] == str((d / "images" / "a.png").resolve())
    assert boxes(s, "c.png") == ([], [], [])  # listed with no annotations: a legitimate empty frame
    c = s.counts
    assert (c["n_listed"], c["n_samples"], c["n_excluded"], c["n_boxes"]) == (3, 3, 0, 2)
    assert c["per_class"] == {"car": 1, "person": 1}
    assert (c["n_empty_images"], c["n_groups"], c["n_ignore_regions"]) == (2, 2, 3)
    assert c["unannotated_images_in_folder"] == 1 and c["unannotated_images_in_folder_list"] == ["stray.png"]
    assert c["images_without_annotation_entry"] == 0
    assert c["boxes_dropped"] == {r: 0 for r in DROP_REASONS}


def test_read_samples_dispatches_detection_formats(tmp_path: Path) -> None:
    d = coco_dataset(tmp_path)
    s = read_samples(card(**COCO_CARD), d, TASK, d / "dataset.yaml", progress=False)
    assert list(s.table.columns) == list(DETECTION_COLUMNS)
    assert s.counts["n_boxes"] == 2


def test_coco_clips_and_drops_boxes_with_reasons(tmp_path: Path) -> None:
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [-5, 20, 15, 20]},   # clipped to [0,20,10,30]
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 5, 5, 5]},      # outside
        {"id": 3, "image_id": 1, "category_id": 2, "bbox": [10, 10, -4, 5]},    # negative width
        {"id": 4, "image_id": 1, "category_id": 2, "bbox": [10, 10, 0, 5]},     # zero width
        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]},       # class 'drop'
        {"id": 6, "image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4]},       # kept
    ]
    d = coco_dataset(tmp_path, annotations=anns)
    s = read(card(classes=["car", "person", "Truck"], class_map={"Truck": "drop"}), d)
    assert boxes(s, "a.png")[:2] == ([[0, 20, 10, 30], [1, 2, 4, 6]], [0, 1])
    c = s.counts
    assert c["boxes_clipped"] == 1
    assert c["boxes_dropped"] == {"negative_size": 1, "zero_size": 1, "outside_image": 1,
                                  "zero_area_after_clip": 0, "class_drop": 1}
    neg = [e for e in c["dropped_examples"] if e["reason"] == "negative_size"]
    assert neg == [{"file": "annotations.json", "sample_id": "a.png", "annotation": "annotation id 3",
                    "class": "person", "reason": "negative_size", "box": [10, 10, 6, 15]}]
    assert c["n_groups"] == 0 and set(s.table["group"]) == {""}


def test_coco_missing_images_error_lists_all_and_skip_excludes(tmp_path: Path) -> None:
    imgs = [
        {"id": 1, "file_name": "a.png", "width": W, "height": H},
        {"id": 2, "file_name": "gone1.png"},
        {"id": 3, "file_name": "gone2.png"},
    ]
    d = coco_dataset(tmp_path, images=imgs, annotations=[
        {"id": 7, "image_id": 2, "category_id": 1, "bbox": [1, 1, 4, 4]}])
    with pytest.raises(DataError) as e:
        read(card(**COCO_CARD), d)
    msg = str(e.value)
    assert "2 of 3 images are missing or unreadable" in msg
    assert "gone1.png" in msg and "gone2.png" in msg and "image id 3" in msg
    assert "on_bad_file: skip" in msg
    s = read(card(**COCO_CARD), d, on_bad_file="skip")
    assert list(s.table["sample_id"]) == ["a.png"]
    assert [x["sample_id"] for x in s.excluded] == ["gone1.png", "gone2.png"]
    assert "file not found" in s.excluded[0]["reason"]
    assert s.counts["n_excluded"] == 2 and s.counts["n_listed"] == 3


def test_coco_corrupt_image_error_and_skip(tmp_path: Path) -> None:
    d = coco_dataset(tmp_path)
    (d / "images" / "c.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError) as e:
        read(card(**COCO_CARD), d)
    assert "c.png" in str(e.value) and "cannot decode" in str(e.value)
    s = read(card(**COCO_CARD), d, on_bad_file="skip")
    assert s.counts["n_samples"] == 2 and s.excluded[0]["sample_id"] == "c.png"


def test_coco_size_mismatch_is_an_error(tmp_path: Path) -> None:
    imgs = [{"id": 1, "file_name": "a.png", "width": 80, "height": H}]
    d = coco_dataset(tmp_path, images=imgs, annotations=[])
    with pytest.raises(DataError) as e:
        read(card(**COCO_CARD), d, on_bad_file="skip")
    msg = str(e.value)
    assert "a.png" in msg and "80x30" in msg and "40x30" in msg and "Re-export the annotations" in msg


def test_coco_unknown_class_names_file_annotation_and_fix(tmp_path: Path) -> None:
    cats = [{"id": 1, "name": "car"}, {"id": 2, "name": "persn"}]
    d = coco_dataset(tmp_path, categories=cats,
                     annotations=[{"id": 42, "image_id": 1, "category_id": 2, "bbox": [1, 1, 4, 4]}])
    with pytest.raises(DataError) as e:
        read(card(), d)
    msg = str(e.value)
    assert "annotations.json annotation id 42" in msg and "'persn'" in msg
    assert "Did you mean 'person'?" in msg and "classes:" in msg and "class_map:" in msg
    assert str(d / "dataset.yaml") in msg


def test_class_mapped_outside_the_task_is_an_error(tmp_path: Path) -> None:
    d = coco_dataset(tmp_path)
    with pytest.raises(DataError) as e:
        read(card(classes=["car", "person", "Truck"], class_map={"Truck": "truck"}), d)
    msg = str(e.value)
    assert "'Truck' maps to 'truck'" in msg and "annotation id 13" in msg and "class_map" in msg


def test_coco_annotation_with_unknown_image_id_names_the_annotation(tmp_path: Path) -> None:
    d = coco_dataset(tmp_path, annotations=[{"id": 99, "image_id": 555, "category_id": 1, "bbox": [1, 1, 2, 2]},
                                            {"id": 100, "image_id": 1, "category_id": 1, "bbox": [1, 1]}])
    with pytest.raises(DataError) as e:
        read(card(**COCO_CARD), d)
    msg = str(e.value)
    assert "annotations.json" in msg and "annotation id 99: image_id 555 is not in images[]" in msg
    assert "annotation id 100: bbox must be [x, y, w, h]" in msg


def test_coco_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    d = coco_dataset(tmp_path)
    (d / "annotations.json").write_text('{\n "images": [],\n "annotations": [,]\n}')
    with pytest.raises(DataError) as e:
        read(card(), d)
    assert "annotations.json: malformed JSON" in str(e.value)
    assert "line 3" in str(e.value) and "json.tool" in str(e.value)


def test_coco_duplicate_file_name_is_an_error(tmp_path: Path) -> None:
    imgs = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "a.png"}]
    d = coco_dataset(tmp_path, images=imgs, annotations=[])
    with pytest.raises(DataError, match="file_name 'a.png' is listed twice"):
        read(card(), d)


# ---------------------------------------------------------------------------------------------
# Pascal VOC


def voc_xml(filename: str | None, objects: list[tuple[str, tuple[int, int, int, int], int]],
            size: tuple[int, int] = (W, H)) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    fn = f"<filename>{filename}</filename>" if filename else ""
    return f"<annotation>{fn}<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>"


def voc_dataset(root: Path) -> Path:
    png(root / "JPEGImages" / "v1.png")
    png(root / "JPEGImages" / "v2.png")
    png(root / "JPEGImages" / "nolabel.png")
    ann = root / "Annotations"
    ann.mkdir(parents=True)
    (ann / "v1.xml").write_text(voc_xml("v1.png", [("car", (1, 1, 10, 20), 0), ("person", (30, 5, 40, 30), 1)]))
    (ann / "v2.xml").write_text(voc_xml(None, [("person", (5, 6, 7, 8), 0)], size=(0, 0)))
    return root


VOC = {"format": "voc", "images": "JPEGImages", "annotations": "Annotations"}


def test_voc_one_based_boxes_difficult_and_missing_label_file(tmp_path: Path) -> None:
    s = read(card(**VOC), voc_dataset(tmp_path))
    # VOC 1-based inclusive: xmin=1..xmax=10 covers pixels 0..9 -> [0, 10)
    assert boxes(s, "v1.png") == ([[0, 0, 10, 20]], [0], [[29, 4, 40, 30]])
    assert boxes(s, "v2.png") == ([[4, 5, 7, 8]], [1], [])  # no <filename>: paired by stem; size 0 = unknown
    assert boxes(s, "nolabel.png") == ([], [], [])
    c = s.counts
    assert c["images_without_annotation_entry"] == 1
    assert c["images_without_annotation_entry_list"] == ["nolabel.png"]
    assert (c["n_boxes"], c["n_ignore_regions"], c["n_empty_images"]) == (2, 1, 1)


def test_voc_malformed_xml_names_file_and_line(tmp_path: Path) -> None:
    d = voc_dataset(tmp_path)
    (d / "Annotations" / "v2.xml").write_text("<annotation>\n<object><name>car</name>\n</annotation>")
    with pytest.raises(DataError) as e:
        read(card(**VOC), d)
    msg = str(e.value)
    assert "Annotations/v2.xml" in msg and "malformed XML" in msg and "line 3" in msg


def test_voc_filename_pointing_to_missing_image(tmp_path: Path) -> None:
    d = voc_dataset(tmp_path)
    (d / "Annotations" / "v3.xml").write_text(voc_xml("v3.png", [("car", (1, 1, 5, 5), 0)]))
    with pytest.raises(DataError) as e:
        read(card(**VOC), d)
    assert "v3.png" in str(e.value) and "Annotations/v3.xml" in str(e.value)
    s = read(card(**VOC), d, on_bad_file="skip")
    assert [x["sample_id"] for x in s.excluded] == ["v3.png"]


# ---------------------------------------------------------------------------------------------
# YOLO


def yolo_dataset(root: Path) -> Path:
    png(root / "images" / "y1.png")
    png(root / "images" / "seq" / "y2.jpg")
    png(root / "images" / "y3.png")
    lab = root / "labels"
    (lab / "seq").mkdir(parents=True)
    (lab / "y1.txt").write_text("# comment\n1 0.5 0.5 0.5 0.5\n\n0 0.1 0.1 0.2 0.2\n")
    (lab / "seq" / "y2.txt").write_text("")  # a label file with no lines: an annotated empty frame
    (lab / "classes.txt").write_text("car\nperson\n")  # LabelImg's class list, not a label file
    return root


YOLO = {"format": "yolo", "annotations": "labels"}


def test_yolo_normalised_to_pixels_and_counts(tmp_path: Path) -> None:
    s = read(card(**YOLO), yolo_dataset(tmp_path))
    # x_c=0.5,w=0.5 of 40 px -> 10..30; y_c=0.5,h=0.5 of 30 px -> 7.5..22.5
    b, c, i = boxes(s, "y1.png")
    assert np.allclose(b, [[10, 7.5, 30, 22.5], [0, 0, 8, 6]]) and c == [1, 0] and i == []
    assert s.counts["boxes_clipped"] == 0
    assert boxes(s, "seq/y2.jpg") == ([], [], [])
    assert s.counts["images_without_annotation_entry"] == 1
    assert s.counts["images_without_annotation_entry_list"] == ["y3.png"]
    assert s.counts["n_listed"] == 3


def test_yolo_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    d = yolo_dataset(tmp_path)
    (d / "labels" / "y1.txt").write_text("1 0.5 0.5 0.5\n7 0.5 0.5 0.1 0.1\nx 0.5 0.5 0.1 0.1\n0 a 0.5 0.1 0.1\n")
    with pytest.raises(DataError) as e:
        read(card(**YOLO), d)
    msg = str(e.value)
    assert "4 problems" in msg and "labels/y1.txt" in msg
    assert "line 1    labels/y1.txt: expected 5 fields" in msg
    assert "line 2    labels/y1.txt: class index 7 is out of range" in msg and "add the missing class names" in msg
    assert "line 3" in msg and "line 4" in msg


def test_yolo_label_file_without_image(tmp_path: Path) -> None:
    d = yolo_dataset(tmp_path)
    (d / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError) as e:
        read(card(**YOLO), d)
    assert "no image 'ghost.<png|" in str(e.value) and "labels/ghost.txt" in str(e.value)
    s = read(card(**YOLO), d, on_bad_file="skip")
    assert s.excluded[0]["sample_id"] == "ghost" and s.counts["n_samples"] == 3


def test_yolo_two_images_with_one_stem_is_an_error(tmp_path: Path) -> None:
    d = yolo_dataset(tmp_path)
    png(d / "images" / "y1.jpg")
    with pytest.raises(DataError) as e:
        read(card(**YOLO), d)
    assert "labels/y1.txt: several images share its stem: y1.jpg, y1.png" in str(e.value)


def test_yolo_groups_from_manifest(tmp_path: Path) -> None:
    d = yolo_dataset(tmp_path)
    (d / "groups.csv").write_text("path,seq\ny1.png,A\nseq/y2.jpg,A\n")
    s = read(card(**YOLO, manifest="groups.csv", columns={"group": "seq"}), d)
    assert dict(zip(s.table["sample_id"], s.table["group"])) == {
        "y1.png": "A", "seq/y2.jpg": "A", "y3.png": "image-y3.png"}
    assert s.counts["n_groups"] == 2 and s.counts["own_group"] == 1


# ---------------------------------------------------------------------------------------------
# KITTI


def kitti_line(t: str, box: tuple[float, float, float, float]) -> str:
    return f"{t} 0.00 0 -1.57 {box[0]} {box[1]} {box[2]} {box[3]} 1.5 1.6 3.7 1.0 1.5 20.0 -1.5"


def kitti_dataset(root: Path) -> Path:
    png(root / "image_2" / "000001.png")
    png(root / "image_2" / "000002.png")
    lab = root / "label_2"
    lab.mkdir(parents=True)
    (lab / "000001.txt").write_text("\n".join([
        kitti_line("Car", (1.5, 2.0, 20.25, 15.0)),
        kitti_line("Van", (25, 10, 45, 28)),          # clipped at the right edge
        kitti_line("DontCare", (30, 0, 38, 6)),
        kitti_line("Pedestrian", (3, 3, 9, 29)),
    ]) + "\n")
    (lab / "000002.txt").write_text("")
    return root


KITTI = {"format": "kitti", "images": "image_2", "annotations": "label_2",
         "classes": ["Car", "Van", "Pedestrian"], "class_map": {"Car": "car", "Van": "car", "Pedestrian": "person"}}


def test_kitti_boxes_mapping_and_default_dontcare(tmp_path: Path) -> None:
    s = read(card(**KITTI), kitti_dataset(tmp_path))
    assert boxes(s, "000001.png") == ([[1.5, 2, 20.25, 15], [25, 10, 40, 28], [3, 3, 9, 29]], [0, 0, 1],
                                      [[30, 0, 38, 6]])
    c = s.counts
    assert c["per_class"] == {"car": 2, "person": 1} and c["boxes_clipped"] == 1 and c["n_ignore_regions"] == 1
    assert c["n_empty_images"] == 1 and c["images_without_annotation_entry"] == 0


def test_kitti_dontcare_listed_can_be_dropped(tmp_path: Path) -> None:
    kw = dict(KITTI, classes=["Car", "Van", "Pedestrian", "DontCare"],
              class_map={**KITTI["class_map"], "DontCare": "drop"})
    s = read(card(**kw), kitti_dataset(tmp_path))
    assert boxes(s, "000001.png")[2] == [] and s.counts["boxes_dropped"]["class_drop"] == 1


def test_kitti_unknown_type_and_short_line(tmp_path: Path) -> None:
    d = kitti_dataset(tmp_path)
    (d / "label_2" / "000002.txt").write_text(kitti_line("Cyclst", (1, 1, 5, 5)) + "\nCar 0 0 0 1 2 3\n")
    with pytest.raises(DataError) as e:
        read(card(**KITTI), d)
    assert "label_2/000002.txt" in str(e.value) and "line 2" in str(e.value) and "15 KITTI fields" in str(e.value)
    (d / "label_2" / "000002.txt").write_text(kitti_line("Cyclst", (1, 1, 5, 5)) + "\n")
    with pytest.raises(DataError) as e:
        read(card(**KITTI), d)
    msg = str(e.value)
    assert "line 1    label_2/000002.txt line 1: class 'Cyclst' is not in the dataset card's classes" in msg
    assert "Add the names to classes:" in msg


# ---------------------------------------------------------------------------------------------
# Helpers


def test_boxes_of_shapes_for_empty_rows() -> None:
    b, c, i = boxes_of({"boxes": "[]", "classes": "[]", "ignore": "[]"})
    assert b.shape == (0, 4) and b.dtype == np.float32 and c.shape == (0,) and c.dtype == np.int32
    assert i.shape == (0, 4)


def test_missing_annotations_path_names_the_card(tmp_path: Path) -> None:
    png(tmp_path / "images" / "a.png")
    with pytest.raises(DataError) as e:
        read(card(), tmp_path)
    assert "annotations not found" in str(e.value) and "dataset.yaml" in str(e.value)


# ---------------------------------------------------------------------------------------------
# Real data (opt-in tier)


def _real_root() -> Path | None:
    env = os.environ.get("LEPTON_DATA_ROOT")
    if env and Path(env).is_dir():
        return Path(env)
    fallback = Path(__file__).resolve().parents[2] / "shared" / "data"
    return fallback if fallback.is_dir() else None


def _one_class_cards_allowed() -> bool:
    try:
        card(classes=["person"])
    except ValueError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.xfail(
    not _one_class_cards_allowed(), raises=RecipeError, strict=True,
    reason="cards.DatasetCard.classes has min_length=2, so the one-class usc_pedestrian card cannot load",
)
def test_real_usc_pedestrian() -> None:
    root = _real_root()
    if root is None or not (root / "usc_pedestrian").is_dir():
        pytest.skip("real data absent: set LEPTON_DATA_ROOT or provide ../shared/data/usc_pedestrian")
    c = load_dataset_card(REPO / "datasets" / "usc_pedestrian" / "dataset.yaml")
    s = read(c, root / c.path, task(["person"]))
    assert (s.counts["n_samples"], s.counts["n_boxes"], s.counts["n_excluded"]) == (279, 649, 0)
    assert s.counts["n_groups"] > 1 and (s.table["group"] != "").all()


@pytest.mark.slow
def test_real_kitti() -> None:
    root = _real_root()
    if root is None or not (root / "kitti_object_subset").is_dir():
        pytest.skip("real data absent: set LEPTON_DATA_ROOT or provide ../shared/data/kitti_object_subset")
    c = load_dataset_card(REPO / "datasets" / "kitti" / "dataset.yaml")
    s = read(c, root / c.path, task(["car", "pedestrian", "cyclist"]))
    cnt = s.counts
    assert (cnt["n_samples"], cnt["n_excluded"]) == (79, 0)
    # Car 265 + Van 29; Pedestrian 32 + Person_sitting 5; Cyclist 15 (DATASET.md)
    assert cnt["per_class"] == {"car": 294, "pedestrian": 37, "cyclist": 15}
    # Truck 10 + Tram 11 + Misc 5 ignored, plus 192 DontCare regions
    assert cnt["n_ignore_regions"] == 26 + 192
    b, cls, _ = boxes_of(s.table.iloc[0])
    assert (b[:, 2] <= s.table.iloc[0]["width"]).all() and len(cls) == len(b)

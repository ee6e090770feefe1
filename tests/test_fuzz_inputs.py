"""Property-based fuzzing: the recipe loader and every annotation reader (COCO, VOC, YOLO, KITTI,
CSV manifest) answer arbitrary malformed input with a LeptonError subclass, never a bare exception.

Inputs are both unstructured (random text/bytes) and structured-but-wrong (the right container
shape with random fields, which reaches deeper into the readers than noise does).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton_vision.config.cards import DatasetCard, TaskCard
from lepton_vision.config.errors import LeptonError
from lepton_vision.config.recipe import recipe_from_text
from lepton_vision.data.samples import read_samples

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)

DET_TASK = TaskCard.model_validate({
    "schema_version": 1, "name": "spot", "kind": "object_detection", "title": "Spot",
    "modality": "rgb", "classes": ["car", "person"], "primary_metric": "ap50",
    "threshold": {"policy": "max_f1"},
})
CLS_TASK = TaskCard.model_validate({
    "schema_version": 1, "name": "screen", "kind": "binary_classification", "title": "Screen",
    "modality": "grayscale", "classes": ["normal", "abnormal"], "positive_class": "abnormal",
    "threshold": {"policy": "max_f1"},
})

# JSON-like values: scalars (including awkward numbers and strings) nested in lists and dicts.
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["car", "person", "a.png", "images/a.png", "../a.png", "", "0", "-1", "1e309"]),
)
JSONISH = st.recursive(SCALARS, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10), kids, max_size=4)), max_leaves=20)
NUMBERISH = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32).map(str),
                      st.integers(-5, 50).map(str), st.sampled_from(["x", "", "nan", "1e9", "-0", "0.5"]))


def _png(path: Path, w: int = 40, h: int = 30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), 90, np.uint8))


def _expect_lepton_error_or_ok(fn: Callable[[], Any]) -> None:
    """The property: success, or a LeptonError subclass; anything else is a bug."""
    try:
        fn()
    except LeptonError:
        pass


def _in_tmp(build: Callable[[Path], Callable[[], Any]]) -> None:
    root = Path(tempfile.mkdtemp(prefix="lv-fuzz-"))
    try:
        _expect_lepton_error_or_ok(build(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _det_card(**kw: Any) -> DatasetCard:
    return DatasetCard.model_validate({"schema_version": 1, "name": "toy", "path": "unused",
                                       "classes": ["car", "person"], "licence": "test", **kw})


def _read_det(card: DatasetCard, root: Path) -> Callable[[], Any]:
    from lepton_vision.data.readers.detection import read_detection_samples

    return lambda: read_detection_samples(card, root, DET_TASK, root / "dataset.yaml", progress=False)


# --------------------------------------------------------------------------------------------
# recipe loader

RECIPE_KEYS = st.sampled_from(["schema_version", "name", "task", "dataset", "seed", "input", "augment",
                               "model", "train", "cv", "evaluate", "final", "export", "data", "bogus"])


@FUZZ
@given(st.text(max_size=300))
def test_recipe_loader_on_arbitrary_text(text: str) -> None:
    _expect_lepton_error_or_ok(lambda: recipe_from_text(text, file="fuzz.yaml"))


@FUZZ
@given(st.dictionaries(RECIPE_KEYS, JSONISH, max_size=8))
def test_recipe_loader_on_wrong_structures(doc: dict[str, Any]) -> None:
    base = {"schema_version": 1, "name": "x", "task": "ct_screening", "dataset": "synthetic_ct"}
    text = yaml.safe_dump({**base, **doc}, allow_unicode=True)
    _expect_lepton_error_or_ok(lambda: recipe_from_text(text, file="fuzz.yaml"))


@FUZZ
@given(st.lists(st.dictionaries(st.sampled_from(["name", "p", "params", "always_apply"]), JSONISH, max_size=3),
                max_size=3))
def test_recipe_loader_on_wrong_augmentations(ops: list[dict[str, Any]]) -> None:
    """Albumentations names and parameters are checked at load time: bad ones are RecipeErrors."""
    text = yaml.safe_dump({"schema_version": 1, "name": "x", "task": "ct_screening",
                           "dataset": "synthetic_ct", "augment": ops})

    def load() -> None:
        from lepton_vision.data.augment import build_augment

        recipe = recipe_from_text(text, file="fuzz.yaml")
        build_augment([op.model_dump() for op in recipe.augment], recipe.seed)

    _expect_lepton_error_or_ok(load)


# --------------------------------------------------------------------------------------------
# COCO


@FUZZ
@given(st.one_of(JSONISH, st.fixed_dictionaries({
    "images": st.lists(st.dictionaries(st.sampled_from(["id", "file_name", "width", "height", "seq"]), JSONISH),
                       max_size=3),
    "annotations": st.lists(st.dictionaries(st.sampled_from(["id", "image_id", "category_id", "bbox", "iscrowd"]),
                                            JSONISH), max_size=4),
    "categories": st.lists(st.dictionaries(st.sampled_from(["id", "name"]), JSONISH), max_size=3),
})))
def test_coco_reader_on_malformed_json(doc: Any) -> None:
    def build(root: Path) -> Callable[[], Any]:
        _png(root / "images" / "a.png")
        (root / "annotations.json").write_text(json.dumps(doc))
        return _read_det(_det_card(format="coco", annotations="annotations.json", images="images"), root)

    _in_tmp(build)


@FUZZ
@given(st.binary(max_size=200))
def test_coco_reader_on_arbitrary_bytes(data: bytes) -> None:
    def build(root: Path) -> Callable[[], Any]:
        _png(root / "images" / "a.png")
        (root / "annotations.json").write_bytes(data)
        return _read_det(_det_card(format="coco", annotations="annotations.json", images="images"), root)

    _in_tmp(build)


# --------------------------------------------------------------------------------------------
# Pascal VOC

VOC_OBJECT = st.builds(
    lambda name, vals, diff: (f"<object><name>{name}</name><difficult>{diff}</difficult><bndbox>"
                              + "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), vals))
                              + "</bndbox></object>"),
    st.sampled_from(["car", "person", "dog", "", "&amp;"]), st.lists(NUMBERISH, min_size=0, max_size=4), NUMBERISH)


@FUZZ
@given(st.one_of(
    st.text(max_size=200),
    st.builds(lambda fn, w, h, objs: (f"<annotation><filename>{fn}</filename><size><width>{w}</width>"
                                      f"<height>{h}</height></size>{''.join(objs)}</annotation>"),
              st.sampled_from(["a.png", "missing.png", "", "../a.png"]), NUMBERISH, NUMBERISH,
              st.lists(VOC_OBJECT, max_size=3)),
))
def test_voc_reader_on_malformed_xml(text: str) -> None:
    def build(root: Path) -> Callable[[], Any]:
        _png(root / "JPEGImages" / "a.png")
        (root / "Annotations").mkdir(parents=True)
        (root / "Annotations" / "a.xml").write_text(text)
        return _read_det(_det_card(format="voc", images="JPEGImages", annotations="Annotations"), root)

    _in_tmp(build)


# --------------------------------------------------------------------------------------------
# YOLO and KITTI text labels

LINES = st.lists(st.one_of(st.text(max_size=40), st.lists(NUMBERISH, max_size=16).map(" ".join)), max_size=5)


@FUZZ
@given(LINES)
def test_yolo_reader_on_malformed_lines(lines: list[str]) -> None:
    def build(root: Path) -> Callable[[], Any]:
        _png(root / "images" / "a.png")
        (root / "labels").mkdir(parents=True)
        (root / "labels" / "a.txt").write_text("\n".join(lines))
        return _read_det(_det_card(format="yolo", annotations="labels", images="images"), root)

    _in_tmp(build)


@FUZZ
@given(st.lists(st.one_of(
    st.text(max_size=60),
    st.builds(lambda cls, nums: " ".join([cls, *nums]),
              st.sampled_from(["Car", "Pedestrian", "DontCare", "Tram", ""]), st.lists(NUMBERISH, max_size=16)),
), max_size=5))
def test_kitti_reader_on_malformed_lines(lines: list[str]) -> None:
    def build(root: Path) -> Callable[[], Any]:
        _png(root / "image_2" / "000001.png")
        (root / "label_2").mkdir(parents=True)
        (root / "label_2" / "000001.txt").write_text("\n".join(lines))
        card = _det_card(format="kitti", images="image_2", annotations="label_2",
                         classes=["Car", "Pedestrian"], class_map={"Car": "car", "Pedestrian": "person"})
        return _read_det(card, root)

    _in_tmp(build)


# --------------------------------------------------------------------------------------------
# CSV manifest (classification)

CSV_CELL = st.one_of(st.text(max_size=12), st.sampled_from(["img/0.png", "img/9.png", "normal", "abnormal",
                                                           "Normal", "", "p1", '"', ",", "\n"]))


@FUZZ
@given(st.one_of(
    st.text(max_size=200),
    st.lists(st.lists(CSV_CELL, min_size=0, max_size=4), max_size=5).map(
        lambda rows: "file,diagnosis,patient\n" + "\n".join(",".join(r) for r in rows)),
))
def test_csv_manifest_reader_on_malformed_csv(text: str) -> None:
    def build(root: Path) -> Callable[[], Any]:
        for i in range(2):
            _png(root / "img" / f"{i}.png")
        (root / "labels.csv").write_text(text)
        card = DatasetCard.model_validate({
            "schema_version": 1, "name": "toy", "format": "csv", "path": "unused", "manifest": "labels.csv",
            "classes": ["normal", "abnormal"], "licence": "test",
            "columns": {"path": "file", "label": "diagnosis", "group": "patient"}})
        return lambda: read_samples(card, root, CLS_TASK, root / "dataset.yaml", progress=False)

    _in_tmp(build)


def test_the_property_can_fail() -> None:
    """Guard: a bare exception is not swallowed by the helper (else the fuzz tests prove nothing)."""
    with pytest.raises(KeyError):
        _expect_lepton_error_or_ok(lambda: {}["missing"])

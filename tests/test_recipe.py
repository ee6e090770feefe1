"""Recipe schema, YAML errors with lines, overrides (no TensorFlow)."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from lepton_vision.config.errors import RecipeError
from lepton_vision.config.recipe import (
    Recipe,
    dump_recipe,
    load_recipe,
    parse_override,
    recipe_from_text,
    recipe_schema,
)

MINIMAL = """\
schema_version: 1
name: t
task: ct_screening
dataset: synthetic_ct
"""


def test_minimal_recipe_fills_defaults():
    r = recipe_from_text(MINIMAL)
    assert r.cv.n_splits == 5
    assert r.input.window.level_width() == (-600.0, 1500.0)
    assert r.export.formats == ["saved_model", "tflite", "tflite_int8"]


def test_every_field_is_described():
    missing = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            if not f.description:
                missing.append(f"{prefix}{name}")
            from lepton_vision.config.recipe import _sub_model

            sub = _sub_model(f.annotation)
            if sub is not None:
                walk(sub, f"{prefix}{name}.")

    walk(Recipe, "")
    from lepton_vision.config.cards import DatasetCard, TaskCard

    walk(TaskCard, "task.")
    walk(DatasetCard, "dataset.")
    assert not missing, missing


def test_unknown_key_names_line_and_suggests():
    text = MINIMAL + "train:\n  epochz: 3\n"
    with pytest.raises(RecipeError) as e:
        recipe_from_text(text, file="r.yaml")
    msg = str(e.value)
    assert "r.yaml" in msg and "line 6" in msg and "train.epochz" in msg
    assert "Did you mean 'epochs'?" in msg


def test_wrong_type_names_path_and_value():
    with pytest.raises(RecipeError) as e:
        recipe_from_text(MINIMAL + "train:\n  batch_size: lots\n", file="r.yaml")
    msg = str(e.value)
    assert "train.batch_size" in msg and "'lots'" in msg and "line 6" in msg


def test_all_problems_reported_sorted_by_line():
    text = MINIMAL + "seed: -1\ncv:\n  n_splits: 1\n"
    with pytest.raises(RecipeError) as e:
        recipe_from_text(text, file="r.yaml")
    msg = str(e.value)
    assert "2 problems" in msg
    assert msg.index("seed") < msg.index("cv.n_splits")


def test_duplicate_key_refused_with_both_lines():
    with pytest.raises(RecipeError) as e:
        recipe_from_text(MINIMAL + "seed: 1\nseed: 2\n", file="r.yaml")
    msg = str(e.value)
    assert "appears twice" in msg and "lines 5 and 6" in msg


def test_yaml_syntax_error_has_line():
    with pytest.raises(RecipeError) as e:
        recipe_from_text(MINIMAL + "train: {epochs: 3\n", file="r.yaml")
    assert "not valid YAML" in str(e.value) and "line" in str(e.value)


def test_missing_required_field_is_explained():
    with pytest.raises(RecipeError) as e:
        recipe_from_text("schema_version: 1\nname: t\ntask: ct_screening\n")
    assert "dataset: required field is missing" in str(e.value)


def test_unknown_backbone_suggests():
    with pytest.raises(RecipeError) as e:
        recipe_from_text(MINIMAL + "model: {backbone: mobilenet_v3_smal}\n")
    assert "Did you mean 'mobilenet_v3_small'?" in str(e.value)


def test_detector_input_must_be_a_multiple_of_its_stride():
    det = MINIMAL + "model: {detector: {architecture: yolov8, size: tiny}}\n"
    recipe_from_text(det, ["input.image_size=[192, 640]"])
    recipe_from_text(MINIMAL, ["input.image_size=[100, 100]"])  # classifiers resize to any size
    with pytest.raises(RecipeError) as e:
        recipe_from_text(det, ["input.image_size=[100, 640]"])
    assert "input.image_size" in str(e.value) and "multiples of 32" in str(e.value) and "[128, 640]" in str(e.value)
    with pytest.raises(RecipeError) as e:
        recipe_from_text(det, ["input.image_size=[192, 640]", "pretrain.dataset=synthetic_road",
                               "pretrain.image_size=[96, 300]"])
    assert "pretrain.image_size" in str(e.value) and "[96, 320]" in str(e.value)


def test_only_built_detectors_are_accepted():
    # RetinaNet is not built: refused at validation, not a KeyError when training starts.
    with pytest.raises(RecipeError) as e:
        recipe_from_text(MINIMAL + "model: {detector: {architecture: retinanet}}\n")
    assert "model.detector.architecture: Input should be 'yolov8'. Got 'retinanet'" in str(e.value)


def test_class_names_like_no_are_not_silently_booleans():
    with pytest.raises(RecipeError) as e:
        recipe_from_text(MINIMAL.replace("name: t", "name: no"))
    assert "name" in str(e.value)


def test_threshold_policy_value_rules():
    with pytest.raises(RecipeError, match="needs a value"):
        recipe_from_text(MINIMAL + "evaluate: {threshold: {policy: min_sensitivity}}\n")
    with pytest.raises(RecipeError, match="takes no value"):
        recipe_from_text(MINIMAL + "evaluate: {threshold: {policy: max_f1, value: 0.3}}\n")


def test_custom_window_needs_level_and_width():
    with pytest.raises(RecipeError, match="custom"):
        recipe_from_text(MINIMAL + "input: {window: {preset: custom, level: 40}}\n")
    r = recipe_from_text(MINIMAL + "input: {window: {preset: custom, level: 40, width: 400}}\n")
    assert r.input.window.level_width() == (40.0, 400.0)


def test_overrides_are_yaml_typed_and_revalidated():
    r = recipe_from_text(MINIMAL, ["train.epochs=3", "input.image_size=[32, 48]", "augment=[]"])
    assert r.train.epochs == 3 and r.input.image_size == (32, 48)
    with pytest.raises(RecipeError) as e:
        recipe_from_text(MINIMAL, ["train.epochz=3"])
    assert "train.epochz (from --set)" in str(e.value) and "Did you mean 'epochs'" in str(e.value)
    with pytest.raises(RecipeError, match="greater than 0"):
        recipe_from_text(MINIMAL, ["train.optimizer.learning_rate=-1"])


def test_override_parser():
    assert parse_override("a.b[2].c=1.5e-3") == (["a", "b", 2, "c"], 0.0015)
    assert parse_override("x=[1, 2]") == (["x"], [1, 2])
    with pytest.raises(RecipeError, match="key=value"):
        parse_override("train.epochs")


def test_dump_round_trip_and_hash(repo):
    r = load_recipe(repo / "recipes/ct_screening/baseline.yaml")
    again = recipe_from_text(dump_recipe(r))
    assert again == r and again.sha256() == r.sha256()
    assert recipe_from_text(dump_recipe(r), ["seed=1"]).sha256() != r.sha256()


def test_schema_is_json():
    schema = recipe_schema()
    json.dumps(schema)
    assert "train" in schema["properties"]


def test_evaluate_patient_and_calibration_fields():
    r = recipe_from_text(MINIMAL)
    ev = r.evaluate
    assert ev.patient_aggregation.method == "max" and ev.patient_aggregation.k is None
    assert ev.calibration_bins == 10 and ev.temperature_scaling is False
    r = recipe_from_text(MINIMAL + "evaluate: {patient_aggregation: {method: top_k_mean}, calibration_bins: 20, temperature_scaling: true}\n")
    assert r.evaluate.patient_aggregation.k == 3  # the default k of top_k_mean
    assert r.evaluate.calibration_bins == 20 and r.evaluate.temperature_scaling is True
    # the resolved recipe (every field written out) loads again
    again = recipe_from_text(dump_recipe(r))
    assert again.evaluate == r.evaluate
    assert recipe_from_text(dump_recipe(recipe_from_text(MINIMAL))).evaluate.patient_aggregation.k is None
    r = recipe_from_text(MINIMAL, ["evaluate.patient_aggregation={method: top_k_mean, k: 5}"])
    assert r.evaluate.patient_aggregation.k == 5


@pytest.mark.parametrize(
    ("yaml_text", "match"),
    [
        ("evaluate: {patient_aggregation: {method: max, k: 2}}", "only used with method top_k_mean"),
        ("evaluate: {patient_aggregation: {method: mean, k: 3}}", "only used with method top_k_mean"),
        ("evaluate: {patient_aggregation: {method: top_k_mean, k: 0}}", "k"),
        ("evaluate: {patient_aggregation: {method: median}}", "method"),
        ("evaluate: {patient_aggregation: {method: max, kk: 2}}", "kk"),
        ("evaluate: {calibration_bins: 1}", "calibration_bins"),
        ("evaluate: {calibration_bins: 51}", "calibration_bins"),
        ("evaluate: {temperature_scaling: maybe}", "temperature_scaling"),
    ],
)
def test_evaluate_patient_and_calibration_fields_rejected(yaml_text, match):
    with pytest.raises(RecipeError, match=match):
        recipe_from_text(MINIMAL + yaml_text + "\n")

"""Task/dataset cards and the cross-file checks (no TensorFlow)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lepton_vision.config.cards import load_dataset_card, load_resolved, load_task_card, resolve
from lepton_vision.config.errors import CardError, RecipeError
from lepton_vision.config.recipe import load_recipe

RECIPES = sorted(Path(__file__).resolve().parents[1].glob("recipes/*/*.yaml"))
TASKS = sorted(Path(__file__).resolve().parents[1].glob("tasks/*/task.yaml"))
DATASETS = sorted(Path(__file__).resolve().parents[1].glob("datasets/*/dataset.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_committed_recipe_resolves(path):
    resolved = load_resolved(path)
    assert resolved.task.name == path.parent.name


@pytest.mark.parametrize("path", TASKS, ids=lambda p: p.parent.name)
def test_every_task_card_validates_and_has_model_card(path):
    card = load_task_card(path)
    assert card.name == path.parent.name
    assert (path.parent / "README.md").is_file()


@pytest.mark.parametrize("path", DATASETS, ids=lambda p: p.parent.name)
def test_every_dataset_card_validates(path):
    card = load_dataset_card(path)
    assert card.name == path.parent.name
    assert (path.parent / "README.md").is_file()


def _project(tmp_path: Path, repo: Path) -> Path:
    for d in ("tasks", "datasets", "recipes"):
        shutil.copytree(repo / d, tmp_path / d)
    return tmp_path


def test_unknown_dataset_name_suggests(tmp_path, repo):
    root = _project(tmp_path, repo)
    rec = root / "recipes/ct_screening/baseline.yaml"
    with pytest.raises(CardError) as e:
        load_resolved(rec, ["dataset=synthetic_c"])
    assert "Did you mean 'synthetic_ct'?" in str(e.value) and str(rec) in str(e.value)


def test_class_mismatch_names_both_files(tmp_path, repo):
    root = _project(tmp_path, repo)
    card = root / "datasets/covid_ct/dataset.yaml"
    card.write_text(card.read_text().replace("non_covid: normal", "non_covid: healthy"))
    with pytest.raises(CardError) as e:
        load_resolved(root / "recipes/ct_screening/covid_ct.yaml")
    msg = str(e.value)
    assert "healthy" in msg and "dataset.yaml" in msg and "task.yaml" in msg


def test_ungrouped_folds_on_grouped_data_refused(tmp_path, repo):
    root = _project(tmp_path, repo)
    with pytest.raises(CardError) as e:
        load_resolved(root / "recipes/ct_screening/baseline.yaml", ["cv.strategy=stratified"])
    assert "ungrouped folds" in str(e.value)


def test_bad_card_field_has_line(tmp_path, repo):
    root = _project(tmp_path, repo)
    card = root / "tasks/ct_screening/task.yaml"
    card.write_text(card.read_text().replace("kind: binary_classification", "kind: binary_clasification"))
    with pytest.raises(RecipeError) as e:
        load_resolved(root / "recipes/ct_screening/baseline.yaml")
    assert "task.yaml" in str(e.value) and "kind" in str(e.value) and "line 3" in str(e.value)


def test_data_root_unset_is_explained(tmp_path, repo, monkeypatch):
    monkeypatch.delenv("LEPTON_DATA_ROOT", raising=False)
    resolved = load_resolved(repo / "recipes/ct_screening/covid_ct.yaml")
    with pytest.raises(CardError, match="LEPTON_DATA_ROOT"):
        _ = resolved.dataset_dir


def test_recipe_threshold_overrides_task_policy(repo):
    r = load_recipe(repo / "recipes/ct_screening/baseline.yaml", ["evaluate.threshold={policy: max_f1}"])
    resolved = resolve(r, repo / "recipes/ct_screening/baseline.yaml")
    assert resolved.threshold.policy == "max_f1"
    default = load_resolved(repo / "recipes/ct_screening/baseline.yaml")
    assert default.threshold.policy == "min_sensitivity" and default.threshold.value == 0.95


def test_format_normalisation_is_refused_for_detection(repo):
    with pytest.raises(CardError) as e:
        load_resolved(repo / "recipes/person_detection/baseline.yaml", ["input.reencode={codec: jpeg}"])
    assert "input.reencode" in str(e.value) and "object_detection" in str(e.value)
    assert load_resolved(repo / "recipes/ct_screening/baseline.yaml",
                         ["input.reencode={codec: png, size: [64, 64]}"]).recipe.input.reencode.size == (64, 64)


def test_int8_float_layers_is_refused_for_classification(repo):
    with pytest.raises(CardError) as e:
        load_resolved(repo / "recipes/ct_screening/baseline.yaml", ["export.int8_float_layers=[conv]"])
    assert "export.int8_float_layers" in str(e.value) and "classification" in str(e.value)
    resolved = load_resolved(repo / "recipes/person_detection/baseline.yaml", ["export.int8_float_layers=[yolo_v8_head]"])
    assert resolved.recipe.export.int8_float_layers == ["yolo_v8_head"]

"""cv.folds: train and score only some folds of the same splits; the final model uses every image."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from lepton_vision.config.errors import RecipeError
from lepton_vision.config.recipe import recipe_from_text, result_sha256

MINIMAL = """\
schema_version: 1
name: t
task: ct_screening
dataset: synthetic_ct
"""


@pytest.mark.parametrize("folds, message", [
    ("[1, 6]", "[6] not between 1 and n_splits (5)"),
    ("[0, 2]", "[0] not between 1 and n_splits (5)"),
    ("[2, 2]", "names a fold twice"),
    ("[3]", "name at least two folds"),
])
def test_bad_folds_are_refused_with_the_path(folds, message):
    with pytest.raises(RecipeError) as e:
        recipe_from_text(MINIMAL + f"cv:\n  folds: {folds}\n", file="r.yaml")
    assert "cv" in str(e.value) and message in str(e.value)


def test_fold_indices_and_hash():
    every = recipe_from_text(MINIMAL)
    assert every.cv.fold_indices() == [0, 1, 2, 3, 4]
    some = recipe_from_text(MINIMAL + "cv:\n  folds: [4, 2]\n")
    assert some.cv.fold_indices() == [1, 3]
    # runs written before the field existed keep their hash; a subset is another result
    assert result_sha256(recipe_from_text(MINIMAL + "cv:\n  folds: null\n")) == result_sha256(every)
    assert result_sha256(some) != result_sha256(every)


@pytest.mark.tf
@pytest.mark.slow
def test_a_run_with_two_of_three_folds(tmp_path, tiny_ct_project):
    """Folds 1 and 3 of 3 train; fold 2 does not. Out-of-fold rows, metrics, report and evaluate are
    on those folds' samples only, and say so; the final model is refit on every sample."""
    from lepton_vision.cli import main
    from lepton_vision.engine.crossval import rescore_run

    root = tmp_path / "proj"
    root.mkdir()
    recipe = tiny_ct_project(root)
    run = tmp_path / "run"
    sets = ["train.epochs=1", "cv.n_splits=3", "cv.folds=[1, 3]", "input.image_size=[32, 32]",
            "evaluate.n_bootstrap=50", "export.parity_samples=4", "export.formats=[saved_model]",
            "final.mode=refit", "train.verbose=false"]
    env = {"LEPTON_GENERATED_ROOT": str(root / "generated"), "LEPTON_HOME": str(root)}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert main(["train", str(recipe), *sum((["--set", s] for s in sets), []), "--out", str(run)]) == 0
    assert (run / "folds/0/result.json").is_file() and (run / "folds/2/result.json").is_file()
    assert not (run / "folds/1").exists()
    folds = pd.read_csv(run / "folds.csv", dtype={"sample_id": str})
    assert set(folds["fold"]) == {0, 1, 2}  # the same three splits as a full run
    scored = set(folds.loc[folds["fold"].isin([0, 2]), "sample_id"])
    oof = pd.read_csv(run / "oof_predictions.csv", dtype={"sample_id": str})
    assert set(oof["sample_id"]) == scored
    metrics = json.loads((run / "metrics.json").read_text())
    sub = metrics["cv_subset"]
    assert sub["folds"] == [1, 3] and sub["n_splits"] == 3
    assert sub["n_scored"] == len(scored) < sub["n_samples"] == len(folds)
    assert [f["fold"] for f in metrics["folds"]] == [0, 2]
    final = json.loads((run / "final" / "final.json").read_text())
    assert final["mode"] == "refit" and final["n_images"] == len(folds)
    assert "out of fold on folds [1, 3] of 3 only" in (run / "report.html").read_text()
    again = rescore_run(run)
    assert again["cv_subset"] == sub
    assert again["pooled"]["roc_auc"]["value"] == pytest.approx(metrics["pooled"]["roc_auc"]["value"])


@pytest.mark.tf
@pytest.mark.slow  # the shared tiny detection run is built in the second CI stage anyway
def test_detection_collects_only_the_trained_folds(tmp_path, tiny_det_run):
    """The detection kind's out-of-fold tables for one fold of the shared two-fold run: boxes and
    image rows of that fold's frames only."""
    from lepton_vision.config.cards import resolve_run
    from lepton_vision.engine.crossval import scored_table
    from lepton_vision.kinds import kind_of
    from lepton_vision.runio import RunDir

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_det_run["run"], run_dir)
    run = RunDir(run_dir)
    resolved = resolve_run(run)
    folds = pd.read_csv(run_dir / "folds.csv", dtype={"sample_id": str})
    table = run.read_table(run.samples)
    table = table.assign(fold=table["sample_id"].map(dict(zip(folds["sample_id"], folds["fold"]))))
    only = scored_table(table, [1])
    oof = kind_of("object_detection").collect_oof(resolved, run, only, [1])
    assert set(oof["images"]["sample_id"]) == set(only["sample_id"]) and len(only) < len(table)
    assert set(oof["detections"]["fold"]) <= {1}
    assert set(oof["detections"]["sample_id"]) <= set(only["sample_id"])

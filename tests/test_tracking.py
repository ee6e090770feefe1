"""MLflow tracking of a run directory (default tier: no TensorFlow; needs the [mlflow] extra).

The tracker is driven the way ``train`` drives it, on a run directory made of small files, and
the sqlite store is then read back with MlflowClient: params from the resolved recipe, per-fold
and pooled metrics with CI bounds, tags, artefacts, status, and resume into the same MLflow run.
The end-to-end run with real training is in test_scale_out_e2e.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from lepton_vision.config.errors import LeptonError
from lepton_vision.runio import RunDir
from lepton_vision.engine.tracking import flatten, pooled_metrics

REPO = Path(__file__).resolve().parents[1]

METRICS = {
    "pooled": {"roc_auc": {"value": 0.81, "lo": 0.7, "hi": 0.9}, "f1": {"value": 0.6, "lo": 0.5, "hi": 0.72}},
    "mean_sd": {"roc_auc": {"mean": 0.8, "sd": 0.05}},
    "patient": {"pooled": {"roc_auc": {"value": 0.85, "lo": 0.75, "hi": 0.95}}},
    "final_threshold": 0.31,
    "folds": [{"fold": 0, "best_val_auc": 0.79, "best_epoch": 3, "epochs_run": 5, "seconds": 1.5},
              {"fold": 1, "best_val_auc": 0.83, "best_epoch": 2, "epochs_run": 4, "seconds": 1.4}],
}


def test_pooled_metrics_keep_every_ci_bound():
    flat = pooled_metrics(METRICS)
    assert flat["pooled.roc_auc"] == 0.81 and flat["pooled.roc_auc.ci_lo"] == 0.7 and flat["pooled.roc_auc.ci_hi"] == 0.9
    assert flat["mean.roc_auc"] == 0.8 and flat["sd.roc_auc"] == 0.05 and flat["patient.pooled.roc_auc.ci_hi"] == 0.95
    det = pooled_metrics({"ap50": 0.4, "ap50_95": 0.2, "precision": 0.5, "recall": None, "f1": 0.45,
                          "ci": {"ap50": [0.3, 0.5], "image_auc": [0.6, 0.8]},
                          "per_class": {"person": {"ap50": 0.4}}, "image_level": {"auc": 0.7, "reason": "x"}})
    assert det["ap50.ci_lo"] == 0.3 and det["per_class.person.ap50"] == 0.4 and "recall" not in det
    assert det["image_level.auc"] == 0.7 and det["image_level.auc.ci_hi"] == 0.8
    assert flatten({"a": {"b": 1, "c": [1, 2]}}) == {"a.b": 1, "a.c": [1, 2]}


def _fake_run(root: Path) -> RunDir:
    run = RunDir(root)
    for k in (0, 1):
        d = run.fold_dir(k)
        d.mkdir(parents=True)
        pd.DataFrame({"epoch": [1, 2], "loss": [0.7, 0.5], "val_auc": [0.6, 0.8]}).to_csv(d / "history.csv", index=False)
    (root / "metrics.json").write_text(json.dumps(METRICS))
    (root / "report.html").write_text("<html>report</html>")
    (root / "recipe.resolved.yaml").write_text("name: t\n")
    (root / "export").mkdir()
    (root / "export/bundle.json").write_text("{}")
    (root / "export/saved_model").mkdir()
    (root / "export/saved_model/saved_model.pb").write_bytes(b"pb")
    return run


@pytest.fixture
def resolved(monkeypatch, tmp_path):
    pytest.importorskip("mlflow", reason="MLflow tracking is the [mlflow] extra: pip install 'lepton-vision[mlflow]'")
    from lepton_vision.config.cards import load_resolved

    monkeypatch.chdir(tmp_path)  # MLflow must not write ./mlruns wherever the command runs
    return load_resolved(REPO / "recipes/ct_screening/baseline.yaml", ["tracking=mlflow"])


def test_mlflow_run_holds_params_metrics_tags_and_artefacts(resolved, tmp_path):
    from mlflow import MlflowClient

    from lepton_vision.engine.tracking import tracking_session

    run = _fake_run(tmp_path / "run")
    with tracking_session(resolved, run) as tracker:
        tracker.log_fold(0, METRICS["folds"][0], run.fold_dir(0), "best_val_auc")
        tracker.log_metrics(METRICS)  # fold 1 was not logged live: logged here, fold 0 not twice
    state = json.loads((run.root / "tracking.json").read_text())
    assert state["uri"] == f"sqlite:///{(run.root / 'mlflow.db').resolve()}" and state["logged_folds"] == [0, 1]
    client = MlflowClient(state["uri"])
    r = client.get_run(state["run_id"])
    assert r.info.status == "FINISHED" and r.info.run_name == "run"
    p = r.data.params
    assert p["train.optimizer.learning_rate"] == str(resolved.recipe.train.optimizer.learning_rate)
    assert p["cv.n_splits"] == str(resolved.recipe.cv.n_splits) and p["tracking.backend"] == "mlflow"
    assert json.loads(p["input.image_size"]) == list(resolved.recipe.input.image_size)
    m = r.data.metrics
    assert m["pooled.roc_auc"] == 0.81 and m["pooled.roc_auc.ci_lo"] == 0.7 and m["pooled.roc_auc.ci_hi"] == 0.9
    assert m["patient.pooled.roc_auc"] == 0.85 and m["final_threshold"] == 0.31
    per_fold = client.get_metric_history(r.info.run_id, "fold.best_val_auc")
    assert sorted((x.step, x.value) for x in per_fold) == [(0, 0.79), (1, 0.83)]
    assert [(x.step, x.value) for x in client.get_metric_history(r.info.run_id, "fold1.val_auc")] == [(1, 0.6), (2, 0.8)]
    t = r.data.tags
    assert t["task"] == "ct_screening" and t["dataset"] == "synthetic_ct" and t["kind"] == "binary_classification"
    assert t["recipe_sha256"] == resolved.recipe.sha256()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # the recipe is in this checkout: its commit is the run's
        assert t["git_commit"] == head.stdout.strip() == t["mlflow.source.git.commit"]
        assert t["git_dirty"] in ("true", "false")
    top = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"report.html", "metrics.json", "recipe.resolved.yaml", "export"} <= top
    assert {a.path for a in client.list_artifacts(r.info.run_id, "export")} >= {"export/bundle.json", "export/saved_model"}
    assert (run.root / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()


def test_failed_run_is_marked_and_resume_continues_the_same_mlflow_run(resolved, tmp_path):
    from mlflow import MlflowClient

    from lepton_vision.engine.tracking import tracking_session

    run = _fake_run(tmp_path / "run")
    with pytest.raises(RuntimeError, match="fold 2 crashed"):
        with tracking_session(resolved, run) as tracker:
            tracker.log_fold(0, METRICS["folds"][0], run.fold_dir(0), "best_val_auc")
            raise RuntimeError("fold 2 crashed")
    state = json.loads((run.root / "tracking.json").read_text())
    client = MlflowClient(state["uri"])
    assert client.get_run(state["run_id"]).info.status == "FAILED"
    moved = resolved.recipe.model_copy(update={"train": resolved.recipe.train.model_copy(update={"executor": "ray"})})
    resumed = type(resolved)(moved, resolved.task, resolved.dataset, resolved.recipe_path, resolved.task_path,
                             resolved.dataset_path)
    with tracking_session(resumed, run) as tracker:  # resumed on another executor
        tracker.log_metrics(METRICS)
    again = json.loads((run.root / "tracking.json").read_text())
    assert again["run_id"] == state["run_id"]
    r = client.get_run(state["run_id"])
    assert r.info.status == "FINISHED" and r.data.params["train.executor"] == "local"  # params are write-once
    assert r.data.tags["executor"] == "ray"
    assert len(client.get_metric_history(state["run_id"], "fold.best_val_auc")) == 2  # fold 0 once, fold 1 once


@pytest.mark.parametrize("uri", ["bogus://nowhere", "sqlite:///{tmp}/a_file/mlflow.db"])
def test_unusable_tracking_uri_names_the_field(resolved, tmp_path, uri):
    from lepton_vision.engine.tracking import tracking_session

    (tmp_path / "a_file").write_text("a file where a folder would have to be")
    bad = resolved.recipe.model_copy(update={"tracking": resolved.recipe.tracking.model_copy(
        update={"uri": uri.format(tmp=tmp_path)})})
    res = type(resolved)(bad, resolved.task, resolved.dataset, resolved.recipe_path, resolved.task_path,
                         resolved.dataset_path)
    with pytest.raises(LeptonError, match="tracking.uri: cannot open the MLflow tracking store"):
        with tracking_session(res, _fake_run(tmp_path / "run")):
            pass

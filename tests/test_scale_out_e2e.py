"""Scale-out end to end on a local Ray cluster (slow tier; needs the [ray] and [mlflow] extras).

A private Ray (``ray.init(num_cpus=2)`` on the loopback interface) is started once for the module.
On tiny generated CT data (2 folds, 2 epochs, 32 px) the same recipe runs with the local executor
(logged to MLflow in a sqlite store) and with ``--executor ray``: folds.csv and every metric must
agree within 1e-6. Then: resume of an interrupted local run on a cluster started with
``ray start --head`` and joined with ``--address``; fold retries; a 4-trial sweep over learning
rate and backbone; detection folds on Ray; MirroredStrategy within a fold (2 CPU replicas).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lepton_vision.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None or importlib.util.find_spec("mlflow") is None,
                       reason="needs the [ray] and [mlflow] extras: pip install 'lepton-vision[ray,mlflow]'"),
]

TINY = [
    "train.epochs=2",
    "cv.n_splits=2",
    "input.image_size=[32, 32]",
    "evaluate.n_bootstrap=50",
    "export.parity_samples=8",
    "export.formats=[saved_model]",
    "train.verbose=false",
]


def _sets(overrides: list[str]) -> list[str]:
    return sum((["--set", s] for s in overrides), [])


@pytest.fixture(scope="module")
def cluster():
    from lepton_vision.engine.executors import connect_ray

    ray, started = connect_ray(None, num_cpus=2)
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")  # loopback only
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_ct_project):
    root = tmp_path_factory.mktemp("scale")
    tiny_ct_project(root)
    card = root / "datasets/synthetic_street/dataset.yaml"
    data = yaml.safe_load(card.read_text())
    data["synthetic"].update(n_images=20, frame_size=[120, 80], sequence_length=2, empty_fraction=0.25)
    card.write_text(yaml.safe_dump(data, sort_keys=False))
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "cards"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    mp = pytest.MonkeyPatch()
    mp.setenv("LEPTON_GENERATED_ROOT", str(root / "generated"))
    mp.setenv("LEPTON_HOME", str(root))
    yield root, root / "recipes/ct_screening/baseline.yaml", commit
    mp.undo()


@pytest.fixture(scope="module")
def runs(project, cluster):
    root, recipe, _ = project
    local, on_ray = root / "run_local", root / "run_ray"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    assert main(["train", str(recipe), *_sets(TINY), "--tracking-uri", uri, "--out", str(local)]) == 0
    # 'return': the workers send the fold files back, as on a cluster without shared storage
    assert main(["train", str(recipe), *_sets(TINY), "--executor", "ray", "--set", "train.ray.artifacts=return",
                 "--out", str(on_ray)]) == 0
    return local, on_ray, uri


def _assert_same_metrics(a: dict, b: dict, atol: float = 1e-6) -> None:
    for section in ("pooled", "mean_sd"):
        for name, va in a[section].items():
            vb = b[section][name]
            fa = {k: v for k, v in va.items() if isinstance(v, (int, float))} if isinstance(va, dict) else va
            fb = {k: v for k, v in vb.items() if isinstance(v, (int, float))} if isinstance(vb, dict) else vb
            np.testing.assert_allclose(pd.Series(fa, dtype=float), pd.Series(fb, dtype=float), atol=atol,
                                       err_msg=f"{section}.{name}")
    for name, va in a["patient"]["pooled"].items():
        assert abs(va["value"] - b["patient"]["pooled"][name]["value"]) <= atol, name
    assert abs(a["final_threshold"] - b["final_threshold"]) <= atol


def test_ray_executor_gives_the_local_folds_and_metrics(runs):
    local, on_ray, _ = runs
    assert (local / "folds.csv").read_bytes() == (on_ray / "folds.csv").read_bytes()
    oof_l = pd.read_csv(local / "oof_predictions.csv", keep_default_na=False)
    oof_r = pd.read_csv(on_ray / "oof_predictions.csv", keep_default_na=False)
    assert list(oof_l["sample_id"]) == list(oof_r["sample_id"])
    np.testing.assert_allclose(oof_l["score"], oof_r["score"], atol=1e-6)
    _assert_same_metrics(json.loads((local / "metrics.json").read_text()),
                         json.loads((on_ray / "metrics.json").read_text()))
    for k in (0, 1):
        res = json.loads((on_ray / f"folds/{k}/result.json").read_text())
        ex = res["execution"]
        assert ex["executor"] == "ray" and ex["attempts"] == 1 and ex["artifacts"] == "returned"
        assert ex["replicas"] == 1 and ex["global_batch_size"] == 32 and ex["mixed_precision"] is False
        assert json.loads((local / f"folds/{k}/result.json").read_text())["execution"]["executor"] == "local"
        # returned files landed in the same layout: model, history, TensorBoard events, OOF scores
        for rel in ("best.keras", "history.csv", "oof.csv"):
            assert (on_ray / f"folds/{k}/{rel}").is_file(), rel
        assert list((on_ray / f"folds/{k}/tb").rglob("events.out.tfevents.*"))
    assert (on_ray / "export/saved_model/saved_model.pb").is_file() and (on_ray / "report.html").is_file()
    assert not (on_ray / ".storage-probe").exists()


def test_mlflow_run_holds_the_cross_validation(runs, project):
    from mlflow import MlflowClient

    local, _, uri = runs
    _, _, commit = project
    state = json.loads((local / "tracking.json").read_text())
    client = MlflowClient(uri)
    r = client.get_run(state["run_id"])
    assert r.info.status == "FINISHED"
    assert r.data.params["cv.n_splits"] == "2" and r.data.params["train.epochs"] == "2"
    assert r.data.params["tracking.uri"] == uri
    metrics = json.loads((local / "metrics.json").read_text())
    for name in ("roc_auc", "sensitivity", "specificity"):
        pooled = metrics["pooled"][name]
        assert r.data.metrics[f"pooled.{name}"] == pytest.approx(pooled["value"])
        assert r.data.metrics[f"pooled.{name}.ci_lo"] == pytest.approx(pooled["lo"])
        assert r.data.metrics[f"pooled.{name}.ci_hi"] == pytest.approx(pooled["hi"])
    folds = client.get_metric_history(r.info.run_id, "fold.best_val_auc")
    assert sorted((m.step, m.value) for m in folds) == [(f["fold"], pytest.approx(f["best_val_auc"]))
                                                       for f in metrics["folds"]]
    assert len(client.get_metric_history(r.info.run_id, "fold0.val_auc")) == 2  # one point per epoch
    tags = r.data.tags
    assert (tags["task"], tags["dataset"], tags["git_commit"]) == ("ct_screening", "synthetic_ct", commit)
    arts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"report.html", "metrics.json", "recipe.resolved.yaml", "folds.csv", "export", "plots"} <= arts
    assert "export/bundle.json" in {a.path for a in client.list_artifacts(r.info.run_id, "export")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ray_head(tmp_path):
    """A cluster as a team starts it (`ray start --head`), on loopback; stopped by process group."""
    port = _free_port()
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    before = current.read_text() if current.is_file() else None
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    log = open(tmp_path / "ray_head.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=2", "--include-dashboard=false"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while "Ray runtime started" not in (tmp_path / "ray_head.log").read_text():
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "ray_head.log").read_text()[-2000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # workers left in the group
        except ProcessLookupError:
            pass
        log.close()
        if before is None:
            current.unlink(missing_ok=True)
        else:
            current.write_text(before)


def test_interrupted_local_run_resumes_on_a_ray_cluster(runs, project, ray_head, tmp_path):
    root, recipe, _ = project
    local, _, _ = runs
    run = tmp_path / "resumed"
    shutil.copytree(local, run, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", "tracking.json"))
    fold0 = run / "folds/0/best.keras"
    mtime0 = fold0.stat().st_mtime_ns
    (run / "folds/1/result.json").unlink()  # killed during fold 2: its marker and everything after are missing
    for rel in ("oof_predictions.csv", "metrics.json", "report.html"):
        (run / rel).unlink()
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "export")
    env = {**os.environ, "LEPTON_GENERATED_ROOT": str(root / "generated"), "LEPTON_HOME": str(root)}
    proc = subprocess.run(
        [sys.executable, "-m", "lepton_vision", "train", str(recipe), *_sets(TINY), "--resume", str(run),
         "--executor", "ray", "--address", ray_head],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fold 1/2: finished earlier" in proc.stdout
    assert fold0.stat().st_mtime_ns == mtime0, "a finished fold was recomputed"
    ex = json.loads((run / "folds/1/result.json").read_text())["execution"]
    assert ex["executor"] == "ray" and ex["artifacts"] == "shared"
    before = pd.read_csv(local / "oof_predictions.csv", keep_default_na=False)
    after = pd.read_csv(run / "oof_predictions.csv", keep_default_na=False)
    np.testing.assert_allclose(after["score"], before["score"], atol=1e-6)


# ---- retries (fold functions without TensorFlow) -------------------------------------------------


def _fake_recipe(**ray):
    from lepton_vision.config.recipe import recipe_from_text

    sets = ["train.executor=ray", "cv.n_splits=2", *(f"train.ray.{k}={v}" for k, v in ray.items())]
    return recipe_from_text("schema_version: 1\nname: t\ntask: ct_screening\ndataset: synthetic_ct\n", sets)


def test_a_crashed_fold_is_retried_once_and_reported(cluster, tmp_path, capsys):
    from lepton_vision.engine.executors import run_folds

    marker = str(tmp_path / "crashed-once")

    def flaky(shared, k, out_dir):
        if k == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)  # the worker process dies, as when a node is lost
        (out_dir / "tb").mkdir(exist_ok=True)
        (out_dir / "tb" / "events").write_text(f"fold {k}")
        return {"fold": k, "value": shared["base"] + k}

    done: dict[int, dict] = {}
    run_folds(flaky, {"base": 10}, [0, 1], lambda k: tmp_path / "run" / "folds" / str(k),
              _fake_recipe(artifacts="return"), lambda k, r: done.setdefault(k, r), tmp_path / "run")
    assert {k: r["value"] for k, r in done.items()} == {0: 10, 1: 11}
    assert done[0]["execution"]["attempts"] == 1 and done[1]["execution"]["attempts"] == 2
    failures = done[1]["execution"]["failures"]
    assert len(failures) == 1 and failures[0].startswith("attempt 1:")
    assert (tmp_path / "run/folds/1/tb/events").read_text() == "fold 1"
    assert "fold 2/2: attempt 1" in capsys.readouterr().out


def test_a_fold_failing_twice_stops_the_run_and_keeps_the_others(cluster, tmp_path):
    from lepton_vision.config.errors import TrainError
    from lepton_vision.engine.executors import run_folds

    def broken(shared, k, out_dir):
        if k == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return {"fold": k}

    done: dict[int, dict] = {}
    with pytest.raises(TrainError) as e:
        run_folds(broken, {}, [0, 1], lambda k: tmp_path / "run" / "folds" / str(k), _fake_recipe(retries=1),
                  lambda k, r: done.setdefault(k, r), tmp_path / "run")
    msg = str(e.value)
    assert "fold 2/2 failed on Ray after 2 attempt(s)" in msg and "illegal memory access" in msg and "--resume" in msg
    assert 0 in done and 1 not in done


def test_data_errors_are_not_retried(cluster, tmp_path):
    from lepton_vision.config.errors import DataError
    from lepton_vision.engine.executors import run_folds

    calls = tmp_path / "calls"
    calls.mkdir()

    def one_class(shared, k, out_dir):
        (calls / f"{k}-{time.time_ns()}").touch()
        raise DataError("fold 1/2: the validation set has only class 0 (4 images). Got one class.")

    with pytest.raises(DataError, match=r"^fold 1/2 \(Ray, 1 attempt\(s\)\): the validation set has only class 0"):
        run_folds(one_class, {}, [0], lambda k: tmp_path / "run" / "folds" / str(k), _fake_recipe(retries=3),
                  lambda k, r: None, tmp_path / "run")
    assert len(list(calls.iterdir())) == 1


# ---- sweep ---------------------------------------------------------------------------------------------


def test_sweep_of_two_trials_writes_results_and_a_best_recipe(project, cluster, tmp_path, capsys):
    root, recipe, _ = project
    space = tmp_path / "space.yaml"
    space.write_text("train.optimizer.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}\n"
                     "model.backbone: {choice: [small_cnn, mobilenet_v3_small]}\n")
    sweep = tmp_path / "sweep"
    tiny = [s for s in TINY if not s.startswith("train.epochs")] + ["train.epochs=1", "export.formats=[saved_model]"]
    assert main(["tune", str(recipe), "--space", str(space), "--trials", "2", *_sets(tiny), "--out", str(sweep)]) == 0
    table = pd.read_csv(sweep / "results.csv")
    assert len(table) == 2 and (table["status"] == "ok").all() and table["metric"].eq("roc_auc").all()
    assert table["param:train.optimizer.learning_rate"].between(1e-4, 1e-2).all()
    assert set(table["param:model.backbone"]) <= {"small_cnn", "mobilenet_v3_small"}
    assert table["objective"].is_monotonic_decreasing
    for row in table.to_dict("records"):  # each trial is a normal run directory scored on its own folds
        trial = Path(row["run_dir"])
        m = json.loads((trial / "metrics.json").read_text())
        assert m["pooled"]["roc_auc"]["value"] == pytest.approx(row["objective"])
        assert m["pooled"]["roc_auc"]["lo"] == pytest.approx(row["ci_lo"])
        assert (trial / "folds.csv").read_bytes() == (Path(table["run_dir"][0]) / "folds.csv").read_bytes()
        used = yaml.safe_load((trial / "recipe.resolved.yaml").read_text())
        assert used["model"]["backbone"] == row["param:model.backbone"]
        assert used["train"]["optimizer"]["learning_rate"] == pytest.approx(row["param:train.optimizer.learning_rate"])
    best = yaml.safe_load((sweep / "best_recipe.yaml").read_text())
    assert best["model"]["backbone"] == table["param:model.backbone"][0]
    assert best["train"]["optimizer"]["learning_rate"] == pytest.approx(table["param:train.optimizer.learning_rate"][0])
    assert best["train"]["epochs"] == 1 and best["cv"]["n_splits"] == 2  # the --set values are part of it
    out = capsys.readouterr().out
    assert "tune: pooled roc_auc per trial" in out and "best recipe" in out
    assert main(["recipe", "validate", str(sweep / "best_recipe.yaml")]) == 0
    # The best recipe finishes the best trial's run without retraining its folds.
    trial = Path(table["run_dir"][0])
    mtimes = [(trial / f"folds/{k}/best.keras").stat().st_mtime_ns for k in (0, 1)]
    assert main(["train", str(sweep / "best_recipe.yaml"), "--resume", str(trial)]) == 0
    assert [(trial / f"folds/{k}/best.keras").stat().st_mtime_ns for k in (0, 1)] == mtimes
    assert (trial / "export/saved_model/saved_model.pb").is_file() and (trial / "report.html").is_file()


# ---- detection and strategies ---------------------------------------------------------------------------


def test_detection_folds_on_ray_equal_local_folds(project, cluster, tmp_path, tiny_det_run):
    """The shared tiny detection run (local executor, same data, folds and training settings) is
    the reference the Ray folds must reproduce."""
    from lepton_vision.engine.crossval import run_train

    root, _, _ = project
    recipe = root / "recipes/person_detection/baseline.yaml"
    a = tiny_det_run["run"]
    b = run_train(recipe, [*tiny_det_run["overrides"], "train.executor=ray"], out=tmp_path / "ray",
                  stop_after="metrics")
    assert (a / "folds.csv").read_bytes() == (b / "folds.csv").read_bytes()
    da = pd.read_csv(a / "oof_detections.csv", dtype={"sample_id": str})
    db = pd.read_csv(b / "oof_detections.csv", dtype={"sample_id": str})
    assert len(da) == len(db) > 0
    np.testing.assert_allclose(da[["score", "x1", "y1", "x2", "y2"]], db[["score", "x1", "y1", "x2", "y2"]], atol=1e-6)
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    for key in ("ap50", "ap50_95", "precision", "f1"):
        assert ma[key] == pytest.approx(mb[key], abs=1e-6), key
    assert ma["image_level"]["auc"] == pytest.approx(mb["image_level"]["auc"], abs=1e-6)
    assert json.loads((a / "folds/0/result.json").read_text())["execution"]["executor"] == "local"
    assert json.loads((b / "folds/0/result.json").read_text())["execution"]["executor"] == "ray"
    assert not (b / "final").exists() and not (b / "report.html").exists()  # stop_after="metrics"


MIRRORED = """
import sys
from lepton_vision.backend import import_keras
tf, _ = import_keras()
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from lepton_vision.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_mirrored_strategy_trains_a_fold_over_two_replicas(project, tmp_path):
    root, recipe, _ = project
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    run = tmp_path / "run"
    env = {**os.environ, "LEPTON_GENERATED_ROOT": str(root / "generated"), "LEPTON_HOME": str(root)}
    proc = subprocess.run(
        [sys.executable, str(script), "train", str(recipe), *_sets(TINY), "--set", "train.strategy=mirrored",
         "--set", "train.batch_size=8", "--out", str(run)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for k in (0, 1):
        ex = json.loads((run / f"folds/{k}/result.json").read_text())["execution"]
        assert ex["strategy"] == "MirroredStrategy" and ex["replicas"] == 2
        assert ex["global_batch_size"] == 16  # 8 per replica, scaled explicitly
    assert json.loads((run / "export/parity.json").read_text())["pass"] is True

"""Pretraining on generated data and fine-tuning: recipe rules, start weights, layer-wise learning
rates, the cached pretrain stage and whole runs that start from it (tiny data, tf tier)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from lepton_vision.config.errors import CardError, RecipeError
from lepton_vision.config.recipe import recipe_from_text, result_sha256

REPO = Path(__file__).resolve().parents[1]
CT_BASE = (REPO / "recipes/ct_screening/baseline.yaml").read_text()


# ---------------------------------------------------------------------------------------------
# Recipe rules (no TensorFlow)


def test_pretrain_and_model_weights_are_two_start_points():
    with pytest.raises(RecipeError, match="two start points"):
        recipe_from_text(CT_BASE, ["pretrain.dataset=synthetic_ct", "model.weights=some.weights.h5"])


def test_finetune_without_a_start_point_is_refused():
    with pytest.raises(RecipeError, match="train.finetune.*random weights"):
        recipe_from_text(CT_BASE, ["train.finetune.freeze_backbone_epochs=2"])
    r = recipe_from_text(CT_BASE, ["pretrain.dataset=synthetic_ct", "train.finetune.freeze_backbone_epochs=2"])
    assert r.train.finetune.active() and r.pretrain.images == 20000


def test_runs_written_before_pretraining_existed_keep_their_result_hash():
    r = recipe_from_text(CT_BASE)
    old = r.model_dump(mode="json")
    old.pop("pretrain")
    old["train"].pop("finetune")
    assert result_sha256(recipe_from_text(yaml.safe_dump(old))) == result_sha256(r)
    # A pretrain stage written before pretrain.image_size existed keeps its hash too.
    pre = recipe_from_text(CT_BASE, ["pretrain.dataset=synthetic_ct"])
    old_pre = pre.model_dump(mode="json")
    old_pre["pretrain"].pop("image_size")
    assert result_sha256(recipe_from_text(yaml.safe_dump(old_pre))) == result_sha256(pre)
    assert result_sha256(recipe_from_text(CT_BASE, ["pretrain.dataset=synthetic_ct", "pretrain.image_size=[64, 64]"])) \
        != result_sha256(pre)
    # ...but a pretrain stage or fine-tuning settings change it, and the pretrain workers do not.
    assert result_sha256(pre) != result_sha256(r)
    assert result_sha256(recipe_from_text(CT_BASE, ["pretrain.dataset=synthetic_ct", "pretrain.workers=3"])) \
        == result_sha256(pre)


def test_augmentation_must_keep_the_pretraining_input_size_too():
    crop = ["augment=[{name: RandomCrop, params: {height: 128, width: 128}}]"]
    recipe_from_text(CT_BASE, crop + ["input.image_size=[128, 128]", "pretrain.dataset=synthetic_ct"])
    with pytest.raises(RecipeError) as e:
        recipe_from_text(CT_BASE, crop + ["input.image_size=[128, 128]", "pretrain.dataset=synthetic_ct",
                                          "pretrain.image_size=[64, 64]"])
    assert "augment[0]" in str(e.value) and "pretrain.image_size [64, 64]" in str(e.value)


def test_pretrain_dataset_must_be_generated_and_fit_the_task(tmp_path, tiny_ct_project):
    from lepton_vision.config.cards import load_resolved

    recipe = tiny_ct_project(tmp_path)
    with pytest.raises(CardError) as e:
        load_resolved(recipe, ["pretrain.dataset=synthetic_road"])
    assert "pretrain.dataset" in str(e.value.problems) and "ct_phantom" in str(e.value.problems)
    with pytest.raises(CardError) as e:
        load_resolved(recipe, ["pretrain.dataset=covid_ct"])
    assert "not generated" in str(e.value.problems)


def test_weights_source_errors_name_the_path(tmp_path):
    from lepton_vision.models.finetune import resolve_weights_source

    with pytest.raises(RecipeError, match="no such file or directory.*nope"):
        resolve_weights_source("nope/model.weights.h5", tmp_path)
    (tmp_path / "empty_export").mkdir()
    with pytest.raises(RecipeError, match="directory without model.keras"):
        resolve_weights_source("empty_export", tmp_path)
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(RecipeError, match="neither a Keras .weights.h5"):
        resolve_weights_source("w.bin", tmp_path)
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "model.keras").write_bytes(b"k")
    assert resolve_weights_source(str(run), tmp_path) == run / "export" / "model.keras"
    assert resolve_weights_source("run/export", tmp_path) == run / "export" / "model.keras"


# ---------------------------------------------------------------------------------------------
# Start weights and layer-wise learning rates (TensorFlow)


def _tiny_detector(n_classes: int, seed: int):
    from lepton_vision.models.detectors import YoloV8Adapter
    from lepton_vision.config.recipe import DetectorSpec

    return YoloV8Adapter().build(DetectorSpec(size="tiny"), n_classes, (64, 64), seed)


@pytest.mark.tf
def test_detector_start_weights_whole_model_or_backbone(tmp_path):
    from lepton_vision.models.finetune import load_start_weights

    src = _tiny_detector(3, seed=1)
    path = tmp_path / "src.weights.h5"
    src.save_weights(str(path))
    same = _tiny_detector(3, seed=2)
    assert load_start_weights(same, path) == "model"
    assert all(np.array_equal(a, b) for a, b in zip(same.get_weights(), src.get_weights()))
    # Another class list: the head's shapes differ, the backbone still transfers.
    other = _tiny_detector(1, seed=2)
    head_before = [w.copy() for w in other.get_weights()]
    loaded = load_start_weights(other, path)
    assert loaded.startswith("backbone")
    assert all(np.array_equal(a, b) for a, b in zip(other.backbone.get_weights(), src.backbone.get_weights()))
    assert not all(np.array_equal(a, b) for a, b in zip(other.get_weights(), src.get_weights()[: len(head_before)]))
    # A previous export's model.keras works the same way.
    export = tmp_path / "run" / "export"
    export.mkdir(parents=True)
    src.save(export / "model.keras")
    from lepton_vision.models.finetune import resolve_weights_source

    fresh = _tiny_detector(3, seed=3)
    assert load_start_weights(fresh, resolve_weights_source(str(tmp_path / "run"), tmp_path)) == "model"
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), src.get_weights()))


@pytest.mark.tf
def test_classifier_start_weights_from_an_export_model(tmp_path):
    from lepton_vision.models.backbones import build_classifier
    from lepton_vision.models.finetune import load_start_weights

    src = build_classifier("small_cnn", (32, 32), 1, seed=1)
    src.save(tmp_path / "model.keras")
    dst = build_classifier("small_cnn", (48, 48), 1, seed=2)  # another input size: same variables
    assert load_start_weights(dst, tmp_path / "model.keras") == "model"
    assert all(np.array_equal(a, b) for a, b in zip(dst.get_weights(), src.get_weights()))
    wide = build_classifier("small_cnn", (32, 32), 1, width=2.0, seed=2)
    with pytest.raises(RecipeError, match="model.weights"):
        load_start_weights(wide, tmp_path / "model.keras")


@pytest.mark.tf
def test_layerwise_learning_rate_freezes_then_scales_the_backbone():
    import keras

    from lepton_vision.models.backbones import build_classifier
    from lepton_vision.models.finetune import backbone_variables, layerwise_optimizer

    x = np.random.default_rng(0).random((8, 32, 32, 1)).astype(np.float32)
    y = np.array([0, 1] * 4, np.float32).reshape(-1, 1)

    def run(scale: float, freeze_steps: int, steps: int):
        model = build_classifier("small_cnn", (32, 32), 1, dropout=0.0, seed=5)
        opt = layerwise_optimizer(keras.optimizers.SGD(learning_rate=0.1), model, scale, freeze_steps)
        model.compile(optimizer=opt, loss="binary_crossentropy")
        bb = {v.path for v in backbone_variables(model)}
        before = {v.path: np.array(v.numpy()) for v in model.trainable_variables}
        for _ in range(steps):
            model.train_on_batch(x, y)
        delta = {v.path: np.array(v.numpy()) - before[v.path] for v in model.trainable_variables}
        return bb, delta

    bb, frozen = run(1.0, freeze_steps=1, steps=1)
    assert bb and all(np.all(frozen[p] == 0) for p in bb)  # backbone untouched while frozen
    assert any(np.any(d != 0) for p, d in frozen.items() if p not in bb)  # the head learned
    _, full = run(1.0, freeze_steps=0, steps=1)
    _, half = run(0.5, freeze_steps=0, steps=1)
    for p in bb:  # plain SGD, one step: the update is exactly lr x scale x gradient
        np.testing.assert_allclose(half[p], 0.5 * full[p], rtol=1e-4, atol=1e-7)
    head = [p for p in full if p not in bb]
    for p in head:
        np.testing.assert_allclose(half[p], full[p], rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# The pretrain stage and runs that start from it


def _ct_project(tmp_path: Path, tiny_ct_project, monkeypatch) -> Path:
    recipe = tiny_ct_project(tmp_path)
    monkeypatch.setenv("LEPTON_GENERATED_ROOT", str(tmp_path / "generated"))
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path))
    monkeypatch.setenv("LEPTON_CACHE_DIR", str(tmp_path / "cache"))
    return recipe


CT_TINY = ["train.epochs=1", "cv.n_splits=2", "input.image_size=[32, 32]", "evaluate.n_bootstrap=20",
           "export.formats=[saved_model]", "export.parity_samples=4", "train.verbose=false"]
CT_PRE = ["pretrain.dataset=synthetic_ct", "pretrain.images=48", "pretrain.images_per_epoch=24",
          "pretrain.validation_images=16", "pretrain.workers=1", "pretrain.batch_size=8", "train.finetune.freeze_backbone_epochs=0.5",
          "train.finetune.backbone_lr_scale=0.5"]


@pytest.mark.tf
def test_ct_run_pretrains_once_caches_and_fine_tunes(tmp_path, tiny_ct_project, monkeypatch):
    from lepton_vision.engine.crossval import run_train

    recipe = _ct_project(tmp_path, tiny_ct_project, monkeypatch)
    run1 = run_train(recipe, CT_TINY + CT_PRE, out=tmp_path / "run1")
    start = json.loads((run1 / "start_weights.json").read_text())
    assert start["source"] == "pretrain" and start["loaded"] == "model" and start["reused_cache"] is False
    cache = Path(start["cache_dir"])
    assert cache.parent == tmp_path / "cache" / "pretrain"
    assert (cache / "weights.weights.h5").is_file() and (cache / "history.csv").is_file()
    rec = json.loads((run1 / "pretrain.json").read_text())
    assert rec["images"] == 48 and rec["epochs"] == 2 and rec["generator"] == "ct_phantom"
    assert rec["synthetic_validation"]["metric"] == "roc_auc" and rec["synthetic_validation"]["n_images"] == 16
    assert start["finetune"] == {"freeze_backbone_epochs": 0.5, "backbone_lr_scale": 0.5}
    bundle = json.loads((run1 / "export" / "bundle.json").read_text())
    assert bundle["training_start"]["source"] == "pretrain"
    assert bundle["training_start"]["pretrain"]["images"] == 48
    report = (run1 / "report.html").read_text()
    assert "<h2>Start point</h2>" in report and "48 generated images (ct_phantom" in report
    assert "at 32 x 32 input" in report
    # A second run reuses the cached weights: the worker count is not part of the result, and
    # the folds' weight averaging (refit and exported with it) is not part of pretraining.
    run2 = run_train(recipe, CT_TINY + CT_PRE + ["pretrain.workers=0", "train.optimizer.ema_momentum=0.9"],
                     out=tmp_path / "run2")
    start2 = json.loads((run2 / "start_weights.json").read_text())
    assert start2["reused_cache"] is True and start2["key"] == start["key"] and start2["sha256"] == start["sha256"]
    assert len([p for p in (tmp_path / "cache" / "pretrain").iterdir()]) == 1
    assert json.loads((run2 / "export" / "bundle.json").read_text())["training_start"]["source"] == "pretrain"
    # More generated images: another pretraining.
    from lepton_vision.config.cards import load_resolved
    from lepton_vision.engine.pretrain import prepare_start, pretrain_key

    k1, _ = pretrain_key(load_resolved(recipe, CT_TINY + CT_PRE))
    k2, _ = pretrain_key(load_resolved(recipe, CT_TINY + CT_PRE + ["pretrain.images=64"]))
    assert k1 == start["key"] and k2 != k1
    # The fine-tuning learning rate is the pretraining one unless pretrain.learning_rate is set.
    k3, _ = pretrain_key(load_resolved(recipe, CT_TINY + CT_PRE + ["train.optimizer.learning_rate=0.0005"]))
    lr = float(rec["learning_rate"])
    own = ["pretrain.learning_rate=" + repr(lr)]
    k4, _ = pretrain_key(load_resolved(recipe, CT_TINY + CT_PRE + own))
    k5, _ = pretrain_key(load_resolved(recipe, CT_TINY + CT_PRE + own + ["train.optimizer.learning_rate=0.0005"]))
    assert k3 != k1 and k4 == k5 == k1
    # pretrain.image_size: the key holds the size the weights were trained at, not the folds'
    # size, so folds at a larger input reuse this 32 x 32 pretraining and load the whole model.
    larger = CT_TINY + CT_PRE + ["input.image_size=[48, 48]"]
    k6, _ = pretrain_key(load_resolved(recipe, larger + ["pretrain.image_size=[32, 32]"]))
    k7, _ = pretrain_key(load_resolved(recipe, larger))
    assert k6 == k1 and k7 != k1
    (tmp_path / "run3").mkdir()
    start3 = prepare_start(load_resolved(recipe, larger + ["pretrain.image_size=[32, 32]"]), tmp_path / "run3",
                           progress=False)
    assert start3["reused_cache"] is True and start3["key"] == k1 and start3["loaded"] == "model"


@pytest.mark.tf
def test_run_starts_from_a_previous_runs_export(tmp_path, tiny_ct_project, monkeypatch, tiny_ct_run):
    from lepton_vision.engine.crossval import run_train

    recipe = _ct_project(tmp_path, tiny_ct_project, monkeypatch)
    first = tiny_ct_run["run"]  # the session's shared tiny CT run: same model, input and classes
    second = run_train(recipe, CT_TINY + [f"model.weights={first / 'export'}"], out=tmp_path / "second")
    start = json.loads((second / "start_weights.json").read_text())
    assert start["source"] == "export" and start["loaded"] == "model"
    assert start["path"] == str((first / "export" / "model.keras").resolve())
    bundle = json.loads((second / "export" / "bundle.json").read_text())
    assert bundle["training_start"] == {k: start[k] for k in ("source", "sha256", "loaded", "finetune")} | {
        "file": "model.keras"}
    first_bundle = json.loads((first / "export" / "bundle.json").read_text())
    assert first_bundle["training_start"] == {"source": "random"}


@pytest.mark.tf
def test_detection_pretrain_stage_streams_road_scenes(tmp_path, monkeypatch):
    from lepton_vision.config.cards import load_resolved
    from lepton_vision.engine.pretrain import ensure_pretrained, prepare_start

    for d in ("tasks", "datasets", "recipes"):
        shutil.copytree(REPO / d, tmp_path / d)
    monkeypatch.setenv("LEPTON_GENERATED_ROOT", str(tmp_path / "generated"))
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path))
    monkeypatch.setenv("LEPTON_CACHE_DIR", str(tmp_path / "cache"))
    recipe = tmp_path / "recipes/obstacle_detection/baseline.yaml"
    # Pretrained at half the folds' input size (pretrain.image_size), fine-tuned at 64 x 192.
    overrides = ["input.image_size=[64, 192]", "train.batch_size=8", "train.verbose=false",
                 "pretrain.dataset=synthetic_road", "pretrain.images=32", "pretrain.images_per_epoch=16",
                 "pretrain.validation_images=8", "pretrain.frame_size=[240, 80]", "pretrain.workers=0",
                 "pretrain.image_size=[32, 96]",
                 # Mosaic tiles other streamed frames, at the pretraining size here and 64 x 192 later.
                 "augment=[{name: Mosaic, p: 0.5}, {name: HorizontalFlip, p: 0.5}]"]
    resolved = load_resolved(recipe, overrides)
    res = ensure_pretrained(resolved, progress=False)
    assert not res.reused
    rec = res.record
    assert rec["generator_classes"] == ["car", "pedestrian", "cyclist"] and rec["classes_match_task"] is True
    assert rec["synthetic_validation"]["metric"] == "ap50" and rec["synthetic_validation"]["n_boxes"] > 0
    assert np.isfinite(rec["final_loss"])
    assert rec["payload"]["input"]["image_size"] == rec["image_size"] == [32, 96]
    assert not list((tmp_path / "cache" / "pretrain").glob(".*tmp*"))  # no half-written folder left
    start = prepare_start(resolved, tmp_path, progress=False)
    assert start["reused_cache"] is True and start["loaded"] == "model"
    # The person task has one class: only the backbone of the road model fits.
    person = load_resolved(tmp_path / "recipes/person_detection/baseline.yaml",
                           ["input.image_size=[64, 192]", f"model.weights={res.weights}"])
    (tmp_path / "p").mkdir()
    start = prepare_start(person, tmp_path / "p", progress=False)
    assert start["source"] == "weights_file" and start["loaded"].startswith("backbone")


def test_cli_pretrain_without_a_pretrain_section_is_a_clear_error(capsys):
    from lepton_vision.cli import main

    rc = main(["pretrain", str(REPO / "recipes/ct_screening/baseline.yaml")])
    assert rc == 1  # a user error (LeptonError): message, no traceback
    assert "has no pretrain: section" in capsys.readouterr().err


@pytest.mark.tf
def test_failed_pretraining_names_the_images_and_leaves_no_cache_entry(tmp_path, tiny_ct_project, monkeypatch):
    from lepton_vision.engine import pretrain
    from lepton_vision.config.cards import load_resolved
    from lepton_vision.config.errors import LeptonError

    recipe = _ct_project(tmp_path, tiny_ct_project, monkeypatch)
    real = pretrain.render_job
    calls = {"n": 0}

    def flaky(stream, start, stop):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("renderer crashed")
        return real(stream, start, stop)

    monkeypatch.setattr(pretrain, "render_job", flaky)
    resolved = load_resolved(recipe, CT_TINY + CT_PRE + ["pretrain.workers=0"])
    with pytest.raises(LeptonError, match=r"rendering generated images 16\.\.23 of 'ct_phantom' failed: RuntimeError"):
        pretrain.ensure_pretrained(resolved, progress=False)
    assert list((tmp_path / "cache" / "pretrain").iterdir()) == []  # neither weights nor a half-written folder


def test_kitti_recipe_streams_kitti_style_road_scenes_and_older_stages_keep_their_keys():
    """kitti_pretrained.yaml pretrains on synthetic_road_kitti (amodal boxes, perspective cars,
    parked rows); a stage on synthetic_road hashes exactly the fields it hashed before those existed."""
    from lepton_vision.config.cards import load_resolved
    from lepton_vision.engine.pretrain import pretrain_key, render_job, stream_spec

    recipe = REPO / "recipes/obstacle_detection/kitti_pretrained.yaml"
    kitti = load_resolved(recipe, ["pretrain.images=8", "pretrain.validation_images=0"])
    stream = stream_spec(kitti)
    assert {k: stream.synthetic[k] for k in ("boxes", "min_visible", "car_model", "parked_rows")} == {
        "boxes": "amodal", "min_visible": 0.25, "car_model": "perspective", "parked_rows": 0.6}
    part = render_job(stream, 0, 4)
    # rendered and trained at 416x128 (the folds fine-tune at the recipe's 640x192)
    assert part["images"].shape == (4, 128, 416, 3)
    assert kitti.recipe.pretrain.image_size == (128, 416) and kitti.recipe.input.image_size == (192, 640)
    for boxes in part["boxes"]:
        assert ((boxes[:, 2:] > boxes[:, :2]) & (boxes[:, 2:] <= [416, 128]) & (boxes[:, :2] >= 0)).all()
    old = load_resolved(recipe, ["pretrain.dataset=synthetic_road"])
    assert set(pretrain_key(old)[1]["generator"]) == {
        "generator", "n_images", "frame_size", "empty_fraction", "sequence_length", "n_patients",
        "slices_per_patient", "image_size", "abnormal_patient_fraction", "seed", "randomization", "layout"}
    assert pretrain_key(old)[0] != pretrain_key(load_resolved(recipe))[0]


def test_render_workers_end_when_the_training_process_is_killed(tmp_path):
    """A training process killed outright never shuts its pool down: the render workers notice
    their parent is gone and exit instead of waiting on their queue for ever."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "trainer.py"
    script.write_text(
        "import os, time\n"
        "from lepton_vision.engine.pretrain import render_pool\n"
        "if __name__ == '__main__':\n"
        "    pool = render_pool(1)  # the pool ImageStream renders in\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            cwd=str(REPO))
    worker = int(proc.stdout.readline())

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # a zombie (exited, not yet reaped by its new parent) counts as gone
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    assert alive(worker)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 20
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert not alive(worker), "the render worker outlived the killed training process"
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGKILL)

"""final.mode average: the fold models' mean score as one Keras model, exported like any final model.

Two tiny fold classifiers (different seeds) become one ensemble; it scores the mean of theirs,
saves and loads as model.keras, has pooled features for the OOD reference and a Grad-CAM (the
mean of its members' maps), and its export passes parity (Keras vs SavedModel vs TFLite) with
the Predictor and plain TensorFlow reproducing the Keras scores within 1e-4.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.tf

SIZE = (32, 32)


@pytest.fixture(scope="module")
def folds():
    from lepton_vision.models.backbones import build_classifier

    return [build_classifier("small_cnn", SIZE, 1, weights="none", dropout=0.2, seed=s) for s in (1, 2)]


def test_the_ensemble_scores_the_mean_and_survives_save_and_load(folds, tmp_path):
    import keras

    from lepton_vision.kinds.classification.explain import gradcam_with_scores
    from lepton_vision.kinds.classification.model import average_models, ensemble_members, feature_model
    from lepton_vision.runio import atomic_save_model

    x = np.random.default_rng(0).random((5, *SIZE, 1), dtype=np.float32)
    ens = average_models(folds)
    each = [np.asarray(m(x, training=False)).reshape(-1) for m in folds]
    np.testing.assert_allclose(np.asarray(ens(x, training=False)).reshape(-1), np.mean(each, axis=0), atol=1e-6)
    assert np.abs(each[0] - each[1]).max() > 1e-4  # two different models, so the mean is not either one
    atomic_save_model(ens, tmp_path / "model.keras")
    back = keras.models.load_model(tmp_path / "model.keras", compile=False)
    np.testing.assert_allclose(np.asarray(back(x, training=False)).reshape(-1), np.mean(each, axis=0), atol=1e-6)
    feats = np.asarray(feature_model(back)(x, training=False))
    pooled = [np.asarray(keras.Model(m.input, m.get_layer("pool").output)(x, training=False)) for m in folds]
    np.testing.assert_allclose(feats, np.concatenate(pooled, axis=1), atol=1e-6)
    assert [m.name for m in ensemble_members(back)] == ["fold_0", "fold_1"]
    heat, scores = gradcam_with_scores(back, x)
    assert heat.shape == (5, *SIZE) and np.isfinite(heat).all() and heat.max() <= 1.0
    np.testing.assert_allclose(scores, np.mean(each, axis=0), atol=1e-6)


def test_the_average_export_passes_parity_and_serves_the_keras_scores(folds, tmp_path):
    import tensorflow as tf

    from lepton_vision import Predictor
    from lepton_vision.data import preprocess
    from lepton_vision.kinds.classification.export import export_classifier
    from lepton_vision.kinds.classification.model import average_models

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (40 + 4 * i, 36, 1), dtype=np.uint8) for i in range(6)]
    ens = average_models(folds)
    out = tmp_path / "export"
    info = {"task": "ct_screening", "classes": ["normal", "abnormal"], "positive_class": "abnormal",
            "threshold_policy": "max_f1"}
    result = export_classifier(ens, out, image_size_hw=SIZE, channels=1, window=None, threshold=0.5,
                               bundle_info=info, parity_images=images[:4], formats=("saved_model", "tflite"))
    parity = json.loads((out / "parity.json").read_text())
    assert parity["pass"] is True and result["parity"]["pass"] is True
    assert {"keras", "saved_model", "tflite"} <= set(parity["backends"])
    want = [float(np.asarray(ens(preprocess.to_model_input(im, SIZE)[None], training=False)).reshape(-1)[0])
            for im in images]
    for backend in ("saved_model", "tflite"):
        p = Predictor.from_bundle(out, backend=backend, ood=False)
        got = [p.predict(im).score for im in images]
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=backend)
    sm = tf.saved_model.load(str(out / "saved_model"))
    plain = [float(np.asarray(sm.signatures["serve_uint8"](image=tf.constant(im))["score"]).reshape(-1)[0])
             for im in images]
    np.testing.assert_allclose(plain, want, atol=1e-4)


def test_the_engine_saves_the_average_as_the_final_model(folds, tmp_path):
    """bookkeeping.final_model with final.mode average: every fold's best.keras, averaged by the
    kind, saved as final/model.keras with final.json naming the folds; loaded again on resume."""
    from lepton_vision.config.recipe import recipe_from_text
    from lepton_vision.engine.bookkeeping import final_model
    from lepton_vision.kinds.classification.kind import ClassificationKind
    from lepton_vision.runio import RunDir, atomic_save_model

    kind = ClassificationKind()
    run = RunDir(tmp_path / "run")
    for k, m in enumerate(folds):
        run.fold_dir(k).mkdir(parents=True)
        atomic_save_model(m, run.fold_dir(k) / "best.keras")
    recipe = recipe_from_text("schema_version: 1\nname: t\ntask: ct_screening\ndataset: synthetic_ct\n",
                              ["final.mode=average"])
    results = {k: {"fold": k, "best_val_auc": 0.5 + 0.1 * k, "best_epoch": 1} for k in (0, 1)}

    def refit(epochs):
        raise AssertionError("average mode must not refit")

    model = final_model(run, recipe, results, "best_val_auc", 10, refit=refit, load=kind.load_model,
                        average=kind.average_models)
    info = json.loads((run.final_dir / "final.json").read_text())
    assert info["mode"] == "average" and info["folds"] == [0, 1]
    x = np.random.default_rng(1).random((3, *SIZE, 1), dtype=np.float32)
    want = np.mean([np.asarray(m(x, training=False)).reshape(-1) for m in folds], axis=0)
    np.testing.assert_allclose(np.asarray(model(x, training=False)).reshape(-1), want, atol=1e-6)
    again = final_model(run, recipe, results, "best_val_auc", 10, refit=refit, load=kind.load_model,
                        average=kind.average_models)  # resume: loaded, not rebuilt
    np.testing.assert_allclose(np.asarray(again(x, training=False)).reshape(-1), want, atol=1e-6)
    with pytest.raises(Exception, match="not available for this kind"):
        final_model(RunDir(tmp_path / "other"), recipe, results, "best_val_auc", 10, refit=refit,
                    load=kind.load_model, average=None)

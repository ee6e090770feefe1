"""Training one fold: it learns, it is reproducible, it fails loudly, it writes its files.

The task is tiny and separable (a bright 8x8 square on noise vs noise only, 32x32x1) so small_cnn
reaches a high validation AUC in a few epochs on 2 CPU cores.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lepton_vision.config.errors import DataError, TrainError
from lepton_vision.config.recipe import Recipe

pytestmark = pytest.mark.tf

SIZE = 32


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.3, (n, SIZE, SIZE, 1)).astype(np.float32)
    y = np.arange(n) % 2
    for i in np.flatnonzero(y):
        r, c = rng.integers(2, SIZE - 10, 2)
        x[i, r : r + 8, c : c + 8] = 1.0
    return x, y


def _recipe(**train) -> Recipe:
    spec = {
        "epochs": 4,
        "batch_size": 16,
        "optimizer": {"learning_rate": 3e-3},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
        "early_stopping": {"enabled": True, "patience": 3},
        "verbose": True,
    }
    spec.update(train)
    augment = [
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "RandomBrightnessContrast", "p": 0.5, "params": {"brightness_limit": 0.1}},
    ]
    return Recipe.model_validate(
        {"schema_version": 1, "name": "t", "task": "t", "dataset": "d", "seed": 5,
         "augment": augment, "train": spec}
    )


def _builder(seed: int = 5):
    from lepton_vision.models.backbones import build_classifier

    return lambda: build_classifier("small_cnn", (SIZE, SIZE), 1, dropout=0.1, seed=seed)


@pytest.fixture(scope="module")
def data():
    (tx, ty), (vx, vy) = _data(64, 0), _data(32, 1)
    return tx, ty, vx, vy


@pytest.fixture(scope="module")
def first_fit(data, tmp_path_factory):
    from lepton_vision.backend import configure_devices
    from lepton_vision.kinds.classification.train import fit_fold

    configure_devices(5)
    out = tmp_path_factory.mktemp("fold1")
    return fit_fold(_builder(), *data, _recipe(), out, fold_label="fold 1/2"), out


def test_learns_and_writes_files(first_fit, data, capsys):
    from lepton_vision.backend import import_keras
    from lepton_vision.kinds.classification.train import predict_scores

    result, out = first_fit
    assert result.best_score > 0.9
    assert 1 <= result.best_epoch <= result.epochs_run <= 4
    hist = pd.read_csv(out / "history.csv")
    assert len(hist) == result.epochs_run == len(result.history)
    pd.testing.assert_frame_equal(hist, result.history, check_dtype=False, atol=1e-9)
    assert {"loss", "auc", "val_loss", "val_auc", "lr"} <= set(result.history.columns)
    # every epoch's cost: wall time, training images/s, peak RSS (no GPU here, so no GPU column)
    assert {"seconds", "images_per_s", "peak_rss_mb"} <= set(hist.columns) and "peak_gpu_mb" not in hist
    assert (hist["seconds"] > 0).all() and (hist["images_per_s"] > 0).all()
    assert (hist["peak_rss_mb"] > 100).all() and hist["peak_rss_mb"].is_monotonic_increasing
    assert result.history["epoch"].tolist() == list(range(1, result.epochs_run + 1))
    assert result.history["val_auc"].max() == pytest.approx(result.best_score)
    assert any((out / "tb").rglob("events.out.tfevents*"))
    # best.keras is exactly the returned (best-epoch) model.
    _, keras = import_keras()
    reloaded = keras.models.load_model(out / "best.keras", compile=False)
    vx = data[2]
    np.testing.assert_allclose(
        predict_scores(reloaded, vx), predict_scores(result.model, vx), atol=1e-6
    )
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(data[3], predict_scores(result.model, vx)) == pytest.approx(result.best_score)


def test_same_seed_same_scores(first_fit, data, tmp_path):
    from lepton_vision.backend import configure_devices
    from lepton_vision.kinds.classification.train import fit_fold, predict_scores

    configure_devices(5)
    again = fit_fold(_builder(), *data, _recipe(), tmp_path, fold_label="fold 1/2")
    first = first_fit[0]
    np.testing.assert_allclose(
        predict_scores(again.model, data[2]), predict_scores(first.model, data[2]), atol=1e-6
    )
    # the same losses and metrics every epoch; the cost columns are timings and memory, not results
    from lepton_vision.evaluate.report import COST_COLUMNS

    pd.testing.assert_frame_equal(again.history.drop(columns=list(COST_COLUMNS), errors="ignore"),
                                  first.history.drop(columns=list(COST_COLUMNS), errors="ignore"), atol=1e-6)


def test_nan_loss_is_a_train_error(data, tmp_path):
    from lepton_vision.kinds.classification.train import fit_fold

    tx, ty, vx, vy = data
    bad = tx.copy()
    bad[3] = np.nan
    with pytest.raises(TrainError, match=r"fold 3/5: the loss became NaN/inf in epoch 1, by batch \d+") as e:
        fit_fold(_builder(), bad, ty, vx, vy, _recipe(epochs=2), tmp_path, fold_label="fold 3/5")
    assert "learning_rate" in str(e.value) and "clipnorm" in str(e.value)


def test_one_class_validation_is_a_data_error(data, tmp_path):
    from lepton_vision.kinds.classification.train import fit_fold

    tx, ty, vx, vy = data
    with pytest.raises(DataError, match="fold 2/5: the validation set has only class 1"):
        fit_fold(_builder(), tx, ty, vx[vy == 1], vy[vy == 1], _recipe(), tmp_path, fold_label="fold 2/5")


def test_fit_final_sgd_plateau_no_class_weight(data, tmp_path):
    from lepton_vision.kinds.classification.train import fit_final, predict_scores

    tx, ty, _, _ = data
    recipe = _recipe(
        optimizer={"name": "sgd", "learning_rate": 0.01, "clipnorm": None},
        schedule={"name": "reduce_on_plateau", "patience": 1},
        class_weight="none",
        verbose=False,
    )
    model = fit_final(_builder(), tx, ty, recipe, tmp_path, epochs=2)
    assert len(pd.read_csv(tmp_path / "history.csv")) == 2
    assert type(model.optimizer).__name__ == "SGD"
    scores = predict_scores(model, tx[:5])
    assert scores.shape == (5,) and np.all(np.isfinite(scores))


def test_weight_average_is_what_validation_and_the_best_epoch_see(data, tmp_path):
    from lepton_vision.kinds.classification.train import fit_fold

    # A momentum this close to 1 keeps the average at the start weights: the weights that are
    # validated and returned stay those of a fresh model while the training weights learn.
    recipe = _recipe(epochs=3, optimizer={"learning_rate": 3e-3, "ema_momentum": 0.9999999},
                     early_stopping={"enabled": False})
    res = fit_fold(_builder(), *data, recipe, tmp_path, fold_label="fold 1/1")
    def trainable(model):  # BatchNorm statistics are not averaged (not trained by the optimizer)
        return [np.asarray(v) for v in model.trainable_weights]

    # Keras starts the average at the weights after the first step (here one Adam step of at most
    # the first warm-up rate, 7.5e-4): it stays there, within 1e-3 of the start weights.
    start = trainable(_builder()())
    assert all(np.allclose(a, b, atol=1e-3) for a, b in zip(trainable(res.model), start))
    assert res.history["val_loss"].max() - res.history["val_loss"].min() < 1e-4  # validated: the average
    assert res.history["loss"].iloc[-1] < res.history["loss"].iloc[0]  # the training weights moved
    plain = fit_fold(_builder(), *data, _recipe(epochs=3, early_stopping={"enabled": False}), tmp_path / "p",
                     fold_label="fold 1/1")
    assert not all(np.allclose(a, b, atol=1e-3) for a, b in zip(trainable(plain.model), start))


def test_cosine_schedule_values_and_config():
    from lepton_vision.backend import import_keras
    from lepton_vision.engine.optim import WarmupCosine, make_optimizer

    _, keras = import_keras()
    s = WarmupCosine(1.0, warmup_steps=10, total_steps=110)
    value = lambda step: float(s(step))  # noqa: E731
    assert value(0) == pytest.approx(0.1)  # first warm-up step is not wasted at 0
    assert value(4) == pytest.approx(0.5)
    assert value(9) == pytest.approx(1.0)  # warm-up end
    assert value(10) == pytest.approx(1.0)
    assert value(60) == pytest.approx(0.5)  # half-way through the decay
    assert value(35) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert value(110) == pytest.approx(0.0, abs=1e-7)  # end
    assert value(500) == pytest.approx(0.0, abs=1e-7)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
    assert isinstance(clone, WarmupCosine) and clone.get_config() == s.get_config()
    # Steps come from len(train) / batch_size: 64 images, batch 16 -> 4 steps/epoch.
    opt = make_optimizer(_recipe(epochs=5), n_train=64, epochs=5)
    assert opt.learning_rate is not None
    sched = opt._learning_rate
    assert (sched.warmup_steps, sched.total_steps, sched.peak_lr) == (4, 20, 3e-3)
    assert float(make_optimizer(_recipe(schedule={"name": "constant"}), 64, 5).learning_rate) == (
        pytest.approx(3e-3)
    )


def test_make_dataset_augmentation_reproducible(data):
    from lepton_vision.data.augment import build_augment
    from lepton_vision.data.pipeline import make_dataset

    tx, ty, _, _ = data
    ops = [op.model_dump() for op in _recipe().augment]

    def epochs(seed: int, n: int = 2) -> list[np.ndarray]:
        ds = make_dataset(tx, ty, 16, training=True, augment=build_augment(ops, seed), seed=seed)
        return [np.concatenate([x.numpy() for x, _ in ds]) for _ in range(n)]

    before = tx.copy()
    a, b, c = epochs(1), epochs(1), epochs(2)
    np.testing.assert_array_equal(tx, before)  # augmentation works on copies
    for ea, eb in zip(a, b):
        np.testing.assert_array_equal(ea, eb)
    assert not np.array_equal(a[0], a[1])  # new order and new augmentations each epoch
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == tx.shape and a[0].dtype == np.float32
    assert 0.0 <= a[0].min() and a[0].max() <= 1.0
    # One seed per batch, but each image of the batch draws its own transform from that stream.
    same = np.repeat(tx[:1], 16, axis=0)
    ds = make_dataset(same, np.arange(16) % 2, 16, training=True, augment=build_augment(ops, 3), seed=3)
    xb = np.concatenate([x.numpy() for x, _ in ds])
    assert len({xb[j].tobytes() for j in range(16)}) >= 4  # one shared transform would give 1
    # 2-core CPU host: the inline pipeline runs with tf.data's autotuner off (it stalled epochs).
    from lepton_vision.data.pipeline import _parallel_input

    if not _parallel_input():
        assert ds.options().autotune.enabled is False
    # Not training: original order, no augmentation, labels and weights come along.
    w = np.linspace(0.5, 2.0, len(ty)).astype(np.float32)
    ds = make_dataset(tx, ty, 16, training=False, augment=build_augment(ops, 1), sample_weights=w)
    xs, ys, ws = (np.concatenate(p) for p in zip(*[(x.numpy(), y.numpy(), s.numpy()) for x, y, s in ds]))
    np.testing.assert_array_equal(xs, tx)
    np.testing.assert_array_equal(ys[:, 0], ty)
    np.testing.assert_array_equal(ws, w)


def test_make_dataset_rejects_bad_input(data):
    from lepton_vision.data.pipeline import make_dataset

    tx, ty, _, _ = data
    with pytest.raises(DataError, match="float32"):
        make_dataset(tx.astype(np.float64), ty, 8, training=False)
    with pytest.raises(DataError, match="labels"):
        make_dataset(tx, ty[:-1], 8, training=False)


def test_predict_scores_batches(first_fit, data):
    from lepton_vision.kinds.classification.train import predict_scores

    model = first_fit[0].model
    vx = data[2][:13]
    scores = predict_scores(model, vx, batch_size=5)
    assert scores.dtype == np.float64 and scores.shape == (13,)
    np.testing.assert_allclose(scores, np.asarray(model(vx, training=False))[:, 0], atol=1e-6)
    assert predict_scores(model, vx[:0]).shape == (0,)


def test_load_images_decodes_once_like_preprocess(tmp_path):
    import cv2

    from lepton_vision.data.pipeline import load_images
    from lepton_vision.data.preprocess import load_for_model

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8))
        paths.append(str(p))
    out = load_images(paths, (24, 20), 1, None, 10_000_000, progress=True)
    assert out.shape == (3, 24, 20, 1) and out.dtype == np.float32
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(out[i], load_for_model(p, (24, 20), 1, None, 10_000_000))
    with pytest.raises(DataError):
        load_images([str(tmp_path / "missing.png")], (24, 20), 1, None, 10_000_000, progress=False)


def test_recompute_bn_statistics_sets_moving_stats_to_the_data():
    """Precise BN: after the call the moving mean/variance are the training data's statistics,
    whatever they were, and the layer's momentum is restored."""
    import keras

    from lepton_vision.kinds.classification.train import recompute_bn_statistics

    inp = keras.Input((4, 4, 2))
    bn = keras.layers.BatchNormalization(momentum=0.9)
    model = keras.Model(inp, bn(inp))
    rng = np.random.default_rng(0)
    x = (rng.normal(3.0, 2.0, (512, 4, 4, 2))).astype(np.float32)
    assert recompute_bn_statistics(model, x, batch_size=128) == 1
    np.testing.assert_allclose(np.asarray(bn.moving_mean), x.mean(axis=(0, 1, 2)), atol=1e-4)
    # equal-size batches: the mean of per-batch variances (the within-batch part of the variance)
    per_batch = [x[i : i + 128].var(axis=(0, 1, 2)) for i in range(0, 512, 128)]
    np.testing.assert_allclose(np.asarray(bn.moving_variance), np.mean(per_batch, axis=0), rtol=1e-4)
    assert bn.momentum == 0.9
    no_bn = keras.Model(inp, keras.layers.Dense(1)(inp))
    assert recompute_bn_statistics(no_bn, x) == 0

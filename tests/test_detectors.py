"""detectors: YOLOv8's distribution focal loss (DFL), which keras-cv's YOLOv8 trains without, and
Ultralytics' head bias initialisation."""

from __future__ import annotations

import numpy as np
import pytest

from lepton_vision.config.recipe import DetectorSpec


def _peaked(masses: dict[int, float]) -> np.ndarray:
    """Logits over the 16 distance bins with (nearly) these masses."""
    p = np.full(16, 1e-9)
    for k, v in masses.items():
        p[k] = v
    return np.log(p / p.sum())


def test_dfl_targets_the_two_bins_around_the_distance():
    from lepton_vision.models.detectors import dfl_per_anchor

    def loss(edge_logits, t):
        logits = np.tile(edge_logits, 4)[None, None].astype(np.float32)  # [1, 1, 64]
        return float(np.asarray(dfl_per_anchor(logits, np.full((1, 1, 4), t, np.float32)))[0, 0])

    entropy = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    # 3.25 lies between bins 3 and 4 with weights 0.75 / 0.25: those masses give the minimum, the entropy.
    assert loss(_peaked({3: 0.75, 4: 0.25}), 3.25) == pytest.approx(entropy, abs=1e-4)
    assert loss(_peaked({3: 1.0}), 3.25) > loss(_peaked({3: 0.75, 4: 0.25}), 3.25) + 1.0
    assert loss(_peaked({3: 0.25, 4: 0.75}), 3.25) > entropy + 0.5
    # Distances beyond the last bin count as the last bin (15 is out of range: 14.99).
    assert loss(_peaked({14: 0.01, 15: 0.99}), 40.0) == pytest.approx(
        -(0.01 * np.log(0.01) + 0.99 * np.log(0.99)), abs=1e-3)


def _batch():
    rng = np.random.default_rng(0)
    x = (rng.random((2, 64, 96, 3)) * 255).astype("float32")
    y = {"boxes": np.array([[[10, 8, 42, 50], [50, 20, 90, 60]], [[5, 5, 30, 40], [-1, -1, -1, -1]]], "float32"),
         "classes": np.array([[1, 0], [2, -1]], "float32")}
    return x, y


def test_dfl_adds_exactly_its_weighted_term_to_keras_cvs_loss_and_trains():
    import keras

    from lepton_vision.models.detectors import YoloV8Adapter

    adapter = YoloV8Adapter()
    x, y = _batch()
    spec = DetectorSpec(size="tiny")
    model = adapter.build(spec, 3, (64, 96), 0)
    adapter.compile(model, spec, keras.optimizers.Adam(1e-3))
    y_pred = model(x)
    base = float(model.compute_loss(x=x, y=y, y_pred=y_pred))  # keras-cv's own CIoU + BCE

    with_dfl = DetectorSpec(size="tiny", dfl_loss_weight=2.0)
    adapter.compile(model, with_dfl, keras.optimizers.Adam(1e-3))
    tracker = next(m for m in model.metrics if m.name == "dfl_loss")
    tracker.reset_state()
    total = float(model.compute_loss(x=x, y=y, y_pred=y_pred))
    dfl = float(tracker.result())
    assert dfl > 0.5  # an untrained head spreads every edge over the bins
    assert total == pytest.approx(base + 2.0 * dfl, rel=1e-5)

    model.run_eagerly = True  # a few steps: eager beats tracing the train step (kinds/detection/train.py)
    history = model.fit(x, y, epochs=8, batch_size=2, verbose=0).history
    assert history["dfl_loss"][-1] < history["dfl_loss"][0]
    assert history["loss"][0] == pytest.approx(
        history["box_loss"][0] + history["class_loss"][0] + 2.0 * history["dfl_loss"][0], rel=1e-4)


def test_dfl_off_by_default_keeps_old_keys(tmp_path, monkeypatch):
    """Off (the default), the field is left out of the result hash and the pretrain cache key, so
    runs and pretrained caches made before it existed still match."""
    from pathlib import Path

    from lepton_vision.config.cards import load_resolved
    from lepton_vision.engine.pretrain import pretrain_key
    from lepton_vision.config.recipe import _LATER_FIELDS, result_sha256

    monkeypatch.setenv("LEPTON_GENERATED_ROOT", str(tmp_path / "generated"))
    recipe = Path(__file__).resolve().parents[1] / "recipes/obstacle_detection/baseline.yaml"
    base = ["pretrain.dataset=synthetic_road", "pretrain.images=32"]
    off = load_resolved(recipe, base)
    on = load_resolved(recipe, [*base, "model.detector.dfl_loss_weight=1.5"])
    assert off.recipe.model.detector.dfl_loss_weight == 0.0
    (k_off, p_off), (k_on, p_on) = pretrain_key(off), pretrain_key(on)
    assert "dfl_loss_weight" not in p_off["model"]["detector"] and p_on["model"]["detector"]["dfl_loss_weight"] == 1.5
    assert k_off != k_on
    assert _LATER_FIELDS["model.detector.dfl_loss_weight"] == 0.0
    assert result_sha256(off.recipe) != result_sha256(on.recipe)


def test_prior_head_biases_start_near_five_objects_per_image(tmp_path, monkeypatch):
    """head_bias_init prior: each head's class logits at Ultralytics' log(5 / nc / (640 / s)^2), box
    logits 1.0, the rest of the network as with zeros; the initial scores are then tiny instead
    of 0.5. The default keeps keras-cv's zeros and the old hash and pretrain key."""
    import math
    from pathlib import Path

    from lepton_vision.config.cards import load_resolved
    from lepton_vision.config.recipe import result_sha256
    from lepton_vision.engine.pretrain import pretrain_key
    from lepton_vision.models.detectors import HEAD_STRIDES, YoloV8Adapter

    adapter = YoloV8Adapter()
    zeros = adapter.build(DetectorSpec(size="tiny"), 3, (64, 96), 0)
    prior = adapter.build(DetectorSpec(size="tiny", head_bias_init="prior"), 3, (64, 96), 0)
    for i, stride in enumerate(HEAD_STRIDES, start=1):
        cls_bias = prior.get_layer(f"yolo_v8_head_{i}_class_3_conv").get_weights()[1]
        assert cls_bias.shape == (3,)
        np.testing.assert_allclose(cls_bias, math.log(5 / 3 / (640 / stride) ** 2), rtol=1e-6)
        np.testing.assert_array_equal(prior.get_layer(f"yolo_v8_head_{i}_box_3_conv").get_weights()[1], 1.0)
        assert not zeros.get_layer(f"yolo_v8_head_{i}_class_3_conv").get_weights()[1].any()
    # same seed: every other weight is identical
    changed = [w.path for w, v in zip(prior.weights, zeros.weights)
               if not np.array_equal(np.asarray(w), np.asarray(v))]
    assert changed and all("_3_conv" in name and "bias" in name for name in changed)
    x, _ = _batch()
    assert float(np.asarray(zeros(x)["classes"]).mean()) == pytest.approx(0.5, abs=0.1)
    assert float(np.asarray(prior(x)["classes"]).max()) < 0.05

    monkeypatch.setenv("LEPTON_GENERATED_ROOT", str(tmp_path / "generated"))
    recipe = Path(__file__).resolve().parents[1] / "recipes/obstacle_detection/baseline.yaml"
    base = ["pretrain.dataset=synthetic_road", "pretrain.images=32", "model.detector.head_bias_init=zeros"]
    off = load_resolved(recipe, base)
    on = load_resolved(recipe, [*base[:2], "model.detector.head_bias_init=prior"])
    (k_off, p_off), (k_on, _) = pretrain_key(off), pretrain_key(on)
    assert "head_bias_init" not in p_off["model"]["detector"] and k_off != k_on
    assert result_sha256(off.recipe) != result_sha256(on.recipe)


TWO_REPLICAS = """
import json, numpy as np
from lepton_vision.backend import import_keras
tf, keras = import_keras()
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from lepton_vision.models.detectors import YoloV8Adapter
from lepton_vision.config.recipe import DetectorSpec
x = (np.random.default_rng(0).random((2, 64, 96, 3)) * 255).astype("float32")
y = {"boxes": np.array([[[10, 8, 42, 50], [50, 20, 90, 60]], [[5, 5, 30, 40], [-1, -1, -1, -1]]], "float32"),
     "classes": np.array([[1, 0], [2, -1]], "float32")}
strategy = tf.distribute.MirroredStrategy()
adapter = YoloV8Adapter()
with strategy.scope():
    model = adapter.build(DetectorSpec(size="tiny"), 3, (64, 96), 0)
    adapter.compile(model, DetectorSpec(size="tiny"), keras.optimizers.Adam(1e-3))
loss = lambda: strategy.run(lambda: model.compute_loss(x=x, y=y, y_pred=model(x)))
base = [float(v) for v in strategy.experimental_local_results(loss())]
with strategy.scope():
    adapter.compile(model, DetectorSpec(size="tiny", dfl_loss_weight=2.0), keras.optimizers.Adam(1e-3))
tracker = next(m for m in model.metrics if m.name == "dfl_loss")
total = [float(v) for v in strategy.experimental_local_results(loss())]
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "base": base, "total": total,
                  "dfl": float(tracker.result())}))
"""


def test_dfl_is_scaled_per_replica_like_the_compiled_losses(tmp_path):
    """Under tf.distribute each replica's loss is divided by the replica count (gradients are
    summed); an unscaled DFL term would weigh 2x on two replicas."""
    import json
    import subprocess
    import sys

    script = tmp_path / "two.py"
    script.write_text(TWO_REPLICAS)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2 and out["dfl"] > 0.5
    for b, t in zip(out["base"], out["total"]):  # both replicas saw the same batch
        assert t - b == pytest.approx(2.0 * out["dfl"] / 2, rel=1e-4)

"""Optimizer, learning-rate schedule and weight averaging from the recipe, for every kind.

``train.optimizer`` picks adam / adamw / sgd with gradient clipping; ``train.schedule`` a linear
warm-up + cosine schedule (:class:`WarmupCosine`), a constant rate, or a rate reduced on plateau;
``train.finetune`` gives the backbone its own (or, while frozen, zero) rate;
``train.optimizer.ema_momentum`` keeps an exponential moving average of the weights.
"""

from __future__ import annotations

import math
from typing import Any

from lepton_vision.backend import import_keras
from lepton_vision.config.recipe import Recipe

tf, keras = import_keras()


@keras.saving.register_keras_serializable(package="lepton_vision")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak_lr`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``.

    ``lr(step) = peak * (step + 1) / warmup`` for ``step < warmup`` (so the first step is not
    wasted at lr 0), then ``peak * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))``,
    and 0 after ``total_steps``.

    Args:
        peak_lr: Learning rate at the end of warm-up.
        warmup_steps: Optimizer steps of warm-up (0 = none).
        total_steps: Optimizer steps of the whole run (> warmup_steps).
    """

    def __init__(self, peak_lr: float, warmup_steps: int, total_steps: int) -> None:
        super().__init__()
        self.peak_lr = float(peak_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(max(total_steps, warmup_steps + 1))

    def __call__(self, step: Any) -> Any:
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak_lr, tf.float32)
        warm = tf.constant(float(self.warmup_steps), tf.float32)
        decay_steps = tf.constant(float(self.total_steps - self.warmup_steps), tf.float32)
        progress = tf.clip_by_value((step - warm) / decay_steps, 0.0, 1.0)
        cosine = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        warmup = peak * (step + 1.0) / tf.maximum(warm, 1.0)
        return tf.where(step < warm, warmup, cosine)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


def schedule_and_lr(recipe: Recipe, n_train: int, epochs: int) -> Any:
    """The optimizer's learning rate: a :class:`WarmupCosine` over ``epochs``, or the peak rate."""
    sched = recipe.train.schedule
    peak = float(recipe.train.optimizer.learning_rate)
    if sched.name != "cosine":
        return peak  # constant, or reduce_on_plateau (needs a plain float the callback can change)
    steps_per_epoch = max(1, math.ceil(n_train / recipe.train.batch_size))
    total = steps_per_epoch * int(epochs)
    warmup = min(int(round(sched.warmup_epochs * steps_per_epoch)), total - 1)
    return WarmupCosine(peak, max(0, warmup), total)


def make_optimizer(recipe: Recipe, n_train: int, epochs: int, model: Any = None) -> Any:
    """The optimizer of ``recipe.train.optimizer`` with the recipe's learning-rate schedule.

    Args:
        recipe: The recipe.
        n_train: Training images (to turn epochs into optimizer steps).
        epochs: Planned epochs (the cosine schedule ends at the last step).
        model: The model it trains; with ``train.finetune`` set, the optimizer gives its backbone
            a scaled (or, while frozen, zero) learning rate (:mod:`lepton_vision.models.finetune`).

    Returns:
        A ``keras.optimizers.Optimizer``.
    """
    optimizer = base_optimizer(recipe, n_train, epochs)
    ft = recipe.train.finetune
    if model is None or not ft.active():
        return optimizer
    from lepton_vision.models.finetune import layerwise_optimizer

    steps_per_epoch = max(1, math.ceil(n_train / recipe.train.batch_size))
    return layerwise_optimizer(optimizer, model, ft.backbone_lr_scale,
                               int(round(ft.freeze_backbone_epochs * steps_per_epoch)))


def ema_callbacks(recipe: Recipe) -> list[Any]:
    """With ``train.optimizer.ema_momentum``: the callback that puts the averaged weights into
    the model at each epoch's end (for the callbacks after it: validation, best weights) and
    the training weights back at the next epoch's start. Goes first in the callback list."""
    if recipe.train.optimizer.ema_momentum is None:
        return []
    return [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)]


def base_optimizer(recipe: Recipe, n_train: int, epochs: int) -> Any:
    """The Keras optimizer of ``train.optimizer`` (before any layer-wise rates)."""
    opt = recipe.train.optimizer
    lr = schedule_and_lr(recipe, n_train, epochs)
    common: dict[str, Any] = {"learning_rate": lr}
    if opt.clipnorm is not None:
        common["clipnorm"] = float(opt.clipnorm)
    if opt.global_clipnorm is not None:
        common["global_clipnorm"] = float(opt.global_clipnorm)
    if opt.ema_momentum is not None:
        common.update(use_ema=True, ema_momentum=float(opt.ema_momentum))
    if opt.name == "adam":
        return keras.optimizers.Adam(**common)
    if opt.name == "adamw":
        return keras.optimizers.AdamW(weight_decay=float(opt.weight_decay), **common)
    return keras.optimizers.SGD(
        momentum=float(opt.momentum), weight_decay=float(opt.weight_decay) or None, **common
    )


#: Optimizer steps per ``tf.function`` call in ``fit``. One call per step left Keras' Python
#: loop and callback dispatch on the critical path: on 2 cores (small_cnn 64 px, batch 32) fit
#: ran at 0.95x a hand-written GradientTape loop with 1 and at 0.99x with 4
#: (benchmarks/train_throughput.py). Batch-level callbacks then see every 4th step; the NaN guard
#: still stops within the execution that hit the NaN, because the logged loss is the epoch's
#: running mean.
STEPS_PER_EXECUTION = 4


def steps_per_execution() -> int:
    """:data:`STEPS_PER_EXECUTION`, or 1 under a strategy with several replicas: Keras 3's
    multi-step ``fit`` function fails under MirroredStrategy ("You must feed a value for
    placeholder tensor", keras-team/keras#19246; reproduced here with 2 CPU replicas)."""
    return STEPS_PER_EXECUTION if tf.distribute.get_strategy().num_replicas_in_sync <= 1 else 1

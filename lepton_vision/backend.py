"""The one place that chooses the Keras backend and imports TensorFlow and Keras.

Keras reads ``KERAS_BACKEND`` once, at its first import, so every module that needs Keras gets
it from :func:`import_keras` instead of importing it directly. ``TF_CPP_MIN_LOG_LEVEL=2`` hides
TensorFlow's C++ info/warning lines (CUDA probes, oneDNN notes) that users would report as bugs;
both are defaults only, so a user's own setting wins.
"""

from __future__ import annotations

import os
from typing import Any


def import_keras() -> tuple[Any, Any]:
    """Import TensorFlow and Keras (TensorFlow backend) and return them.

    Returns:
        ``(tf, keras)``.
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import keras

    return tf, keras


def configure_threads(threads: int) -> None:
    """Set TensorFlow's intra-op thread count (``train.threads``; 0 keeps TensorFlow's default).

    CPU results depend on it in the 7th digit (float sums are split differently across threads),
    so every process that trains a fold of a run (this one, or a Ray worker) applies the same
    value before TensorFlow starts its runtime.

    Raises:
        TrainError: TensorFlow already runs in this process with another thread count.
    """
    if threads <= 0:
        return
    tf, _ = import_keras()
    current = tf.config.threading.get_intra_op_parallelism_threads()
    if current == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
    except RuntimeError:
        from lepton_vision.config.errors import TrainError

        raise TrainError(
            f"train.threads: TensorFlow already runs in this process with {current or 'its default number of'} "
            f"intra-op threads and cannot switch. Got {threads}.",
            hint="Start a new process for a recipe with another train.threads (a new `lepton-vision "
            "train`, or train.executor: ray, whose fold tasks each get a fresh process).",
        ) from None


def configure_devices(
    seed: int, strategy: str = "auto", threads: int = 0, mixed_precision: str = "auto"
) -> tuple[dict[str, Any], Any]:
    """Seed every random generator and pick threads, precision and distribution strategy.

    On CPU, op determinism is enabled so that two runs with the same seed give identical
    weights and scores. On GPU it is left off (several CUDA kernels have no deterministic
    version and would raise) and ``mixed_float16`` is enabled (``mixed_precision: auto``); on
    CPU mixed precision is 0.2-0.5x slower (stack.md section 4), so it stays float32 there.

    Args:
        seed: Seed for Python, NumPy, TensorFlow and Keras.
        strategy: ``train.strategy``: ``auto`` (MirroredStrategy with more than one visible
            GPU, else the default single-device strategy), ``one_device`` or ``mirrored``
            (MirroredStrategy over every visible GPU, else over the CPU devices).
        threads: ``train.threads`` (see :func:`configure_threads`).
        mixed_precision: ``train.mixed_precision``: ``auto`` (GPU only) or ``off``.

    Returns:
        ``(info, strategy)``: info is ``{"gpus": n, "mixed_precision": bool, "strategy": name,
        "replicas": n}``; strategy is the ``tf.distribute`` strategy to build and fit under.
    """
    configure_threads(threads)
    tf, keras = import_keras()
    keras.utils.set_random_seed(int(seed))
    gpus = tf.config.list_physical_devices("GPU")
    mixed = bool(gpus) and mixed_precision == "auto"
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    if not gpus:
        tf.config.experimental.enable_op_determinism()
    if strategy == "mirrored" or (strategy == "auto" and len(gpus) > 1):
        # Keras 3 fit works under single-machine MirroredStrategy; MultiWorkerMirroredStrategy
        # does not (keras-team/keras#20585, stack.md section 9), so several machines means
        # several folds (train.executor: ray), not one fold across machines.
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        dist = tf.distribute.MirroredStrategy(devices)
    else:
        dist = tf.distribute.get_strategy()
    info = {
        "gpus": len(gpus),
        "mixed_precision": mixed,
        "strategy": type(dist).__name__,
        "replicas": int(dist.num_replicas_in_sync),
    }
    return info, dist


def global_batch_size(batch_size: int, replicas: int, scaling: str = "per_replica") -> int:
    """The batch ``fit`` is given: ``batch_size`` per replica x replicas, or ``batch_size`` as is
    (``train.batch_scaling: global``; it must then split evenly across the replicas)."""
    if scaling == "global" or replicas <= 1:
        if replicas > 1 and batch_size % replicas:
            from lepton_vision.config.errors import RecipeError

            raise RecipeError(
                f"train.batch_size: with batch_scaling: global the batch is split across {replicas} "
                f"replicas and must be a multiple of {replicas}. Got {batch_size}.",
                hint=f"Use --set train.batch_size={(batch_size // replicas + 1) * replicas}, or "
                "batch_scaling: per_replica.",
            )
        return int(batch_size)
    return int(batch_size) * int(replicas)


def recipe_for_replicas(recipe: Any, replicas: int) -> Any:
    """The recipe with ``train.batch_size`` set to the global batch for ``replicas`` replicas
    (the same object when nothing changes), so the dataset, the step count of the learning-rate
    schedule and prediction all use the same batch."""
    gb = global_batch_size(recipe.train.batch_size, replicas, recipe.train.batch_scaling)
    if gb == recipe.train.batch_size:
        return recipe
    return recipe.model_copy(update={"train": recipe.train.model_copy(update={"batch_size": gb})})

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


def configure_devices(seed: int) -> tuple[dict[str, Any], Any]:
    """Seed every random generator and pick precision and distribution strategy.

    On CPU, op determinism is enabled so that two runs with the same seed give identical
    weights and scores. On GPU it is left off (several CUDA kernels have no deterministic
    version and would raise) and ``mixed_float16`` is enabled; on CPU mixed precision is
    0.2-0.5x slower (stack.md section 4), so it stays float32 there.

    Args:
        seed: Seed for Python, NumPy, TensorFlow and Keras.

    Returns:
        ``(info, strategy)``: info is ``{"gpus": n, "mixed_precision": bool, "strategy": name}``;
        strategy is a ``MirroredStrategy`` with more than one GPU, else the default strategy.
    """
    tf, keras = import_keras()
    keras.utils.set_random_seed(int(seed))
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        tf.config.experimental.enable_op_determinism()
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    info = {
        "gpus": len(gpus),
        "mixed_precision": bool(gpus),
        "strategy": type(strategy).__name__,
    }
    return info, strategy

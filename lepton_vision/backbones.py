"""Backbone table: name -> factory. Importing this module does not import TensorFlow."""

from __future__ import annotations

#: Every backbone a recipe may name. Factories live below and import Keras lazily.
BACKBONE_NAMES: tuple[str, ...] = (
    "small_cnn",
    "mobilenet_v3_small",
    "mobilenet_v2",
    "efficientnet_b0",
)

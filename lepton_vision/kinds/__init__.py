"""Task kinds: what a model outputs and how its out-of-fold predictions are scored.

``KINDS`` maps a task card's ``kind`` to the module that implements :class:`TaskKind`.
Adding a kind (detection, segmentation) means one module here and one entry in ``KINDS``.
Importing this package does not import TensorFlow.
"""

from __future__ import annotations

from types import ModuleType

from lepton_vision.kinds.classification import kind as classification
from lepton_vision.kinds.detection import kind as detection

KINDS: dict[str, ModuleType] = {
    "binary_classification": classification,
    "object_detection": detection,
}

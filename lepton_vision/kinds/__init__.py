"""Task kinds: what a model outputs and how each stage of a run treats it.

``KINDS`` maps a task card's ``kind`` to the object that implements
:class:`lepton_vision.kinds.base.TaskKind`; the engine (:mod:`lepton_vision.engine.crossval`), the
predictor and the demo look a kind up here and call its steps, never branching on its name.
Adding a kind (segmentation, multi-class) means one package under ``kinds/`` and one entry in
``KINDS``. Importing this package does not import TensorFlow.
"""

from __future__ import annotations

from lepton_vision.config.errors import LeptonError
from lepton_vision.kinds.base import TaskKind
from lepton_vision.kinds.classification.kind import KIND as CLASSIFICATION
from lepton_vision.kinds.detection.kind import KIND as DETECTION

KINDS: dict[str, TaskKind] = {
    CLASSIFICATION.name: CLASSIFICATION,
    DETECTION.name: DETECTION,
}


def kind_of(name: str) -> TaskKind:
    """The kind of a task card, run or bundle by its name.

    Raises:
        LeptonError: The name is not a kind this lepton-vision knows (a run or bundle made by a
            newer version, or a hand-edited file).
    """
    try:
        return KINDS[name]
    except KeyError:
        raise LeptonError(f"unknown task kind {name!r}; this lepton-vision knows {sorted(KINDS)}",
                          hint="Upgrade lepton-vision, or check the kind in the task card / run.json / bundle.json.") from None


__all__ = ["KINDS", "TaskKind", "kind_of"]

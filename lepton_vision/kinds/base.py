"""The contract every task kind fulfils (checked by tests/test_kinds.py)."""

from __future__ import annotations

from typing import Any, Protocol

import pandas as pd


class TaskKind(Protocol):
    """What the cross-validation loop needs from a kind.

    ``build_model`` returns an uncompiled Keras model for the recipe; ``oof_columns`` names the
    columns a kind adds to ``oof_predictions.csv``; ``score_oof`` turns those predictions into
    ``metrics.json`` without TensorFlow.
    """

    OOF_COLUMNS: tuple[str, ...]

    def build_model(self, recipe: Any) -> Any: ...

    def score_oof(self, oof: pd.DataFrame, policy: Any, n_bootstrap: int, ci: float, seed: int,
                  **options: Any) -> dict[str, Any]: ...

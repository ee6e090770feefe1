"""The contract every task kind fulfils (checked by tests/test_kinds.py).

The engine runs the same stages for every kind and asks the kind for each kind-specific step;
each step reads and writes the run directory's files, so a stage can run again alone. A kind
is a module-level object (``KIND`` in ``kinds/<kind>/kind.py``); its fold task is a module-level
function, so Ray can send it to a worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from lepton_vision.runio import RunDir


class TaskKind(Protocol):
    """What the engine, the predictor and the demo need from a kind.

    Attributes:
        name: The task card's ``kind`` (``binary_classification``, ``object_detection``).
        OOF_COLUMNS: Columns the kind adds to ``oof_predictions.csv`` besides sample_id, path,
            group, label, fold.
        fold_metric: (result.json key of the fold's validation score, its name on the console).
        folds_need_both_classes: Whether every validation fold must hold both image labels.
        audit_target: What the samples table's ``label`` is, in words, for the shortcut audit
            (classification: "label"; detection: "object present").
        fold_task: ``(shared, k, out_dir) -> result``: fits fold ``k`` from what :meth:`prepare`
            returned and writes its files into ``out_dir`` (module-level: picklable for Ray).
        objectives: Metrics of metrics.json a sweep can maximise.
        pretrain_generators: Synthetic generators whose labels this kind can pretrain on.
        average_models: ``[fold models] -> one model`` for ``final.mode: average``, or None when
            the kind cannot combine its fold models into one (the recipe check refuses the mode).
    """

    name: str
    OOF_COLUMNS: tuple[str, ...]
    fold_metric: tuple[str, str]
    folds_need_both_classes: bool
    audit_target: str
    fold_task: Any
    objectives: tuple[str, ...]
    pretrain_generators: tuple[str, ...]
    average_models: Any

    def build_model(self, recipe: Any, weights: str | None = None, seed: int | None = None,
                    n_classes: int = 2) -> Any:
        """An uncompiled Keras model for the recipe."""
        ...

    def data_report(self, resolved: Any, sample_set: Any, fingerprint: str) -> tuple[dict[str, Any], str]:
        """data_report.json and its console line."""
        ...

    def prepare(self, resolved: Any, table: pd.DataFrame) -> Any:
        """Decode the data once; what the fold task, the refit and the export share."""
        ...

    def collect_oof(self, resolved: Any, run: RunDir, table: pd.DataFrame, folds: list[int]) -> Any:
        """Gather the out-of-fold files of ``folds`` (0-based; ``table`` holds their samples only)
        into the run's (oof_predictions.csv, ...)."""
        ...

    def score(self, resolved: Any, table: pd.DataFrame, oof: Any, policy: Any = None) -> dict[str, Any]:
        """metrics.json from the out-of-fold predictions, without TensorFlow."""
        ...

    def rescore(self, run: RunDir, policy: Any = None) -> dict[str, Any]:
        """metrics.json again from a finished run's files (``lepton-vision evaluate``)."""
        ...

    def read_oof(self, run: RunDir) -> Any:
        """A finished run's out-of-fold predictions, as :meth:`collect_oof` returned them."""
        ...

    def stratum_metrics(self, resolved: Any, table: pd.DataFrame, oof: Any, metrics: dict[str, Any],
                        sample_ids: list[str]) -> dict[str, Any]:
        """The headline metrics with CIs on the samples ``sample_ids`` only (a stratum of a
        feature the shortcut audit flagged); ``metrics`` is the run's metrics.json."""
        ...

    def objective(self, metrics: dict[str, Any], name: str) -> tuple[Any, Any, Any]:
        """(value, CI low, CI high) of a sweep objective in metrics.json."""
        ...

    def paired_bootstrap(self, run_a: RunDir, run_b: RunDir, *, merge_classes: bool = False,
                         n_bootstrap: int = 1000, seed: int = 0) -> Any:
        """The headline metric of two runs of the same folds on the same resamples
        (:class:`lepton_vision.evaluate.paired.Paired`)."""
        ...

    def print_summary(self, metrics: dict[str, Any], console: Any) -> None:
        """The headline metrics on the console."""
        ...

    def load_model(self, path: Path) -> Any:
        """A saved fold or final model."""
        ...

    def refit(self, resolved: Any, run: RunDir, data: Any, epochs: int) -> Any:
        """The final model trained on every sample for ``epochs`` epochs."""
        ...

    def export(self, resolved: Any, run: RunDir, model: Any, table: pd.DataFrame, metrics: dict[str, Any],
               fingerprint: str, formats: tuple[str, ...] | None = None) -> dict[str, Any]:
        """export/: SavedModel and friends, parity-checked, bundle.json last."""
        ...

    def write_report(self, resolved: Any, run: RunDir, model: Any, metrics: dict[str, Any], table: pd.DataFrame,
                     oof: Any, histories: dict[int, pd.DataFrame], info: dict[str, Any]) -> Path:
        """plots/ and report.html."""
        ...

    def predictor_class(self) -> type:
        """The Predictor class of this kind's exports."""
        ...

    def predict_files(self, export_dir: Path, inputs: list[Path], **options: Any) -> str:
        """``lepton-vision predict`` for an export of this kind: files in, one results file out,
        the summary line returned."""
        ...

    def demo(self) -> Any:
        """The module with this kind's demo page (``build_page``) and model-card section
        (``card_section``)."""
        ...

    def pretraining(self) -> Any:
        """The module with this kind's pretraining steps (see :mod:`lepton_vision.engine.pretrain`)."""
        ...

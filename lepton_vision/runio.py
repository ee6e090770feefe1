"""Atomic file writes and the run-directory layout.

Every result file is written to a temporary file in the same folder and renamed into place, so
an interrupted run never leaves half-written JSON or CSV. :class:`RunDir` names every path in a
run directory so no other module builds those paths by hand.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; results are meant to be read by colleagues and web servers.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write JSON (indented, NaN refused) atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_csv(path: str | Path, frame: Any) -> None:
    """Write a pandas DataFrame as CSV atomically (no index)."""
    atomic_write_text(path, frame.to_csv(index=False))


def atomic_save_model(model: Any, path: str | Path) -> None:
    """``model.save(path)`` (a Keras model) through a temporary file renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    model.save(tmp)
    tmp.replace(path)


@dataclass(frozen=True)
class RunDir:
    """Named paths inside one run directory."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.resolved.yaml"

    @property
    def run_info(self) -> Path:
        return self.root / "run.json"

    @property
    def samples(self) -> Path:
        return self.root / "samples.csv"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.json"

    @property
    def folds(self) -> Path:
        return self.root / "folds.csv"

    def fold_dir(self, k: int) -> Path:
        return self.root / "folds" / str(k)

    def fold_done(self, k: int) -> Path:
        """Marker written last for a finished fold: its presence means 'skip on resume'."""
        return self.fold_dir(k) / "result.json"

    @property
    def oof(self) -> Path:
        return self.root / "oof_predictions.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def final_dir(self) -> Path:
        return self.root / "final"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def task_kind(self) -> str:
        """The task kind the run was trained for (run.json; runs from before kinds were recorded
        are binary classification)."""
        if self.run_info.is_file():
            return str(json.loads(self.run_info.read_text()).get("task", {}).get("kind", "binary_classification"))
        return "binary_classification"

    def require(self, path: Path, action: str = "Finish the run first") -> None:
        """Raise a :class:`~lepton_vision.config.errors.LeptonError` naming ``path`` when it is missing."""
        if not Path(path).is_file():
            from lepton_vision.config.errors import LeptonError

            raise LeptonError(f"{self.root}: {Path(path).name} is missing",
                              hint=f"{action}: lepton-vision train RECIPE --resume {self.root}")

    def read_table(self, path: Path) -> Any:
        """A CSV of the run (samples.csv, oof_predictions.csv, ...) with ids and groups as text
        (an empty group stays "", ids such as 0007 keep their zeros)."""
        import pandas as pd

        return pd.read_csv(path, dtype={"sample_id": str, "group": str}, keep_default_na=False)


@dataclass(frozen=True)
class FoldExportView(RunDir):
    """A run seen as if fold ``fold``'s model (``folds/<fold>/best.keras``) were its final model,
    as after ``final.mode: best_fold``: ``final_dir`` is the fold's folder (its ``final.json`` says
    so) and ``export_dir`` is ``folds/<fold>/export``. ``lepton-vision export RUN --fold K``
    exports through it, so the int8 check is made on that fold's validation images, which its
    model never trained on (a refit model has no such images), and int8 is calibrated without them.
    """

    fold: int = 0

    @property
    def final_dir(self) -> Path:
        return self.fold_dir(self.fold)

    @property
    def export_dir(self) -> Path:
        return self.fold_dir(self.fold) / "export"

"""What a run records about itself: versions, cards, data fingerprint, start point, timings.

``run.json`` (and the report's header, and bundle.json's provenance fields) come from here, so a
run directory, its report and its export say the same thing about how they were made.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any

import pandas as pd

from lepton_vision.config.cards import Resolved, card_dict
from lepton_vision.config.recipe import dump_recipe
from lepton_vision.runio import RunDir
from lepton_vision.version import __version__


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that change results."""
    from importlib import metadata

    out = {"python": platform.python_version(), "lepton_vision": __version__}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "albumentations", "opencv-python-headless",
                 "scikit-learn", "numpy", "pydicom", "scikit-image"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def environment_report() -> dict[str, Any]:
    """What `lepton-vision check` prints: versions, devices, data roots."""
    import os

    from lepton_vision.config.cards import data_root, generated_root

    rep: dict[str, Any] = dict(versions())
    rep["LEPTON_DATA_ROOT"] = str(data_root()) if data_root() else "(not set)"
    if data_root() is not None and not data_root().is_dir():
        rep["LEPTON_DATA_ROOT"] += "  <- does not exist"
    rep["generated data"] = str(generated_root())
    from importlib import metadata

    from lepton_vision.engine.executors import EXTRAS

    for extra in ("ray", "mlflow"):  # optional: train.executor: ray, lepton-vision tune, tracking: mlflow
        try:
            rep[extra] = metadata.version(extra)
        except metadata.PackageNotFoundError:
            rep[extra] = f"not installed ({EXTRAS[extra][1]})"
    rep["KERAS_BACKEND"] = os.environ.get("KERAS_BACKEND", "tensorflow (default)")
    try:
        from lepton_vision.backend import import_keras

        tf, _ = import_keras()
        gpus = tf.config.list_physical_devices("GPU")
        rep["devices"] = f"{len(gpus)} GPU(s): {[g.name for g in gpus]}" if gpus else "CPU only (no GPU visible)"
        rep["mixed precision"] = "on (GPU)" if gpus else "off (CPU: float32 is faster here)"
    except ImportError as e:  # pragma: no cover - depends on the install
        rep["devices"] = f"TensorFlow not importable: {e}"
    return rep


def new_run_dir(name: str) -> Path:
    """``runs/<name>-<timestamp>``, with ``-2``, ``-3``... when that exists already."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{name}-{stamp}"
    out, i = base, 1
    while out.exists():
        i += 1
        out = Path(f"{base}-{i}")
    return out


def start_info(run_root: Path) -> dict[str, Any]:
    """What the folds started from, for bundle.json: random init, or the record of the pretrain
    stage / model.weights (start_weights.json, without machine-specific paths)."""
    path = Path(run_root) / "start_weights.json"
    if not path.is_file():
        return {"source": "random"}
    rec = json.loads(path.read_text())
    out = {k: rec[k] for k in ("source", "sha256", "loaded", "finetune", "key") if k in rec}
    pre = rec.get("pretrain")
    if pre:
        out["pretrain"] = {k: pre.get(k) for k in ("dataset", "generator", "images", "epochs", "seconds",
                                                   "synthetic_validation", "classes_match_task", "image_size")}
    if rec.get("source") != "pretrain":
        out["file"] = Path(rec["path"]).name
    return out


def run_info(resolved: Resolved, fingerprint: str, t_start: float) -> dict[str, Any]:
    """run.json: where the recipe and cards are, hashes, seed, data fingerprint, start time, versions."""
    return {
        "recipe_path": str(resolved.recipe_path.resolve()),
        "task_card": str(resolved.task_path.resolve()),
        "dataset_card": str(resolved.dataset_path.resolve()),
        "dataset_dir": str(resolved.dataset_dir),
        "recipe_sha256": resolved.recipe.sha256(),
        "seed": resolved.recipe.seed,
        "data_fingerprint": fingerprint,
        "started": _dt.datetime.fromtimestamp(t_start).isoformat(timespec="seconds"),
        "versions": versions(),
        "task": card_dict(resolved.task),
        "dataset": card_dict(resolved.dataset),
    }


def report_info(resolved: Resolved, data_report: dict[str, Any], folds: pd.DataFrame,
                 info: dict[str, Any], run: RunDir) -> dict[str, Any]:
    """What report.html shows besides the metrics: title, data report, fold table, versions, recipe, timings, export, start point."""
    from lepton_vision.data.folds import fold_summary

    return {
        "title": resolved.task.title,
        "recipe_name": resolved.recipe.name,
        "run_dir": str(run.root),
        "data": data_report,
        "folds": fold_summary(folds).to_dict(orient="records"),
        "versions": info["versions"],
        "recipe_yaml": dump_recipe(resolved.recipe),
        "intended_use": resolved.task.intended_use,
        "seconds": info.get("seconds"),
        "export": info.get("export"),
        "training_cost": info.get("training_cost"),
        "training_start": start_info(run.root),
    }


def bundle_provenance(resolved: Resolved, run: RunDir, fingerprint: str, n_samples: int) -> dict[str, Any]:
    """The bundle.json fields that say what produced an export: recipe, data, versions, start point."""
    r = resolved.recipe
    return {
        "recipe": {"name": r.name, "sha256": r.sha256(), "seed": r.seed},
        "dataset": {"name": resolved.dataset.name, "fingerprint": fingerprint, "n_samples": int(n_samples)},
        "versions": versions(),
        "training_start": start_info(run.root),
    }

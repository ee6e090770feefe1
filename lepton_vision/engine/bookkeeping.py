"""Fold bookkeeping of the cross-validation loop: what is done, what is left, the final model.

A fold is finished when ``folds/<k>/result.json`` exists (written last, after its model, history
and out-of-fold predictions), so an interrupted run resumes without redoing finished folds; the
final model is saved once (``final/model.keras`` + ``final.json``) and loaded on resume.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lepton_vision.config.errors import TrainError
from lepton_vision.console import console as _console
from lepton_vision.runio import RunDir, atomic_save_model, atomic_write_json


def fold_bookkeeping(run: RunDir, k_total: int, tracker: Any, key: str, label: str,
                     folds: list[int] | None = None) -> tuple[dict[int, dict[str, Any]], list[int], Any]:
    """Folds finished earlier (their result.json, said on the console), the folds still to run,
    and the callback that records a fold when it finishes: result.json written last, then the
    tracker and the console. ``key``/``label``: the fold's validation metric (``best_val_auc``,
    "val AUC"); ``folds``: the 0-based folds the run trains (``cv.folds``; default all)."""
    console = _console()
    results: dict[int, dict[str, Any]] = {}
    pending = []
    for k in (range(k_total) if folds is None else folds):
        if run.fold_done(k).is_file():
            results[k] = json.loads(run.fold_done(k).read_text())
            console.print(f"fold {k + 1}/{k_total}: finished earlier ({label} {results[k][key]:.3f}), skipped")
        else:
            pending.append(k)

    def fold_done(k: int, result: dict[str, Any]) -> None:
        atomic_write_json(run.fold_done(k), result)  # last: marks the fold finished
        results[k] = result
        tracker.log_fold(k, result, run.fold_dir(k), key)
        console.print(f"fold {k + 1}/{k_total}: best epoch {result['best_epoch']}, {label} {result[key]:.3f} "
                      f"({result['seconds']:.0f} s)")

    return results, pending, fold_done


def read_history(fdir: Path) -> pd.DataFrame:
    """A fold's history.csv (an empty frame when the fold wrote none)."""
    path = fdir / "history.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def final_model(run: RunDir, recipe: Any, results: dict[int, dict[str, Any]], score_key: str,
                n_images: int, refit: Callable[[int], Any], load: Callable[[Path], Any],
                average: Callable[[list[Any]], Any] | None = None) -> Any:
    """The final model of a run, for every kind: loaded when finished earlier, else the best fold's
    model (``final.mode: best_fold``, best by ``score_key``), the kind's ``average`` of every
    fold's model (``final.mode: average``) or ``refit(epochs)`` on all images for the median
    best epoch; saved atomically with ``final/final.json``. ``load`` is the kind's model loader.
    """
    final_path = run.final_dir / "model.keras"
    if final_path.is_file():
        _console().print(f"final model: finished earlier, loading {final_path}")
        return load(final_path)
    if recipe.final.mode == "best_fold":
        best = max(results.values(), key=lambda r: r[score_key])
        src = run.fold_dir(best["fold"]) / "best.keras"
        model = load(src)
        info = {"mode": "best_fold", "fold": best["fold"], "source": str(src)}
    elif recipe.final.mode == "average":
        if average is None:
            raise TrainError("final.mode 'average' is not available for this kind; use refit or best_fold")
        folds = sorted(results)
        _console().print(f"final model: the mean of the {len(folds)} fold models' scores")
        model = average([load(run.fold_dir(k) / "best.keras") for k in folds])
        info = {"mode": "average", "folds": folds, "sources": [str(run.fold_dir(k) / "best.keras") for k in folds]}
    else:
        epochs = max(1, int(np.median([r["best_epoch"] for r in results.values()])))
        _console().print(f"final model: refit on all {n_images} images for {epochs} epochs (median best epoch)")
        model = refit(epochs)
        info = {"mode": "refit", "epochs": epochs, "n_images": int(n_images)}
    run.final_dir.mkdir(parents=True, exist_ok=True)
    atomic_save_model(model, final_path)
    atomic_write_json(run.final_dir / "final.json", info)
    return model


def report_export(result: dict[str, Any]) -> None:
    """Print the export's parity, int8 change and warnings (loudly) to the console."""
    con = _console()
    q = result.get("quantization")
    if q:
        c = q["change"]
        if c.get("drop") is not None:
            con.print(f"int8 check ({q['n_images']} images, {q['evaluated_on']}): {c['metric']} "
                      f"{c['float']:.4f} float -> {c['int8']:.4f} int8 (drop {c['drop']:+.4f})")
    for w in result.get("warnings", []):
        con.print(f"[bold red]WARNING[/]: {w}", highlight=False)

"""Quantisation honesty: what int8 costs in the task's own metric, measured, not assumed.

Every quantised artefact is re-scored on real labelled images next to its float32 twin (the
TFLite float model, which matches Keras to rounding), and the metric change is recorded in
``parity.json``, ``bundle.json`` and the report. Beyond ``export.int8_max_drop`` the run warns
and the bundle marks the file ``recommended: false``.

How the change is measured is the kind's (ROC AUC for a classifier, AP50 for a detector);
this module picks the images and gives the verdict.

The images are held out from the exported model where the run has such images (``final.mode:
best_fold``: that fold's validation images); after a refit on all data they are a slice of the
training data, and the bundle says so: then the *change* is the figure, not the level.
No TensorFlow here: callers pass the scores/outputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd


def evaluation_rows(table: pd.DataFrame, final_json: Path, n_max: int, seed: int,
                    stratify: str | None = "label") -> tuple[pd.DataFrame, str]:
    """The images int8 is judged on, and a sentence saying what they are to the exported model."""
    info = json.loads(final_json.read_text()) if final_json.is_file() else {}
    if info.get("mode") == "best_fold" and "fold" in table.columns:
        rows = table[table["fold"].astype(int) == int(info["fold"])]
        what = (f"held out: validation images of fold {int(info['fold']) + 1}, the fold whose model "
                "was exported (it never trained on them)")
    elif info.get("mode") == "average":
        rows = table
        what = ("in-sample: the exported model averages the fold models, each trained on all images but "
                "its fold's, so every image trained most of it; the change between float and int8 is the "
                "figure, not the level")
    else:
        rows = table
        what = ("in-sample: the exported model was refit on all images, so these are training "
                "images; the change between float and int8 is the figure, not the level")
    if len(rows) > n_max:
        if stratify and stratify in rows.columns and rows[stratify].nunique() > 1:
            frac = n_max / len(rows)
            rows = rows.groupby(stratify, group_keys=False).sample(frac=frac, random_state=seed)
        else:
            rows = rows.sample(n=n_max, random_state=seed)
        what += f"; a {'stratified ' if stratify else ''}sample of {len(rows)}"
    return rows, what


def calibration_rows(table: pd.DataFrame, final_json: Path, n_max: int, seed: int) -> pd.DataFrame:
    """The images int8 is calibrated on: up to ``n_max`` of the exported model's training images.

    After ``final.mode: best_fold`` that leaves out the exported fold's validation images, which
    :func:`evaluation_rows` holds out to measure the int8 change on (calibrating on them would let
    the quantisation ranges see the images it is judged on); after a refit or a fold average every
    image trained the model, so all are candidates.
    """
    info = json.loads(final_json.read_text()) if final_json.is_file() else {}
    rows = table
    if info.get("mode") == "best_fold" and "fold" in table.columns:
        rows = table[table["fold"].astype(int) != int(info["fold"])]
    return rows.sample(n=min(n_max, len(rows)), random_state=seed)


def verdict(change: dict[str, Any], max_drop: float) -> dict[str, Any]:
    """``recommended`` and a sentence, from the metric drop (float minus int8)."""
    drop = change.get("drop")
    metric = change.get("metric", "metric")
    if drop is None:
        return {"recommended": True, "max_drop": max_drop,
                "reason": f"{metric} undefined on these images ({change.get('why', 'one class only')}); "
                          "judged on score agreement only"}
    ok = bool(drop <= max_drop)
    return {
        "recommended": ok,
        "max_drop": max_drop,
        "reason": (f"{metric} {change['float']:.4f} float vs {change['int8']:.4f} int8 "
                   f"(drop {drop:+.4f}; export.int8_max_drop {max_drop:g})"
                   + ("" if ok else ": NOT RECOMMENDED, use model.tflite")),
    }



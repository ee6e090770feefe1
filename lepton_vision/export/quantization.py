"""Quantisation honesty: what int8 costs in the task's own metric, measured, not assumed.

Every quantised artefact is re-scored on real labelled images next to its float32 twin (the
TFLite float model, which matches Keras to rounding), and the metric change is recorded in
``parity.json``, ``bundle.json`` and the report. Beyond ``export.int8_max_drop`` the run warns
and the bundle marks the file ``recommended: false``.

The images are held out from the exported model where the run has such images (``final.mode:
best_fold``: that fold's validation images); after a refit on all data they are a slice of the
training data, and the bundle says so: then the *change* is the figure, not the level.
No TensorFlow here: callers pass the scores/outputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def evaluation_rows(table: pd.DataFrame, final_json: Path, n_max: int, seed: int,
                    stratify: str | None = "label") -> tuple[pd.DataFrame, str]:
    """The images int8 is judged on, and a sentence saying what they are to the exported model."""
    info = json.loads(final_json.read_text()) if final_json.is_file() else {}
    if info.get("mode") == "best_fold" and "fold" in table.columns:
        rows = table[table["fold"].astype(int) == int(info["fold"])]
        what = (f"held out: validation images of fold {int(info['fold']) + 1}, the fold whose model "
                "was exported (it never trained on them)")
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


def classification_change(labels: Any, float_scores: Any, int8_scores: Any,
                          threshold: float) -> dict[str, Any]:
    """ROC AUC and F1 at the exported threshold, float32 vs int8, on the same images."""
    from sklearn.metrics import f1_score, roc_auc_score

    y = np.asarray(labels, dtype=int)
    f = np.asarray(float_scores, dtype=np.float64)
    q = np.asarray(int8_scores, dtype=np.float64)
    both = len(np.unique(y)) == 2
    auc_f = float(roc_auc_score(y, f)) if both else None
    auc_q = float(roc_auc_score(y, q)) if both else None
    out = {
        "metric": "roc_auc",
        "n": int(len(y)),
        "n_positive": int(y.sum()),
        "float": auc_f,
        "int8": auc_q,
        "drop": None if auc_f is None else auc_f - auc_q,
        "f1_float": float(f1_score(y, f >= threshold, zero_division=0)),
        "f1_int8": float(f1_score(y, q >= threshold, zero_division=0)),
        "decision_agreement": float(np.mean((f >= threshold) == (q >= threshold))),
        "max_abs_score_diff": float(np.max(np.abs(f - q))),
        "median_abs_score_diff": float(np.median(np.abs(f - q))),
    }
    if not both:
        out["why"] = f"only class {int(y[0]) if len(y) else '-'} among the images"
    return out


def _detection_tables(rows: pd.DataFrame, outputs: list[dict[str, np.ndarray]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    dets, images = [], []
    for sid, label, out in zip(rows["sample_id"].astype(str), rows["label"], outputs):
        scores = np.asarray(out["scores"], np.float64).reshape(-1)
        keep = scores > 0.0  # padding rows have score 0 and class -1
        b = np.asarray(out["boxes"], np.float64).reshape(-1, 4)[keep]
        c = np.asarray(out["classes"]).reshape(-1)[keep]
        for (x1, y1, x2, y2), k, s in zip(b, c, scores[keep]):
            dets.append((sid, 0, int(k), float(s), x1, y1, x2, y2))
        images.append((sid, 0, int(label), float(np.asarray(out["image_score"]).reshape(-1)[0])))
    from lepton_vision.kinds.detection.metrics import DET_COLUMNS, IMAGE_COLUMNS

    return pd.DataFrame(dets, columns=list(DET_COLUMNS)), pd.DataFrame(images, columns=list(IMAGE_COLUMNS))


def detection_change(rows: pd.DataFrame, float_outputs: list[dict[str, np.ndarray]],
                     int8_outputs: list[dict[str, np.ndarray]], class_names: list[str],
                     max_det: int) -> dict[str, Any]:
    """AP50 and AP50:95 (pycocotools) of the float32 and int8 exports on the same frames.

    Args:
        rows: Sample-table rows (``sample_id``, ``label``, ``boxes``, ``classes``, ``ignore``) in
            the order of the outputs; boxes in original pixels, like the exports' outputs.
        float_outputs, int8_outputs: ``serve_uint8`` outputs per frame.
    """
    from lepton_vision.kinds.detection.metrics import coco_eval, prepare

    samples = rows.reset_index(drop=True)
    res = {}
    for name, outs in (("float", float_outputs), ("int8", int8_outputs)):
        dets, images = _detection_tables(samples, outs)
        ev = coco_eval(prepare(samples, dets, images, class_names), max_det)
        res[name] = ev
    f, q = res["float"]["ap50"], res["int8"]["ap50"]
    out: dict[str, Any] = {
        "metric": "ap50",
        "n": int(len(samples)),
        "float": f,
        "int8": q,
        "drop": None if f is None or q is None else f - q,
        "ap50_95_float": res["float"]["ap50_95"],
        "ap50_95_int8": res["int8"]["ap50_95"],
    }
    if f is None:
        out["why"] = "no ground-truth boxes among the frames"
    return out

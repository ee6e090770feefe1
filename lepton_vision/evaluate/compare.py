"""Compare two runs of the same data and folds: each metric with its CI, and the paired difference.

Two runs trained on the same samples with the same folds (e.g. from scratch and from
pretraining) are scored on the same bootstrap resamples of the same units (groups, else
images), so the interval of the difference accounts for the pairing: a difference whose
interval excludes 0 is not an accident of which patients or sequences were drawn.

Metrics: ROC AUC of the out-of-fold scores (classification) or COCO AP50 of the out-of-fold
boxes, mean over classes (detection); ``merge_classes=True`` scores detection with every class
as one ("is there an obstacle here", KITTI practice for tiny subsets). No TensorFlow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lepton_vision.config.errors import DataError
from lepton_vision.evaluate.bootstrap import percentile_interval, resample_weights, resampling_units


def _read(run: Path, name: str) -> pd.DataFrame:
    path = run / name
    if not path.is_file():
        raise DataError(f"{path}: missing; the run has not finished its cross-validation",
                        hint="Finish it with `lepton-vision train RECIPE --resume RUN`.")
    return pd.read_csv(path, dtype={"sample_id": str}, keep_default_na=False)


def _same_folds(a: Path, b: Path) -> None:
    fa = _read(a, "folds.csv")[["sample_id", "fold"]].sort_values("sample_id").reset_index(drop=True)
    fb = _read(b, "folds.csv")[["sample_id", "fold"]].sort_values("sample_id").reset_index(drop=True)
    if not fa.equals(fb):
        n = len(set(map(tuple, fa.to_numpy())) ^ set(map(tuple, fb.to_numpy())))
        raise DataError(
            f"{a} and {b} do not share their samples and folds ({n} sample/fold pairs differ)",
            hint="Compare runs of the same dataset, seed and cv settings.",
        )


def _summary(name: str, a: float, b: float, boot_a: np.ndarray, boot_b: np.ndarray, level: float,
             unit: str, n_units: int) -> dict[str, Any]:
    diff = boot_b - boot_a
    ok = np.isfinite(diff)
    return {
        "metric": name,
        "a": {"value": float(a), "ci": percentile_interval(boot_a, level)},
        "b": {"value": float(b), "ci": percentile_interval(boot_b, level)},
        "difference": {"value": float(b - a), "ci": percentile_interval(diff, level),
                       "p_b_better": float(np.mean(diff[ok] > 0)) if ok.any() else None},
        "ci_level": level, "n_bootstrap": int(len(boot_a)), "bootstrap_unit": unit, "n_units": int(n_units),
    }


def _detection(a: Path, b: Path, merge_classes: bool, n_bootstrap: int, level: float, seed: int) -> dict[str, Any]:
    from lepton_vision.kinds.detection.steps import _run_resolved
    from lepton_vision.kinds.detection.metrics import ap_table, match_detections, prepare, summarize_ap
    from lepton_vision.runio import RunDir

    resolved = _run_resolved(RunDir(a))
    policy = resolved.task.detection
    names = list(resolved.task.classes)
    samples = _read(a, "samples.csv")
    if merge_classes:
        samples = samples.assign(classes=[json.dumps([0] * len(json.loads(c))) for c in samples["classes"]])
        names = ["object"]
    datas = []
    for run in (a, b):
        dets = _read(run, "oof_detections.csv")
        if merge_classes:
            dets = dets.assign(class_id=0)
        datas.append(prepare(samples, dets, _read(run, "oof_predictions.csv"), names))
    matched = [match_detections(d, [(0.5, 0.5)], policy.max_detections) for d in datas]

    def ap50(i: int, w: np.ndarray) -> np.ndarray:
        out, order = matched[i]
        return summarize_ap(ap_table(datas[i], out, order, w))[0]

    n = datas[0].n_images
    point = [float(np.nan_to_num(ap50(i, np.ones((1, n)))[0])) for i in (0, 1)]
    gid, n_units, unit = resampling_units(datas[0].groups, n)
    rng = np.random.default_rng(seed)
    boot: list[list[np.ndarray]] = [[], []]
    for w in resample_weights(rng, gid, n_units, n_bootstrap):
        for i in (0, 1):
            boot[i].append(ap50(i, w.astype(np.float64)))
    ba = np.concatenate(boot[0]) if boot[0] else np.zeros(0)
    bb = np.concatenate(boot[1]) if boot[1] else np.zeros(0)
    return _summary("ap50_merged" if merge_classes else "ap50", point[0], point[1], ba, bb, level, unit, n_units)


def _classification(a: Path, b: Path, n_bootstrap: int, level: float, seed: int) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score


    oa = _read(a, "oof_predictions.csv").sort_values("sample_id").reset_index(drop=True)
    ob = _read(b, "oof_predictions.csv").sort_values("sample_id").reset_index(drop=True)
    y = oa["label"].to_numpy(dtype=int)
    sa, sb = oa["score"].to_numpy(dtype=float), ob["score"].to_numpy(dtype=float)
    point = [roc_auc_score(y, sa), roc_auc_score(y, sb)]
    gid, n_units, unit = resampling_units(oa["group"].to_numpy(dtype=object), len(y))
    rng = np.random.default_rng(seed)
    ba, bb = [], []
    for w in resample_weights(rng, gid, n_units, n_bootstrap):
        for row in w:
            yw = y[row > 0]
            if len(np.unique(yw)) < 2:
                ba.append(np.nan), bb.append(np.nan)
                continue
            ba.append(roc_auc_score(y, sa, sample_weight=row))
            bb.append(roc_auc_score(y, sb, sample_weight=row))
    return _summary("roc_auc", point[0], point[1], np.asarray(ba), np.asarray(bb), level, unit, n_units)


def compare_runs(run_a: str | Path, run_b: str | Path, *, merge_classes: bool = False, n_bootstrap: int = 1000,
                 ci: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Score two finished cross-validations of the same folds on the same resamples.

    Args:
        run_a: The reference run (e.g. from scratch).
        run_b: The other run (e.g. pretrained).
        merge_classes: Detection: every class counts as one.
        n_bootstrap: Paired bootstrap resamples of the units (groups, else images).
        ci: Confidence level of the intervals.
        seed: Bootstrap seed.

    Returns:
        ``{"metric", "a": {"value", "ci"}, "b": {...}, "difference": {"value", "ci",
        "p_b_better"}, "ci_level", "n_bootstrap", "bootstrap_unit", "n_units"}``; the
        difference is b - a.

    Raises:
        DataError: A run has not finished its folds, or the two runs' folds differ.
    """
    from lepton_vision.kinds.detection.steps import run_kind

    a, b = Path(run_a), Path(run_b)
    _same_folds(a, b)
    if run_kind(a) != run_kind(b):
        raise DataError(f"{a} is {run_kind(a)} and {b} is {run_kind(b)}; compare runs of one task")
    if run_kind(a) == "object_detection":
        return _detection(a, b, merge_classes, n_bootstrap, ci, seed)
    if merge_classes:
        raise DataError("merge_classes applies to detection runs only")
    return _classification(a, b, n_bootstrap, ci, seed)

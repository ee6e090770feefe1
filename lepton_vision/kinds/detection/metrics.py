"""TF-free object-detection metrics from saved out-of-fold detections (contract D3).

Inputs are the run files of contract D2: the sample table (``samples.csv``, one row per image
with its ground-truth boxes as JSON), ``oof_detections.csv`` (one row per kept detection) and
``oof_images.csv`` (one row per image with its fold and image-level score).

What is computed, and why this way:

* **AP** (``ap50``, ``ap50_95``) is pycocotools' number (the field's reference), evaluated in
  memory: area range "all", ``maxDets = policy.max_detections``, ignore regions passed as
  ``iscrowd=1`` ground truth of every class (a detection inside one is neither right nor wrong).
* The same AP is also computed here from **per-detection TP flags** (:func:`match_detections`
  replicates COCO's per-image greedy matching exactly; :func:`_ap_from_flags` its 101-point
  interpolation). Matching is per image, so a bootstrap resample only re-weights images and the
  flags stay valid: that makes 1000 AP resamples cost a fraction of a second instead of 1000
  pycocotools runs. The tests check both numbers agree to 1e-6.
* **Precision / recall / F1** use greedy matching by score within a class at
  ``policy.match_iou``; an unmatched detection with IoA >= 0.5 on an ignore region is neither a
  TP nor an FP. Each fold is scored at a box threshold chosen on the *other* folds' detections
  (max F1), for the same reason classification thresholds are cross-fitted in
  :mod:`lepton_vision.kinds.classification.metrics`: a threshold tuned on the data it is judged on flatters it.
* **Image level** ("is there any object?", score = the highest box confidence) reuses the
  classification machinery of :mod:`lepton_vision.kinds.classification.metrics` (policies, cross-fitted thresholds,
  bootstrap).
* **CIs** are percentile bootstrap intervals over groups (sequences, videos) when the data has
  groups, else over images: frames of one sequence are correlated, so resampling frames would
  give intervals that are too narrow.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lepton_vision.config.cards import DetectionPolicy
from lepton_vision.config.errors import DataError, Problem
from lepton_vision.config.recipe import Threshold
from lepton_vision.data.readers.detection import boxes_of
from lepton_vision.evaluate.binary import binary_metrics, bootstrap_ci, downsample
from lepton_vision.evaluate.bootstrap import percentile_interval, resample_weights, resampling_units
from lepton_vision.evaluate.thresholds import choose_threshold, fold_thresholds

#: COCO's IoU thresholds and recall points, built exactly as pycocotools builds them, so that
#: values such as 0.7000000000000001 compare the same way in both implementations.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)

#: An unmatched detection covering an ignore region by at least this fraction of its own area
#: is neither a TP nor an FP (precision/recall/F1; COCO's AP uses its IoU threshold instead).
IGNORE_IOA = 0.5

#: Outcome codes of :func:`match_detections`.
TP, FP, IGNORED, NOT_EVALUATED = 1, 0, -1, -2

#: Keys of ``metrics["ci"]``.
CI_KEYS: tuple[str, ...] = ("ap50", "ap50_95", "precision", "recall", "f1", "image_auc", "image_f1")

DET_COLUMNS = ("sample_id", "fold", "class_id", "score", "x1", "y1", "x2", "y2")
IMAGE_COLUMNS = ("sample_id", "fold", "label", "image_score")
SAMPLE_COLUMNS = ("sample_id", "boxes", "classes", "ignore")


# --------------------------------------------------------------------------------------------
# Input checks and the prepared arrays


@dataclass(frozen=True)
class DetectionData:
    """The three run tables as aligned arrays (images in the order of the sample table).

    Boxes are ``[x, y, w, h]`` float64 (COCO's layout, so overlaps are computed with the very
    same floating-point operations as pycocotools).
    """

    sample_ids: np.ndarray
    folds: np.ndarray
    groups: np.ndarray
    labels: np.ndarray
    image_scores: np.ndarray
    gt_boxes: list[np.ndarray]
    gt_classes: list[np.ndarray]
    ignore_boxes: list[np.ndarray]
    n_gt: np.ndarray
    det_image: np.ndarray
    det_class: np.ndarray
    det_score: np.ndarray
    det_boxes: np.ndarray
    n_classes: int

    @property
    def n_images(self) -> int:
        return len(self.sample_ids)


def xyxy_to_xywh(b: np.ndarray) -> np.ndarray:
    """Boxes [N, 4] x1, y1, x2, y2 -> x, y, w, h (COCO), float64."""
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], file: str, hint: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{file}: missing column(s) {missing}. Got columns {list(frame.columns)}. {hint}")


def prepare(
    samples: pd.DataFrame, dets: pd.DataFrame, images: pd.DataFrame, class_names: list[str]
) -> DetectionData:
    """Check the D1/D2 tables against each other and turn them into aligned arrays.

    Args:
        samples: The D1 sample table (``samples.csv``).
        dets: ``oof_detections.csv``.
        images: ``oof_images.csv``.
        class_names: The task's object classes (class ids index into it).

    Returns:
        The :class:`DetectionData`.

    Raises:
        DataError: Missing columns, an image without a fold row, a detection of an unknown
            image or class, a non-finite or inverted box, or a detection whose fold differs from
            its image's fold. The message names the file and the offending rows.
    """
    _require_columns(samples, SAMPLE_COLUMNS, "samples.csv", "It is the D1 table written by the data step.")
    _require_columns(dets, DET_COLUMNS, "oof_detections.csv", "Re-run training to rewrite it.")
    _require_columns(images, IMAGE_COLUMNS, "oof_images.csv", "Re-run training to rewrite it.")
    n_classes = len(class_names)
    sample_ids = samples["sample_id"].astype(str).to_numpy()
    if len(sample_ids) == 0:
        raise DataError("samples.csv: no images. Got an empty table. Check the dataset card.")
    index = pd.Index(sample_ids)
    if not index.is_unique:
        dup = index[index.duplicated()].unique()[:5].tolist()
        raise DataError(f"samples.csv: sample_id must be unique. Got duplicates {dup}. Rebuild the sample table.")

    img = images.copy()
    img["sample_id"] = img["sample_id"].astype(str)
    if img["sample_id"].duplicated().any():
        dup = img.loc[img["sample_id"].duplicated(), "sample_id"].unique()[:5].tolist()
        raise DataError(f"oof_images.csv: one row per image expected. Got duplicated sample_id {dup}. Re-run training.")
    missing = index.difference(pd.Index(img["sample_id"]))
    if len(missing):
        raise DataError(
            f"oof_images.csv: {len(missing)} image(s) of samples.csv have no row (no fold, no score). "
            f"Got e.g. {missing[:5].tolist()}. Finish training (every fold) before scoring."
        )
    extra = pd.Index(img["sample_id"]).difference(index)
    if len(extra):
        raise DataError(
            f"oof_images.csv: {len(extra)} image(s) are not in samples.csv. Got e.g. {extra[:5].tolist()}. "
            "The run files come from different runs; re-run training."
        )
    img = img.set_index("sample_id").loc[sample_ids]
    for col in ("fold", "label", "image_score"):
        bad = img[col].isna().to_numpy()
        if bad.any():
            raise DataError(
                f"oof_images.csv: empty '{col}' for {int(bad.sum())} image(s). Got e.g. "
                f"{img.index[bad][:5].tolist()}. Re-run training."
            )
    folds = img["fold"].to_numpy().astype(np.int64)
    groups = (samples["group"] if "group" in samples.columns else pd.Series([""] * len(samples)))
    groups_arr = groups.fillna("").astype(str).to_numpy()

    gt_boxes: list[np.ndarray] = []
    gt_classes: list[np.ndarray] = []
    ignore_boxes: list[np.ndarray] = []
    problems: list[Problem] = []
    n_gt = np.zeros((len(sample_ids), max(n_classes, 1)), dtype=np.int64)
    for i, row in enumerate(samples[list(SAMPLE_COLUMNS)].itertuples(index=False)):
        try:
            b, c, ig = boxes_of(row._asdict())
        except (ValueError, TypeError) as e:
            problems.append(Problem(f"sample {sample_ids[i]}", f"boxes/classes/ignore are not JSON box lists ({e})"))
            continue
        if len(b) != len(c):
            problems.append(Problem(f"sample {sample_ids[i]}", f"{len(b)} boxes but {len(c)} classes"))
            continue
        if len(c) and (c.min() < 0 or c.max() >= n_classes):
            problems.append(Problem(f"sample {sample_ids[i]}", f"class index {c.tolist()} outside 0..{n_classes - 1}"))
            continue
        gt_boxes.append(xyxy_to_xywh(b))
        gt_classes.append(c.astype(np.int64))
        ignore_boxes.append(xyxy_to_xywh(ig))
        np.add.at(n_gt[i], c, 1)
    if problems:
        raise DataError(
            "bad ground truth in the sample table", file="samples.csv", problems=problems[:20],
            hint=f"{len(problems)} image(s) affected. Rebuild samples.csv with the data step; class "
            f"indices index into the task classes {class_names}.",
        )

    d = dets.reset_index(drop=True)
    det_ids = d["sample_id"].astype(str)
    pos = index.get_indexer(det_ids)
    unknown = pos < 0
    if unknown.any():
        rows = (np.flatnonzero(unknown)[:5] + 2).tolist()  # +2: header line, 1-based
        raise DataError(
            f"oof_detections.csv: {int(unknown.sum())} detection(s) of images not in samples.csv on line(s) "
            f"{rows}. Got sample_id {det_ids[unknown].unique()[:5].tolist()}. The run files come from different runs."
        )
    cls = d["class_id"].to_numpy()
    bad_cls = ~np.isin(cls, np.arange(n_classes))
    if bad_cls.any():
        rows = (np.flatnonzero(bad_cls)[:5] + 2).tolist()
        raise DataError(
            f"oof_detections.csv: class_id outside 0..{n_classes - 1} on line(s) {rows}. Got "
            f"{sorted({str(v) for v in cls[bad_cls][:5]})}. The task classes are {class_names}."
        )
    xyxy = d[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
    score = d["score"].to_numpy(dtype=np.float64)
    bad_box = ~np.isfinite(xyxy).all(axis=1) | ~np.isfinite(score) | (xyxy[:, 2] < xyxy[:, 0]) | (xyxy[:, 3] < xyxy[:, 1])
    if bad_box.any():
        rows = (np.flatnonzero(bad_box)[:5] + 2).tolist()
        raise DataError(
            f"oof_detections.csv: NaN/infinite score or box, or x2 < x1 / y2 < y1, on line(s) {rows}. Got "
            f"{xyxy[bad_box][:2].tolist()}. Boxes are [x1, y1, x2, y2] in original pixels; re-run training."
        )
    det_fold = d["fold"].to_numpy().astype(np.int64)
    wrong = det_fold != folds[pos]
    if wrong.any():
        rows = (np.flatnonzero(wrong)[:5] + 2).tolist()
        raise DataError(
            f"oof_detections.csv: detection fold differs from its image's fold in oof_images.csv on line(s) {rows}. "
            f"Got fold {det_fold[wrong][:5].tolist()} for image(s) {det_ids[wrong][:5].tolist()}. Re-run training."
        )
    return DetectionData(
        sample_ids=sample_ids,
        folds=folds,
        groups=groups_arr,
        labels=img["label"].to_numpy().astype(np.int64),
        image_scores=img["image_score"].to_numpy(dtype=np.float64),
        gt_boxes=gt_boxes,
        gt_classes=gt_classes,
        ignore_boxes=ignore_boxes,
        n_gt=n_gt[:, :n_classes],
        det_image=pos.astype(np.int64),
        det_class=cls.astype(np.int64),
        det_score=score,
        det_boxes=xyxy_to_xywh(xyxy),
        n_classes=n_classes,
    )


# --------------------------------------------------------------------------------------------
# Matching


def box_overlap(dt: np.ndarray, gt: np.ndarray, crowd: bool) -> np.ndarray:
    """IoU (``crowd=False``) or IoA of the detection (``crowd=True``) of xywh boxes, (D, G).

    The arithmetic is the one of pycocotools' ``bbIou`` (maskApi.c) step by step, so values at
    a threshold compare exactly as they do there.
    """
    dt = np.asarray(dt, dtype=np.float64).reshape(-1, 4)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    d, g = dt[:, None, :], gt[None, :, :]
    w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    inter = w * h
    da = d[..., 2] * d[..., 3]
    union = da if crowd else da + g[..., 2] * g[..., 3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where((w > 0) & (h > 0), inter / np.where(union > 0, union, 1.0), 0.0)
    return np.broadcast_to(out, (len(dt), len(gt))).copy()


def _match_one(iou: np.ndarray, ioa: np.ndarray, pairs: list[tuple[float, float]]) -> np.ndarray:
    """Outcomes (T, D) for the detections of one image and class, sorted by score (desc).

    COCO's rule: each detection, best score first, takes the not yet matched ground-truth box
    with the highest IoU >= the threshold (ties: the later box, as pycocotools' ``<`` skip does).
    Only when none is left does an ignore region with IoA >= its threshold make it "ignored".
    """
    n_det, n_gt = iou.shape
    out = np.full((len(pairs), n_det), FP, dtype=np.int8)
    ignore_best = ioa.max(axis=1) if ioa.shape[1] else np.full(n_det, -1.0)
    for t, (iou_thr, ioa_thr) in enumerate(pairs):
        iou_thr = min(iou_thr, 1 - 1e-10)  # pycocotools caps the threshold the same way
        ioa_thr = min(ioa_thr, 1 - 1e-10)
        taken = np.zeros(n_gt, dtype=bool)
        for j in range(n_det):
            if n_gt:
                cand = np.where(taken, -1.0, iou[j])
                best = cand.max()
                if best >= iou_thr:
                    m = n_gt - 1 - int(np.argmax(cand[::-1] == best))
                    taken[m] = True
                    out[t, j] = TP
                    continue
            if ignore_best[j] >= ioa_thr:
                out[t, j] = IGNORED
    return out


def match_detections(
    data: DetectionData, pairs: list[tuple[float, float]], max_det: int | None = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-detection outcomes at several (IoU, IoA-on-ignore) thresholds.

    Args:
        data: From :func:`prepare`.
        pairs: ``(iou threshold, ignore IoA threshold)`` per row of the result; COCO uses
            ``(t, t)``, precision/recall use ``(policy.match_iou, IGNORE_IOA)``.
        max_det: Keep only the best ``max_det`` detections per image and class (COCO's
            ``maxDets``); the rest get :data:`NOT_EVALUATED`. None keeps all.

    Returns:
        ``(outcomes int8 (T, n_det) of TP/FP/IGNORED/NOT_EVALUATED, order)`` where ``order[c]``
        lists the evaluated detections of class c the way COCO's ``accumulate`` sees them:
        images in table order, within an image by score (stable), then stably sorted by score.
    """
    n_det = len(data.det_score)
    outcomes = np.full((len(pairs), n_det), NOT_EVALUATED, dtype=np.int8)
    per_class: list[list[np.ndarray]] = [[] for _ in range(data.n_classes)]
    by_image = np.argsort(data.det_image, kind="stable")
    starts = np.searchsorted(data.det_image[by_image], np.arange(data.n_images + 1))
    for i in range(data.n_images):
        d_i = by_image[starts[i] : starts[i + 1]]
        if len(d_i) == 0:
            continue
        for c in np.unique(data.det_class[d_i]):
            d = d_i[data.det_class[d_i] == c]
            d = d[np.argsort(-data.det_score[d], kind="mergesort")]
            if max_det is not None:
                d = d[:max_det]
            g = data.gt_boxes[i][data.gt_classes[i] == c]
            iou = box_overlap(data.det_boxes[d], g, crowd=False)
            ioa = box_overlap(data.det_boxes[d], data.ignore_boxes[i], crowd=True)
            outcomes[:, d] = _match_one(iou, ioa, pairs)
            per_class[int(c)].append(d)
    order: list[np.ndarray] = []
    for c in range(data.n_classes):
        o = np.concatenate(per_class[c]) if per_class[c] else np.zeros(0, dtype=np.int64)
        order.append(o[np.argsort(-data.det_score[o], kind="mergesort")])
    return outcomes, order


# --------------------------------------------------------------------------------------------
# AP from TP flags


def _ap_from_flags(
    order: np.ndarray, outcomes_c: np.ndarray, det_image: np.ndarray, n_gt_c: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """COCO 101-point AP of one class for many image weightings at once.

    Args:
        order: The class's evaluated detections in accumulate order (see :func:`match_detections`).
        outcomes_c: (T, len(order)) outcomes of those detections.
        det_image: Image index of every detection (all classes).
        n_gt_c: (n_images,) ground-truth boxes of the class per image.
        weights: (B, n_images) how often each image counts (1 = the data as is; a bootstrap
            resample = draw counts). A detection drawn twice adds two TPs/FPs at one score, which
            gives the same interpolated precision as two copies in a row would in pycocotools.

    Returns:
        (B, T) AP per weighting and IoU threshold; NaN where the class has no ground truth
        (COCO leaves such a class out of the mean).
    """
    w = np.asarray(weights, dtype=np.float64)
    n_pos = w @ n_gt_c.astype(np.float64)
    out = np.full((len(w), outcomes_c.shape[0]), np.nan)
    valid = n_pos > 0
    if not valid.any():
        return out
    if len(order) == 0:
        out[valid] = 0.0
        return out
    wd = w[valid][:, det_image[order]]
    npos = n_pos[valid][:, None]
    q = np.zeros((len(wd), len(RECALL_THRESHOLDS)))
    for t in range(outcomes_c.shape[0]):
        tp = np.cumsum(wd * (outcomes_c[t] == TP), axis=1)
        fp = np.cumsum(wd * (outcomes_c[t] == FP), axis=1)
        rc = tp / npos
        pr = tp / (fp + tp + np.spacing(1))
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope
        q[:] = 0.0
        for b in range(len(wd)):
            idx = np.searchsorted(rc[b], RECALL_THRESHOLDS, side="left")
            ok = idx < rc.shape[1]
            q[b, ok] = pr[b, idx[ok]]
        out[valid, t] = q.mean(axis=1)
    return out


def ap_table(
    data: DetectionData, outcomes: np.ndarray, order: list[np.ndarray], weights: np.ndarray
) -> np.ndarray:
    """(B, C, T) per-class AP for each weighting (NaN = class without ground truth there)."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    out = np.full((len(w), data.n_classes, outcomes.shape[0]), np.nan)
    for c in range(data.n_classes):
        out[:, c, :] = _ap_from_flags(order[c], outcomes[:, order[c]], data.det_image, data.n_gt[:, c], w)
    return out


def summarize_ap(per_class: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP50 and AP50:95 from a (B, C, T) table: means over classes with ground truth (NaN if none)."""
    with np.errstate(invalid="ignore"), _quiet_nan_warnings():
        ap50 = np.nanmean(per_class[:, :, 0], axis=1)
        ap = np.nanmean(per_class.reshape(len(per_class), -1), axis=1)
    return ap50, ap


@contextlib.contextmanager
def _quiet_nan_warnings() -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": NaN is the answer
        yield


# --------------------------------------------------------------------------------------------
# pycocotools


def coco_eval(data: DetectionData, max_det: int) -> dict[str, Any]:
    """AP with pycocotools, in memory (no files), its printing silenced.

    Ground-truth annotation and image ids start at 1: pycocotools stores matches as ids and
    treats id 0 as "unmatched".

    Args:
        data: From :func:`prepare`.
        max_det: ``maxDets`` (per image and class).

    Returns:
        ``{"ap50", "ap50_95", "per_class": [(ap50, ap50_95) or None per class]}``; the overall
        values are None when no class has ground truth.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    categories = [{"id": c + 1, "name": str(c)} for c in range(data.n_classes)]
    coco_images = [{"id": i + 1, "width": 1, "height": 1} for i in range(data.n_images)]
    anns: list[dict[str, Any]] = []
    for i in range(data.n_images):
        for b, c in zip(data.gt_boxes[i], data.gt_classes[i]):
            anns.append({"image_id": i + 1, "category_id": int(c) + 1, "bbox": [float(v) for v in b],
                         "area": float(b[2] * b[3]), "iscrowd": 0})
        for c in range(data.n_classes):  # an ignore region is class-agnostic: crowd of every class
            for b in data.ignore_boxes[i]:
                anns.append({"image_id": i + 1, "category_id": c + 1, "bbox": [float(v) for v in b],
                             "area": float(b[2] * b[3]), "iscrowd": 1})
    for k, a in enumerate(anns):
        a["id"] = k + 1
    has_gt = data.n_gt.sum(axis=0) > 0
    if len(data.det_score) == 0:
        # pycocotools cannot load an empty result list; with no detections every AP is 0.
        per = [(0.0, 0.0) if has_gt[c] else None for c in range(data.n_classes)]
        return {"ap50": 0.0 if has_gt.any() else None, "ap50_95": 0.0 if has_gt.any() else None, "per_class": per}
    results = [
        {"image_id": int(i) + 1, "category_id": int(c) + 1, "bbox": [float(v) for v in b], "score": float(s)}
        for i, c, b, s in zip(data.det_image, data.det_class, data.det_boxes, data.det_score)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": coco_images, "annotations": anns, "categories": categories}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.maxDets = [int(max_det)]
        ev.params.areaRng = [[0.0, 1e5**2]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, 0]  # (T, R, K)
    per: list[tuple[float, float] | None] = []
    for c in range(data.n_classes):
        p = prec[:, :, c]
        per.append((float(p[0].mean()), float(p.mean())) if (p > -1).all() else None)
    ok = prec > -1
    if not ok.any():
        return {"ap50": None, "ap50_95": None, "per_class": per}
    return {"ap50": float(prec[0][ok[0]].mean()), "ap50_95": float(prec[ok].mean()), "per_class": per}


# --------------------------------------------------------------------------------------------
# Thresholds and counts


def max_f1_threshold(scores: Any, is_tp: Any, n_gt: int, default: float) -> float:
    """The box score threshold with the highest F1 (a box counts iff ``score >= threshold``).

    ``F1 = 2 TP / (TP + FP + n_gt)``: unlike a classification F1, ground-truth boxes that no
    detection found are false negatives too, so :func:`lepton_vision.kinds.classification.metrics.choose_threshold`
    (which only sees the detections) would pick another point. Candidates are the distinct
    scores; ties go to the higher threshold (fewer boxes for the same F1).

    Args:
        scores: Scores of the (non-ignored) detections.
        is_tp: Whether each is a true positive.
        n_gt: Ground-truth boxes in the same images.
        default: Returned when there is no detection at all.

    Returns:
        The threshold as a Python float.
    """
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return float(default)
    tp = np.asarray(is_tp, dtype=bool)
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    tp_cum = np.cumsum(tp[order])
    called = np.arange(1, len(s) + 1)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # last box of each distinct score
    f1 = 2.0 * tp_cum[last] / (called[last] + int(n_gt))
    best = int(np.flatnonzero(f1 >= f1.max() - 1e-12)[0])  # scores descend: first = highest
    return float(s_sorted[last][best])


def box_thresholds(data: DetectionData, outcome: np.ndarray, policy: DetectionPolicy) -> tuple[dict[int, float], float]:
    """Per-fold box thresholds and the final (export) one.

    With ``policy.score_threshold`` set, that value everywhere. Otherwise fold k gets the
    max-F1 threshold of the detections and ground truth of all *other* folds (fold k's own
    detections never influence it), and the final threshold is max-F1 over all folds.

    Args:
        data: From :func:`prepare`.
        outcome: (n_det,) outcomes at ``policy.match_iou`` (:func:`match_detections`).
        policy: The task's detection policy.

    Returns:
        ``({fold: threshold}, final threshold)``.

    Raises:
        DataError: Cross-fitting with fewer than two folds.
    """
    folds = sorted(int(f) for f in np.unique(data.folds))
    if policy.score_threshold is not None:
        return {k: float(policy.score_threshold) for k in folds}, float(policy.score_threshold)
    if len(folds) < 2:
        raise DataError(
            f"oof_images.csv: a cross-fitted box threshold needs at least 2 folds. Got folds {folds}. "
            "Set cv.n_splits >= 2, or set a fixed detection.score_threshold in the task card."
        )
    counted = outcome != IGNORED
    det_fold = data.folds[data.det_image]
    n_gt_fold = {k: int(data.n_gt[data.folds == k].sum()) for k in folds}
    out: dict[int, float] = {}
    for k in folds:
        m = counted & (det_fold != k)
        n_gt = sum(v for f, v in n_gt_fold.items() if f != k)
        out[k] = max_f1_threshold(data.det_score[m], outcome[m] == TP, n_gt, policy.min_score)
    final = max_f1_threshold(data.det_score[counted], outcome[counted] == TP, int(data.n_gt.sum()), policy.min_score)
    return out, final


def image_counts(data: DetectionData, outcome: np.ndarray, thresholds: dict[int, float]) -> pd.DataFrame:
    """Per image TP, FP and FN at its fold's box threshold (ignored detections count as neither).

    Returns:
        A frame (one row per image, table order) with ``sample_id, fold, threshold, n_gt, tp,
        fp, fn`` and ``n_det`` (detections at or above the threshold, ignored ones included).
    """
    thr_img = np.array([thresholds[int(k)] for k in data.folds], dtype=np.float64)
    above = data.det_score >= thr_img[data.det_image]
    n = data.n_images
    tp = np.bincount(data.det_image[above & (outcome == TP)], minlength=n)
    fp = np.bincount(data.det_image[above & (outcome == FP)], minlength=n)
    n_det = np.bincount(data.det_image[above], minlength=n)
    n_gt = data.n_gt.sum(axis=1)
    return pd.DataFrame({
        "sample_id": data.sample_ids, "fold": data.folds, "threshold": thr_img, "n_gt": n_gt,
        "tp": tp, "fp": fp, "fn": n_gt - tp, "n_det": n_det,
    })


def _prf(tp: Any, fp: Any, fn: Any) -> tuple[Any, Any, Any]:
    """Precision (0 when nothing is called), recall (NaN without ground truth) and F1."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1), 0.0)
        recall = np.where(tp + fn > 0, tp / np.where(tp + fn > 0, tp + fn, 1), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.where(2 * tp + fp + fn > 0, 2 * tp + fp + fn, 1), 0.0)
    return precision, recall, f1


def _num(v: Any) -> float | None:
    """A JSON-safe float (None for NaN)."""
    v = float(v)
    return None if not np.isfinite(v) else v


# --------------------------------------------------------------------------------------------
# Image level


def _image_level(
    data: DetectionData, policy: Threshold, n_bootstrap: int, ci: float, seed: int
) -> tuple[dict[str, Any], list[float | None], list[float | None]]:
    """Image-level "any object?" metrics from the max box score, with cross-fitted thresholds."""
    from sklearn.metrics import roc_curve

    y, s = data.labels, data.image_scores
    none: list[float | None] = [None, None]
    if (y == 1).all():
        return {"available": False, "reason": "every image has objects (no empty frames)"}, none, none
    if (y == 0).all():
        return {"available": False, "reason": "no image has objects (nothing to detect)"}, none, none
    oof = pd.DataFrame({"label": y, "fold": data.folds, "score": s})
    try:
        thresholds = fold_thresholds(oof, policy)
        final = choose_threshold(y, s, policy, where="image scores of all folds")
        thr_img = np.array([thresholds[int(k)] for k in data.folds], dtype=np.float64)
        m = binary_metrics(y, s, thr_img, where="image level, pooled OOF")
    except DataError as e:
        return {"available": False, "reason": e.message}, none, none
    auc_ci, f1_ci = none, none
    if n_bootstrap > 0:
        boot = bootstrap_ci(y, s, thr_img, data.groups, n_bootstrap, ci, seed)
        auc_ci = list(boot["intervals"]["roc_auc"])
        f1_ci = list(boot["intervals"]["f1"])
    fpr, tpr, _ = roc_curve(y, s)
    fx, ty = downsample(fpr, tpr)
    return {
        "available": True,
        "auc": m["roc_auc"],
        "f1": m["f1"],
        "sensitivity": m["sensitivity"],
        "specificity": m["specificity"],
        "precision": m["precision"],
        "confusion": m["confusion"],
        "n": m["n"],
        "n_with_objects": m["n_pos"],
        "policy": policy.model_dump(mode="json"),
        "threshold": {"per_fold": {str(k): v for k, v in thresholds.items()}},
        "final_threshold": final,
        "roc": {"fpr": fx, "tpr": ty},
    }, auc_ci, f1_ci


# --------------------------------------------------------------------------------------------
# Scoring a run


def score_detection_oof(
    samples: pd.DataFrame,
    dets: pd.DataFrame,
    images: pd.DataFrame,
    class_names: list[str],
    policy: DetectionPolicy,
    image_threshold: Threshold,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Score a detection run's out-of-fold detections (contract D3).

    Args:
        samples: The D1 sample table.
        dets: ``oof_detections.csv`` (D2).
        images: ``oof_images.csv`` (D2).
        class_names: The task's object classes.
        policy: Matching IoU, max detections and the box threshold policy.
        image_threshold: Threshold policy of the image-level "object present" score.
        n_bootstrap: Bootstrap resamples (0 = no CIs: every interval is ``[None, None]``).
        ci: Confidence level.
        seed: Bootstrap seed (the same seed gives the same intervals).

    Returns:
        A JSON-serialisable dict (no NaN; None where undefined) with keys ``kind`` (=
        "object_detection"), ``classes``, ``n_images``, ``n_boxes``, ``n_empty_images``,
        ``n_ignore_regions``, ``n_detections``, ``n_folds``, ``policy``, ``ap50``, ``ap50_95``
        (pycocotools), ``per_class`` ({name: {ap50, ap50_95, n_gt, n_det, tp, fp, fn,
        precision, recall} plus ``reason`` when AP is null}), ``score_threshold`` ({"source",
        "per_fold": {fold: threshold}}), ``final_score_threshold``, ``match_iou``,
        ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn``, ``n_ignored_detections``,
        ``image_level``, ``per_fold``, ``mean_sd`` ({"ap50": [mean, sd], "ap50_95": [...]}),
        ``ci`` ({metric: [lo, hi]} for :data:`CI_KEYS`), ``ci_level``, ``n_bootstrap``,
        ``bootstrap_unit`` ("group" | "image"), ``n_bootstrap_units``, ``skipped_resamples``
        and ``pr_curves`` ({name: {recall, precision}} at IoU 0.5, at most 200 points).

    Raises:
        DataError: Inconsistent run files (see :func:`prepare`), no ground-truth box at all,
            or fewer than two folds for a cross-fitted threshold.
    """
    data = prepare(samples, dets, images, class_names)
    n_boxes = int(data.n_gt.sum())
    if n_boxes == 0:
        raise DataError(
            f"samples.csv: no object box in {data.n_images} images, so AP, precision and recall are undefined. "
            "Got only empty images (or only ignore regions). Check the dataset card's class_map."
        )
    folds = sorted(int(f) for f in np.unique(data.folds))
    n_det = len(data.det_score)

    # COCO-style flags for AP (t, t) and the flags for precision/recall at match_iou.
    coco_pairs = [(float(t), float(t)) for t in IOU_THRESHOLDS]
    coco_out, order = match_detections(data, coco_pairs, policy.max_detections)
    op_out, _ = match_detections(data, [(policy.match_iou, IGNORE_IOA)], None)
    outcome = op_out[0]

    coco = coco_eval(data, policy.max_detections)
    thresholds, final_thr = box_thresholds(data, outcome, policy)
    counts = image_counts(data, outcome, thresholds)
    tp, fp, fn = int(counts["tp"].sum()), int(counts["fp"].sum()), int(counts["fn"].sum())
    precision, recall, f1 = (float(v) for v in _prf(tp, fp, fn))

    # Per class at the per-fold thresholds.
    thr_det = np.array([thresholds[int(k)] for k in data.folds])[data.det_image] if n_det else np.zeros(0)
    above = data.det_score >= thr_det
    per_class: dict[str, Any] = {}
    for c, name in enumerate(class_names):
        mc = data.det_class == c
        ctp = int((mc & above & (outcome == TP)).sum())
        cfp = int((mc & above & (outcome == FP)).sum())
        n_gt_c = int(data.n_gt[:, c].sum())
        cp, cr, _ = _prf(ctp, cfp, n_gt_c - ctp)
        entry: dict[str, Any] = {
            "ap50": None, "ap50_95": None, "n_gt": n_gt_c, "n_det": int(mc.sum()),
            "tp": ctp, "fp": cfp, "fn": n_gt_c - ctp, "precision": float(cp), "recall": _num(cr),
        }
        if coco["per_class"][c] is not None:
            entry["ap50"], entry["ap50_95"] = coco["per_class"][c]
        else:
            entry["reason"] = f"no ground-truth box of class '{name}'; AP is undefined"
        per_class[name] = entry

    # Per fold: AP from the flags restricted to the fold's images (matching is per image).
    fold_w = np.stack([(data.folds == k).astype(np.float64) for k in folds])
    fold_ap50, fold_ap = summarize_ap(ap_table(data, coco_out, order, fold_w))
    per_fold: list[dict[str, Any]] = []
    for j, k in enumerate(folds):
        part = counts[counts["fold"] == k]
        fp_, fr_, ff_ = _prf(part["tp"].sum(), part["fp"].sum(), part["fn"].sum())
        per_fold.append({
            "fold": k, "n_images": len(part), "n_boxes": int(part["n_gt"].sum()),
            "ap50": _num(fold_ap50[j]), "ap50_95": _num(fold_ap[j]), "score_threshold": thresholds[k],
            "precision": float(fp_), "recall": _num(fr_), "f1": float(ff_),
            "tp": int(part["tp"].sum()), "fp": int(part["fp"].sum()), "fn": int(part["fn"].sum()),
        })
    mean_sd: dict[str, list[float | None]] = {}
    for key in ("ap50", "ap50_95"):
        vals = [f[key] for f in per_fold if f[key] is not None]
        mean_sd[key] = [
            float(np.mean(vals)) if vals else None,
            float(np.std(vals, ddof=1)) if len(vals) >= 2 else None,
        ]

    # PR curves at IoU 0.5 (COCO flags, all folds pooled).
    pr_curves: dict[str, Any] = {}
    for c, name in enumerate(class_names):
        o = order[c]
        n_gt_c = int(data.n_gt[:, c].sum())
        if n_gt_c == 0 or len(o) == 0:
            pr_curves[name] = {"recall": [], "precision": []}
            continue
        res = coco_out[0, o]
        ctp = np.cumsum(res == TP)
        cfp = np.cumsum(res == FP)
        keep = res != IGNORED
        rc = ctp[keep] / n_gt_c
        pr = ctp[keep] / np.maximum(ctp[keep] + cfp[keep], 1)
        rx, py = downsample(rc, pr)
        pr_curves[name] = {"recall": rx, "precision": py}

    image_level, auc_ci, img_f1_ci = _image_level(data, image_threshold, n_bootstrap, ci, seed)

    # Bootstrap: the same resamples for AP and the box counts.
    unit_ids, n_units, unit = resampling_units(data.groups, data.n_images)
    intervals: dict[str, list[float | None]] = {k: [None, None] for k in CI_KEYS}
    skipped = 0
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        col: dict[str, list[np.ndarray]] = {k: [] for k in ("ap50", "ap50_95", "precision", "recall", "f1")}
        img_tp, img_fp, img_fn = (counts[k].to_numpy(dtype=np.float64) for k in ("tp", "fp", "fn"))
        for w in resample_weights(rng, unit_ids, n_units, n_bootstrap):
            a50, a = summarize_ap(ap_table(data, coco_out, order, w))
            skipped += int((~np.isfinite(a)).sum())
            col["ap50"].append(a50)
            col["ap50_95"].append(a)
            p, r, f = _prf(w @ img_tp, w @ img_fp, w @ img_fn)
            col["precision"].append(p)
            col["recall"].append(r)
            col["f1"].append(f)
        for k, parts in col.items():
            intervals[k] = percentile_interval(np.concatenate(parts), ci)
        intervals["image_auc"] = auc_ci
        intervals["image_f1"] = img_f1_ci

    return {
        "kind": "object_detection",
        "classes": list(class_names),
        "n_images": int(data.n_images),
        "n_boxes": n_boxes,
        "n_empty_images": int((data.n_gt.sum(axis=1) == 0).sum()),
        "n_ignore_regions": int(sum(len(b) for b in data.ignore_boxes)),
        "n_detections": int(n_det),
        "n_folds": len(folds),
        "policy": policy.model_dump(mode="json"),
        "ap50": coco["ap50"],
        "ap50_95": coco["ap50_95"],
        "per_class": per_class,
        "score_threshold": {
            "source": "policy" if policy.score_threshold is not None else "max_f1_cross_fitted",
            "per_fold": {str(k): v for k, v in thresholds.items()},
        },
        "final_score_threshold": final_thr,
        "match_iou": float(policy.match_iou),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_ignored_detections": int((above & (outcome == IGNORED)).sum()),
        "image_level": image_level,
        "per_fold": per_fold,
        "mean_sd": mean_sd,
        "ci": intervals,
        "ci_level": float(ci),
        "n_bootstrap": int(n_bootstrap),
        "bootstrap_unit": "group" if unit == "group" else "image",
        "n_bootstrap_units": int(n_units),
        "skipped_resamples": int(skipped),
        "pr_curves": pr_curves,
    }


__all__ = [
    "CI_KEYS",
    "FP",
    "IGNORED",
    "IGNORE_IOA",
    "IOU_THRESHOLDS",
    "NOT_EVALUATED",
    "RECALL_THRESHOLDS",
    "TP",
    "DetectionData",
    "ap_table",
    "box_overlap",
    "box_thresholds",
    "coco_eval",
    "image_counts",
    "match_detections",
    "max_f1_threshold",
    "prepare",
    "score_detection_oof",
    "summarize_ap",
]


@dataclass
class Detections:
    """Kept detections of one image, in network-input pixels (xyxy)."""

    boxes: np.ndarray  # [K, 4] float32
    scores: np.ndarray  # [K] float32
    classes: np.ndarray  # [K] int32


def val_ap50(dets: list[Detections], gt_boxes: Sequence[np.ndarray], gt_classes: Sequence[np.ndarray],
             ignore: Sequence[np.ndarray], n_classes: int, max_det: int = 100) -> float:
    """COCO AP at IoU 0.5 (mean over classes with ground truth; 0 when nothing has any), with
    the matching and interpolation of :mod:`lepton_vision.kinds.detection.metrics`."""
    n = len(dets)
    gcls = [np.asarray(c, dtype=np.int64).reshape(-1) for c in gt_classes]
    n_gt = np.zeros((n, n_classes), dtype=np.int64)
    for i, c in enumerate(gcls):
        np.add.at(n_gt[i], c, 1)
    det_image = np.concatenate([np.full(len(d.scores), i) for i, d in enumerate(dets)] or [np.zeros(0)]).astype(np.int64)
    data = DetectionData(
        sample_ids=np.arange(n).astype(str), folds=np.zeros(n, np.int64), groups=np.full(n, ""),
        labels=(n_gt.sum(1) > 0).astype(np.int64), image_scores=np.zeros(n),
        gt_boxes=[xyxy_to_xywh(b) for b in gt_boxes], gt_classes=gcls, ignore_boxes=[xyxy_to_xywh(b) for b in ignore],
        n_gt=n_gt, det_image=det_image,
        det_class=np.concatenate([d.classes for d in dets] or [np.zeros(0)]).astype(np.int64),
        det_score=np.concatenate([d.scores for d in dets] or [np.zeros(0)]).astype(np.float64),
        det_boxes=xyxy_to_xywh(np.concatenate([d.boxes for d in dets] or [np.zeros((0, 4))])),
        n_classes=n_classes,
    )
    outcomes, order = match_detections(data, [(0.5, 0.5)], max_det=max_det)
    ap50, _ = summarize_ap(ap_table(data, outcomes, order, np.ones((1, n))))
    return float(np.nan_to_num(ap50[0], nan=0.0))


def paired_bootstrap(run_a: Any, run_b: Any, *, merge_classes: bool = False, n_bootstrap: int = 1000,
                     seed: int = 0) -> Any:
    """AP50 (mean over classes, or every class as one with ``merge_classes``) of two runs of the
    same folds, on the same resamples of images or sequences (:class:`~lepton_vision.evaluate.paired.Paired`)."""
    from lepton_vision.config.cards import resolve_run
    from lepton_vision.evaluate.paired import read_run_csv

    a, b = run_a.root, run_b.root
    resolved = resolve_run(run_a)
    assert resolved.task.detection is not None
    return paired_ap50(read_run_csv(a, "samples.csv"),
                       [(read_run_csv(r, "oof_detections.csv"), read_run_csv(r, "oof_predictions.csv")) for r in (a, b)],
                       list(resolved.task.classes), resolved.task.detection.max_detections,
                       merge_classes=merge_classes, n_bootstrap=n_bootstrap, seed=seed)


def paired_ap50(samples: pd.DataFrame, sides: list[tuple[pd.DataFrame, pd.DataFrame]], class_names: list[str],
                max_detections: int, *, merge_classes: bool = False, n_bootstrap: int = 1000, seed: int = 0) -> Any:
    """AP50 of two sets of out-of-fold boxes on the same images, on the same resamples.

    Args:
        samples: The D1 sample table of the images both sides are scored on.
        sides: Two ``(detections, image rows)`` pairs (``oof_detections.csv`` and
            ``oof_predictions.csv`` layouts) of other models on exactly those images.
        class_names: The task's classes; ``merge_classes`` scores every class as one.
        max_detections: Boxes per image and class that count (COCO ``maxDets``).

    Returns:
        :class:`~lepton_vision.evaluate.paired.Paired` (``ap50`` or ``ap50_merged``); resampling
        units are the images' groups when they have them, else the images.
    """
    import json

    from lepton_vision.evaluate.paired import Paired

    names = list(class_names)
    if merge_classes:
        samples = samples.assign(classes=[json.dumps([0] * len(json.loads(c))) for c in samples["classes"]])
        names = ["object"]
    datas = []
    for dets, images in sides:
        if merge_classes:
            dets = dets.assign(class_id=0)
        datas.append(prepare(samples, dets, images, names))
    matched = [match_detections(d, [(0.5, 0.5)], max_detections) for d in datas]

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
    return Paired("ap50_merged" if merge_classes else "ap50", point[0], point[1], ba, bb, unit, n_units)


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

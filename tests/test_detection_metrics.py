"""Detection metrics: TP-flag AP vs pycocotools, hand cases, cross-fitting, image level, bootstrap."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lepton_vision.kinds.detection import metrics as D
from lepton_vision.config.cards import DetectionPolicy
from lepton_vision.config.errors import DataError
from lepton_vision.config.recipe import Threshold

CLASSES = ["car", "person", "bike"]
DET_COLS = ["sample_id", "fold", "class_id", "class_name", "score", "x1", "y1", "x2", "y2"]
MAX_F1 = Threshold(policy="max_f1")


def make_run(
    n_images: int = 60,
    seed: int = 0,
    n_folds: int = 3,
    empty_frac: float = 0.25,
    ignore_frac: float = 0.3,
    dets_per_gt: float = 1.3,
    fp_rate: float = 1.0,
    jitter: Callable[[int], float] = lambda i: 6.0,
    group: Callable[[int], str] | None = None,
    fold: Callable[[int], int] | None = None,
    score_digits: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Random D1/D2 tables: jittered copies of GT (duplicates, 10 % wrong class), random false
    positives, ignore regions with detections inside, empty images."""
    rng = np.random.default_rng(seed)
    n_cls = len(CLASSES)
    rows, det_rows, img_rows = [], [], []
    for i in range(n_images):
        sid = f"seq/img{i:04d}.png"
        n = 0 if rng.random() < empty_frac else int(rng.integers(1, 6))
        xy = rng.uniform(0, 200, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 60, (n, 2))], 1)
        cls = rng.integers(0, n_cls, n)
        ignore = []
        if rng.random() < ignore_frac:
            a = rng.uniform(0, 200, 2)
            ignore.append([*a, *(a + rng.uniform(20, 80, 2))])
        k = fold(i) if fold else i % n_folds
        g = group(i) if group else ""
        rows.append({"sample_id": sid, "path": f"/data/{sid}", "label": int(n > 0),
                     "label_name": "objects" if n else "empty", "group": g, "width": 300, "height": 300,
                     "n_boxes": n, "boxes": json.dumps(boxes.tolist()), "classes": json.dumps(cls.tolist()),
                     "ignore": json.dumps(ignore)})
        dl = []
        for b, c in zip(boxes, cls):
            for _ in range(rng.poisson(dets_per_gt)):
                cc = c if rng.random() > 0.1 else rng.integers(0, n_cls)
                dl.append((cc, rng.uniform(0.05, 1), *(b + rng.normal(0, jitter(i), 4))))
        for _ in range(rng.poisson(fp_rate)):
            a = rng.uniform(0, 220, 2)
            dl.append((rng.integers(0, n_cls), rng.uniform(0.01, 0.7), *a, *(a + rng.uniform(5, 60, 2))))
        for r in ignore:
            if rng.random() < 0.7:
                j = rng.uniform(0, 5, 4)
                dl.append((rng.integers(0, n_cls), rng.uniform(0.01, 0.9), r[0] + j[0], r[1] + j[1], r[2] - j[2], r[3] - j[3]))
        for c, s, x1, y1, x2, y2 in dl:
            s = round(s, score_digits) if score_digits else s
            det_rows.append({"sample_id": sid, "fold": k, "class_id": int(c), "class_name": CLASSES[int(c)], "score": s,
                             "x1": min(x1, x2), "y1": min(y1, y2), "x2": max(x1, x2), "y2": max(y1, y2)})
        img_rows.append({"sample_id": sid, "path": f"/data/{sid}", "group": g, "fold": k, "label": int(n > 0),
                         "n_gt": n, "image_score": max([d[1] for d in dl], default=0.0)})
    return pd.DataFrame(rows), pd.DataFrame(det_rows, columns=DET_COLS), pd.DataFrame(img_rows)


def hand_run(
    gts: list[dict], dets: list[tuple], folds: list[int] | None = None, groups: list[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Tables from hand-written images ({"boxes", "classes", "ignore"}) and detections
    (image index, class id, score, x1, y1, x2, y2)."""
    folds = folds or [i % 2 for i in range(len(gts))]
    groups = groups or [""] * len(gts)
    samples, imgs = [], []
    for i, g in enumerate(gts):
        sid = f"img{i}.png"
        n = len(g.get("boxes", []))
        samples.append({"sample_id": sid, "path": f"/data/{sid}", "label": int(n > 0), "label_name": "objects" if n else "empty",
                        "group": groups[i], "width": 100, "height": 100, "n_boxes": n,
                        "boxes": json.dumps(g.get("boxes", [])), "classes": json.dumps(g.get("classes", [])),
                        "ignore": json.dumps(g.get("ignore", []))})
        scores = [d[2] for d in dets if d[0] == i]
        imgs.append({"sample_id": sid, "path": f"/data/{sid}", "group": groups[i], "fold": folds[i], "label": int(n > 0),
                     "n_gt": n, "image_score": max(scores, default=0.0)})
    det_rows = [{"sample_id": f"img{i}.png", "fold": folds[i], "class_id": c, "class_name": CLASSES[c], "score": s,
                 "x1": x1, "y1": y1, "x2": x2, "y2": y2} for i, c, s, x1, y1, x2, y2 in dets]
    return pd.DataFrame(samples), pd.DataFrame(det_rows, columns=DET_COLS), pd.DataFrame(imgs)


def flag_ap(data: D.DetectionData, max_det: int = 100, weights: np.ndarray | None = None) -> tuple[float, float]:
    out, order = D.match_detections(data, [(float(t), float(t)) for t in D.IOU_THRESHOLDS], max_det)
    w = np.ones((1, data.n_images)) if weights is None else weights[None, :]
    ap50, ap = D.summarize_ap(D.ap_table(data, out, order, w))
    return float(ap50[0]), float(ap[0])


FIXED = DetectionPolicy(score_threshold=0.5)


def score(samples, dets, images, policy=FIXED, n_bootstrap=0, **kw):
    return D.score_detection_oof(samples, dets, images, CLASSES, policy, MAX_F1, n_bootstrap=n_bootstrap, **kw)


# ------------------------------------------------------------------------ (a) pycocotools


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("max_det", [3, 100])
def test_flag_ap_equals_pycocotools(seed: int, max_det: int) -> None:
    # Ties (scores rounded to 0.1 for odd seeds) and maxDets truncation must be handled as COCO does.
    samples, dets, images = make_run(seed=seed, dets_per_gt=2.0, fp_rate=2.0, score_digits=1 if seed % 2 else None)
    assert (samples["n_boxes"] == 0).any() and (samples["ignore"] != "[]").any()
    data = D.prepare(samples, dets, images, CLASSES)
    coco = D.coco_eval(data, max_det)
    ap50, ap = flag_ap(data, max_det)
    assert 0.05 < coco["ap50"] < 0.95  # a non-trivial case
    assert ap50 == pytest.approx(coco["ap50"], abs=1e-6)
    assert ap == pytest.approx(coco["ap50_95"], abs=1e-6)
    out, order = D.match_detections(data, [(float(t), float(t)) for t in D.IOU_THRESHOLDS], max_det)
    per = D.ap_table(data, out, order, np.ones((1, data.n_images)))[0]
    for c in range(len(CLASSES)):
        assert per[c, 0] == pytest.approx(coco["per_class"][c][0], abs=1e-6)
        assert per[c].mean() == pytest.approx(coco["per_class"][c][1], abs=1e-6)


def test_score_detection_oof_ap_is_pycocotools_and_equals_flags() -> None:
    samples, dets, images = make_run(seed=7)
    m = score(samples, dets, images)
    ap50, ap = flag_ap(D.prepare(samples, dets, images, CLASSES))
    assert m["ap50"] == pytest.approx(ap50, abs=1e-6)
    assert m["ap50_95"] == pytest.approx(ap, abs=1e-6)


def test_weighted_flags_equal_pycocotools_on_duplicated_images() -> None:
    """A bootstrap weight of k must give the AP of the data with that image copied k times."""
    samples, dets, images = make_run(n_images=30, seed=5)
    weights = np.random.default_rng(1).integers(0, 4, len(samples))
    data = D.prepare(samples, dets, images, CLASSES)
    ap50_w, ap_w = flag_ap(data, weights=weights.astype(float))
    s_rows, d_parts, i_rows = [], [], []
    for i, k in enumerate(weights):
        for copy in range(k):
            sid = samples.sample_id[i]
            new = f"{sid}#{copy}"
            s_rows.append({**samples.iloc[i].to_dict(), "sample_id": new})
            i_rows.append({**images.iloc[i].to_dict(), "sample_id": new})
            d_parts.append(dets[dets.sample_id == sid].assign(sample_id=new))
    dup = D.prepare(pd.DataFrame(s_rows), pd.concat(d_parts, ignore_index=True), pd.DataFrame(i_rows), CLASSES)
    coco = D.coco_eval(dup, 100)
    assert ap50_w == pytest.approx(coco["ap50"], abs=1e-6)
    assert ap_w == pytest.approx(coco["ap50_95"], abs=1e-6)


# ------------------------------------------------------------------------ (b) hand cases

BOX_A, BOX_B, BOX_C = [10, 10, 40, 40], [50, 50, 90, 90], [5, 60, 30, 95]


def test_perfect_detections() -> None:
    gts = [{"boxes": [BOX_A, BOX_B], "classes": [0, 1]}, {"boxes": [BOX_C], "classes": [2]}, {}]
    dets = [(0, 0, 0.9, *BOX_A), (0, 1, 0.8, *BOX_B), (1, 2, 0.7, *BOX_C)]
    m = score(*hand_run(gts, dets))
    assert m["ap50"] == pytest.approx(1.0) and m["ap50_95"] == pytest.approx(1.0)
    assert (m["precision"], m["recall"], m["f1"]) == (1.0, 1.0, 1.0)
    assert (m["tp"], m["fp"], m["fn"]) == (3, 0, 0)
    assert m["n_images"] == 3 and m["n_boxes"] == 3 and m["n_empty_images"] == 1
    assert all(c["ap50"] == pytest.approx(1.0) for c in m["per_class"].values())


def test_one_false_positive_above_threshold() -> None:
    gts = [{"boxes": [BOX_A, BOX_B], "classes": [0, 0]}, {}]
    dets = [(0, 0, 0.9, *BOX_C), (0, 0, 0.8, *BOX_A), (0, 0, 0.7, *BOX_B)]  # the FP scores highest
    m = score(*hand_run(gts, dets))
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 0)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0 and m["f1"] == pytest.approx(0.8)
    # P at each detection: 0, 1/2, 2/3; the envelope is 2/3 at every recall point.
    assert m["ap50"] == pytest.approx(2 / 3)


def test_detection_on_ignore_region_is_not_a_false_positive() -> None:
    ignore = [60, 0, 100, 40]
    gts = [{"boxes": [BOX_A], "classes": [0], "ignore": [ignore]}, {}]
    dets = [(0, 0, 0.9, *BOX_A), (0, 1, 0.95, 65, 5, 95, 35)]  # fully inside the ignore region
    m = score(*hand_run(gts, dets))
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0)
    assert m["n_ignored_detections"] == 1 and m["precision"] == 1.0
    assert m["ap50"] == pytest.approx(1.0)
    # The same box without the ignore region is a false positive.
    m2 = score(*hand_run([{"boxes": [BOX_A], "classes": [0]}, {}], dets))
    assert (m2["tp"], m2["fp"]) == (1, 1)


def test_ignore_region_overlap_below_half_is_a_false_positive() -> None:
    gts = [{"boxes": [BOX_A], "classes": [0], "ignore": [[60, 0, 100, 40]]}, {}]
    dets = [(0, 0, 0.9, *BOX_A), (0, 0, 0.8, 40, 0, 70, 30)]  # IoA = 10/30 of its width
    m = score(*hand_run(gts, dets))
    assert (m["tp"], m["fp"], m["n_ignored_detections"]) == (1, 1, 0)


def test_duplicate_detection_is_one_tp_one_fp() -> None:
    gts = [{"boxes": [BOX_A], "classes": [0]}, {}]
    dets = [(0, 0, 0.9, *BOX_A), (0, 0, 0.8, 11, 11, 41, 41)]
    m = score(*hand_run(gts, dets))
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 0)


def test_class_mismatch_is_fp_and_fn() -> None:
    gts = [{"boxes": [BOX_A], "classes": [0]}, {}]
    m = score(*hand_run(gts, [(0, 1, 0.9, *BOX_A)]))
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 1)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["per_class"]["car"]["ap50"] == 0.0
    # person and bike have no ground truth: AP is null with a reason, and left out of the mean
    assert m["per_class"]["person"]["ap50"] is None and "no ground-truth box" in m["per_class"]["person"]["reason"]
    assert m["ap50"] == 0.0


def test_iou_below_match_iou_is_fp_and_fn() -> None:
    gts = [{"boxes": [[0, 0, 40, 40]], "classes": [0]}, {}]
    m = score(*hand_run(gts, [(0, 0, 0.9, 20, 0, 60, 40)]))  # IoU = 800 / 2400 = 1/3
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 1)
    m = score(*hand_run(gts, [(0, 0, 0.9, 20, 0, 60, 40)]), policy=DetectionPolicy(score_threshold=0.5, match_iou=0.3))
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0)


def test_box_overlap_values() -> None:
    iou = D.box_overlap(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 10, 10], [20, 20, 5, 5]]), crowd=False)
    np.testing.assert_allclose(iou, [[50 / 150, 0.0]])
    ioa = D.box_overlap(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 100, 100]]), crowd=True)
    np.testing.assert_allclose(ioa, [[0.5]])


# ------------------------------------------------------------------------ (c) cross-fitting


def test_max_f1_threshold_by_hand() -> None:
    # F1 = 2TP / (called + n_gt): 0.9 -> 0.5, 0.8 -> 0.4, 0.7 -> 0.667, 0.3 -> 0.571
    assert D.max_f1_threshold([0.9, 0.8, 0.7, 0.3], [1, 0, 1, 0], 3, 0.01) == 0.7
    assert D.max_f1_threshold([], [], 3, 0.01) == 0.01


def test_fold_threshold_never_uses_its_own_fold() -> None:
    samples, dets, images = make_run(n_images=90, seed=11, n_folds=3)
    base = score(samples, dets, images, policy=DetectionPolicy())
    assert base["score_threshold"]["source"] == "max_f1_cross_fitted"
    rng = np.random.default_rng(0)
    changed = dets.copy()
    in0 = changed["fold"] == 0
    changed.loc[in0, "score"] = rng.uniform(0.01, 1, int(in0.sum()))  # scramble fold 0's scores
    after = score(samples, changed, images, policy=DetectionPolicy())
    t0, t1 = base["score_threshold"]["per_fold"], after["score_threshold"]["per_fold"]
    assert t1["0"] == t0["0"]
    # the perturbation is visible to the thresholds that may use fold 0 (the test can fail)
    assert t1["1"] != t0["1"] or t1["2"] != t0["2"] or after["final_score_threshold"] != base["final_score_threshold"]
    # and the fold's threshold is the max-F1 one of the other folds, recomputed here directly
    data = D.prepare(samples, dets, images, CLASSES)
    out = D.match_detections(data, [(0.5, D.IGNORE_IOA)])[0][0]
    other = (data.folds[data.det_image] != 0) & (out != D.IGNORED)
    expect = D.max_f1_threshold(data.det_score[other], out[other] == D.TP, int(data.n_gt[data.folds != 0].sum()), 0.01)
    assert t0["0"] == expect


def test_fixed_score_threshold_from_policy() -> None:
    samples, dets, images = make_run(seed=2)
    m = score(samples, dets, images, policy=DetectionPolicy(score_threshold=0.42))
    assert m["score_threshold"]["source"] == "policy"
    assert set(m["score_threshold"]["per_fold"].values()) == {0.42} and m["final_score_threshold"] == 0.42


def test_cross_fitting_needs_two_folds() -> None:
    samples, dets, images = make_run(seed=2, n_folds=1)
    with pytest.raises(DataError, match="at least 2 folds"):
        score(samples, dets, images, policy=DetectionPolicy())


# ------------------------------------------------------------------------ (d) image level


def test_image_level_auc_equals_sklearn() -> None:
    samples, dets, images = make_run(n_images=80, seed=4, empty_frac=0.4)
    m = score(samples, dets, images, n_bootstrap=200)
    il = m["image_level"]
    assert il["available"] is True
    assert il["auc"] == pytest.approx(roc_auc_score(images["label"], images["image_score"]))
    assert set(il["threshold"]["per_fold"]) == {"0", "1", "2"}
    assert il["final_threshold"] > 0 and 0 <= il["sensitivity"] <= 1 and 0 <= il["specificity"] <= 1
    lo, hi = m["ci"]["image_auc"]
    assert lo <= il["auc"] <= hi


def test_image_level_unavailable_without_empty_frames() -> None:
    samples, dets, images = make_run(seed=4, empty_frac=0.0)
    m = score(samples, dets, images, n_bootstrap=50)
    assert m["image_level"] == {"available": False, "reason": "every image has objects (no empty frames)"}
    assert m["ci"]["image_auc"] == [None, None] and m["ci"]["image_f1"] == [None, None]
    assert m["n_empty_images"] == 0


# ------------------------------------------------------------------------ (e) bootstrap


def _grouped(group: Callable[[int], str] | None) -> dict:
    # Few big groups of 20 frames, good and bad sequences alternating; folds nest the groups.
    return score(*make_run(n_images=120, seed=3, group=group, fold=lambda i: (i // 20) % 3,
                           jitter=lambda i: 1.0 if (i // 20) % 2 == 0 else 20.0), n_bootstrap=400)


def test_bootstrap_ci_contains_point_estimate_and_is_reproducible() -> None:
    samples, dets, images = make_run(n_images=100, seed=9, empty_frac=0.3)
    m = score(samples, dets, images, n_bootstrap=300, seed=1)
    for key, point in (("ap50", m["ap50"]), ("ap50_95", m["ap50_95"]), ("precision", m["precision"]),
                       ("recall", m["recall"]), ("f1", m["f1"]), ("image_auc", m["image_level"]["auc"]),
                       ("image_f1", m["image_level"]["f1"])):
        lo, hi = m["ci"][key]
        assert lo <= point <= hi, key
        assert hi - lo > 0, key
    assert m["bootstrap_unit"] == "image" and m["n_bootstrap_units"] == 100
    again = score(samples, dets, images, n_bootstrap=300, seed=1)
    assert again["ci"] == m["ci"]
    json.dumps(m, allow_nan=False)  # JSON-able, no NaN


def test_bootstrap_resamples_groups() -> None:
    none = _grouped(None)
    per_image = _grouped(lambda i: f"frame{i}")
    big = _grouped(lambda i: f"seq{i // 20}")
    assert none["bootstrap_unit"] == "image" and none["n_bootstrap_units"] == 120
    assert per_image["bootstrap_unit"] == "group" and per_image["n_bootstrap_units"] == 120
    assert big["bootstrap_unit"] == "group" and big["n_bootstrap_units"] == 6
    assert none["ap50"] == big["ap50"]  # the point estimate does not depend on the groups

    def width(m: dict, key: str) -> float:
        return m["ci"][key][1] - m["ci"][key][0]

    for key in ("ap50", "f1"):
        assert width(big, key) > 1.5 * width(none, key), key  # correlated frames: wider CIs
        assert 0.6 < width(per_image, key) / width(none, key) < 1.6, key  # one frame per group = images


def test_no_bootstrap_gives_null_intervals() -> None:
    m = score(*make_run(seed=1), n_bootstrap=0)
    assert all(m["ci"][k] == [None, None] for k in D.CI_KEYS)


# ------------------------------------------------------------------------ contract keys, errors


def test_metrics_json_keys() -> None:
    samples, dets, images = make_run(seed=6)
    m = score(samples, dets, images, policy=DetectionPolicy(), n_bootstrap=20)
    for key in ("kind", "n_images", "n_boxes", "n_empty_images", "ap50", "ap50_95", "per_class", "ci", "bootstrap_unit",
                "score_threshold", "final_score_threshold", "precision", "recall", "f1", "tp", "fp", "fn",
                "image_level", "per_fold", "mean_sd", "pr_curves"):
        assert key in m, key
    assert m["kind"] == "object_detection"
    assert set(m["per_class"]) == set(CLASSES) and set(m["pr_curves"]) == set(CLASSES)
    assert set(m["ci"]) == set(D.CI_KEYS)
    assert {"ap50", "ap50_95", "n_gt", "n_det"} <= set(m["per_class"]["car"])
    assert [f["fold"] for f in m["per_fold"]] == [0, 1, 2]
    assert {"fold", "ap50", "ap50_95", "n_images"} <= set(m["per_fold"][0])
    assert sum(f["n_images"] for f in m["per_fold"]) == m["n_images"]
    mean, sd = m["mean_sd"]["ap50"]
    assert mean == pytest.approx(np.mean([f["ap50"] for f in m["per_fold"]])) and sd > 0
    assert all(len(c["recall"]) <= 200 for c in m["pr_curves"].values())
    assert m["tp"] + m["fn"] == m["n_boxes"]
    json.dumps(m, allow_nan=False)


def test_per_fold_ap_equals_pycocotools_on_the_fold() -> None:
    samples, dets, images = make_run(seed=8)
    m = score(samples, dets, images)
    keep = images["fold"] == 1
    ids = set(images.loc[keep, "sample_id"])
    sub = D.prepare(samples[samples.sample_id.isin(ids)], dets[dets.sample_id.isin(ids)], images[keep], CLASSES)
    coco = D.coco_eval(sub, 100)
    assert m["per_fold"][1]["ap50"] == pytest.approx(coco["ap50"], abs=1e-6)
    assert m["per_fold"][1]["ap50_95"] == pytest.approx(coco["ap50_95"], abs=1e-6)


def test_errors_name_the_file_and_rows() -> None:
    samples, dets, images = make_run(seed=1)
    bad = dets.copy()
    bad.loc[3, "sample_id"] = "nope.png"
    with pytest.raises(DataError, match=r"oof_detections.csv.*line\(s\) \[5\].*nope.png"):
        score(samples, bad, images)
    bad = dets.copy()
    bad.loc[0, "class_id"] = 7
    with pytest.raises(DataError, match="class_id outside 0..2"):
        score(samples, bad, images)
    bad = dets.copy()
    bad.loc[0, "fold"] = (bad.loc[0, "fold"] + 1) % 3
    with pytest.raises(DataError, match="fold differs"):
        score(samples, bad, images)
    with pytest.raises(DataError, match="oof_images.csv: 1 image"):
        score(samples, dets, images.iloc[1:])
    empty = samples.assign(boxes="[]", classes="[]", n_boxes=0)
    with pytest.raises(DataError, match="no object box"):
        score(empty, dets, images)


def test_no_detections_at_all() -> None:
    samples, dets, images = make_run(seed=1)
    m = score(samples, dets.iloc[0:0], images.assign(image_score=0.0))
    assert m["ap50"] == 0.0 and m["tp"] == 0 and m["fn"] == m["n_boxes"] and m["precision"] == 0.0


# ------------------------------------------------------------------------ (f) speed


def test_speed_300_images_1000_detections() -> None:
    samples, dets, images = make_run(n_images=300, seed=12, dets_per_gt=1.5, fp_rate=1.5, group=lambda i: f"s{i // 5}")
    dets = dets.sample(n=1000, random_state=0) if len(dets) >= 1000 else dets
    t0 = time.perf_counter()
    m = score(samples, dets, images, policy=DetectionPolicy(), n_bootstrap=1000)
    elapsed = time.perf_counter() - t0
    print(f"\nscore_detection_oof: {len(samples)} images, {len(dets)} detections, 1000 resamples: {elapsed:.2f} s")
    assert m["n_detections"] == len(dets) and m["ci"]["ap50"][0] is not None

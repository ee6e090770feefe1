"""The object-detection sections of report.html (contract D3): PR per class, image level, examples.

Built on the shared page (:mod:`lepton_vision.evaluate.report`). Example images are read with
:func:`lepton_vision.data.preprocess.read_image` and boxes drawn with OpenCV. No TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lepton_vision.kinds.detection.metrics import (
    FP,
    IGNORE_IOA,
    IGNORED,
    TP,
    DetectionData,
    image_counts,
    match_detections,
    prepare,
)
from lepton_vision.config.errors import DataError
from lepton_vision.evaluate.report import (
    escape,
    figure,
    html_table,
    plot_training_curves,
    save_png,
    shortcut_section,
    training_cost_section,
    write_page,
)
from lepton_vision.runio import RunDir

#: PNG names under plots/ (image_roc only when the image-level metrics are available).
PLOT_NAMES: tuple[str, ...] = ("pr_curves", "image_roc", "score_hist", "examples", "training_curves")

#: Example images in the panel (the worst first).
N_EXAMPLES = 8
#: Longest side of an example image in the panel (pixels): small frames are enlarged so the
#: boxes stay visible, large ones shrunk so the report stays small.
EXAMPLE_SIDE = 320

_GT_COLOR = (0, 190, 0)  # RGB
_DET_COLOR = (220, 30, 30)
_IGNORE_COLOR = (230, 200, 0)


def _fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


def _with_ci(value: Any, interval: list[Any] | None, digits: int = 3) -> str:
    text = _fmt(value, digits)
    if value is not None and interval and interval[0] is not None and interval[1] is not None:
        text += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return text


# --------------------------------------------------------------------------------------------
# Plots


def plot_pr_curves(metrics: dict[str, Any], path: Path) -> bytes:
    """Precision-recall per class at IoU 0.5 (all folds pooled), AP50 per class in the legend."""
    fig = figure()
    ax = fig.add_subplot()
    drawn = False
    for name, curve in metrics["pr_curves"].items():
        ap = metrics["per_class"][name]["ap50"]
        if not curve["recall"]:
            continue
        ax.plot(curve["recall"], curve["precision"], lw=1.8,
                label=f"{name} (AP50 {_fmt(ap)}, n={metrics['per_class'][name]['n_gt']})")
        drawn = True
    ax.plot([metrics["recall"]], [metrics["precision"]], "o", ms=8, color="#c0392b",
            label=f"operating point, all classes (P {metrics['precision']:.2f}, R {metrics['recall']:.2f})")
    if not drawn:
        ax.text(0.5, 0.5, "no detections of a class with ground truth", ha="center", va="center",
                transform=ax.transAxes, color="grey")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="Recall", ylabel="Precision",
           title=f"Precision-recall at IoU 0.5, out-of-fold (AP50 {_with_ci(metrics['ap50'], metrics['ci']['ap50'])})")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7.5)
    return save_png(fig, path)


def plot_image_roc(metrics: dict[str, Any], path: Path) -> bytes:
    """ROC of the image-level score (max box confidence) for "the image has an object"."""
    il = metrics["image_level"]
    fig = figure()
    ax = fig.add_subplot()
    ax.plot(il["roc"]["fpr"], il["roc"]["tpr"], lw=2.2, color="#1f3b73",
            label=f"AUC {_with_ci(il['auc'], metrics['ci']['image_auc'])}")
    ax.plot([1 - il["specificity"]], [il["sensitivity"]], "o", ms=8, color="#c0392b",
            label=f"operating point (sens {il['sensitivity']:.2f}, spec {il['specificity']:.2f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="chance")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="False positive rate (empty images flagged)",
           ylabel="True positive rate (images with objects found)", title="Image level: any object present?")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7.5)
    return save_png(fig, path)


def plot_score_hist(metrics: dict[str, Any], scores: np.ndarray, outcome: np.ndarray, path: Path) -> bytes:
    """Detection scores of true and false positives, with the fold and final box thresholds."""
    fig = figure(6.5, 4.2)
    ax = fig.add_subplot()
    bins = np.linspace(0.0, 1.0, 41)
    ax.hist(scores[outcome == TP], bins=bins, alpha=0.6, color="#2e8b57", label=f"true positives (n={int((outcome == TP).sum())})")
    ax.hist(scores[outcome == FP], bins=bins, alpha=0.6, color="#c0392b", label=f"false positives (n={int((outcome == FP).sum())})")
    if (outcome == IGNORED).any():
        ax.hist(scores[outcome == IGNORED], bins=bins, alpha=0.5, color="#999999",
                label=f"on ignore regions (n={int((outcome == IGNORED).sum())})")
    for i, v in enumerate(metrics["score_threshold"]["per_fold"].values()):
        ax.axvline(float(v), color="grey", lw=0.8, ls=":", label="fold thresholds" if i == 0 else None)
    final = metrics["final_score_threshold"]
    ax.axvline(final, color="black", lw=2, label=f"final threshold {final:.3g}")
    ax.set(xlabel=f"box score (matched at IoU {metrics['match_iou']:g})", ylabel="detections",
           title="Out-of-fold detection scores")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def _display_rgb(raw: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 for display: 8/16-bit images as they are, float (HU) stretched to 1-99 %."""
    from lepton_vision.data.preprocess import to_uint8

    if np.issubdtype(raw.dtype, np.floating):
        lo, hi = np.percentile(raw, [1, 99])
        raw = np.clip((raw - lo) / max(float(hi - lo), 1e-6) * 255.0, 0, 255).astype(np.uint8)
    return to_uint8(raw, 3)


def draw_boxes(
    rgb: np.ndarray, gt: np.ndarray, ignore: np.ndarray, dets: np.ndarray, scores: np.ndarray, labels: list[str]
) -> np.ndarray:
    """Resize to :data:`EXAMPLE_SIDE` and draw ignore regions (yellow), ground truth (green) and
    detections (red, with class and score). Boxes are ``[x1, y1, x2, y2]`` in original pixels."""
    import cv2

    h, w = rgb.shape[:2]
    f = EXAMPLE_SIDE / max(h, w)
    out = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))),
                     interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    out = np.ascontiguousarray(out)

    def pt(b: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
        return (round(b[0] * f), round(b[1] * f)), (round(b[2] * f), round(b[3] * f))

    for b in ignore:
        cv2.rectangle(out, *pt(b), _IGNORE_COLOR, 1)
    for b in gt:
        cv2.rectangle(out, *pt(b), _GT_COLOR, 2)
    for b, s, lab in zip(dets, scores, labels):
        p1, p2 = pt(b)
        cv2.rectangle(out, p1, p2, _DET_COLOR, 2)
        cv2.putText(out, f"{lab} {s:.2f}", (p1[0], max(p1[1] - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    _DET_COLOR, 1, cv2.LINE_AA)
    return out


def worst_images(counts: pd.DataFrame, n: int = N_EXAMPLES) -> pd.DataFrame:
    """The ``n`` images with the most errors (FP + FN), then most ground truth, then by id."""
    c = counts.assign(errors=counts["fp"] + counts["fn"])
    return c.sort_values(["errors", "n_gt", "sample_id"], ascending=[False, False, True], kind="mergesort").head(n)


def plot_examples(
    samples: pd.DataFrame, data: DetectionData, counts: pd.DataFrame, class_names: list[str], path: Path
) -> tuple[bytes, list[str]]:
    """A panel of the worst images: ground truth green, detections at the fold threshold red.

    Returns:
        ``(png bytes, messages about images that could not be read)``; an unreadable image is
        left out of the panel (the report must not fail at the end of a long run) and named.
    """
    from lepton_vision.data.preprocess import read_image
    from lepton_vision.data.readers.detection import boxes_of

    paths = samples["path"].astype(str).to_numpy()
    pos = {sid: i for i, sid in enumerate(data.sample_ids)}
    tiles: list[tuple[np.ndarray, str]] = []
    unreadable: list[str] = []
    for row in worst_images(counts).itertuples(index=False):
        i = pos[row.sample_id]
        try:
            rgb = _display_rgb(read_image(paths[i]))
        except (DataError, ValueError) as e:
            unreadable.append(f"{row.sample_id}: {e}")
            continue
        gt, _, ig = boxes_of(samples.iloc[i])
        m = (data.det_image == i) & (data.det_score >= row.threshold)
        xyxy = data.det_boxes[m].copy()
        xyxy[:, 2:] += xyxy[:, :2]
        labels = [class_names[c] for c in data.det_class[m]]
        tiles.append((draw_boxes(rgb, gt, ig, xyxy, data.det_score[m], labels),
                      f"{row.sample_id} (fold {row.fold})\nTP {row.tp}  FP {row.fp}  FN {row.fn}"))
    cols = 4
    rows = max(1, -(-len(tiles) // cols))
    fig = figure(3.2 * cols, 3.0 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, (tile, title) in zip(axes, tiles):
        ax.imshow(tile)
        ax.set_title(title, fontsize=7.5)
    if not tiles:
        axes[0].text(0.5, 0.5, "no image could be read", ha="center", va="center", color="grey")
    return save_png(fig, path), unreadable


# --------------------------------------------------------------------------------------------
# HTML


def _summary_rows(m: dict[str, Any]) -> list[list[Any]]:
    ci = m["ci"]
    thr = m["score_threshold"]
    how = ("fixed in the task card (detection.score_threshold)" if thr["source"] == "policy"
           else "max F1, each fold's chosen on the other folds' detections")
    per_fold = ", ".join(f"fold {k}: {float(v):.3g}" for k, v in thr["per_fold"].items())
    return [
        ["AP50 (COCO, IoU 0.5)", _with_ci(m["ap50"], ci["ap50"])],
        ["AP50:95 (COCO, IoU 0.50-0.95)", _with_ci(m["ap50_95"], ci["ap50_95"])],
        [f"Precision at the box threshold (IoU {m['match_iou']:g})", _with_ci(m["precision"], ci["precision"])],
        [f"Recall at the box threshold (IoU {m['match_iou']:g})", _with_ci(m["recall"], ci["recall"])],
        ["F1 at the box threshold", _with_ci(m["f1"], ci["f1"])],
        ["TP / FP / FN (boxes)", f"{m['tp']} / {m['fp']} / {m['fn']}"],
        ["Detections on ignore regions (neither TP nor FP)", m["n_ignored_detections"]],
        [f"Box threshold ({how})", per_fold],
        ["Final box threshold (all folds; shipped with the exported model)", f"{m['final_score_threshold']:.4g}"],
    ]


def _per_class_table(m: dict[str, Any]) -> str:
    rows = []
    for name, c in m["per_class"].items():
        rows.append([name, c["n_gt"], c["n_det"], _fmt(c["ap50"]), _fmt(c["ap50_95"]), _fmt(c["precision"]),
                     _fmt(c["recall"]), c["tp"], c["fp"], c["fn"], c.get("reason", "")])
    return html_table(["Class", "GT boxes", "detections", "AP50", "AP50:95", "precision", "recall", "TP", "FP", "FN", "note"],
                  rows, numeric_from=1)


def _image_level_html(m: dict[str, Any]) -> str:
    il = m["image_level"]
    if not il.get("available"):
        return f"<p class='note'>Image-level metrics not available: {escape(il.get('reason', ''))}.</p>"
    ci = m["ci"]
    thr = ", ".join(f"fold {k}: {float(v):.3g}" for k, v in il["threshold"]["per_fold"].items())
    rows = [
        ["ROC AUC", _with_ci(il["auc"], ci["image_auc"])],
        ["F1", _with_ci(il["f1"], ci["image_f1"])],
        ["Sensitivity (images with objects found)", _fmt(il["sensitivity"])],
        ["Specificity (empty images left alone)", _fmt(il["specificity"])],
        ["Confusion", ", ".join(f"{k.upper()} {v}" for k, v in il["confusion"].items())],
        [f"Thresholds ({il['policy']['policy']}, each chosen on the other folds)", thr],
        ["Final image threshold", f"{il['final_threshold']:.4g}"],
    ]
    note = (f"<p class='note'>Image score = the highest box confidence; {il['n_with_objects']} of {il['n']} "
            "images have objects.</p>")
    return note + html_table(["", ""], rows, numeric_from=2)


def _per_fold_table(m: dict[str, Any]) -> str:
    rows = [[f["fold"], f["n_images"], f["n_boxes"], _fmt(f["ap50"]), _fmt(f["ap50_95"]), f"{f['score_threshold']:.3g}",
             _fmt(f["precision"]), _fmt(f["recall"]), _fmt(f["f1"])] for f in m["per_fold"]]
    ms = m["mean_sd"]

    def msd(key: str) -> str:
        mean, sd = ms[key]
        return "-" if mean is None else (f"{mean:.3f} ± {sd:.3f}" if sd is not None else f"{mean:.3f}")

    rows.append(["mean ± SD", "", "", msd("ap50"), msd("ap50_95"), "", "", "", ""])
    return html_table(["Fold", "images", "GT boxes", "AP50", "AP50:95", "box threshold", "precision", "recall", "F1"],
                  rows, row_class={len(rows) - 1: "summary"})


def write_detection_report(
    run_dir: RunDir | str | Path,
    metrics: dict[str, Any],
    samples: pd.DataFrame,
    dets: pd.DataFrame,
    images: pd.DataFrame,
    class_names: list[str],
    histories: dict[int, pd.DataFrame],
    info: dict[str, Any],
) -> Path:
    """Write ``plots/*.png`` and a self-contained ``report.html`` for a detection run.

    Args:
        run_dir: The run directory.
        metrics: :func:`lepton_vision.kinds.detection.metrics.score_detection_oof`'s dict.
        samples: The D1 sample table (``path`` is read for the example panel).
        dets: ``oof_detections.csv``.
        images: ``oof_images.csv``.
        class_names: The task's object classes.
        histories: Fold -> training history (``epoch`` 1-based and any logged quantities).
        info: Optional keys as for :func:`lepton_vision.kinds.classification.report.write_report`: ``title``,
            ``recipe_name`` (or ``recipe``), ``run_dir``, ``date``, ``intended_use``,
            ``seconds``, ``training_cost`` (run.json's), ``data`` (data_report.json), ``versions``,
            ``recipe_yaml``.

    Returns:
        The path of report.html.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    plots = run.plots_dir
    plots.mkdir(parents=True, exist_ok=True)
    data = prepare(samples, dets, images, class_names)
    outcome = match_detections(data, [(metrics["match_iou"], IGNORE_IOA)])[0][0]
    thresholds = {int(k): float(v) for k, v in metrics["score_threshold"]["per_fold"].items()}
    counts = image_counts(data, outcome, thresholds)

    images_png: dict[str, bytes] = {"pr_curves": plot_pr_curves(metrics, plots / "pr_curves.png")}
    captions = {
        "pr_curves": "Precision-recall per class at IoU 0.5, all folds pooled; dot = the operating point.",
        "image_roc": "Image level: ROC of the highest box score for 'the image holds an object'.",
        "score_hist": "Detection scores of true and false positives; dotted = fold thresholds, black = final.",
        "examples": ("The images with the most errors (FP + FN at the fold's box threshold): ground truth "
                     "green, detections red, ignore regions yellow."),
        "training_curves": "Training (dashed) and validation (solid) quantities per epoch and fold.",
    }
    if metrics["image_level"].get("available"):
        images_png["image_roc"] = plot_image_roc(metrics, plots / "image_roc.png")
    images_png["score_hist"] = plot_score_hist(metrics, data.det_score, outcome, plots / "score_hist.png")
    images_png["examples"], unreadable = plot_examples(samples, data, counts, class_names, plots / "examples.png")
    if unreadable:
        captions["examples"] += f" Left out (unreadable): {'; '.join(unreadable)}."
    images_png["training_curves"] = plot_training_curves(histories, plots / "training_curves.png")

    m = metrics
    headline = (f"AP50 {_with_ci(m['ap50'], m['ci']['ap50'])} · AP50:95 {_with_ci(m['ap50_95'], m['ci']['ap50_95'])}")
    ci_note = (
        f"{m['ci_level']:.0%} percentile bootstrap CIs from {m['n_bootstrap']} resamples of "
        f"{m['n_bootstrap_units']} {m['bootstrap_unit']}s ({m['skipped_resamples']} resamples without any "
        "ground-truth box skipped for AP). AP in a resample is computed from per-detection TP flags "
        "with COCO's 101-point interpolation."
        if m.get("n_bootstrap") else "No bootstrap CIs (evaluate.n_bootstrap = 0)."
    )
    summary = (f"<p><b>{escape(headline)}</b> · {escape(m['n_images'])} images ({escape(m['n_empty_images'])} "
               f"empty), {escape(m['n_boxes'])} boxes, {escape(m['n_ignore_regions'])} ignore regions, "
               f"{escape(m['n_detections'])} detections, {escape(m['n_folds'])} folds.</p>")
    sections = [
        ("Box metrics (out-of-fold)", html_table(["", ""], _summary_rows(m), numeric_from=2)
         + f"<p class='note'>{escape(ci_note)} AP is pycocotools' (area all, maxDets "
         f"{m['policy']['max_detections']}, ignore regions as crowd boxes of every class).</p>"),
        ("Per class", _per_class_table(m)),
        ("Image level", _image_level_html(m)),
        ("Per fold", _per_fold_table(m)),
        ("Shortcut audit", shortcut_section((info.get("data") or {}).get("shortcut_audit"), m.get("strata"))),
        ("Training cost", training_cost_section(run, histories, info.get("training_cost"))),
    ]
    return write_page(run, info, default_title="lepton-vision detection run", summary_html=summary,
                      sections=sections, images=images_png, captions=captions)


__all__ = [
    "N_EXAMPLES",
    "PLOT_NAMES",
    "draw_boxes",
    "plot_examples",
    "plot_image_roc",
    "plot_pr_curves",
    "plot_score_hist",
    "worst_images",
    "write_detection_report",
]

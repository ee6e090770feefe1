"""``lepton-vision train`` for object detection: the same stages and files as classification.

samples.csv (boxes per image) → folds.csv (grouped by sequence when the data has groups) → per
fold: fit on letterboxed images, predict the held-out fold with the export's decode + NMS, map
boxes back to original pixels → oof_detections.csv + oof_images.csv → metrics.json (no
TensorFlow: COCO AP, precision/recall/F1, image-level "object present" AUC/F1, bootstrap CIs) →
final model → export/ (SavedModel + TFLite, parity) → report.html.

A fold is finished when ``folds/<k>/result.json`` exists (written last); ``--resume`` skips it.
Folds run through :mod:`lepton_vision.engine.executors` (in this process, or as Ray tasks).
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lepton_vision.config.cards import Resolved
from lepton_vision.config.errors import DataError
from lepton_vision.runio import RunDir, atomic_write_csv, atomic_write_json

#: Columns of oof_detections.csv (contract D2).
DET_COLUMNS = ("sample_id", "fold", "class_id", "class_name", "score", "x1", "y1", "x2", "y2")

#: int8 calibration frames. TFLite calibrates each activation's range by its min/max over ALL
#: frames, so a bigger set widens the ranges with outlier frames and coarsens every other
#: frame. Measured on the street detector (48 random frames, image-score difference to the
#: SavedModel): 32 random frames median 0.021 / max 0.062, 100 frames median 0.105 / max 0.290.


def _console():
    from rich.console import Console

    return Console(highlight=False)


class LetterboxedData:
    """Every image decoded and letterboxed once; boxes in original and network pixels."""

    def __init__(self, table: pd.DataFrame, size_hw: tuple[int, int], max_pixels: int, progress: bool) -> None:
        from lepton_vision.data.preprocess import letterbox, read_image, to_uint8
        from lepton_vision.data.readers.detection import boxes_of

        n = len(table)
        h, w = int(size_hw[0]), int(size_hw[1])
        self.images = np.empty((n, h, w, 3), dtype=np.float32)
        self.scales: list[tuple[float, float]] = []
        self.orig_hw: list[tuple[int, int]] = []
        self.boxes: list[np.ndarray] = []  # original pixels
        self.classes: list[np.ndarray] = []
        self.ignore: list[np.ndarray] = []
        self.net_boxes: list[np.ndarray] = []  # network pixels
        self.net_ignore: list[np.ndarray] = []
        rows = table.to_dict("records")
        it: Any = rows
        if progress and n > 50:
            from rich.progress import track

            it = track(rows, description=f"decoding {n} images", transient=True)
        for i, row in enumerate(it):
            raw = to_uint8(read_image(row["path"], max_pixels), 3, None)
            img, (sx, sy) = letterbox(raw, (h, w))
            self.images[i] = img / np.float32(255.0)
            b, c, ig = boxes_of(row)
            s = np.array([sx, sy, sx, sy], np.float32)
            self.scales.append((sx, sy))
            self.orig_hw.append((int(raw.shape[0]), int(raw.shape[1])))
            self.boxes.append(b)
            self.classes.append(c)
            self.ignore.append(ig)
            self.net_boxes.append(b * s)
            self.net_ignore.append(ig * s)

    def training_images(self, idx: np.ndarray) -> np.ndarray:
        """Images for training: ignore regions painted grey, so the detector is neither taught
        that they are background nor that they are objects."""
        from lepton_vision.data.preprocess import LETTERBOX_PAD

        out = self.images[idx]
        for j, i in enumerate(idx):
            for x1, y1, x2, y2 in self.net_ignore[i]:
                out[j, int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = LETTERBOX_PAD / 255.0
        return out


def _build(resolved: Resolved, seed: int):
    from lepton_vision.models.detectors import adapter_for

    r = resolved.recipe
    spec = r.model.detector
    assert spec is not None
    adapter = adapter_for(spec)
    n_classes = len(resolved.task.classes)
    size = tuple(r.input.image_size)

    start = resolved.start_weights
    if start is None and r.model.weights not in ("none", "imagenet"):  # not through run_train
        from lepton_vision.models.finetune import resolve_weights_source

        start = str(resolve_weights_source(r.model.weights, resolved.recipe_path.parent))

    def build():
        model = adapter.build(spec, n_classes, size, seed)
        if start is not None:
            from lepton_vision.models.finetune import load_start_weights

            load_start_weights(model, start)
        return model

    return build, adapter


def _oof_rows(sample_ids: list[str], fold: int, dets: list[Any], data: LetterboxedData, idx: np.ndarray,
              class_names: list[str]) -> list[dict[str, Any]]:
    from lepton_vision.data.preprocess import boxes_to_original

    rows = []
    for sid, d, i in zip(sample_ids, dets, idx):
        h0, w0 = data.orig_hw[i]
        ob = boxes_to_original(d.boxes, data.scales[i], h0, w0)
        for b, s, c in zip(ob, d.scores, d.classes):
            if b[2] <= b[0] or b[3] <= b[1]:
                continue  # predicted inside the letterbox padding: zero area in the frame
            rows.append({
                "sample_id": sid, "fold": fold, "class_id": int(c), "class_name": class_names[int(c)],
                "score": round(float(s), 6), "x1": round(float(b[0]), 3), "y1": round(float(b[1]), 3),
                "x2": round(float(b[2]), 3), "y2": round(float(b[3]), 3),
            })
    return rows


def image_table(table: pd.DataFrame, dets: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """oof_images.csv (contract D2): one row per image with its max score, overall and per class."""
    out = table[["sample_id", "path", "group", "fold", "label", "n_boxes"]].rename(columns={"n_boxes": "n_gt"})
    best = dets.groupby("sample_id")["score"].max() if len(dets) else pd.Series(dtype=float)
    out = out.assign(image_score=out["sample_id"].map(best).fillna(0.0).astype(float))
    for c, name in enumerate(class_names):
        sub = dets[dets["class_id"] == c] if len(dets) else dets
        per = sub.groupby("sample_id")["score"].max() if len(sub) else pd.Series(dtype=float)
        out[f"score_{name}"] = out["sample_id"].map(per).fillna(0.0).astype(float)
    return out.reset_index(drop=True)


def run_detection_train(resolved: Resolved, run: RunDir, t_start: float, tracker: Any = None,
                        stop_after: str = "all") -> Path:
    """Run every stage of a detection recipe into ``run`` (created or being resumed).

    ``tracker`` (:mod:`lepton_vision.engine.tracking`) receives fold results, metrics and outputs;
    ``stop_after="metrics"`` stops once metrics.json is written (see ``crossval.run_train``).
    """
    if tracker is None:
        from lepton_vision.engine.tracking import NullTracker

        tracker = NullTracker()
    from lepton_vision.engine.run import _report_info, _run_info, data_fingerprint, load_samples

    console = _console()
    recipe = resolved.recipe
    task = resolved.task
    policy = task.detection
    assert policy is not None and recipe.model.detector is not None
    class_names = list(task.classes)

    # ---- data ------------------------------------------------------------------------------
    sample_set = load_samples(resolved, progress=recipe.train.verbose)
    table = sample_set.table
    atomic_write_csv(run.samples, table)
    fingerprint = data_fingerprint(table)
    counts = dict(sample_set.counts)
    data_report = {
        "n_samples": int(len(table)),
        "n_boxes": int(table["n_boxes"].sum()),
        "n_empty_images": int((table["label"] == 0).sum()),
        "n_groups": int(table["group"].replace("", np.nan).nunique()),
        "excluded": list(sample_set.excluded),
        "counts": counts,
        "fingerprint": fingerprint,
    }
    atomic_write_json(run.data_report, data_report)
    dropped = counts.get("boxes_dropped") or {}
    console.print(
        f"data: {data_report['n_samples']} images, {data_report['n_boxes']} boxes "
        f"({', '.join(f'{k} {v}' for k, v in (counts.get('per_class') or {}).items())}), "
        f"{data_report['n_empty_images']} without objects, {data_report['n_groups']} groups, "
        f"{len(sample_set.excluded)} images excluded"
        + (f", boxes dropped: {dropped}" if any(dropped.values()) else "")
        + (f", {counts.get('boxes_clipped')} boxes clipped to the image" if counts.get("boxes_clipped") else "")
    )

    # ---- folds -----------------------------------------------------------------------------
    from lepton_vision.data.folds import make_folds, read_folds, write_folds

    folds = make_folds(table, recipe.cv.n_splits, recipe.cv.strategy, recipe.seed,
                       group_noun=resolved.dataset.group_by or "groups", require_both_classes=False,
                       progress=recipe.train.verbose)
    if run.folds.is_file():
        saved = read_folds(run.folds)
        if not saved[["sample_id", "fold"]].reset_index(drop=True).equals(
            folds[["sample_id", "fold"]].reset_index(drop=True)
        ):
            raise DataError(
                f"{run.folds}: the data changed since this run started (the folds differ)",
                hint="Start a new run; resuming would mix folds of different data.",
            )
    else:
        write_folds(run.folds, folds)
    atomic_write_json(run.run_info, _run_info(resolved, fingerprint, t_start))
    table = table.assign(fold=table["sample_id"].map(dict(zip(folds["sample_id"], folds["fold"]))).astype(int))
    data = LetterboxedData(table, tuple(recipe.input.image_size), recipe.data.max_image_pixels, recipe.train.verbose)

    # ---- folds (train.executor: here, or Ray tasks) -------------------------------------------
    from lepton_vision.engine.executors import run_folds

    k_total = recipe.cv.n_splits
    from lepton_vision.engine.run import fold_bookkeeping

    results, pending, fold_done = fold_bookkeeping(run, k_total, tracker, "best_val_ap50", "val AP50")

    shared = {"resolved": resolved, "data": data, "sample_ids": table["sample_id"].tolist(),
              "fold_of": table["fold"].to_numpy()}
    run_folds(_detection_fold, shared, pending, run.fold_dir, recipe, fold_done, run.root)
    det_parts = [pd.read_csv(run.fold_dir(k) / "oof_detections.csv", dtype={"sample_id": str})
                 for k in range(k_total)]
    histories: dict[int, pd.DataFrame] = {}
    for k in range(k_total):
        hist = run.fold_dir(k) / "history.csv"
        histories[k] = pd.read_csv(hist) if hist.is_file() else pd.DataFrame()

    dets_all = pd.concat(det_parts).sort_values(["sample_id", "score"], ascending=[True, False]).reset_index(drop=True)
    atomic_write_csv(run.root / "oof_detections.csv", dets_all)
    images = image_table(table, dets_all, class_names)
    atomic_write_csv(run.oof, images)

    # ---- metrics (no TensorFlow) -------------------------------------------------------------
    from lepton_vision.kinds.detection.metrics import score_detection_oof

    ev = recipe.evaluate
    metrics = score_detection_oof(
        table, dets_all, images, class_names, policy, resolved.threshold, ev.n_bootstrap, ev.ci, recipe.seed,
    )
    metrics["folds"] = [results[k] for k in range(k_total)]
    atomic_write_json(run.metrics, metrics)
    tracker.log_metrics(metrics)
    if stop_after == "metrics":
        console.print(f"cross-validation done (stop_after metrics): {run.metrics}")
        return run.root

    # ---- final model, export, report ---------------------------------------------------------
    model = _final_detector(resolved, run, data, results)
    export_summary = export_detection_run(resolved, run, model, table, data, metrics, fingerprint)

    from lepton_vision.kinds.detection.report import write_detection_report

    info = _run_info(resolved, fingerprint, t_start)
    info["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    info["seconds"] = round(time.time() - t_start, 1)
    info["export"] = export_summary
    atomic_write_json(run.run_info, info)
    write_detection_report(run.root, metrics, table, dets_all, images, class_names, histories,
                           _report_info(resolved, data_report, folds, info, run))
    tracker.log_outputs(run)
    _print_summary(metrics, console)
    console.print(f"report: {run.report}   export: {run.export_dir}   ({info['seconds']:.0f} s)")
    return run.root


def _detection_fold(shared: dict[str, Any], k: int, fdir: Path) -> dict[str, Any]:
    """Fit detection fold ``k`` and write its out-of-fold boxes (in this process or a Ray worker).

    Writes history.csv, best.keras, tb/ and oof_detections.csv into ``fdir``; returns the fold's
    result (the driver writes result.json, last).
    """
    from lepton_vision.backend import configure_devices, recipe_for_replicas
    from lepton_vision.kinds.detection.train import fit_detection_fold, make_predict_fn, predict_detections

    resolved: Resolved = shared["resolved"]
    recipe = resolved.recipe
    policy = resolved.task.detection
    assert policy is not None
    class_names = list(resolved.task.classes)
    data: LetterboxedData = shared["data"]
    fold_of = shared["fold_of"]
    tr, va = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
    t = recipe.train
    build, adapter = _build(resolved, recipe.seed + k)
    device, strategy = configure_devices(recipe.seed + k, t.strategy, t.threads, t.mixed_precision)
    fit_recipe = recipe_for_replicas(recipe, device["replicas"])
    t0 = time.time()
    with strategy.scope():
        result = fit_detection_fold(
            build, adapter,
            (data.training_images(tr), [data.net_boxes[i] for i in tr], [data.classes[i] for i in tr]),
            (data.images[va], [data.net_boxes[i] for i in va], [data.classes[i] for i in va],
             [data.net_ignore[i] for i in va]),
            len(class_names), fit_recipe, policy, fdir, fold_label=f"fold {k + 1}/{recipe.cv.n_splits}",
        )
    predict = make_predict_fn(result.model, adapter, policy.max_detections, policy.nms_iou, policy.min_score)
    dets = predict_detections(predict, data.images[va], fit_recipe.train.batch_size)
    sample_ids = [shared["sample_ids"][i] for i in va]
    part = pd.DataFrame(_oof_rows(sample_ids, k, dets, data, va, class_names), columns=list(DET_COLUMNS))
    atomic_write_csv(fdir / "oof_detections.csv", part)
    return {
        "fold": k, "best_epoch": int(result.best_epoch), "best_val_ap50": float(result.best_score),
        "epochs_run": int(result.epochs_run), "n_train": int(len(tr)), "n_val": int(len(va)),
        "seconds": round(time.time() - t0, 2),
        "execution": {**device, "global_batch_size": int(fit_recipe.train.batch_size), "threads": int(t.threads)},
    }


def _print_summary(metrics: dict[str, Any], console: Any) -> None:
    ci = metrics.get("ci", {})

    def fmt(key: str, value: Any) -> str:
        lohi = ci.get(key)
        return f"{value:.3f}" + (f" [{lohi[0]:.3f}, {lohi[1]:.3f}]" if lohi else "")

    console.print(
        f"[bold]AP50 {fmt('ap50', metrics['ap50'])}[/bold]   AP50:95 {fmt('ap50_95', metrics['ap50_95'])}   "
        f"P {fmt('precision', metrics['precision'])}  R {fmt('recall', metrics['recall'])}  "
        f"F1 {fmt('f1', metrics['f1'])} (box score threshold cross-fitted per fold)"
    )
    for name, pc in (metrics.get("per_class") or {}).items():
        ap = pc.get("ap50")
        console.print(f"  {name}: AP50 {'n/a' if ap is None else f'{ap:.3f}'} ({pc.get('n_gt', 0)} boxes)")
    il = metrics.get("image_level") or {}
    if il.get("available", True) and "auc" in il:
        console.print(f"  image level (object present): AUC {fmt('image_auc', il['auc'])}, F1 {fmt('image_f1', il['f1'])}")
    elif il:
        console.print(f"  image level: not available ({il.get('reason', '')})")


def _final_detector(resolved: Resolved, run: RunDir, data: LetterboxedData, results: dict[int, dict[str, Any]]):
    from lepton_vision.backend import configure_devices
    from lepton_vision.engine.run import final_model
    from lepton_vision.kinds.detection.train import fit_detection_final

    import keras_cv  # noqa: F401 - registers the YOLOv8 classes for load_model

    recipe = resolved.recipe
    n = len(data.images)

    def refit(epochs: int) -> Any:
        from lepton_vision.backend import recipe_for_replicas

        t = recipe.train
        build, adapter = _build(resolved, recipe.seed + 1000)
        device, strategy = configure_devices(recipe.seed + 1000, t.strategy, t.threads, t.mixed_precision)
        with strategy.scope():
            return fit_detection_final(
                build, adapter, (data.training_images(np.arange(n)), data.net_boxes, data.classes),
                recipe_for_replicas(recipe, device["replicas"]), run.final_dir, epochs,
            )

    return final_model(run, recipe, results, "best_val_ap50", n, refit)


def export_detection_run(resolved: Resolved, run: RunDir, model: Any, table: pd.DataFrame,
                         data: LetterboxedData | None, metrics: dict[str, Any], fingerprint: str,
                         formats: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Export the final detector with the run's thresholds (SavedModel, TFLite, parity, int8 AP50 change)."""
    from lepton_vision.engine.run import start_info, versions
    from lepton_vision.kinds.detection.export import export_detector

    r = resolved.recipe
    task = resolved.task
    policy = task.detection
    assert policy is not None and r.model.detector is not None
    n = min(r.export.parity_samples, len(table))
    rows = table.sample(n=n, random_state=r.seed) if len(table) > n else table
    il = metrics.get("image_level") or {}
    bundle_info = {
        "task": task.name,
        "kind": task.kind,
        "title": task.title,
        "intended_use": task.intended_use,
        "classes": list(task.classes),
        "detection": policy.model_dump(mode="json"),
        "architecture": r.model.detector.architecture,
        "size": r.model.detector.size,
        "threshold_policy": resolved.threshold.model_dump(mode="json"),
        "metrics": {k: metrics.get(k) for k in ("ap50", "ap50_95", "precision", "recall", "f1", "ci",
                                                "bootstrap_unit", "per_class")},
        "image_level": {k: v for k, v in il.items() if not isinstance(v, (list, dict))},
        "recipe": {"name": r.name, "sha256": r.sha256(), "seed": r.seed},
        "dataset": {"name": resolved.dataset.name, "fingerprint": fingerprint, "n_samples": int(len(table))},
        "versions": versions(),
        "training_start": start_info(run.root),
    }
    image_thr = il.get("final_threshold")
    formats = tuple(formats or r.export.formats)
    quant_rows, evaluated_on = None, ""
    if "tflite_int8" in formats:
        from lepton_vision.data.folds import read_folds
        from lepton_vision.export.quantization import evaluation_rows

        t = table
        if "fold" not in t.columns and run.folds.is_file():
            t = t.merge(read_folds(run.folds)[["sample_id", "fold"]], on="sample_id", how="left")
        quant_rows, evaluated_on = evaluation_rows(t, run.final_dir / "final.json", r.export.int8_eval_samples,
                                                   r.seed + 3, stratify=None)
    result = export_detector(
        model, run.export_dir,
        input_hw=tuple(r.input.image_size),
        score_threshold=float(metrics["final_score_threshold"]),
        image_threshold=None if image_thr is None else float(image_thr),
        policy=policy,
        bundle_info=bundle_info,
        parity_paths=list(rows["path"]),
        calibration_paths=list(table["path"].sample(n=min(r.export.int8_calibration_samples, len(table)),
                                                    random_state=r.seed + 1)),
        formats=formats,
        max_pixels=r.data.max_image_pixels,
        quant_rows=quant_rows,
        evaluated_on=evaluated_on,
        int8_max_drop=r.export.int8_max_drop,
    )
    from lepton_vision.engine.run import report_export

    report_export(result)
    return result


def run_kind(run_dir: Path) -> str:
    """The task kind a run directory was trained for (from run.json; classification if unknown)."""
    info = RunDir(Path(run_dir)).run_info
    if info.is_file():
        return str(json.loads(info.read_text()).get("task", {}).get("kind", "binary_classification"))
    return "binary_classification"


def _run_resolved(run: RunDir) -> Resolved:
    from lepton_vision.config.cards import resolve
    from lepton_vision.engine.run import _recipe_anchor
    from lepton_vision.config.recipe import recipe_from_text

    recipe = recipe_from_text(run.recipe.read_text(), file=str(run.recipe))
    return resolve(recipe, _recipe_anchor(run))


def _read_run_tables(run: RunDir) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    from lepton_vision.config.errors import LeptonError

    det_path = run.root / "oof_detections.csv"
    for need in (run.recipe, run.samples, det_path, run.oof):
        if not need.is_file():
            raise LeptonError(
                f"{run.root}: {need.name} is missing",
                hint="Finish the run first: lepton-vision train RECIPE --resume " + str(run.root),
            )
    str_cols = {"sample_id": str, "group": str}
    table = pd.read_csv(run.samples, dtype=str_cols, keep_default_na=False)
    dets = pd.read_csv(det_path, dtype={"sample_id": str})
    images = pd.read_csv(run.oof, dtype=str_cols, keep_default_na=False)
    return table, dets, images


def rescore_detection_run(run_dir: Path, policy: Any = None) -> dict[str, Any]:
    """``lepton-vision evaluate RUN`` for detection: metrics again from the saved OOF files
    (no TensorFlow); ``policy`` replaces the image-level threshold policy."""
    from lepton_vision.kinds.detection.metrics import score_detection_oof
    from lepton_vision.kinds.classification.metrics import parse_policy

    run = RunDir(Path(run_dir))
    resolved = _run_resolved(run)
    table, dets, images = _read_run_tables(run)
    if isinstance(policy, str):
        policy = parse_policy(policy)
    ev = resolved.recipe.evaluate
    assert resolved.task.detection is not None
    metrics = score_detection_oof(
        table, dets, images, list(resolved.task.classes), resolved.task.detection,
        policy or resolved.threshold, ev.n_bootstrap, ev.ci, resolved.recipe.seed,
    )
    folds = [json.loads(run.fold_done(k).read_text()) for k in range(resolved.recipe.cv.n_splits)
             if run.fold_done(k).is_file()]
    metrics["folds"] = folds
    return metrics


def export_detection_from_run(run_dir: Path, formats: tuple[str, ...] | None = None) -> Path:
    """``lepton-vision export RUN`` for detection: re-export final/model.keras without retraining
    (``formats`` replaces the recipe's export.formats)."""
    from lepton_vision.backend import import_keras
    from lepton_vision.config.errors import LeptonError

    run = RunDir(Path(run_dir))
    for need in (run.metrics, run.data_report, run.final_dir / "model.keras"):
        if not need.is_file():
            raise LeptonError(
                f"{run_dir}: cannot export, {need.name} is missing",
                hint="Finish the run first: lepton-vision train RECIPE --resume " + str(run_dir),
            )
    resolved = _run_resolved(run)
    table, _, _ = _read_run_tables(run)
    _, keras = import_keras()
    import keras_cv  # noqa: F401 - registers the YOLOv8 classes for load_model

    model = keras.models.load_model(run.final_dir / "model.keras", compile=False)
    metrics = json.loads(run.metrics.read_text())
    fingerprint = json.loads(run.data_report.read_text())["fingerprint"]
    export_detection_run(resolved, run, model, table, None, metrics, fingerprint, formats)
    return run.export_dir

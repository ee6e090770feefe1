"""Object detection: boxes per image through a detector adapter, COCO AP/F1 and an image score.

The model comes from :mod:`lepton_vision.models.detectors` (keras-cv YOLOv8 behind ``ADAPTERS``).
Each step the engine asks for (:class:`lepton_vision.kinds.base.TaskKind`) is here: decode and
letterbox every image once, fit a fold on letterboxed images and predict its held-out images with
the export's decode + NMS, map boxes back to original pixels (``oof_detections.csv`` and one row
per image in ``oof_predictions.csv``), score without TensorFlow (COCO AP, precision/recall/F1,
image-level "object present" AUC/F1, bootstrap CIs), refit, export with letterbox, NMS and
thresholds inside the graph, and write the report. Importing this module does not import
TensorFlow.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lepton_vision.config.cards import Resolved
from lepton_vision.runio import RunDir, atomic_write_csv

#: Columns of oof_predictions.csv (one row per image) besides sample_id, path, group, label, fold;
#: the boxes themselves are in oof_detections.csv (contract D2).
OOF_COLUMNS: tuple[str, ...] = ("n_gt", "image_score")

#: Columns of oof_detections.csv (contract D2).
DET_COLUMNS = ("sample_id", "fold", "class_id", "class_name", "score", "x1", "y1", "x2", "y2")

#: File of the out-of-fold boxes (original pixels), beside oof_predictions.csv.
OOF_DETECTIONS = "oof_detections.csv"


def build_model(recipe: Any, weights: str | None = None, seed: int | None = None, n_classes: int = 1) -> Any:
    """An uncompiled detector for ``recipe.model.detector`` taking 0..255 pixels at input.image_size.

    Args:
        recipe: The validated recipe (``model.detector`` must be set).
        weights: Unused: detectors start from random weights or the run's start weights.
        seed: Weight-initialisation seed; defaults to ``recipe.seed``.
        n_classes: Number of object classes (the task card's classes).
    """
    from lepton_vision.models.detectors import adapter_for

    spec = recipe.model.detector
    if spec is None:
        raise ValueError("object_detection needs model.detector in the recipe")
    return adapter_for(spec).build(spec, n_classes, tuple(recipe.input.image_size),
                                   recipe.seed if seed is None else seed)


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


def fit_fold_task(shared: dict[str, Any], k: int, fdir: Path) -> dict[str, Any]:
    """Fit detection fold ``k`` and write its out-of-fold boxes (in this process or a Ray worker).

    Writes history.csv, best.keras, tb/ and oof_detections.csv into ``fdir``; returns the fold's
    result (the driver writes result.json, last).
    """
    from lepton_vision.backend import configure_devices, recipe_for_replicas
    from lepton_vision.kinds.detection.train import fit_detection_fold, make_predict_fn, predict_detections
    from lepton_vision.models.detectors import adapter_for
    from lepton_vision.models.finetune import fold_model_builder

    resolved: Resolved = shared["resolved"]
    recipe = resolved.recipe
    policy = resolved.task.detection
    assert policy is not None and recipe.model.detector is not None
    class_names = list(resolved.task.classes)
    data: LetterboxedData = shared["data"]
    fold_of = shared["fold_of"]
    tr, va = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
    t = recipe.train
    build = fold_model_builder(resolved, build_model, recipe.seed + k)
    adapter = adapter_for(recipe.model.detector)
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
    atomic_write_csv(fdir / OOF_DETECTIONS, part)
    return {
        "fold": k, "best_epoch": int(result.best_epoch), "best_val_ap50": float(result.best_score),
        "epochs_run": int(result.epochs_run), "n_train": int(len(tr)), "n_val": int(len(va)),
        "seconds": round(time.time() - t0, 2),
        "execution": {**device, "global_batch_size": int(fit_recipe.train.batch_size), "threads": int(t.threads)},
    }


class DetectionKind:
    """The steps of an object-detection run (see :class:`lepton_vision.kinds.base.TaskKind`)."""

    name = "object_detection"
    OOF_COLUMNS = OOF_COLUMNS
    fold_metric = ("best_val_ap50", "val AP50")
    #: A fold may lack empty frames (or frames with objects): AP needs neither.
    folds_need_both_classes = False
    audit_target = "object present"
    fold_task = staticmethod(fit_fold_task)
    build_model = staticmethod(build_model)
    #: Metrics a sweep can maximise: name -> (path in metrics.json, key of its CI).
    OBJECTIVES: dict[str, tuple[tuple[str, ...], str]] = {
        "ap50": (("ap50",), "ap50"),
        "ap50_95": (("ap50_95",), "ap50_95"),
        "f1": (("f1",), "f1"),
        "roc_auc": (("image_level", "auc"), "image_auc"),
    }
    objectives = tuple(OBJECTIVES)
    #: Generators whose labels fit this kind when pretraining (boxes).
    pretrain_generators = ("street_scenes", "road_scenes")
    #: Detectors' outputs (boxes after NMS) do not average: final.mode average is refused at resolve.
    average_models = None

    # ---- data ------------------------------------------------------------------------------
    def data_report(self, resolved: Resolved, sample_set: Any, fingerprint: str) -> tuple[dict[str, Any], str]:
        """data_report.json (boxes, empty frames, clipped and dropped boxes) and its console line."""
        table = sample_set.table
        counts = dict(sample_set.counts)
        report = {
            "n_samples": int(len(table)),
            "n_boxes": int(table["n_boxes"].sum()),
            "n_empty_images": int((table["label"] == 0).sum()),
            "n_groups": int(table["group"].replace("", np.nan).nunique()),
            "excluded": list(sample_set.excluded),
            "counts": counts,
            "fingerprint": fingerprint,
        }
        dropped = counts.get("boxes_dropped") or {}
        line = (
            f"data: {report['n_samples']} images, {report['n_boxes']} boxes "
            f"({', '.join(f'{k} {v}' for k, v in (counts.get('per_class') or {}).items())}), "
            f"{report['n_empty_images']} without objects, {report['n_groups']} groups, "
            f"{len(sample_set.excluded)} images excluded"
            + (f", boxes dropped: {dropped}" if any(dropped.values()) else "")
            + (f", {counts.get('boxes_clipped')} boxes clipped to the image" if counts.get("boxes_clipped") else "")
        )
        return report, line

    def prepare(self, resolved: Resolved, table: pd.DataFrame) -> dict[str, Any]:
        """Decode and letterbox every image once (the folds, the refit and the export share it)."""
        recipe = resolved.recipe
        data = LetterboxedData(table, tuple(recipe.input.image_size), recipe.data.max_image_pixels,
                               recipe.train.verbose)
        return {"resolved": resolved, "data": data, "sample_ids": table["sample_id"].tolist(),
                "fold_of": table["fold"].to_numpy()}

    # ---- out-of-fold predictions and metrics (no TensorFlow) ----------------------------------
    def collect_oof(self, resolved: Resolved, run: RunDir, table: pd.DataFrame, folds: list[int]) -> dict[str, pd.DataFrame]:
        """oof_detections.csv (every box) and oof_predictions.csv (one row per image of ``table``)."""
        parts = [pd.read_csv(run.fold_dir(k) / OOF_DETECTIONS, dtype={"sample_id": str}) for k in folds]
        dets = pd.concat(parts).sort_values(["sample_id", "score"], ascending=[True, False]).reset_index(drop=True)
        atomic_write_csv(run.root / OOF_DETECTIONS, dets)
        images = image_table(table, dets, list(resolved.task.classes))
        atomic_write_csv(run.oof, images)
        return {"detections": dets, "images": images}

    def score(self, resolved: Resolved, table: pd.DataFrame, oof: dict[str, pd.DataFrame],
              policy: Any = None) -> dict[str, Any]:
        """metrics.json from the out-of-fold boxes (``policy`` replaces the image-level one)."""
        from lepton_vision.kinds.detection.metrics import score_detection_oof

        ev = resolved.recipe.evaluate
        assert resolved.task.detection is not None
        return score_detection_oof(table, oof["detections"], oof["images"], list(resolved.task.classes),
                                   resolved.task.detection, policy or resolved.threshold, ev.n_bootstrap, ev.ci,
                                   resolved.recipe.seed)

    def rescore(self, run: RunDir, policy: Any = None) -> dict[str, Any]:
        """``lepton-vision evaluate RUN``: metrics again from the saved out-of-fold files."""
        import json

        from lepton_vision.config.cards import resolve_run
        from lepton_vision.evaluate.thresholds import parse_policy

        resolved = resolve_run(run)
        for need in (run.samples, run.root / OOF_DETECTIONS, run.oof):
            run.require(need, "Finish the run first")
        oof = self.read_oof(run)
        if isinstance(policy, str):
            policy = parse_policy(policy)
        table = run.read_table(run.samples)
        # cv.folds: only the trained folds' images have out-of-fold rows.
        table = table[table["sample_id"].astype(str).isin(set(oof["images"]["sample_id"].astype(str)))]
        metrics = self.score(resolved, table.reset_index(drop=True), oof, policy)
        metrics["folds"] = [json.loads(run.fold_done(k).read_text()) for k in range(resolved.recipe.cv.n_splits)
                            if run.fold_done(k).is_file()]
        return metrics

    def read_oof(self, run: RunDir) -> dict[str, pd.DataFrame]:
        """The out-of-fold boxes and image rows of a finished run."""
        return {"detections": pd.read_csv(run.root / OOF_DETECTIONS, dtype={"sample_id": str}),
                "images": run.read_table(run.oof)}

    def stratum_metrics(self, resolved: Resolved, table: pd.DataFrame, oof: dict[str, pd.DataFrame],
                        metrics: dict[str, Any], sample_ids: list[str]) -> dict[str, Any]:
        """AP50 (and the image-level AUC when the stratum has empty frames) with CIs on the
        frames ``sample_ids``, scored like the whole run (same box and image thresholds policy)."""
        from lepton_vision.config.errors import DataError
        from lepton_vision.kinds.detection.metrics import score_detection_oof

        keep = set(map(str, sample_ids))
        ev = resolved.recipe.evaluate
        assert resolved.task.detection is not None
        sub_table = table[table["sample_id"].astype(str).isin(keep)]
        try:
            m = score_detection_oof(sub_table, oof["detections"][oof["detections"]["sample_id"].astype(str).isin(keep)],
                                    oof["images"][oof["images"]["sample_id"].astype(str).isin(keep)],
                                    list(resolved.task.classes), resolved.task.detection, resolved.threshold,
                                    min(ev.n_bootstrap, 300), ev.ci, resolved.recipe.seed)
        except DataError as exc:
            return {"note": f"not scored: {exc}"}
        ap_lo, ap_hi = (m.get("ci") or {}).get("ap50", (None, None))
        out = {"ap50": {"value": m["ap50"], "lo": ap_lo, "hi": ap_hi}}
        if (m.get("image_level") or {}).get("available"):
            lo, hi = (m.get("ci") or {}).get("image_auc", (None, None))
            out["image_auc"] = {"value": m["image_level"].get("auc"), "lo": lo, "hi": hi}
        return out

    def objective(self, metrics: dict[str, Any], name: str) -> tuple[Any, Any, Any]:
        """(value, CI low, CI high) of a cross-validated metric in metrics.json (Nones when absent);
        ``roc_auc`` is the image-level "object present" AUC."""
        path, ci_key = self.OBJECTIVES[name]
        node: Any = metrics
        for part in path:
            node = (node or {}).get(part) if isinstance(node, dict) else None
        ci = (metrics.get("ci") or {}).get(ci_key)
        lo, hi = ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
        return node, lo, hi

    def paired_bootstrap(self, run_a: RunDir, run_b: RunDir, *, merge_classes: bool = False,
                         n_bootstrap: int = 1000, seed: int = 0) -> Any:
        """The kind's headline metric of two runs of the same folds on the same resamples."""
        from lepton_vision.kinds.detection.metrics import paired_bootstrap

        return paired_bootstrap(run_a, run_b, merge_classes=merge_classes, n_bootstrap=n_bootstrap, seed=seed)

    def print_summary(self, metrics: dict[str, Any], console: Any) -> None:
        """AP50, AP50:95, P/R/F1 with CIs, per class, and the image level."""
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
            console.print(f"  image level (object present): AUC {fmt('image_auc', il['auc'])}, "
                          f"F1 {fmt('image_f1', il['f1'])}")
        elif il:
            console.print(f"  image level: not available ({il.get('reason', '')})")

    # ---- final model, export, report ---------------------------------------------------------
    def load_model(self, path: Path) -> Any:
        """A saved detector (keras-cv's classes are registered first)."""
        from lepton_vision.backend import import_keras

        _, keras = import_keras()
        import keras_cv  # noqa: F401 - registers the YOLOv8 classes for load_model

        return keras.models.load_model(path, compile=False)

    def refit(self, resolved: Resolved, run: RunDir, data: dict[str, Any], epochs: int) -> Any:
        """The final detector: trained on every image for ``epochs`` epochs."""
        from lepton_vision.backend import configure_devices, recipe_for_replicas
        from lepton_vision.kinds.detection.train import fit_detection_final
        from lepton_vision.models.detectors import adapter_for
        from lepton_vision.models.finetune import fold_model_builder

        recipe = resolved.recipe
        frames: LetterboxedData = data["data"]
        n = len(frames.images)
        t = recipe.train
        build = fold_model_builder(resolved, build_model, recipe.seed + 1000)
        device, strategy = configure_devices(recipe.seed + 1000, t.strategy, t.threads, t.mixed_precision)
        with strategy.scope():
            return fit_detection_final(
                build, adapter_for(recipe.model.detector),
                (frames.training_images(np.arange(n)), frames.net_boxes, frames.classes),
                recipe_for_replicas(recipe, device["replicas"]), run.final_dir, epochs,
            )

    def export(self, resolved: Resolved, run: RunDir, model: Any, table: pd.DataFrame, metrics: dict[str, Any],
               fingerprint: str, formats: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The detector with letterbox, decoding, NMS and thresholds inside (SavedModel, TFLite,
        parity, int8 AP50 change)."""
        from lepton_vision.data.folds import attach_folds
        from lepton_vision.engine.runinfo import bundle_provenance
        from lepton_vision.export.quantization import calibration_rows, evaluation_rows
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
            **bundle_provenance(resolved, run, fingerprint, len(table)),
        }
        image_thr = il.get("final_threshold")
        formats = tuple(formats or r.export.formats)
        quant_rows, evaluated_on = None, ""
        with_folds, final_json = attach_folds(table, run.folds), run.final_dir / "final.json"
        if "tflite_int8" in formats:
            quant_rows, evaluated_on = evaluation_rows(with_folds, final_json, r.export.int8_eval_samples, r.seed + 3,
                                                       stratify=None)
        return export_detector(
            model, run.export_dir,
            input_hw=tuple(r.input.image_size),
            score_threshold=float(metrics["final_score_threshold"]),
            image_threshold=None if image_thr is None else float(image_thr),
            policy=policy,
            bundle_info=bundle_info,
            parity_paths=list(rows["path"]),
            calibration_paths=list(calibration_rows(with_folds, final_json, r.export.int8_calibration_samples,
                                                    r.seed + 1)["path"]),
            formats=formats,
            max_pixels=r.data.max_image_pixels,
            quant_rows=quant_rows,
            evaluated_on=evaluated_on,
            int8_max_drop=r.export.int8_max_drop,
            int8_float_layers=tuple(r.export.int8_float_layers),
            ood=_ood_or_none(resolved, run, model, table),
        )

    def write_report(self, resolved: Resolved, run: RunDir, model: Any, metrics: dict[str, Any], table: pd.DataFrame,
                     oof: dict[str, pd.DataFrame], histories: dict[int, pd.DataFrame], info: dict[str, Any]) -> Path:
        """plots/ (PR per class, image ROC, score histogram, worst images) and report.html."""
        from lepton_vision.kinds.detection.report import write_detection_report

        return write_detection_report(run.root, metrics, table, oof["detections"], oof["images"],
                                      list(resolved.task.classes), histories, info)

    # ---- serving -------------------------------------------------------------------------------
    def predictor_class(self) -> type:
        """The Predictor of this kind's exports."""
        from lepton_vision.kinds.detection.predictor import DetPredictor

        return DetPredictor

    def predict_files(self, export_dir: Path, inputs: list[Path], **options: Any) -> str:
        """``lepton-vision predict`` for an export of this kind (see
        :func:`lepton_vision.kinds.detection.predictor.predict_files`); returns the summary line."""
        from lepton_vision.kinds.detection.predictor import predict_files

        return predict_files(export_dir, inputs, **options)

    def demo(self) -> Any:
        """The module with this kind's demo page (``build_page``) and model-card section
        (``card_section``): :mod:`lepton_vision.kinds.detection.demo`."""
        from lepton_vision.kinds.detection import demo

        return demo

    # ---- pretraining on generated data ---------------------------------------------------------
    def pretraining(self) -> Any:
        """The module with this kind's pretraining steps (:mod:`lepton_vision.kinds.detection.pretrain`)."""
        from lepton_vision.kinds.detection import pretrain

        return pretrain


def feature_model(model: Any) -> Any:
    """The detector's pooled features for OOD: the backbone's deepest pyramid level (P5),
    averaged over space; takes letterboxed frames in pixels 0..255 like the detector."""
    from lepton_vision.backend import import_keras

    _, keras = import_keras()
    backbone = model.backbone
    p5 = backbone.get_layer(backbone.pyramid_level_inputs["P5"]).output
    return keras.Model(backbone.input, keras.layers.GlobalAveragePooling2D(name="ood_pool")(p5))


def _ood_or_none(resolved: Resolved, run: RunDir, model: Any, table: pd.DataFrame) -> tuple[Any, Any] | None:
    """:func:`_ood_reference`, or None when the data is too small for one (:func:`reference_or_none`)."""
    from lepton_vision.export.reference import reference_or_none

    return reference_or_none(lambda: _ood_reference(resolved, run, model, table))


def _ood_reference(resolved: Resolved, run: RunDir, model: Any, table: pd.DataFrame) -> tuple[Any, Any]:
    """The export's reference of "normal input": pooled backbone features and image statistics
    of (up to 1024) training frames, and the out-of-fold image scores."""
    from lepton_vision.data.preprocess import letterbox, read_image, to_uint8
    from lepton_vision.export.reference import MAX_IMAGES, fit_from_images

    r = resolved.recipe
    rows = table.sample(n=min(MAX_IMAGES, len(table)), random_state=r.seed + 5) if len(table) > MAX_IMAGES else table
    features = feature_model(model)
    size = tuple(r.input.image_size)
    scores = run.read_table(run.oof)["image_score"].to_numpy(float) if run.oof.is_file() else np.zeros(0)
    frames = [to_uint8(read_image(p, r.data.max_image_pixels), 3, None) for p in rows["path"]]
    ref, _, _ = fit_from_images(
        frames, rows["group"].to_numpy(), scores,
        prep_np=lambda im: letterbox(im, size)[0].astype(np.float32),
        features_np=lambda x: features(x, training=False), seed=r.seed + 6, score_name="image_score",
        false_flag_rate=r.export.ood_false_flag_rate)
    return ref, features


KIND = DetectionKind()

"""Binary classification: a sigmoid score per image, AUC/F1/sensitivity/specificity with CIs.

The model is a backbone from :mod:`lepton_vision.models.backbones` with a one-unit sigmoid head.
Each step the engine asks for (:class:`lepton_vision.kinds.base.TaskKind`) is here: decode the
images once, fit a fold and score its held-out images (``oof_predictions.csv``, column
``score``), score the out-of-fold predictions without TensorFlow, refit, export with the
threshold inside the graph, and write the report (with a Grad-CAM panel of the final model).
Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lepton_vision.config.cards import Resolved
from lepton_vision.kinds.classification.model import average_models, build_model
from lepton_vision.kinds.classification.model import feature_model as pooled_features
from lepton_vision.runio import RunDir, atomic_write_csv

#: Columns this kind writes to oof_predictions.csv besides sample_id, path, group, label, fold.
OOF_COLUMNS: tuple[str, ...] = ("score",)


def data_has_hu(table: pd.DataFrame) -> bool:
    """Whether the samples carry Hounsfield units (DICOM files or NIfTI volume slices)."""
    from lepton_vision.data.preprocess import DICOM_EXTENSIONS

    def hu(path: str) -> bool:
        p = str(path).lower().split("#", 1)[0]
        return p.endswith(DICOM_EXTENSIONS) or p.endswith((".nii", ".nii.gz"))

    return bool(table["path"].map(hu).any())


def fit_fold_task(shared: dict[str, Any], k: int, fdir: Path) -> dict[str, Any]:
    """Fit fold ``k`` and score its held-out images (in this process or a Ray worker).

    Writes history.csv, best.keras, tb/ (TensorBoard) and oof.csv into ``fdir``; returns the
    fold's result (result.json is written by the driver, last). Every process seeds, sets its
    threads and picks its strategy the same way, so the executor does not change the numbers.
    """
    from lepton_vision.backend import configure_devices, recipe_for_replicas
    from lepton_vision.kinds.classification.train import fit_fold, predict_scores
    from lepton_vision.models.finetune import fold_model_builder

    resolved: Resolved = shared["resolved"]
    recipe = resolved.recipe
    table: pd.DataFrame = shared["table"]
    images, labels = shared["images"], shared["labels"]
    fold_of = table["fold"].to_numpy()
    tr, va = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
    t = recipe.train
    device, strategy = configure_devices(recipe.seed + k, t.strategy, t.threads, t.mixed_precision)
    fit_recipe = recipe_for_replicas(recipe, device["replicas"])
    t0 = time.time()
    with strategy.scope():
        result = fit_fold(
            fold_model_builder(resolved, build_model, recipe.seed + k), images[tr], labels[tr], images[va], labels[va],
            fit_recipe, fdir, fold_label=f"fold {k + 1}/{recipe.cv.n_splits}",
        )
    scores = predict_scores(result.model, images[va], fit_recipe.train.batch_size)
    part = table.iloc[va][["sample_id", "path", "group", "label", "fold"]].assign(score=scores)
    atomic_write_csv(fdir / "oof.csv", part)
    return {
        "fold": k,
        "best_epoch": int(result.best_epoch),
        "best_val_auc": float(result.best_score),
        "epochs_run": int(result.epochs_run),
        "n_train": int(len(tr)),
        "n_val": int(len(va)),
        "seconds": round(time.time() - t0, 2),
        "execution": {**device, "global_batch_size": int(fit_recipe.train.batch_size), "threads": int(t.threads)},
    }


class ClassificationKind:
    """The steps of a binary-classification run (see :class:`lepton_vision.kinds.base.TaskKind`)."""

    name = "binary_classification"
    OOF_COLUMNS = OOF_COLUMNS
    fold_metric = ("best_val_auc", "val AUC")
    folds_need_both_classes = True
    audit_target = "label"
    fold_task = staticmethod(fit_fold_task)
    build_model = staticmethod(build_model)
    #: Metrics a sweep can maximise (pooled out-of-fold, with CIs).
    objectives = ("roc_auc", "pr_auc", "f1", "balanced_accuracy")
    #: Generators whose labels fit this kind when pretraining (slice labels, no boxes).
    pretrain_generators = ("ct_phantom",)
    #: final.mode average: one model scoring the mean of the fold models' scores.
    average_models = staticmethod(average_models)

    # ---- data ------------------------------------------------------------------------------
    def data_report(self, resolved: Resolved, sample_set: Any, fingerprint: str) -> tuple[dict[str, Any], str]:
        """data_report.json and its console line."""
        table = sample_set.table
        report = {
            "n_samples": int(len(table)),
            "n_positive": int(table["label"].sum()),
            "n_groups": int(table["group"].replace("", np.nan).nunique()),
            "excluded": list(sample_set.excluded),
            "counts": dict(sample_set.counts),
            "fingerprint": fingerprint,
        }
        line = (f"data: {report['n_samples']} images ({report['n_positive']} {resolved.task.positive_class}), "
                f"{report['n_groups']} groups, {len(sample_set.excluded)} excluded")
        return report, line

    def prepare(self, resolved: Resolved, table: pd.DataFrame) -> dict[str, Any]:
        """Decode every image once (the folds, the refit and the report share it)."""
        from lepton_vision.data.pipeline import load_images

        recipe = resolved.recipe
        images = load_images(
            list(table["path"]), tuple(recipe.input.image_size), recipe.input.channels, recipe.input.window_spec(),
            recipe.data.max_image_pixels, progress=recipe.train.verbose, reencode_spec=recipe.input.reencode_spec(),
        )
        return {"resolved": resolved, "images": images, "labels": table["label"].to_numpy(dtype=np.int64),
                "table": table[["sample_id", "path", "group", "label", "fold"]]}

    # ---- out-of-fold predictions and metrics (no TensorFlow) ----------------------------------
    def collect_oof(self, resolved: Resolved, run: RunDir, table: pd.DataFrame, folds: list[int]) -> pd.DataFrame:
        """oof_predictions.csv from the folds' oof.csv files."""
        parts = [pd.read_csv(run.fold_dir(k) / "oof.csv", dtype={"group": str}, keep_default_na=False)
                 for k in folds]
        oof = pd.concat(parts).sort_values("sample_id").reset_index(drop=True)
        atomic_write_csv(run.oof, oof)
        return oof

    def score(self, resolved: Resolved, table: pd.DataFrame, oof: pd.DataFrame, policy: Any = None) -> dict[str, Any]:
        """metrics.json from the out-of-fold scores (``policy`` replaces the recipe's)."""
        from lepton_vision.kinds.classification.metrics import score_oof

        ev = resolved.recipe.evaluate
        return score_oof(oof, policy or resolved.threshold, ev.n_bootstrap, ev.ci, resolved.recipe.seed,
                         aggregation=ev.patient_aggregation, calibration_bins=ev.calibration_bins,
                         temperature_scaling=ev.temperature_scaling)

    def rescore(self, run: RunDir, policy: Any = None) -> dict[str, Any]:
        """``lepton-vision evaluate RUN``: metrics again from oof_predictions.csv."""
        from lepton_vision.kinds.classification.metrics import rescore

        return rescore(run, policy)

    def read_oof(self, run: RunDir) -> pd.DataFrame:
        """oof_predictions.csv of a finished run."""
        return run.read_table(run.oof)

    def stratum_metrics(self, resolved: Resolved, table: pd.DataFrame, oof: pd.DataFrame, metrics: dict[str, Any],
                        sample_ids: list[str]) -> dict[str, Any]:
        """ROC AUC, sensitivity and specificity (at each sample's fold threshold, as the pooled
        metrics) with group-bootstrap CIs on the samples ``sample_ids``; a stratum of one class
        gets only the rate it defines (specificity for negatives, sensitivity for positives)."""
        from lepton_vision.kinds.classification.metrics import stratum_metrics

        ev = resolved.recipe.evaluate
        return stratum_metrics(oof, metrics, sample_ids, ev.n_bootstrap, ev.ci, resolved.recipe.seed)

    def objective(self, metrics: dict[str, Any], name: str) -> tuple[Any, Any, Any]:
        """(value, CI low, CI high) of a pooled out-of-fold metric in metrics.json (Nones when absent)."""
        entry = (metrics.get("pooled") or {}).get(name) or {}
        return entry.get("value"), entry.get("lo"), entry.get("hi")

    def paired_bootstrap(self, run_a: RunDir, run_b: RunDir, *, merge_classes: bool = False,
                         n_bootstrap: int = 1000, seed: int = 0) -> Any:
        """The kind's headline metric of two runs of the same folds on the same resamples."""
        from lepton_vision.kinds.classification.metrics import paired_bootstrap

        return paired_bootstrap(run_a, run_b, merge_classes=merge_classes, n_bootstrap=n_bootstrap, seed=seed)

    def print_summary(self, metrics: dict[str, Any], console: Any) -> None:
        """The terminal table of the pooled metrics."""
        from lepton_vision.kinds.classification.report import print_summary

        print_summary(metrics, console=console)

    # ---- final model, export, report ---------------------------------------------------------
    def load_model(self, path: Path) -> Any:
        """A saved fold or final model (``compile=False``: only predicting and exporting follow)."""
        from lepton_vision.backend import import_keras

        _, keras = import_keras()
        return keras.models.load_model(path, compile=False)

    def refit(self, resolved: Resolved, run: RunDir, data: dict[str, Any], epochs: int) -> Any:
        """The final model: trained on every image for ``epochs`` epochs."""
        from lepton_vision.backend import configure_devices, recipe_for_replicas
        from lepton_vision.kinds.classification.train import fit_final
        from lepton_vision.models.finetune import fold_model_builder

        recipe = resolved.recipe
        t = recipe.train
        device, strategy = configure_devices(recipe.seed + 1000, t.strategy, t.threads, t.mixed_precision)
        with strategy.scope():
            return fit_final(fold_model_builder(resolved, build_model, recipe.seed + 1000), data["images"], data["labels"],
                             recipe_for_replicas(recipe, device["replicas"]), run.final_dir, epochs)

    def export(self, resolved: Resolved, run: RunDir, model: Any, table: pd.DataFrame, metrics: dict[str, Any],
               fingerprint: str, formats: tuple[str, ...] | None = None) -> dict[str, Any]:
        """SavedModel (+ TFLite, int8, ONNX) with preprocessing and the threshold inside, parity-checked."""
        from lepton_vision.engine.runinfo import bundle_provenance
        from lepton_vision.kinds.classification.export import export_classifier

        r = resolved.recipe
        imgs = _uint8_images(resolved, _sample_rows(table, r.export.parity_samples, r.seed)["path"])
        pol = resolved.threshold
        bundle_info = {
            "task": resolved.task.name,
            "kind": resolved.task.kind,
            "title": resolved.task.title,
            "intended_use": resolved.task.intended_use,
            "classes": list(resolved.task.classes),
            "positive_class": resolved.task.positive_class,
            "threshold_policy": pol.model_dump(mode="json"),
            "metrics": {"pooled": metrics["pooled"], "mean_sd": metrics["mean_sd"], "ci": metrics["ci"],
                        "bootstrap_unit": metrics["bootstrap_unit"]},
            **bundle_provenance(resolved, run, fingerprint, len(table)),
            **({"reencode": r.input.reencode_spec()} if r.input.reencode is not None else {}),
        }
        # The window is part of the exported contract only when the model was trained on HU data:
        # 8-bit slices (e.g. figure crops without HU) are used as they are and must not be windowed.
        window = r.input.window_spec() if data_has_hu(table) else None
        temperature = metrics.get("temperature")
        threshold = metrics["final_threshold_calibrated"] if temperature is not None else metrics["final_threshold"]
        formats = tuple(formats or r.export.formats)
        calibration, quant_eval = None, None
        if "tflite_int8" in formats:
            calibration, quant_eval = _int8_data(resolved, run, table)
        return export_classifier(
            model, run.export_dir, image_size_hw=tuple(r.input.image_size), channels=r.input.channels,
            window=window, threshold=float(threshold), bundle_info=bundle_info,
            parity_images=imgs, reference_scores=None, formats=formats,
            parity_atol=r.export.parity_atol, temperature=temperature,
            calibration_images=calibration, quant_eval=quant_eval, int8_max_drop=r.export.int8_max_drop,
            ood=_ood_or_none(resolved, run, model, table),
        )

    def write_report(self, resolved: Resolved, run: RunDir, model: Any, metrics: dict[str, Any], table: pd.DataFrame,
                     oof: pd.DataFrame, histories: dict[int, pd.DataFrame], info: dict[str, Any]) -> Path:
        """plots/ (with Grad-CAM of the final model on TP / FP / FN slices) and report.html."""
        from lepton_vision.kinds.classification.explain import write_gradcam_panel
        from lepton_vision.kinds.classification.report import write_report

        r = resolved.recipe
        write_gradcam_panel(
            model, oof, float(metrics["final_threshold"]), tuple(r.input.image_size), r.input.channels,
            r.input.window_spec(), run.plots_dir / "gradcam.png", per_group=4, seed=r.seed,
            reencode_spec=r.input.reencode_spec(),
        )
        return write_report(run, metrics, oof, histories, info)

    # ---- serving -------------------------------------------------------------------------------
    def predictor_class(self) -> type:
        """The Predictor of this kind's exports."""
        from lepton_vision.kinds.classification.predictor import ClassificationPredictor

        return ClassificationPredictor

    def predict_files(self, export_dir: Path, inputs: list[Path], **options: Any) -> str:
        """``lepton-vision predict`` for an export of this kind (see
        :func:`lepton_vision.kinds.classification.predictor.predict_files`); returns the summary line."""
        from lepton_vision.kinds.classification.predictor import predict_files

        return predict_files(export_dir, inputs, **options)

    def demo(self) -> Any:
        """The module with this kind's demo page (``build_page``) and model-card section
        (``card_section``): :mod:`lepton_vision.kinds.classification.demo`."""
        from lepton_vision.kinds.classification import demo

        return demo

    # ---- pretraining on generated data ---------------------------------------------------------
    def pretraining(self) -> Any:
        """The module with this kind's pretraining steps (:mod:`lepton_vision.kinds.classification.pretrain`)."""
        from lepton_vision.kinds.classification import pretrain

        return pretrain


def _sample_rows(table: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows drawn with ``seed`` (all rows when there are no more)."""
    n = min(n, len(table))
    return table.sample(n=n, random_state=seed) if len(table) > n else table


def _uint8_images(resolved: Resolved, paths: Any) -> list[np.ndarray]:
    """Images as the model's input contract takes them (uint8 H x W x C, CT window applied, and
    the format normalisation ``input.reencode`` when the recipe has one: the export's pre-step)."""
    from lepton_vision.data.preprocess import read_image, reencode, to_uint8

    r = resolved.recipe
    spec = r.input.reencode_spec()
    return [reencode(to_uint8(read_image(p, r.data.max_image_pixels), r.input.channels, r.input.window_spec()), spec)
            for p in paths]


def _ood_or_none(resolved: Resolved, run: RunDir, model: Any, table: pd.DataFrame) -> tuple[Any, Any] | None:
    """:func:`_ood_reference`, or None when the data is too small for one (:func:`reference_or_none`)."""
    from lepton_vision.export.reference import reference_or_none

    return reference_or_none(lambda: _ood_reference(resolved, run, model, table))


def _ood_reference(resolved: Resolved, run: RunDir, model: Any, table: pd.DataFrame) -> tuple[Any, Any]:
    """The export's reference of "normal input": the final model's pooled features and the image
    statistics of (up to 1024) training images, the out-of-fold scores (:mod:`lepton_vision.export.reference`)."""
    from lepton_vision.data.preprocess import to_model_input
    from lepton_vision.export.reference import MAX_IMAGES, fit_from_images

    r = resolved.recipe
    rows = _sample_rows(table, MAX_IMAGES, r.seed + 5)
    feature_model = pooled_features(model)
    size = tuple(r.input.image_size)
    scores = run.read_table(run.oof)["score"].to_numpy(float) if run.oof.is_file() else np.zeros(0)
    ref, _, _ = fit_from_images(
        _uint8_images(resolved, rows["path"]), rows["group"].to_numpy(), scores,
        prep_np=lambda im: to_model_input(im, size) * np.float32(255.0),
        features_np=lambda x: feature_model(x / np.float32(255.0), training=False), seed=r.seed + 6,
        score_name="score", false_flag_rate=r.export.ood_false_flag_rate)
    return ref, feature_model


def _int8_data(resolved: Resolved, run: RunDir, table: pd.DataFrame) -> tuple[list[np.ndarray], dict[str, Any]]:
    """int8 calibration images (training data) and the labelled images its AUC change is measured on."""
    from lepton_vision.data.folds import attach_folds
    from lepton_vision.export.quantization import calibration_rows, evaluation_rows

    r = resolved.recipe
    table = attach_folds(table, run.folds)
    calib_rows = calibration_rows(table, run.final_dir / "final.json", r.export.int8_calibration_samples, r.seed + 2)
    rows, what = evaluation_rows(table, run.final_dir / "final.json", r.export.int8_eval_samples, r.seed + 3)
    return _uint8_images(resolved, calib_rows["path"]), {
        "images": _uint8_images(resolved, rows["path"]), "labels": rows["label"].to_numpy(int), "evaluated_on": what}


KIND = ClassificationKind()

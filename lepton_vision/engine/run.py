"""``lepton-vision train``: the whole job, one stage after the other, a file between stages.

recipe → resolved cards → sample table → folds.csv → per fold: fit + out-of-fold scores →
oof_predictions.csv → metrics.json (no TensorFlow) → final model → export/ → report.html.

Every stage writes its result atomically. A fold is finished when ``folds/<k>/result.json``
exists (written last); ``--resume`` skips those folds and recomputes nothing that is done. The
folds run through :mod:`lepton_vision.engine.executors` (``train.executor``: in this process, or as Ray
tasks); the driver writes every ``result.json``. ``tracking: mlflow`` mirrors the run into MLflow
(:mod:`lepton_vision.engine.tracking`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lepton_vision.version import __version__
from lepton_vision.config.cards import DatasetCard, Resolved, card_dict, dataset_dir, load_resolved
from lepton_vision.config.errors import DataError, LeptonError, RecipeError
from lepton_vision.config.recipe import dump_recipe, recipe_from_text, result_sha256
from lepton_vision.runio import RunDir, atomic_write_csv, atomic_write_json, atomic_write_text


def _console():
    from rich.console import Console

    return Console(highlight=False)


# --------------------------------------------------------------------------------------------
# Data


def ensure_generated(card: DatasetCard, card_path: Path, force: bool = False, progress: bool = True) -> Path:
    """Generate a synthetic dataset if it is missing (its labels.csv is written last).

    Returns:
        The dataset folder.
    """
    out = dataset_dir(card, card_path)
    if card.synthetic is None:
        raise RecipeError(
            f"dataset '{card.name}' is not generated (no synthetic: section in {card_path})",
            hint="Only generated datasets can be made with `data synth`; point LEPTON_DATA_ROOT at real data instead.",
        )
    done = out / (card.annotations or card.manifest or "labels.csv")  # written last by the generators
    if done.is_file() and not force:
        return out
    if force and out.exists():
        shutil.rmtree(out)
    _console().print(f"generating {card.name} into {out} (seed {card.synthetic.seed}) ...")
    if card.synthetic.generator != "ct_phantom":
        from lepton_vision.data.synthetic.scenes import generate_scene_dataset

        summary = generate_scene_dataset(out, card.synthetic, progress=progress)
        _console().print(
            f"  {summary['n_images']} frames, {summary['n_boxes']} boxes, {summary['n_empty']} empty, "
            f"{summary['n_groups']} sequences in {summary['seconds']:.1f} s"
        )
        return out
    from lepton_vision.data.synthetic.ct import generate_ct_dataset

    summary = generate_ct_dataset(out, card.synthetic, progress=progress)
    _console().print(
        f"  {summary['n_slices']} slices, {summary['n_abnormal_slices']} abnormal, "
        f"{summary['n_patients']} patients in {summary['seconds']:.1f} s"
    )
    return out


def load_samples(resolved: Resolved, progress: bool = True):
    """Read the dataset of a resolved recipe into a SampleSet (generating embedded data first)."""
    from lepton_vision.data.samples import read_samples

    if resolved.dataset.root == "generated":
        ensure_generated(resolved.dataset, resolved.dataset_path, progress=progress)
    return read_samples(
        resolved.dataset,
        resolved.dataset_dir,
        resolved.task,
        resolved.dataset_path,
        on_bad_file=resolved.recipe.data.on_bad_file,
        max_pixels=resolved.recipe.data.max_image_pixels,
        progress=progress,
    )


def data_fingerprint(table: pd.DataFrame) -> str:
    """SHA-256 over (sample id, label, group, file content hash) of every sample, in id order."""
    from lepton_vision.data.preprocess import content_hash

    h = hashlib.sha256()
    boxes = "boxes" in table.columns  # detection: the boxes are part of the labels
    for row in table.sort_values("sample_id").itertuples(index=False):
        h.update(f"{row.sample_id}\t{row.label}\t{row.group}\t{content_hash(row.path)}\n".encode())
        if boxes:
            h.update(f"{row.boxes}\t{row.classes}\t{row.ignore}\n".encode())
    return h.hexdigest()


def data_has_hu(table: pd.DataFrame) -> bool:
    """Whether the samples carry Hounsfield units (DICOM files or NIfTI volume slices)."""
    from lepton_vision.data.preprocess import DICOM_EXTENSIONS

    def hu(path: str) -> bool:
        p = str(path).lower().split("#", 1)[0]
        return p.endswith(DICOM_EXTENSIONS) or p.endswith((".nii", ".nii.gz"))

    return bool(table["path"].map(hu).any())


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that change results."""
    from importlib import metadata

    out = {"python": platform.python_version(), "lepton_vision": __version__}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "albumentations", "opencv-python-headless",
                 "scikit-learn", "numpy", "pydicom", "scikit-image"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def environment_report() -> dict[str, Any]:
    """What `lepton-vision check` prints: versions, devices, data roots."""
    import os

    from lepton_vision.config.cards import data_root, generated_root

    rep: dict[str, Any] = dict(versions())
    rep["LEPTON_DATA_ROOT"] = str(data_root()) if data_root() else "(not set)"
    if data_root() is not None and not data_root().is_dir():
        rep["LEPTON_DATA_ROOT"] += "  <- does not exist"
    rep["generated data"] = str(generated_root())
    from importlib import metadata

    from lepton_vision.engine.executors import EXTRAS

    for extra in ("ray", "mlflow"):  # optional: train.executor: ray, lepton-vision tune, tracking: mlflow
        try:
            rep[extra] = metadata.version(extra)
        except metadata.PackageNotFoundError:
            rep[extra] = f"not installed ({EXTRAS[extra][1]})"
    rep["KERAS_BACKEND"] = os.environ.get("KERAS_BACKEND", "tensorflow (default)")
    try:
        from lepton_vision.backend import import_keras

        tf, _ = import_keras()
        gpus = tf.config.list_physical_devices("GPU")
        rep["devices"] = f"{len(gpus)} GPU(s): {[g.name for g in gpus]}" if gpus else "CPU only (no GPU visible)"
        rep["mixed precision"] = "on (GPU)" if gpus else "off (CPU: float32 is faster here)"
    except ImportError as e:  # pragma: no cover - depends on the install
        rep["devices"] = f"TensorFlow not importable: {e}"
    return rep


# --------------------------------------------------------------------------------------------
# The run


def new_run_dir(name: str) -> Path:
    """``runs/<name>-<timestamp>``, with ``-2``, ``-3``... when that exists already."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{name}-{stamp}"
    out, i = base, 1
    while out.exists():
        i += 1
        out = Path(f"{base}-{i}")
    return out


def _start_or_resume(resolved: Resolved, out: Path | None, resume: Path | None) -> RunDir:
    if resume is not None:
        run = RunDir(Path(resume))
        if not run.recipe.is_file():
            raise LeptonError(
                f"{resume}: not a run directory (no recipe.resolved.yaml)",
                hint="Pass the directory printed at the end (or start) of the interrupted train.",
            )
        previous = recipe_from_text(run.recipe.read_text(), file=str(run.recipe))
        # Where a run executes (executor, resources, tracker) may change on resume; what it
        # computes may not.
        if result_sha256(previous) != result_sha256(resolved.recipe):
            a, b = previous.model_dump(mode="json"), resolved.recipe.model_dump(mode="json")
            changed = sorted(_diff_keys(a, b))
            raise RecipeError(
                f"--resume {resume}: the recipe differs from the one this run started with",
                problems=[],
                hint="Changed: " + ", ".join(changed[:10]) + ". Resume with the same recipe and --set "
                "values, or start a new run.",
            )
        return run
    run = RunDir(out or new_run_dir(resolved.recipe.name))
    if run.root.exists() and any(run.root.iterdir()):
        raise LeptonError(
            f"{run.root}: the run directory exists and is not empty",
            hint=f"Use --resume {run.root} to continue it, or choose another --out.",
        )
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.recipe, dump_recipe(resolved.recipe))
    return run


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix]


#: ``stop_after`` values of :func:`run_train`: stop once metrics.json is written (sweep trials:
#: a normal run directory, finished later with ``train --resume``), or run every stage.
STAGES = ("metrics", "all")


def run_train(
    recipe_path: str | Path,
    overrides: list[str] | None = None,
    out: Path | None = None,
    resume: Path | None = None,
    stop_after: str = "all",
) -> Path:
    """Run the whole job for a recipe and return the run directory.

    Args:
        recipe_path: The recipe file.
        overrides: ``key=value`` strings (``--set``).
        out: The run directory (default ``runs/<name>-<timestamp>``).
        resume: A run directory to continue (finished folds are not recomputed).
        stop_after: ``all``, or ``metrics`` to stop after metrics.json (no final model, export
            or report; ``--resume`` with the same recipe finishes the run later).

    Raises:
        LeptonError: For every user-facing problem (recipe, data, folds, NaN loss, export parity).
    """
    from lepton_vision.engine.executors import check_recipe_extras
    from lepton_vision.engine.tracking import tracking_session

    if stop_after not in STAGES:
        raise ValueError(f"stop_after must be one of {STAGES}. Got {stop_after!r}.")
    console = _console()
    t_start = time.time()
    resolved = load_resolved(recipe_path, overrides)
    check_recipe_extras(resolved.recipe, recipe_path)  # before any work: Ray/MLflow installed?
    run = _start_or_resume(resolved, out, resume)
    console.print(f"[bold]lepton-vision train[/bold] {resolved.recipe.name} → {run.root}")
    resolved = with_start_weights(resolved, run.root)
    with tracking_session(resolved, run) as tracker:
        if resolved.task.kind == "object_detection":
            from lepton_vision.kinds.detection.steps import run_detection_train

            return run_detection_train(resolved, run, t_start, tracker=tracker, stop_after=stop_after)
        return _run_classification(resolved, run, t_start, tracker, stop_after)


def start_info(run_root: Path) -> dict[str, Any]:
    """What the folds started from, for bundle.json: random init, or the record of the pretrain
    stage / model.weights (start_weights.json, without machine-specific paths)."""
    path = Path(run_root) / "start_weights.json"
    if not path.is_file():
        return {"source": "random"}
    rec = json.loads(path.read_text())
    out = {k: rec[k] for k in ("source", "sha256", "loaded", "finetune", "key") if k in rec}
    pre = rec.get("pretrain")
    if pre:
        out["pretrain"] = {k: pre.get(k) for k in ("dataset", "generator", "images", "epochs", "seconds",
                                                   "synthetic_validation", "classes_match_task", "image_size")}
    if rec.get("source") != "pretrain":
        out["file"] = Path(rec["path"]).name
    return out


def with_start_weights(resolved: Resolved, run_root: Path) -> Resolved:
    """Run the pretrain stage (or resolve model.weights) and put the folds' start point into
    ``resolved.start_weights``; recorded in start_weights.json (and pretrain.json)."""
    import dataclasses

    from lepton_vision.engine.pretrain import prepare_start

    record = prepare_start(resolved, run_root, progress=resolved.recipe.train.verbose)
    if record is None:
        return resolved
    pre = record.get("pretrain")
    console = _console()
    if pre is not None:
        val = pre.get("synthetic_validation") or {}
        console.print(
            f"pretrain: {pre['images']} generated images ({pre['generator']}), "
            + ("reused from the cache" if record["reused_cache"] else f"{pre['seconds']:.0f} s")
            + (f", synthetic {val['metric']} {val['value']:.3f}" if val else "")
            + f"; folds start from it ({record['loaded']}) — {record['cache_dir']}"
        )
    else:
        console.print(f"start weights: {record['path']} ({record['loaded']})")
    return dataclasses.replace(resolved, start_weights=record["path"])


def fold_bookkeeping(run: RunDir, k_total: int, tracker: Any, key: str, label: str) -> tuple[
        dict[int, dict[str, Any]], list[int], Any]:
    """Folds finished earlier (their result.json, said on the console), the folds still to run,
    and the callback that records a fold when it finishes: result.json written last, then the
    tracker and the console. ``key``/``label``: the fold's validation metric (``best_val_auc``,
    "val AUC")."""
    console = _console()
    results: dict[int, dict[str, Any]] = {}
    pending = []
    for k in range(k_total):
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


def _run_classification(resolved: Resolved, run: RunDir, t_start: float, tracker: Any, stop_after: str) -> Path:
    console = _console()
    recipe = resolved.recipe

    # ---- data ------------------------------------------------------------------------------
    sample_set = load_samples(resolved, progress=recipe.train.verbose)
    table = sample_set.table
    atomic_write_csv(run.samples, table)
    fingerprint = data_fingerprint(table)
    data_report = {
        "n_samples": int(len(table)),
        "n_positive": int(table["label"].sum()),
        "n_groups": int(table["group"].replace("", np.nan).nunique()),
        "excluded": list(sample_set.excluded),
        "counts": dict(sample_set.counts),
        "fingerprint": fingerprint,
    }
    atomic_write_json(run.data_report, data_report)
    console.print(
        f"data: {data_report['n_samples']} images ({data_report['n_positive']} {resolved.task.positive_class}), "
        f"{data_report['n_groups']} groups, {len(sample_set.excluded)} excluded"
    )

    # ---- folds -----------------------------------------------------------------------------
    from lepton_vision.data.folds import make_folds, read_folds, write_folds

    folds = make_folds(table, recipe.cv.n_splits, recipe.cv.strategy, recipe.seed)
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
    info = _run_info(resolved, fingerprint, t_start)
    atomic_write_json(run.run_info, info)

    # ---- decode once, reuse in every fold ---------------------------------------------------
    from lepton_vision.data.pipeline import load_images

    fold_of = dict(zip(folds["sample_id"], folds["fold"]))
    table = table.assign(fold=table["sample_id"].map(fold_of).astype(int))
    window = recipe.input.window_spec()
    images = load_images(
        list(table["path"]), tuple(recipe.input.image_size), recipe.input.channels, window,
        recipe.data.max_image_pixels, progress=recipe.train.verbose,
    )
    labels = table["label"].to_numpy(dtype=np.int64)

    # ---- folds (train.executor: here, or Ray tasks) -------------------------------------------
    from lepton_vision.engine.executors import run_folds

    k_total = recipe.cv.n_splits
    results, pending, fold_done = fold_bookkeeping(run, k_total, tracker, "best_val_auc", "val AUC")

    shared = {"resolved": resolved, "images": images, "labels": labels,
              "table": table[["sample_id", "path", "group", "label", "fold"]]}
    run_folds(_classification_fold, shared, pending, run.fold_dir, recipe, fold_done, run.root)
    oof_parts = [pd.read_csv(run.fold_dir(k) / "oof.csv", dtype={"group": str}, keep_default_na=False)
                 for k in range(k_total)]
    histories = {k: _read_history(run.fold_dir(k)) for k in range(k_total)}

    oof = pd.concat(oof_parts).sort_values("sample_id").reset_index(drop=True)
    atomic_write_csv(run.oof, oof)

    # ---- metrics (no TensorFlow) -------------------------------------------------------------
    from lepton_vision.kinds import KINDS

    ev = recipe.evaluate
    metrics = KINDS[resolved.task.kind].score_oof(
        oof, resolved.threshold, ev.n_bootstrap, ev.ci, recipe.seed,
        aggregation=ev.patient_aggregation, calibration_bins=ev.calibration_bins,
        temperature_scaling=ev.temperature_scaling,
    )
    metrics["folds"] = [results[k] for k in range(k_total)]
    atomic_write_json(run.metrics, metrics)
    tracker.log_metrics(metrics)
    if stop_after == "metrics":
        console.print(f"cross-validation done (stop_after metrics): {run.metrics}")
        return run.root

    # ---- final model and export --------------------------------------------------------------
    final_model = _final_model(resolved, run, images, labels, results)
    export_summary = _export(resolved, run, final_model, table, metrics, fingerprint)
    _gradcam_panel(resolved, run, final_model, oof, metrics)

    # ---- report --------------------------------------------------------------------------------
    from lepton_vision.kinds.classification.report import print_summary, write_report

    info = _run_info(resolved, fingerprint, t_start)
    info["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    info["seconds"] = round(time.time() - t_start, 1)
    info["export"] = export_summary
    atomic_write_json(run.run_info, info)
    write_report(run, metrics, oof, histories, _report_info(resolved, data_report, folds, info, run))
    tracker.log_outputs(run)
    print_summary(metrics, console=console)
    console.print(f"report: {run.report}   export: {run.export_dir}   ({info['seconds']:.0f} s)")
    return run.root


def _read_history(fdir: Path) -> pd.DataFrame:
    path = fdir / "history.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def _classification_fold(shared: dict[str, Any], k: int, fdir: Path) -> dict[str, Any]:
    """Fit fold ``k`` and score its held-out images (in this process or a Ray worker).

    Writes history.csv, best.keras, tb/ (TensorBoard) and oof.csv into ``fdir``; returns the
    fold's result (result.json is written by the driver, last). Every process seeds, sets its
    threads and picks its strategy the same way, so the executor does not change the numbers.
    """
    from lepton_vision.backend import configure_devices, recipe_for_replicas
    from lepton_vision.kinds.classification.train import fit_fold, predict_scores

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
            _model_builder(resolved, recipe.seed + k), images[tr], labels[tr], images[va], labels[va],
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


def _model_builder(resolved: Resolved, seed: int):
    """A zero-argument model factory for one fold (each fold starts from its own seed)."""
    from lepton_vision.kinds import KINDS

    r = resolved.recipe
    kind = KINDS[resolved.task.kind]
    weights = r.model.weights if r.model.weights in ("none", "imagenet") else "none"
    start = resolved.start_weights
    if start is None and r.model.weights not in ("none", "imagenet"):  # not through run_train
        from lepton_vision.models.finetune import resolve_weights_source

        start = str(resolve_weights_source(r.model.weights, resolved.recipe_path.parent))

    def build():
        model = kind.build_model(r, weights=weights, seed=seed)
        if start is not None:
            from lepton_vision.models.finetune import load_start_weights

            load_start_weights(model, start)
        return model

    return build


def final_model(run: RunDir, recipe: Any, results: dict[int, dict[str, Any]], score_key: str,
                n_images: int, refit: Any) -> Any:
    """The final model of a run, for every kind: loaded when finished earlier, else the best fold's
    model (``final.mode: best_fold``, best by ``score_key``) or ``refit(epochs)`` on all images
    for the median best epoch; saved atomically with ``final/final.json``.
    """
    from lepton_vision.backend import import_keras

    _, keras = import_keras()
    final_path = run.final_dir / "model.keras"
    if final_path.is_file():
        _console().print(f"final model: finished earlier, loading {final_path}")
        return keras.models.load_model(final_path, compile=False)
    if recipe.final.mode == "best_fold":
        best = max(results.values(), key=lambda r: r[score_key])
        src = run.fold_dir(best["fold"]) / "best.keras"
        model = keras.models.load_model(src, compile=False)
        info = {"mode": "best_fold", "fold": best["fold"], "source": str(src)}
    else:
        epochs = max(1, int(np.median([r["best_epoch"] for r in results.values()])))
        _console().print(f"final model: refit on all {n_images} images for {epochs} epochs (median best epoch)")
        model = refit(epochs)
        info = {"mode": "refit", "epochs": epochs, "n_images": int(n_images)}
    run.final_dir.mkdir(parents=True, exist_ok=True)
    tmp = run.final_dir / ".model.keras.tmp.keras"
    model.save(tmp)
    tmp.replace(final_path)
    atomic_write_json(run.final_dir / "final.json", info)
    return model


def _final_model(resolved: Resolved, run: RunDir, images: np.ndarray, labels: np.ndarray,
                 results: dict[int, dict[str, Any]]):
    from lepton_vision.backend import configure_devices
    from lepton_vision.kinds.classification.train import fit_final

    recipe = resolved.recipe

    def refit(epochs: int) -> Any:
        from lepton_vision.backend import recipe_for_replicas

        t = recipe.train
        device, strategy = configure_devices(recipe.seed + 1000, t.strategy, t.threads, t.mixed_precision)
        with strategy.scope():
            return fit_final(_model_builder(resolved, recipe.seed + 1000), images, labels,
                             recipe_for_replicas(recipe, device["replicas"]), run.final_dir, epochs)

    return final_model(run, recipe, results, "best_val_auc", len(labels), refit)


def _parity_images(resolved: Resolved, table: pd.DataFrame) -> tuple[list[np.ndarray], list[str]]:
    from lepton_vision.data.preprocess import read_image, to_uint8

    r = resolved.recipe
    n = min(r.export.parity_samples, len(table))
    rows = table.sample(n=n, random_state=r.seed) if len(table) > n else table
    imgs = [to_uint8(read_image(p, r.data.max_image_pixels), r.input.channels, r.input.window_spec())
            for p in rows["path"]]
    return imgs, list(rows["path"])


def _export(resolved: Resolved, run: RunDir, model, table: pd.DataFrame, metrics: dict[str, Any],
            fingerprint: str, formats: tuple[str, ...] | None = None) -> dict[str, Any]:
    from lepton_vision.kinds.classification.export import export_classifier

    r = resolved.recipe
    imgs, paths = _parity_images(resolved, table)
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
        "recipe": {"name": r.name, "sha256": r.sha256(), "seed": r.seed},
        "dataset": {"name": resolved.dataset.name, "fingerprint": fingerprint, "n_samples": int(len(table))},
        "versions": versions(),
        "training_start": start_info(run.root),
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
    result = export_classifier(
        model, run.export_dir, image_size_hw=tuple(r.input.image_size), channels=r.input.channels,
        window=window, threshold=float(threshold), bundle_info=bundle_info,
        parity_images=imgs, reference_scores=None, formats=formats,
        parity_atol=r.export.parity_atol, temperature=temperature,
        calibration_images=calibration, quant_eval=quant_eval, int8_max_drop=r.export.int8_max_drop,
    )
    report_export(result)
    return result


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


def _int8_data(resolved: Resolved, run: RunDir, table: pd.DataFrame) -> tuple[list[np.ndarray], dict[str, Any]]:
    """int8 calibration images (training data) and the labelled images its AUC change is measured on."""
    from lepton_vision.data.folds import read_folds
    from lepton_vision.data.preprocess import read_image, to_uint8
    from lepton_vision.export.quantization import evaluation_rows

    r = resolved.recipe
    if "fold" not in table.columns and run.folds.is_file():
        table = table.merge(read_folds(run.folds)[["sample_id", "fold"]], on="sample_id", how="left")

    def load(paths: Any) -> list[np.ndarray]:
        return [to_uint8(read_image(p, r.data.max_image_pixels), r.input.channels, r.input.window_spec())
                for p in paths]

    calib_rows = table.sample(n=min(r.export.int8_calibration_samples, len(table)), random_state=r.seed + 2)
    rows, what = evaluation_rows(table, run.final_dir / "final.json", r.export.int8_eval_samples, r.seed + 3)
    return load(calib_rows["path"]), {"images": load(rows["path"]), "labels": rows["label"].to_numpy(int),
                                      "evaluated_on": what}


def _gradcam_panel(resolved: Resolved, run: RunDir, model, oof: pd.DataFrame,
                   metrics: dict[str, Any]) -> dict[str, Any]:
    """Grad-CAM of the final model on true positives, false positives and false negatives
    (plots/gradcam.png, embedded in the report)."""
    from lepton_vision.kinds.classification.explain import write_gradcam_panel

    r = resolved.recipe
    return write_gradcam_panel(
        model, oof, float(metrics["final_threshold"]), tuple(r.input.image_size), r.input.channels,
        r.input.window_spec(), run.plots_dir / "gradcam.png", per_group=4, seed=r.seed,
    )


def export_run(run_dir: Path, formats: tuple[str, ...] | None = None) -> Path:
    """Re-export a finished run (final/model.keras + metrics.json) without retraining.

    ``formats`` replaces the recipe's ``export.formats`` (e.g. add onnx to an old run).
    """
    from lepton_vision.backend import import_keras

    run = RunDir(Path(run_dir))
    for need in (run.recipe, run.metrics, run.samples, run.final_dir / "model.keras"):
        if not need.is_file():
            raise LeptonError(
                f"{run_dir}: cannot export, {need.name} is missing",
                hint="Finish the run first: lepton-vision train RECIPE --resume " + str(run_dir),
            )
    recipe = recipe_from_text(run.recipe.read_text(), file=str(run.recipe))
    from lepton_vision.config.cards import resolve

    resolved = resolve(recipe, _recipe_anchor(run))
    table = pd.read_csv(run.samples, dtype={"group": str}, keep_default_na=False)
    metrics = json.loads(run.metrics.read_text())
    _, keras = import_keras()
    model = keras.models.load_model(run.final_dir / "model.keras", compile=False)
    fingerprint = json.loads(run.data_report.read_text())["fingerprint"]
    _export(resolved, run, model, table, metrics, fingerprint, formats)
    return run.export_dir


def _recipe_anchor(run: RunDir) -> Path:
    """Where card names in a run's recipe are resolved from (the project that made the run)."""
    info = json.loads(run.run_info.read_text()) if run.run_info.is_file() else {}
    return Path(info.get("recipe_path", run.recipe))


def _run_info(resolved: Resolved, fingerprint: str, t_start: float) -> dict[str, Any]:
    return {
        "recipe_path": str(resolved.recipe_path.resolve()),
        "task_card": str(resolved.task_path.resolve()),
        "dataset_card": str(resolved.dataset_path.resolve()),
        "dataset_dir": str(resolved.dataset_dir),
        "recipe_sha256": resolved.recipe.sha256(),
        "seed": resolved.recipe.seed,
        "data_fingerprint": fingerprint,
        "started": _dt.datetime.fromtimestamp(t_start).isoformat(timespec="seconds"),
        "versions": versions(),
        "task": card_dict(resolved.task),
        "dataset": card_dict(resolved.dataset),
    }


def _report_info(resolved: Resolved, data_report: dict[str, Any], folds: pd.DataFrame,
                 info: dict[str, Any], run: RunDir) -> dict[str, Any]:
    from lepton_vision.data.folds import fold_summary

    return {
        "title": resolved.task.title,
        "recipe_name": resolved.recipe.name,
        "run_dir": str(run.root),
        "data": data_report,
        "folds": fold_summary(folds).to_dict(orient="records"),
        "versions": info["versions"],
        "recipe_yaml": dump_recipe(resolved.recipe),
        "intended_use": resolved.task.intended_use,
        "seconds": info.get("seconds"),
        "export": info.get("export"),
        "training_start": start_info(run.root),
    }

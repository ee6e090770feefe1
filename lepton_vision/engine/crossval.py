"""``lepton-vision train``: the whole job, one stage after the other, a file between stages.

recipe → resolved cards → sample table → folds.csv → per fold: fit + out-of-fold predictions →
oof_predictions.csv → metrics.json (no TensorFlow) → final model → export/ → report.html.

This loop is the same for every kind: it asks the task's kind (:mod:`lepton_vision.kinds`) for
each kind-specific step (decode the data, fit a fold, collect and score the out-of-fold
predictions, refit, export, report) and never looks at the kind's name. Every stage writes its
result atomically. A fold is finished when ``folds/<k>/result.json`` exists (written last);
``--resume`` skips those folds and recomputes nothing that is done. The folds run through
:mod:`lepton_vision.engine.executors` (``train.executor``: in this process, or as Ray tasks); the
driver writes every ``result.json``. ``tracking: mlflow`` mirrors the run into MLflow
(:mod:`lepton_vision.engine.tracking`).
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path
from typing import Any

from lepton_vision.config.cards import Resolved, load_resolved, resolve_run
from lepton_vision.config.errors import DataError, LeptonError, RecipeError
from lepton_vision.config.recipe import dump_recipe, recipe_from_text, result_sha256
from lepton_vision.console import console as _console
from lepton_vision.engine.runinfo import new_run_dir, report_info, run_info
from lepton_vision.runio import RunDir, atomic_write_csv, atomic_write_json, atomic_write_text


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
        return run_stages(resolved, run, t_start, tracker, stop_after)


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


def _shortcut_audit(resolved: Resolved, kind: Any, table: Any, data_report: dict[str, Any], run: RunDir,
                    console: Any) -> dict[str, Any] | None:
    """The shortcut audit on the run's folds (``data.audit``), into data_report.json and onto the
    console; None when the recipe turns it off."""
    from rich.markup import escape

    from lepton_vision.evaluate.shortcuts import audit_table, summary_lines

    spec = resolved.recipe.data.audit
    if not spec.enabled:
        return None
    t0 = time.time()
    audit = audit_table(table, target_name=kind.audit_target, level=spec.level, n_bootstrap=spec.n_bootstrap,
                        ci=resolved.recipe.evaluate.ci, seed=resolved.recipe.seed,
                        progress=resolved.recipe.train.verbose, max_pixels=resolved.recipe.data.max_image_pixels)
    audit["seconds"] = round(time.time() - t0, 1)
    data_report["shortcut_audit"] = audit
    audits = [audit]
    inp = resolved.recipe.input
    if inp.reencode is not None and not audit.get("not_applicable"):
        # The same audit on what the model is given after the format normalisation: the file-level
        # features no longer reach it; what is left in the pixels is scored again.
        t0 = time.time()
        seen = audit_table(table, target_name=kind.audit_target, level=spec.level, n_bootstrap=spec.n_bootstrap,
                           ci=resolved.recipe.evaluate.ci, seed=resolved.recipe.seed,
                           progress=resolved.recipe.train.verbose, max_pixels=resolved.recipe.data.max_image_pixels,
                           seen={"channels": inp.channels, "window": inp.window_spec(),
                                 "reencode": inp.reencode_spec()})
        seen["seconds"] = round(time.time() - t0, 1)
        data_report["shortcut_audit_seen"] = seen
        audits.append(seen)
    atomic_write_json(run.data_report, data_report)
    if audit.get("not_applicable"):
        console.print(f"shortcut audit: not applicable, {escape(audit['not_applicable'])}")
    for line in [ln for a in audits for ln in summary_lines(a)] if not audit.get("not_applicable") else []:
        console.print(f"[bold red]{escape(line)}[/]" if line.startswith("WARNING") else escape(line))
    return audit


def run_stages(resolved: Resolved, run: RunDir, t_start: float, tracker: Any, stop_after: str = "all") -> Path:
    """Every stage of a resolved recipe into ``run`` (created, or being resumed).

    ``tracker`` (:mod:`lepton_vision.engine.tracking`) receives fold results, metrics and outputs;
    ``stop_after="metrics"`` stops once metrics.json is written.
    """
    from lepton_vision.data.folds import make_folds, read_folds, write_folds
    from lepton_vision.data.samples import data_fingerprint, load_samples
    from lepton_vision.engine.bookkeeping import final_model, fold_bookkeeping, read_history, report_export
    from lepton_vision.engine.executors import run_folds
    from lepton_vision.evaluate.report import training_cost_summary
    from lepton_vision.evaluate.shortcuts import stratified, summary_lines
    from lepton_vision.kinds import kind_of
    from rich.markup import escape

    console = _console()
    recipe = resolved.recipe
    kind = kind_of(resolved.task.kind)

    # ---- data ------------------------------------------------------------------------------
    sample_set = load_samples(resolved, progress=recipe.train.verbose)
    table = sample_set.table
    atomic_write_csv(run.samples, table)
    fingerprint = data_fingerprint(table)
    data_report, data_line = kind.data_report(resolved, sample_set, fingerprint)
    atomic_write_json(run.data_report, data_report)
    console.print(data_line)

    # ---- folds -----------------------------------------------------------------------------
    folds = make_folds(table, recipe.cv.n_splits, recipe.cv.strategy, recipe.seed,
                       group_noun=resolved.dataset.group_by or "groups",
                       require_both_classes=kind.folds_need_both_classes, progress=recipe.train.verbose)
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
    atomic_write_json(run.run_info, run_info(resolved, fingerprint, t_start))
    table = table.assign(fold=table["sample_id"].map(dict(zip(folds["sample_id"], folds["fold"]))).astype(int))
    audit = _shortcut_audit(resolved, kind, table, data_report, run, console)
    data = kind.prepare(resolved, table)  # decoded once, shared by every fold and the refit

    # ---- folds (train.executor: here, or Ray tasks) -------------------------------------------
    k_total = recipe.cv.n_splits
    ks = recipe.cv.fold_indices()
    if len(ks) < k_total:
        console.print(f"cv.folds: training folds {[k + 1 for k in ks]} of {k_total}; the metrics are out of fold "
                      f"on their {int(table['fold'].isin(ks).sum())} of {len(table)} samples")
    key, label = kind.fold_metric
    results, pending, fold_done = fold_bookkeeping(run, k_total, tracker, key, label, ks)
    run_folds(kind.fold_task, data, pending, run.fold_dir, recipe, fold_done, run.root)
    histories = {k: read_history(run.fold_dir(k)) for k in ks}
    scored = scored_table(table, ks)
    oof = kind.collect_oof(resolved, run, scored, ks)

    # ---- metrics (no TensorFlow) -------------------------------------------------------------
    metrics = kind.score(resolved, scored, oof)
    metrics["folds"] = [results[k] for k in ks]
    if len(ks) < k_total:
        metrics["cv_subset"] = cv_subset(ks, k_total, scored, table)
    metrics["strata"] = stratified(audit, scored, lambda ids: kind.stratum_metrics(resolved, scored, oof, metrics, ids))
    atomic_write_json(run.metrics, metrics)
    tracker.log_metrics(metrics)
    if stop_after == "metrics":
        console.print(f"cross-validation done (stop_after metrics): {run.metrics}")
        return run.root

    # ---- final model, export, report ---------------------------------------------------------
    model = final_model(run, recipe, results, key, len(table),
                        refit=lambda epochs: kind.refit(resolved, run, data, epochs), load=kind.load_model,
                        average=kind.average_models)
    export_summary = kind.export(resolved, run, model, table, metrics, fingerprint)
    report_export(export_summary)
    info = run_info(resolved, fingerprint, t_start)
    info["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    info["seconds"] = round(time.time() - t_start, 1)
    info["export"] = export_summary
    final_history = run.final_dir / "history.csv"
    info["training_cost"] = training_cost_summary(
        histories, read_history(run.final_dir) if final_history.is_file() else None)
    atomic_write_json(run.run_info, info)
    rinfo = report_info(resolved, data_report, folds, info, run)
    rinfo["cv_subset"] = metrics.get("cv_subset")
    kind.write_report(resolved, run, model, metrics, scored, oof, histories, rinfo)
    tracker.log_outputs(run)
    kind.print_summary(metrics, console)
    if metrics.get("cv_subset"):
        console.print(f"folds: {metrics['cv_subset']['note']}")
    for line in (summary_lines(audit) if audit and audit.get("flagged") else []):
        console.print(f"[bold red]{escape(line)}[/]" if line.startswith("WARNING") else escape(line))
    console.print(f"report: {run.report}   export: {run.export_dir}   ({info['seconds']:.0f} s)")
    return run.root


def _oof_ids(oof: Any) -> list[str]:
    """Sample ids with out-of-fold rows (a kind's ``read_oof``: a frame, or a dict with ``images``)."""
    frame = oof["images"] if isinstance(oof, dict) else oof
    return frame["sample_id"].astype(str).tolist()


def scored_table(table: Any, folds: list[int]) -> Any:
    """The rows of ``table`` (with its ``fold`` column) whose fold is trained and scored."""
    return table[table["fold"].isin(folds)].reset_index(drop=True)


def cv_subset(folds: list[int], n_splits: int, scored: Any, table: Any) -> dict[str, Any]:
    """metrics.json ``cv_subset`` of a run with ``cv.folds``: which folds, how many samples."""
    return {"folds": [k + 1 for k in folds], "n_splits": int(n_splits), "n_scored": len(scored),
            "n_samples": len(table),
            "note": (f"out of fold on folds {[k + 1 for k in folds]} of {n_splits} only "
                     f"({len(scored)} of {len(table)} samples); the final model uses all {len(table)}")}


def rescore_run(run_dir: Path, policy: Any = None) -> dict[str, Any]:
    """``lepton-vision evaluate RUN``: the metrics again from the run's out-of-fold files, no
    TensorFlow (``policy`` replaces the threshold policy)."""
    from lepton_vision.kinds import kind_of

    from lepton_vision.evaluate.shortcuts import stratified

    run = RunDir(Path(run_dir))
    kind = kind_of(run.task_kind)
    metrics = kind.rescore(run, policy)
    audit = json.loads(run.data_report.read_text()).get("shortcut_audit") if run.data_report.is_file() else None
    resolved = resolve_run(run)
    if resolved.recipe.cv.folds is not None:
        from lepton_vision.data.folds import read_folds

        table = run.read_table(run.samples)
        folds = read_folds(run.folds)
        table = table.assign(fold=table["sample_id"].map(dict(zip(folds["sample_id"], folds["fold"]))))
        ks = resolved.recipe.cv.fold_indices()
        metrics["cv_subset"] = cv_subset(ks, resolved.recipe.cv.n_splits, scored_table(table, ks), table)
    if audit and audit.get("flagged"):
        oof = kind.read_oof(run)
        table = run.read_table(run.samples)
        table = table[table["sample_id"].astype(str).isin(set(_oof_ids(oof)))].reset_index(drop=True)
        metrics["strata"] = stratified(audit, table, lambda ids: kind.stratum_metrics(resolved, table, oof, metrics, ids))
    return metrics


def export_run(run_dir: Path, formats: tuple[str, ...] | None = None, fold: int | None = None) -> Path:
    """``lepton-vision export RUN``: re-export final/model.keras without retraining.

    ``formats`` replaces the recipe's ``export.formats`` (e.g. add onnx to an old run).
    ``fold`` (1-based, as the run prints folds): export that fold's model instead, into
    ``folds/<fold-1>/export`` (:class:`~lepton_vision.runio.FoldExportView`); its int8 check is
    then on the fold's held-out validation images. The run's own export is left as it is.
    """
    from lepton_vision.engine.bookkeeping import report_export
    from lepton_vision.kinds import kind_of
    from lepton_vision.runio import FoldExportView

    run = RunDir(Path(run_dir))
    model_file = run.final_dir / "model.keras"
    if fold is not None:
        trained = sorted(int(d.name) + 1 for d in (run.root / "folds").glob("*") if (d / "best.keras").is_file())
        model_file = run.fold_dir(fold - 1) / "best.keras"
        if fold < 1 or not model_file.is_file():
            raise LeptonError(f"{run_dir}: --fold {fold}: no trained model at {model_file}",
                              hint=f"folds with a model: {trained or 'none'} (1-based, as the run printed them)")
    for need in (run.recipe, run.metrics, run.samples, run.data_report, model_file):
        if not need.is_file():
            raise LeptonError(
                f"{run_dir}: cannot export, {need.name} is missing",
                hint="Finish the run first: lepton-vision train RECIPE --resume " + str(run_dir),
            )
    kind = kind_of(run.task_kind)
    resolved = resolve_run(run)
    table = run.read_table(run.samples)
    model = kind.load_model(model_file)
    metrics = json.loads(run.metrics.read_text())
    fingerprint = json.loads(run.data_report.read_text())["fingerprint"]
    if fold is not None:
        run = FoldExportView(run.root, fold - 1)
        atomic_write_json(run.final_dir / "final.json", {
            "mode": "best_fold", "fold": fold - 1, "source": str(model_file),
            "note": "lepton-vision export --fold: this fold's model, exported for checks on its held-out images"})
    report_export(kind.export(resolved, run, model, table, metrics, fingerprint, formats))
    return run.export_dir

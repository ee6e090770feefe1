"""Mirror a run into an experiment tracker (``tracking: mlflow``) while it runs.

The run directory stays the source of truth; the tracker gets a copy a team can search and
compare: params (the resolved recipe, flattened to dotted keys), per-fold results as they finish
(and each fold's per-epoch history), pooled metrics with their CI bounds, tags (task, kind,
dataset, recipe hash, git commit of the project) and, at the end, the report, metrics, recipe
and export as artefacts. TensorBoard logs need no tracker: every fold writes them to
``folds/<k>/tb`` (``tensorboard --logdir RUN_DIR/folds``).

MLflow is optional and imported only when a recipe asks for it. The default store is a sqlite
file in the run directory (the file store of MLflow 3.17 refuses to start, stack.md section 10).
The MLflow run id is kept in ``tracking.json``, so ``train --resume`` continues the same MLflow run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lepton_vision.config.errors import LeptonError
from lepton_vision.runio import RunDir, atomic_write_json

#: Files of a run directory logged as artefacts (when present), and folders logged whole.
ARTIFACT_FILES = ("report.html", "metrics.json", "recipe.resolved.yaml", "run.json", "folds.csv",
                  "data_report.json", "oof_predictions.csv", "oof_detections.csv")
ARTIFACT_DIRS = ("export", "plots")

_MAX_PARAM = 6000  # MLflow's limit on a param value
_BATCH = 100  # MLflow's limit on params (and tags) per log_batch call


class NullTracker:
    """``tracking.backend: none``: every call does nothing."""

    def log_fold(self, k: int, result: dict[str, Any], fold_dir: Path, score_key: str) -> None:
        """Record a finished fold."""

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        """Record the pooled out-of-fold metrics."""

    def log_outputs(self, run: RunDir) -> None:
        """Record the run's files as artefacts."""


@contextlib.contextmanager
def tracking_session(resolved: Any, run: RunDir) -> Iterator[Any]:
    """The tracker of a run: a :class:`NullTracker`, or an :class:`MLflowTracker` whose MLflow run
    ends FINISHED when the block completes and FAILED when it raises (or is interrupted)."""
    spec = resolved.recipe.tracking
    if spec.backend == "none":
        yield NullTracker()
        return
    tracker = MLflowTracker(resolved, run)
    try:
        yield tracker
    except BaseException:
        tracker.end("KILLED" if _interrupted() else "FAILED")
        raise
    tracker.log_outputs(run)
    tracker.end("FINISHED")


def _interrupted() -> bool:
    import sys

    return isinstance(sys.exc_info()[1], KeyboardInterrupt)


def default_uri(run_root: Path) -> str:
    """``sqlite:///<run dir>/mlflow.db`` (absolute)."""
    return "sqlite:///" + str((Path(run_root) / "mlflow.db").resolve())


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to ``{"a.b.c": value}``; lists stay whole (one value, JSON)."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = obj
    return out


def _param_value(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v)
    return text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 1] + "…"


def pooled_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of a metrics.json, with CI bounds as ``<name>.ci_lo`` / ``.ci_hi``.

    Classification: ``pooled.<m>`` (+ CI) and ``mean.<m>`` / ``sd.<m>`` over folds, and the same
    under ``patient.`` when there are patients. Detection: ``ap50``, ``ap50_95``, ``precision``,
    ``recall``, ``f1`` (+ CI), ``per_class.<c>.ap50`` and ``image_level.<m>``.
    """
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            out[name] = float(value)

    def classification(m: dict[str, Any], prefix: str) -> None:
        for name, v in (m.get("pooled") or {}).items():
            if isinstance(v, dict):
                put(f"{prefix}pooled.{name}", v.get("value"))
                put(f"{prefix}pooled.{name}.ci_lo", v.get("lo"))
                put(f"{prefix}pooled.{name}.ci_hi", v.get("hi"))
            else:
                put(f"{prefix}pooled.{name}", v)
        for name, v in (m.get("mean_sd") or {}).items():
            if isinstance(v, dict):
                put(f"{prefix}mean.{name}", v.get("mean"))
                put(f"{prefix}sd.{name}", v.get("sd"))
            elif isinstance(v, (list, tuple)) and len(v) == 2:
                put(f"{prefix}mean.{name}", v[0])
                put(f"{prefix}sd.{name}", v[1])

    if "pooled" in metrics:
        classification(metrics, "")
        if isinstance(metrics.get("patient"), dict):
            classification(metrics["patient"], "patient.")
        put("final_threshold", metrics.get("final_threshold"))
        return out
    ci = metrics.get("ci") or {}
    for name in ("ap50", "ap50_95", "precision", "recall", "f1"):
        put(name, metrics.get(name))
        if isinstance(ci.get(name), (list, tuple)) and len(ci[name]) == 2:
            put(f"{name}.ci_lo", ci[name][0])
            put(f"{name}.ci_hi", ci[name][1])
    for name, v in (metrics.get("mean_sd") or {}).items():
        if isinstance(v, (list, tuple)) and len(v) == 2:
            put(f"mean.{name}", v[0])
            put(f"sd.{name}", v[1])
    for cname, pc in (metrics.get("per_class") or {}).items():
        put(f"per_class.{cname}.ap50", (pc or {}).get("ap50"))
        put(f"per_class.{cname}.ap50_95", (pc or {}).get("ap50_95"))
    il = metrics.get("image_level") or {}
    for name, v in il.items():
        put(f"image_level.{name}", v)
    for key, (lo_hi) in ci.items():
        if key.startswith("image_") and isinstance(lo_hi, (list, tuple)) and len(lo_hi) == 2:
            put(f"image_level.{key[len('image_'):]}.ci_lo", lo_hi[0])
            put(f"image_level.{key[len('image_'):]}.ci_hi", lo_hi[1])
    put("final_score_threshold", metrics.get("final_score_threshold"))
    return out


def git_commit(start: Path) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout holding ``start``, or ``(None, None)``."""
    try:
        where = str(Path(start).resolve().parent if Path(start).is_file() else Path(start).resolve())
        head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None, None


class MLflowTracker:
    """Logs one lepton-vision run as one MLflow run (``tracking.backend: mlflow``).

    Args:
        resolved: The resolved recipe (``tracking.uri``, ``tracking.experiment``, cards).
        run: The run directory (new or being resumed).

    Raises:
        LeptonError: The tracking store cannot be opened (the message names ``tracking.uri``).
    """

    def __init__(self, resolved: Any, run: RunDir) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        spec = resolved.recipe.tracking
        self.run = run
        self.uri = spec.uri or default_uri(run.root)
        self.state_path = run.root / "tracking.json"
        self._logged_outputs = False
        state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment = spec.experiment or resolved.task.name
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                exp_id = self.client.create_experiment(experiment, artifact_location=self._artifact_root())
            else:
                exp_id = exp.experiment_id
            run_id = state.get("run_id") if state.get("uri") == self.uri else None
            if run_id is not None:
                self.client.update_run(run_id, status="RUNNING")
                self.logged_folds = set(state.get("logged_folds", []))
            else:
                run_id = self.client.create_run(exp_id, run_name=run.root.name).info.run_id
                self.logged_folds = set()
        except Exception as e:  # noqa: BLE001 - any store failure is a configuration problem here
            raise LeptonError(
                f"tracking.uri: cannot open the MLflow tracking store. Got {self.uri!r}: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                hint="Use a sqlite URI (sqlite:////abs/path/mlflow.db) or a reachable server "
                "(http://host:5000); null keeps a store in the run directory.",
            ) from e
        self.run_id = run_id
        self.experiment_id = exp_id
        self._save_state()
        self._log_params(resolved)
        self._log_tags(resolved)

    def _artifact_root(self) -> str | None:
        # A new experiment in a sqlite store would put artefacts in ./mlruns of whatever folder
        # the command ran from; keep them beside the database instead.
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri[len("sqlite:///"):])
            return (db.parent / "mlartifacts").resolve().as_uri()
        return None

    def _save_state(self) -> None:
        atomic_write_json(self.state_path, {"backend": "mlflow", "uri": self.uri, "run_id": self.run_id,
                                            "experiment_id": self.experiment_id,
                                            "logged_folds": sorted(self.logged_folds)})

    def _log_params(self, resolved: Any) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        params = {k: _param_value(v) for k, v in flatten(resolved.recipe.model_dump(mode="json")).items()
                  if k not in existing}  # params are write-once; a resumed run keeps the first values
        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])

    def _log_tags(self, resolved: Any) -> None:
        from lepton_vision.version import __version__

        recipe = resolved.recipe
        commit, dirty = git_commit(resolved.recipe_path)
        tags = {
            "task": resolved.task.name,
            "kind": resolved.task.kind,
            "dataset": resolved.dataset.name,
            "recipe": recipe.name,
            "recipe_sha256": recipe.sha256(),
            "run_dir": str(self.run.root.resolve()),
            "executor": recipe.train.executor,
            "lepton_vision": __version__,
        }
        if commit:
            tags["git_commit"] = commit
            tags["mlflow.source.git.commit"] = commit
            tags["git_dirty"] = str(dirty).lower()
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

    def _log(self, values: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_fold(self, k: int, result: dict[str, Any], fold_dir: Path, score_key: str) -> None:
        """Log fold ``k``'s result (step = fold) and its per-epoch history (step = epoch)."""
        if k in self.logged_folds:
            return
        self._log({f"fold.{key}": result[key] for key in (score_key, "best_epoch", "epochs_run", "seconds")
                   if isinstance(result.get(key), (int, float))}, step=k)
        history = Path(fold_dir) / "history.csv"
        if history.is_file():
            import pandas as pd

            frame = pd.read_csv(history)
            for row in frame.to_dict("records"):
                epoch = int(row.pop("epoch", 0))
                self._log({f"fold{k}.{name}": v for name, v in row.items()
                           if isinstance(v, (int, float)) and v == v}, step=epoch)
        self.logged_folds.add(k)
        self._save_state()

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        """Log pooled metrics with CI bounds, and any fold not logged live (e.g. before a resume
        that turned tracking on)."""
        for result in metrics.get("folds") or []:
            k = int(result["fold"])
            key = "best_val_auc" if "best_val_auc" in result else "best_val_ap50"
            self.log_fold(k, result, self.run.fold_dir(k), key)
        self._log(pooled_metrics(metrics))

    def log_outputs(self, run: RunDir) -> None:
        """Log the run's report, metrics, recipe, tables, plots and export as artefacts (once)."""
        if self._logged_outputs:
            return
        for name in ARTIFACT_FILES:
            path = run.root / name
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        for name in ARTIFACT_DIRS:
            path = run.root / name
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=name)
        self._logged_outputs = True

    def end(self, status: str) -> None:
        """End the MLflow run (FINISHED, FAILED or KILLED); a resume sets it RUNNING again."""
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception:  # noqa: BLE001 - never hide the run's own error behind the tracker's
            if status == "FINISHED":
                raise

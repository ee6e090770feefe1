"""``lepton-vision tune``: a Ray Tune sweep in which every trial is a full grouped cross-validation.

A search space file maps recipe paths (as ``--set`` writes them) to Ray Tune domains::

    train.optimizer.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
    model.backbone: {choice: [small_cnn, mobilenet_v3_small]}
    train.batch_size: {grid: [16, 32]}

Domains: ``choice`` (random pick from a list), ``grid`` (every value, for each of ``--trials``),
``uniform`` / ``loguniform`` ``[low, high]``, ``quniform`` ``[low, high, step]`` and ``randint``
``[low, high]`` (low <= value < high, Ray's convention). The file is checked before any trial
starts: every path must exist in the recipe schema and every value (each choice, both ends of a
range) must give a valid recipe; problems name the space file, line and path.

Each trial is ``lepton-vision train`` up to metrics.json (``stop_after="metrics"``) in its own,
normal run directory ``trials/<trial id>/``, with the folds run one after the other inside the
trial; trials run in parallel on the Ray cluster, each asking for ``train.resources``. The
objective is the task card's ``primary_metric`` from the pooled out-of-fold metrics (e.g. ROC
AUC, AP50), maximised. The sweep writes ``results.csv`` (one row per trial: parameters, metric
with its CI, run directory, error) and ``best_recipe.yaml``, a normal recipe: ``lepton-vision
train best_recipe.yaml --resume trials/<best>`` finishes the best trial (final model, export,
report) without recomputing its folds.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lepton_vision.config.errors import LeptonError, Problem, RecipeError, did_you_mean, format_choices
from lepton_vision.runio import atomic_write_csv, atomic_write_json, atomic_write_text
from lepton_vision.config.yamlfile import load_yaml, render_path



class Domain(BaseModel):
    """One search dimension (exactly one key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    choice: list[Any] | None = Field(None, min_length=1, description="Pick one of these values at random.")
    grid: list[Any] | None = Field(None, min_length=1, description="Try every value (for each of --trials).")
    uniform: tuple[float, float] | None = Field(None, description="[low, high], uniform.")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], uniform in log space; low > 0.")
    quniform: tuple[float, float, float] | None = Field(None, description="[low, high, step], uniform rounded to step.")
    randint: tuple[int, int] | None = Field(None, description="[low, high]: an integer, low <= value < high.")

    @model_validator(mode="after")
    def _one(self) -> Domain:
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one domain, one of {', '.join(type(self).model_fields)}. Got "
                f"{given or 'none'}"
            )
        kind = given[0]
        value = getattr(self, kind)
        if kind in ("uniform", "loguniform", "quniform", "randint") and not value[0] < value[1]:
            raise ValueError(f"{kind}: low must be below high. Got {list(value)}")
        if kind == "loguniform" and value[0] <= 0:
            raise ValueError(f"loguniform: low must be > 0. Got {list(value)}")
        if kind == "quniform" and value[2] <= 0:
            raise ValueError(f"quniform: step must be > 0. Got {list(value)}")
        return self

    @property
    def kind(self) -> str:
        """The domain's key (``choice``, ``loguniform`` ...)."""
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    def probe_values(self) -> list[Any]:
        """Values that must all give a valid recipe (every listed value, both ends of a range)."""
        value = getattr(self, self.kind)
        if self.kind in ("choice", "grid"):
            return list(value)
        if self.kind == "randint":
            return [int(value[0]), int(value[1]) - 1]
        return [float(value[0]), float(value[1])]

    def to_tune(self) -> Any:
        """The Ray Tune domain."""
        from ray import tune

        v = getattr(self, self.kind)
        return {
            "choice": lambda: tune.choice(list(v)),
            "grid": lambda: tune.grid_search(list(v)),
            "uniform": lambda: tune.uniform(v[0], v[1]),
            "loguniform": lambda: tune.loguniform(v[0], v[1]),
            "quniform": lambda: tune.quniform(v[0], v[1], v[2]),
            "randint": lambda: tune.randint(v[0], v[1]),
        }[self.kind]()


def yaml_value(value: Any) -> str:
    """A value as ``--set`` reads it back (YAML; floats always with a dot: PyYAML reads 1e-05 as
    a string)."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return text.removesuffix("...").strip()


def load_space(space_path: str | Path, recipe_path: str | Path, overrides: list[str]) -> dict[str, Domain]:
    """Read and check a search space file against the recipe it will vary.

    Raises:
        RecipeError: With the space file, line and path of every problem (unknown recipe path,
            malformed domain, a value the recipe refuses).
    """
    from lepton_vision.config.recipe import EXECUTION_FIELDS, load_recipe

    doc = load_yaml(space_path)
    if not isinstance(doc.data, dict) or not doc.data:
        raise RecipeError(
            "a search space must be a YAML mapping of recipe paths to domains",
            file=str(space_path),
            hint="e.g.  train.optimizer.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}",
        )
    problems: list[Problem] = []
    space: dict[str, Domain] = {}
    for key, raw in doc.data.items():
        key = str(key)
        line = doc.line_of((key,))
        if any(key == f or key.startswith(f + ".") for f in EXECUTION_FIELDS):
            problems.append(Problem(key, "says where trials run, not what they compute; it cannot change "
                                    "the objective. Remove it.", line=line))
            continue
        if not isinstance(raw, dict):
            problems.append(Problem(key, f"expected a domain such as {{choice: [a, b]}} or "
                                    f"{{loguniform: [1.0e-4, 1.0e-2]}}. Got {raw!r}.", line=line))
            continue
        try:
            dom = Domain.model_validate(raw)
        except ValidationError as e:
            for err in e.errors():
                loc = (key, *err["loc"])
                msg = err["msg"].removeprefix("Value error, ")
                if err["type"] == "extra_forbidden":
                    name = str(err["loc"][-1])
                    msg = (f"unknown domain '{name}'.{did_you_mean(name, Domain.model_fields)} "
                           f"Valid: {format_choices(Domain.model_fields)}")
                problems.append(Problem(render_path(loc), msg + ".", line=doc.line_of(loc) or line))
            continue
        for value in dom.probe_values():
            try:
                load_recipe(recipe_path, [*overrides, f"{key}={yaml_value(value)}"])
            except RecipeError as e:
                for p in e.problems or [Problem(key, e.message)]:
                    problems.append(Problem(
                        key, f"{dom.kind} value {value!r} makes an invalid recipe: "
                        f"{p.where.replace(' (from --set)', '')}: {p.message}", line=line))
                break
        space[key] = dom
    if problems:
        raise RecipeError(
            f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in this search space",
            file=str(space_path), problems=problems,
            hint="Keys are recipe paths as --set writes them (train.optimizer.learning_rate, "
            "model.backbone); `lepton-vision recipe schema` lists them.",
        )
    return space


def objective_of(metrics: dict[str, Any], primary_metric: str, kind: str) -> tuple[float, float | None, float | None]:
    """``(value, ci_lo, ci_hi)`` of the task card's primary metric in a metrics.json of a ``kind`` run.

    Raises:
        LeptonError: The metric is missing or not a number (e.g. AUC of a run without negatives).
    """
    from lepton_vision.kinds import kind_of

    value, lo, hi = kind_of(kind).objective(metrics, primary_metric)
    if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise LeptonError(f"metrics.json: the objective {primary_metric} is not available. Got {value!r}.")
    return float(value), (None if lo is None else float(lo)), (None if hi is None else float(hi))


def check_objective(primary_metric: str, kind: str, task_file: str) -> None:
    """Fail before the sweep when the task card's primary metric cannot be an objective."""
    from lepton_vision.kinds import kind_of

    valid = kind_of(kind).objectives
    if primary_metric not in valid:
        raise RecipeError(
            f"primary_metric: {primary_metric} is not a cross-validated metric of a {kind} run, so "
            f"it cannot be the sweep's objective. Got {primary_metric!r}.",
            file=task_file, hint=f"Valid for {kind}: {', '.join(valid)}.",
        )


def _trial(config: dict[str, Any], *, recipe_path: str, overrides: list[str], trials_dir: str,
           env: dict[str, str], cwd: str, primary_metric: str, kind: str) -> None:
    """One trial (in a Ray Tune worker): a cross-validation run up to metrics.json."""
    os.environ.update(env)
    os.chdir(cwd)  # Tune starts trials in their own folder; recipe paths are the driver's
    from ray import tune

    from lepton_vision.engine.crossval import run_train

    trial_id = tune.get_context().get_trial_id()
    out = Path(trials_dir) / trial_id
    resume = out if (out / "recipe.resolved.yaml").is_file() else None  # a retried trial resumes
    trial_overrides = [f"{k}={yaml_value(v)}" for k, v in sorted(config.items())]
    # Inside a trial the folds run one after the other: the trial holds its resources already.
    run_train(recipe_path, [*overrides, *trial_overrides, "train.executor=local"],
              out=None if resume else out, resume=resume, stop_after="metrics")
    metrics = json.loads((out / "metrics.json").read_text())
    value, lo, hi = objective_of(metrics, primary_metric, kind)
    tune.report({"objective": value, "ci_lo": math.nan if lo is None else lo,
                 "ci_hi": math.nan if hi is None else hi, "run_dir": str(out)})


def run_tune(
    recipe_path: str | Path,
    space_path: str | Path,
    trials: int,
    overrides: list[str] | None = None,
    out: Path | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
) -> Path:
    """Run a sweep and return its directory (results.csv, best_recipe.yaml, trials/).

    Args:
        recipe_path: The recipe to vary.
        space_path: The search space file (see the module docstring).
        trials: Ray Tune ``num_samples`` (with ``grid`` domains: per grid point).
        overrides: ``--set`` values applied to every trial.
        out: The sweep directory (default ``runs/<name>-tune-<timestamp>``).
        address: Ray cluster (default ``train.ray.address`` of the recipe).
        max_concurrent: Trials at once (default: as many as the cluster's resources allow).

    Raises:
        LeptonError: Bad recipe or space, Ray missing, or every trial failed.

    Example:
        >>> run_tune("recipes/ct_screening/baseline.yaml", "space.yaml", 8)
    """
    from rich.console import Console

    from lepton_vision.config.cards import load_resolved
    from lepton_vision.engine.executors import (
        FORWARDED_ENV,
        FORWARDED_ENV_PREFIXES,
        check_fits,
        connect_ray,
        require_extra,
    )
    from lepton_vision.config.recipe import dump_recipe

    console = Console(highlight=False)
    overrides = list(overrides or [])
    if trials < 1:
        raise LeptonError(f"--trials must be at least 1. Got {trials}.")
    resolved = load_resolved(recipe_path, overrides)
    recipe = resolved.recipe
    require_extra("ray", "train.executor", "tune (Ray Tune)", recipe_path)
    if recipe.tracking.backend == "mlflow":
        require_extra("mlflow", "tracking.backend", "mlflow", recipe_path)
    check_objective(resolved.task.primary_metric, resolved.task.kind, str(resolved.task_path))
    space = load_space(space_path, recipe_path, overrides)
    from lepton_vision.engine.crossval import new_run_dir

    sweep = Path(out or new_run_dir(f"{recipe.name}-tune")).resolve()
    if sweep.exists() and any(sweep.iterdir()):
        raise LeptonError(f"{sweep}: the sweep directory exists and is not empty", hint="Choose another --out.")
    (sweep / "trials").mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep / "space.yaml", Path(space_path).read_text())
    if recipe.tracking.backend == "mlflow" and recipe.tracking.uri is None:
        # One store for the whole sweep, so its trials can be compared side by side.
        overrides.append(f"tracking.uri={yaml_value('sqlite:///' + str(sweep / 'mlflow.db'))}")

    ray, started = connect_ray(address or recipe.train.ray.address)
    try:
        check_fits(ray, recipe.train.resources, started, "trial")
    except LeptonError:
        if started:
            ray.shutdown()
        raise
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    t0 = time.time()
    res = recipe.train.resources
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES) or k in FORWARDED_ENV}
    trainable = tune.with_parameters(
        _trial, recipe_path=str(Path(recipe_path).resolve()), overrides=overrides,
        trials_dir=str(sweep / "trials"), env=env, cwd=os.getcwd(),
        primary_metric=resolved.task.primary_metric, kind=resolved.task.kind,
    )
    metric = resolved.task.primary_metric
    console.print(f"[bold]lepton-vision tune[/bold] {recipe.name}: {trials} trial(s) x {recipe.cv.n_splits} "
                  f"folds, objective pooled {metric} (max), {res.cpus:g} CPU"
                  + (f" + {res.gpus:g} GPU" if res.gpus else "") + f" per trial → {sweep}")
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": res.cpus, "gpu": res.gpus}),
            param_space={k: d.to_tune() for k, d in space.items()},
            tune_config=tune.TuneConfig(
                num_samples=trials, metric="objective", mode="max",
                search_alg=BasicVariantGenerator(random_state=recipe.seed),
                max_concurrent_trials=max_concurrent or 0,
            ),
            run_config=tune.RunConfig(
                name="tune", storage_path=str(sweep / "ray"), verbose=1,
                failure_config=tune.FailureConfig(max_failures=recipe.train.ray.retries),
            ),
        )
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()

    table = _results_table(grid, list(space), metric)
    atomic_write_csv(sweep / "results.csv", table)
    ok = table[table["status"] == "ok"]
    summary: dict[str, Any] = {
        "recipe": str(Path(recipe_path).resolve()), "space": {k: d.model_dump(exclude_none=True) for k, d in space.items()},
        "trials": int(len(table)), "failed": int((table["status"] != "ok").sum()), "objective": metric,
        "seconds": round(time.time() - t0, 1), "overrides": overrides,
    }
    _print_table(console, table, metric)
    if ok.empty:
        atomic_write_json(sweep / "tune.json", summary)
        first = table["error"].dropna().iloc[0] if table["error"].notna().any() else "unknown"
        raise LeptonError(f"{sweep}: every trial failed; the first error: {first}",
                          hint="Each trial's run directory is under trials/; fix the recipe or the space.")
    best = ok.iloc[0]
    best_overrides = [f"{k}={yaml_value(_from_cell(best[f'param:{k}']))}" for k in space]
    best_recipe = load_resolved(recipe_path, [*overrides, *best_overrides]).recipe
    best_path = sweep / "best_recipe.yaml"
    text, note = _portable_recipe(dump_recipe(best_recipe), best_recipe, best_path)
    lo, hi = best["ci_lo"], best["ci_hi"]
    ci = f" [{lo:.4f}, {hi:.4f}]" if lo == lo and hi == hi else ""
    header = (f"# Best of {len(table)} trials of `lepton-vision tune` ({_dt.date.today()}): pooled "
              f"{metric} {best['objective']:.4f}{ci}\n"
              f"# trial run: {best['run_dir']}\n"
              + (f"# finish that run (final model, export, report) without retraining its folds:\n"
                 f"#   lepton-vision train {best_path} --resume {best['run_dir']}\n" if not note else note))
    atomic_write_text(best_path, header + text)
    summary.update(best={"trial": best["trial"], "objective": float(best["objective"]),
                         "params": {k: _from_cell(best[f"param:{k}"]) for k in space},
                         "run_dir": best["run_dir"]}, best_recipe=str(best_path))
    atomic_write_json(sweep / "tune.json", summary)
    console.print(f"best: {metric} {best['objective']:.4f}{ci} with "
                  + ", ".join(f"{k}={_from_cell(best[f'param:{k}'])}" for k in space)
                  + f"\nresults: {sweep / 'results.csv'}   best recipe: {best_path}")
    return sweep


def _from_cell(value: Any) -> Any:
    """A parameter as stored in the results frame (lists are JSON strings there)."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return value


def _results_table(grid: Any, keys: list[str], metric: str) -> Any:
    import pandas as pd

    rows = []
    for i in range(len(grid)):
        r = grid[i]
        m = r.metrics or {}
        trial = m.get("trial_id") or Path(str(r.path)).name
        row: dict[str, Any] = {"trial": trial}
        for k in keys:
            v = (r.config or {}).get(k)
            row[f"param:{k}"] = json.dumps(v) if isinstance(v, (list, dict)) else v
        row["objective"] = m.get("objective", math.nan)
        row["ci_lo"] = m.get("ci_lo", math.nan)
        row["ci_hi"] = m.get("ci_hi", math.nan)
        row["metric"] = metric
        row["status"] = "error" if r.error is not None or "objective" not in m else "ok"
        row["run_dir"] = m.get("run_dir", "")
        row["error"] = None if r.error is None else _error_line(r.error)
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(["status", "objective"], ascending=[False, False], na_position="last",
                             key=lambda c: c.map({"ok": 1, "error": 0}) if c.name == "status" else c
                             ).reset_index(drop=True)


def _error_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err
    text = str(getattr(cause, "message", None) or cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0][:300] if text else ''}"


def _print_table(console: Any, table: Any, metric: str) -> None:
    from rich.table import Table

    t = Table(title=f"tune: pooled {metric} per trial (best first)")
    params = [c for c in table.columns if c.startswith("param:")]
    for c in ["trial", *[p[len("param:"):] for p in params], metric, "95% CI", "status"]:
        t.add_column(c)
    for row in table.to_dict("records"):
        def fmt(v: Any) -> str:
            return f"{v:.4g}" if isinstance(v, float) else str(v)

        ci = (f"[{row['ci_lo']:.3f}, {row['ci_hi']:.3f}]"
              if row["ci_lo"] == row["ci_lo"] and row["ci_hi"] == row["ci_hi"] else "")
        obj = f"{row['objective']:.4f}" if row["objective"] == row["objective"] else "-"
        t.add_row(str(row["trial"]), *[fmt(row[p]) for p in params], obj, ci,
                  row["status"] if row["status"] == "ok" else f"error: {row['error']}")
    console.print(t)


def _portable_recipe(text: str, recipe: Any, path: Path) -> tuple[str, str]:
    """The recipe text, with card names replaced by absolute card paths when they would not be
    found from where the file is written (and a note saying so), so the file always validates."""
    from lepton_vision.config.cards import resolve

    atomic_write_text(path, text)
    try:
        resolve(recipe, path)
        return text, ""
    except LeptonError:
        pass
    from lepton_vision.config.cards import find_card, project_root

    root = project_root()
    data = yaml.safe_load(text)
    data["task"] = str(find_card(recipe.task, "tasks", "task.yaml", root, str(path)).resolve())
    data["dataset"] = str(find_card(recipe.dataset, "datasets", "dataset.yaml", root, str(path)).resolve())
    note = ("# task and dataset are absolute card paths (the card names would not be found from this "
            "folder);\n# this recipe therefore hashes differently from the trial's and starts a new run.\n")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True), note

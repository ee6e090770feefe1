"""Run the folds of a cross-validation: one after the other here, or as Ray tasks on a cluster.

``train.executor: local`` calls the fold function in this process. ``train.executor: ray`` submits
each fold as a Ray task that asks for ``train.resources`` (CPUs, GPUs) and runs in a fresh worker
process (``max_calls=1``: TensorFlow's thread pool and GPU memory start clean, as in a new
``lepton-vision train``). Ray is the scheduler; this module only submits, waits, retries a failed
fold ``train.ray.retries`` times and hands each result to the driver, which writes
``folds/<k>/result.json`` last, so resume works the same for both executors.

Fold files reach the run directory in one of two ways (``train.ray.artifacts``): on shared storage
(every node mounts the run directory at the same path, as on one machine) the worker writes them in
place; otherwise it writes to a temporary folder and returns the files, and the driver writes them.
``auto`` decides per task by checking whether the worker sees a token file the driver wrote.

Ray is optional: nothing here imports it before a recipe asks for it, and a missing install is a
:class:`RecipeError` that names the recipe field and the pip command.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lepton_vision.config.errors import DataError, LeptonError, Problem, RecipeError, TrainError

#: ``fold_fn(shared, k, out_dir) -> result``: fits fold ``k`` from the data in ``shared``, writes
#: its files into ``out_dir`` and returns the JSON-able dict that becomes ``folds/<k>/result.json``.
FoldFn = Callable[[Any, int, Path], dict[str, Any]]

#: Extras and the pip command that installs each optional package.
EXTRAS = {
    "ray": ("ray", 'pip install "lepton-vision[ray]"   (or: pip install "ray[tune]==2.60.0")'),
    "mlflow": ("mlflow", 'pip install "lepton-vision[mlflow]"   (or: pip install "mlflow==3.17.2")'),
}

#: Environment passed on to Ray workers: where data, cards and generated data are, and the
#: offline switches the CLI sets (workers of a cluster do not inherit the driver's environment).
FORWARDED_ENV_PREFIXES = ("LEPTON_",)
FORWARDED_ENV = ("NO_ALBUMENTATIONS_UPDATE", "GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE",
                  "HF_HUB_DISABLE_TELEMETRY", "TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")

_PROBE = ".storage-probe"


def _console():
    from rich.console import Console

    return Console(highlight=False)


# ---------------------------------------------------------------------------------------------
# Optional packages


def missing_extra(extra: str) -> bool:
    """Whether the package of an extra (``ray``, ``mlflow``) is not importable."""
    import importlib.util

    return importlib.util.find_spec(EXTRAS[extra][0]) is None


def require_extra(extra: str, where: str, value: str, recipe_file: str | Path | None) -> None:
    """Raise a :class:`RecipeError` naming the recipe field and the pip command when the package
    of ``extra`` is not installed.

    Args:
        extra: ``ray`` or ``mlflow``.
        where: The YAML path that asked for it (``train.executor``).
        value: Its value (``ray``).
        recipe_file: The recipe file, for the message and the line number.
    """
    if not missing_extra(extra):
        return
    line = None
    if recipe_file is not None and Path(recipe_file).is_file():
        from lepton_vision.config.yamlfile import load_yaml

        try:
            line = load_yaml(recipe_file).lines.get(where)
        except LeptonError:
            line = None
    package, pip = EXTRAS[extra]
    raise RecipeError(
        f"{where}: {value} needs the optional package '{package}', which is not installed",
        file=None if recipe_file is None else str(recipe_file),
        problems=[Problem(where if line is not None else f"{where} (from the recipe or --set)",
                          f"Got {value!r}; install it with: {pip}", line=line)],
        hint=f"Install it ({pip}) or set {where} back to its default.",
    )


def check_recipe_extras(recipe: Any, recipe_file: str | Path | None) -> None:
    """Fail before any work when a recipe asks for Ray or MLflow and they are not installed."""
    if recipe.train.executor == "ray":
        require_extra("ray", "train.executor", "ray", recipe_file)
    if recipe.tracking.backend == "mlflow":
        require_extra("mlflow", "tracking.backend", "mlflow", recipe_file)


# ---------------------------------------------------------------------------------------------
# Ray connection


def connect_ray(address: str | None, num_cpus: int | None = None) -> tuple[Any, bool]:
    """Join a Ray cluster, or start a private one on this machine; return ``(ray, started)``.

    With ``address`` None and no ``$RAY_ADDRESS``, Ray starts here with every server bound to the
    loopback interface (nothing listens on the network) and usage statistics off; ``started`` is
    then True and the caller shuts it down when done. An already initialised Ray (a test's, or a
    Tune trial's) is reused as it is.

    Args:
        address: ``train.ray.address`` (None, ``auto``, ``host:port``, ``ray://host:port``).
        num_cpus: CPUs of a private local Ray (default: every core).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    local = address is None and not os.environ.get("RAY_ADDRESS")
    if local or _loopback(address or os.environ.get("RAY_ADDRESS", "")):
        # Ray replaces 127.0.0.1 by the machine's network address (for multi-node clusters)
        # unless cluster mode is off: a private Ray, or a head started with
        # --node-ip-address=127.0.0.1, then stays on the loopback interface.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return ray, False
    try:
        if local:
            # address="local": a new instance even when `ray start` left a cluster address behind.
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     _node_ip_address="127.0.0.1", logging_level="WARNING")
        else:
            ray.init(address=address, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise LeptonError(
            f"train.ray.address: could not connect to the Ray cluster. Got {address or os.environ.get('RAY_ADDRESS')!r}: {e}",
            hint="Start the head node first (ray start --head --port 6379), then pass its "
            "host:port, or 'auto' on a node of the cluster; null starts a private Ray here.",
        ) from e
    return ray, True


def _loopback(address: str) -> bool:
    """Whether a Ray address points at this machine's loopback interface (``auto``: the address
    of the cluster last started here, as ``ray start`` records it)."""
    if address == "auto":
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        address = current.read_text().strip() if current.is_file() else ""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


# ---------------------------------------------------------------------------------------------
# The fold task (runs in a Ray worker)


def _fold_task(fold_fn: FoldFn, shared: Any, k: int, fold_dir: str, artifacts: str, token: str,
               env: dict[str, str], cwd: str) -> dict[str, Any]:
    """One fold in a Ray worker: fit into the shared run directory or a temporary folder."""
    os.environ.update(env)
    if cwd and Path(cwd).is_dir():
        os.chdir(cwd)  # relative paths in the recipe mean the same as on the driver
    fdir = Path(fold_dir)
    probe = fdir.parent.parent / _PROBE
    sees_run_dir = probe.is_file() and probe.read_text().strip() == token
    host = socket.gethostname()
    if artifacts == "shared" and not sees_run_dir:
        raise RecipeError(
            f"train.ray.artifacts: shared, but the worker on {host} does not see the run directory "
            f"{fdir.parent.parent}. Got 'shared'.",
            hint="Mount the run directory at the same path on every node, or use artifacts: auto/return.",
        )
    in_place = artifacts != "return" and sees_run_dir
    if in_place:
        fdir.mkdir(parents=True, exist_ok=True)
        out_dir = fdir
    else:
        out_dir = Path(tempfile.mkdtemp(prefix=f"lepton-fold{k}-"))
    try:
        result = fold_fn(shared, k, out_dir)
        files = None if in_place else _pack(out_dir)
    finally:
        if not in_place:
            shutil.rmtree(out_dir, ignore_errors=True)
    return {"result": result, "files": files, "host": host, "pid": os.getpid(),
            "artifacts": "shared" if in_place else "returned"}


def _pack(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _unpack(files: dict[str, bytes], folder: Path) -> None:
    from lepton_vision.runio import atomic_write_bytes

    for rel, data in files.items():
        target = (folder / rel).resolve()
        if folder.resolve() not in target.parents:  # never write outside the fold directory
            raise LeptonError(f"{folder}: a fold task returned a file outside its folder: {rel}")
        atomic_write_bytes(target, data)


# ---------------------------------------------------------------------------------------------
# Executors


def _fresh(fdir: Path) -> Path:
    if fdir.exists():
        shutil.rmtree(fdir)  # a half-finished fold is redone from scratch
    fdir.mkdir(parents=True)
    return fdir


def _execution(result: dict[str, Any], **extra: Any) -> dict[str, Any]:
    result.setdefault("execution", {}).update(extra)
    return result


def run_folds(
    fold_fn: FoldFn,
    shared: Any,
    pending: list[int],
    fold_dir: Callable[[int], Path],
    recipe: Any,
    on_done: Callable[[int, dict[str, Any]], None],
    run_root: Path,
) -> None:
    """Fit every fold in ``pending`` with the recipe's executor and hand each result to ``on_done``.

    Args:
        fold_fn: Module-level function ``(shared, k, out_dir) -> result`` (picklable for Ray).
        shared: Everything the folds need (decoded images, labels, the resolved recipe); sent
            once to the Ray object store and shared by every fold task.
        pending: Fold indices to fit (finished folds are left out by the caller).
        fold_dir: ``k -> folds/<k>`` in the run directory.
        recipe: The recipe (``train.executor``, ``train.resources``, ``train.ray``).
        on_done: Called in this process, in completion order, once fold ``k``'s files are in
            ``fold_dir(k)``; it writes ``result.json`` (the "fold finished" marker).
        run_root: The run directory.

    Raises:
        LeptonError: A fold failed (after its retries, for Ray); its message names the fold.
    """
    if not pending:
        return
    if recipe.train.executor == "local":
        for k in pending:
            result = fold_fn(shared, k, _fresh(fold_dir(k)))
            on_done(k, _execution(result, executor="local", attempts=1, host=socket.gethostname()))
        return
    _run_ray(fold_fn, shared, pending, fold_dir, recipe, on_done, run_root)


def _run_ray(fold_fn: FoldFn, shared: Any, pending: list[int], fold_dir: Callable[[int], Path],
             recipe: Any, on_done: Callable[[int, dict[str, Any]], None], run_root: Path) -> None:
    console = _console()
    spec = recipe.train.ray
    res = recipe.train.resources
    ray, started = connect_ray(spec.address)
    k_total = recipe.cv.n_splits
    probe = Path(run_root) / _PROBE
    token = secrets.token_hex(16)
    inflight: dict[Any, int] = {}
    try:
        from lepton_vision.runio import atomic_write_text

        check_fits(ray, res, started)
        atomic_write_text(probe, token + "\n")
        shared_ref = ray.put(shared)
        # max_calls=1: a fresh worker per fold (retries are ours, so they can be reported).
        task = ray.remote(num_cpus=res.cpus, num_gpus=res.gpus, max_retries=0, max_calls=1)(_fold_task)
        env = {k: v for k, v in os.environ.items()
               if k.startswith(FORWARDED_ENV_PREFIXES) or k in FORWARDED_ENV}
        cwd = os.getcwd()
        attempts = dict.fromkeys(pending, 0)
        failures: dict[int, list[str]] = {k: [] for k in pending}
        started_at: dict[int, float] = {}

        def submit(k: int) -> None:
            fdir = _fresh(fold_dir(k))
            attempts[k] += 1
            started_at[k] = time.time()
            ref = task.options(name=f"lepton-fold-{k}").remote(
                fold_fn, shared_ref, k, str(fdir.resolve()), spec.artifacts, token, env, cwd)
            inflight[ref] = k

        resources = f"{res.cpus:g} CPU" + (f", {res.gpus:g} GPU" if res.gpus else "")
        console.print(f"ray: {len(pending)} fold tasks ({resources} each) on "
                      f"{_cluster_summary(ray)}")
        for k in pending:
            submit(k)
        fatal: BaseException | None = None  # raised once the folds still running have finished
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            ref = ready[0]
            k = inflight.pop(ref)
            try:
                out = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - every task failure is reported, then retried or raised
                cause = _cause(e)
                note = f"attempt {attempts[k]}: {type(cause).__name__}: {_first_line(cause)}"
                failures[k].append(note)
                retryable = not isinstance(cause, (DataError, RecipeError))
                if retryable and attempts[k] <= spec.retries and fatal is None:
                    console.print(f"[bold yellow]fold {k + 1}/{k_total}: {note}; retrying "
                                  f"({attempts[k]} of {1 + spec.retries} attempts used)[/]")
                    submit(k)
                    continue
                if fatal is not None:  # already stopping: this fold is reported with its note above
                    console.print(f"[bold red]fold {k + 1}/{k_total}: {note}[/]")
                    continue
                if isinstance(cause, LeptonError):
                    label = f"fold {k + 1}/{k_total}"
                    text = cause.message.removeprefix(f"{label}: ")
                    fatal = type(cause)(f"{label} (Ray, {attempts[k]} attempt(s)): {text}", file=cause.file,
                                        problems=cause.problems, hint=cause.hint)
                else:
                    fatal = TrainError(
                        f"fold {k + 1}/{k_total} failed on Ray after {attempts[k]} attempt(s): "
                        + "; ".join(failures[k]),
                        hint="Finished folds are kept: fix the cause and continue with --resume RUN_DIR "
                        "(train.ray.retries sets how often a failed fold is tried again).",
                    )
                if inflight:  # their work is kept: wait for them, then stop
                    console.print(f"[bold red]fold {k + 1}/{k_total} failed; waiting for {len(inflight)} "
                                  "running fold(s) to finish so their results are kept (Ctrl-C stops now)[/]")
                continue
            if out["files"] is not None:
                _unpack(out["files"], fold_dir(k))
            result = _execution(out["result"], executor="ray", attempts=attempts[k], host=out["host"],
                                artifacts=out["artifacts"], failures=failures[k])
            if failures[k]:
                console.print(f"[bold yellow]fold {k + 1}/{k_total}: succeeded on attempt {attempts[k]} "
                              f"after {len(failures[k])} failure(s)[/]")
            on_done(k, result)
        if fatal is not None:
            raise fatal
    finally:
        for ref in inflight:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort when stopping early
                pass
        probe.unlink(missing_ok=True)
        if started:
            ray.shutdown()


def check_fits(ray: Any, resources: Any, started: bool, what: str = "fold task") -> None:
    """Refuse a request no node can ever meet (Ray would queue it forever).

    On a private Ray started here that is an error naming ``train.resources``; on a joined
    cluster it is a warning, since an autoscaler may still add a node that fits.
    """
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= resources.cpus and n.get("GPU", 0) >= resources.gpus for n in nodes):
        return
    have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "no nodes"
    msg = (f"train.resources: each {what} asks for {resources.cpus:g} CPU and {resources.gpus:g} GPU, "
           f"more than any node of the cluster has ({have})")
    if started:
        raise RecipeError(msg + f". Got cpus {resources.cpus:g}, gpus {resources.gpus:g}.",
                          hint="Lower train.resources (e.g. --set train.resources.cpus=1), or join a "
                          "bigger cluster with --address.")
    _console().print(f"[bold yellow]WARNING[/]: {msg}; the tasks wait until a node that fits joins "
                     "(an autoscaler), or forever.")


def _cause(e: BaseException) -> BaseException:
    """The exception raised inside a Ray task (Ray wraps it in a RayTaskError)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "message", None) or e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _cluster_summary(ray: Any) -> str:
    try:
        total = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        gpus = total.get("GPU", 0)
        return (f"{len(nodes)} node(s), {total.get('CPU', 0):g} CPU"
                + (f", {gpus:g} GPU" if gpus else ""))
    except Exception:  # noqa: BLE001 - only a progress line
        return "the Ray cluster"

"""The ``pretrain:`` stage: learn from generated data first, then fine-tune on the real set.

Before the folds, the recipe's model (same architecture, input size, augmentation) trains on
``pretrain.images`` images rendered on the fly by the ``synthetic:`` generator of
``pretrain.dataset`` (street scenes, road scenes or CT phantoms, with domain randomisation
``pretrain.randomization``). Worker processes render the next images while the model trains on
the current ones; nothing is written to disk but the weights, and memory holds about two
pretraining epochs of images.

The result is cached by a content hash of everything that determines it (the pretrain section,
the generator settings, input, model, augmentation, optimizer and the lepton-vision version),
under ``pretrain.cache_dir`` (default ``$LEPTON_CACHE_DIR/pretrain`` or
``~/.cache/lepton-vision/pretrain``)::

    <cache>/<hash>/weights.weights.h5   the whole pretrained model
                  /pretrain.json        what was trained, how long, the synthetic validation score
                  /history.csv          loss per pretraining epoch

A folder appears only complete (written under a temporary name, then renamed), so every fold
of every run with the same pretraining reuses it; an interrupted pretraining starts again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lepton_vision.errors import CardError, LeptonError, Problem, RecipeError

#: Bumped when the pretraining procedure changes in a way the recipe does not show.
PRETRAIN_FORMAT = 1
WEIGHTS = "weights.weights.h5"
RECORD = "pretrain.json"
HISTORY = "history.csv"
#: Images per job sent to a rendering process.
JOB_IMAGES = 16


# ---------------------------------------------------------------------------------------------
# What is generated


@dataclass(frozen=True)
class StreamSpec:
    """Everything a rendering process needs (picklable, TensorFlow-free)."""

    synthetic: dict[str, Any]  # SyntheticSpec fields (n_images/n_patients cover train + validation)
    detection: bool
    size_hw: tuple[int, int]
    channels: int
    window: Any  # CT window(s) for HU slices
    n_train: int
    n_val: int

    @property
    def generator(self) -> str:
        return str(self.synthetic["generator"])


def _synthetic_spec(resolved: Any) -> tuple[Any, Any]:
    """The pretraining dataset card's SyntheticSpec, scaled to the requested size."""
    from lepton_vision.cards import SyntheticSpec

    spec = resolved.recipe.pretrain
    card = resolved.pretrain_dataset
    base = card.synthetic
    n_total = int(spec.images) + int(spec.validation_images)
    update: dict[str, Any] = {
        "randomization": float(spec.randomization),
        "seed": int(resolved.recipe.seed if spec.seed is None else spec.seed),
    }
    if base.generator == "ct_phantom":
        update["n_patients"] = max(2, math.ceil(n_total / base.slices_per_patient))
    else:
        update["n_images"] = max(4, n_total)
        update["sequence_length"] = int(spec.sequence_length or 1)
        if spec.frame_size is not None:
            update["frame_size"] = tuple(spec.frame_size)
    return card, SyntheticSpec.model_validate({**base.model_dump(), **update})


def stream_spec(resolved: Any) -> StreamSpec:
    """The :class:`StreamSpec` of a resolved recipe with a ``pretrain:`` section."""
    r = resolved.recipe
    _, synth = _synthetic_spec(resolved)
    return StreamSpec(
        synthetic=synth.model_dump(mode="json"),
        detection=resolved.task.kind == "object_detection",
        size_hw=(int(r.input.image_size[0]), int(r.input.image_size[1])),
        channels=int(r.input.channels),
        window=r.input.window_spec(),
        n_train=int(r.pretrain.images),
        n_val=int(r.pretrain.validation_images),
    )


def generator_classes(generator: str) -> tuple[str, ...]:
    """Class names a generator labels, in class-index order."""
    if generator == "ct_phantom":
        return ("normal", "abnormal")
    from lepton_vision.synthetic_scenes import CLASSES

    return CLASSES[generator]


def render_job(stream: StreamSpec, start: int, stop: int) -> dict[str, Any]:
    """Render images ``start .. stop-1`` as network inputs (runs in a worker process).

    Returns:
        Detection: ``images`` uint8 ``[n, H, W, 3]`` letterboxed, ``boxes`` (list of ``[k, 4]``
        xyxy network pixels), ``classes`` (list of ``[k]``). Classification: ``images`` float16
        ``[n, h, w, C]`` in [0, 1], ``labels`` int ``[n]``.
    """
    from lepton_vision.cards import SyntheticSpec
    from lepton_vision.preprocess import letterbox, to_model_input, to_uint8

    spec = SyntheticSpec.model_validate(stream.synthetic)
    h, w = stream.size_hw
    if stream.detection:
        from lepton_vision.synthetic_scenes import iter_scene_frames

        imgs, boxes, classes = [], [], []
        for rgb, b, c in iter_scene_frames(spec, start, stop):
            img, (sx, sy) = letterbox(rgb, (h, w))
            imgs.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
            boxes.append(np.asarray(b, np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32))
            classes.append(np.asarray(c, np.int64).reshape(-1))
        return {"images": np.stack(imgs), "boxes": boxes, "classes": classes}
    from lepton_vision.synthetic import iter_ct_slices

    imgs, labels = [], []
    for hu, label in iter_ct_slices(spec, start, stop):
        x = to_model_input(to_uint8(hu, stream.channels, stream.window), (h, w))
        imgs.append(x.astype(np.float16))
        labels.append(int(label))
    return {"images": np.stack(imgs), "labels": np.asarray(labels, np.int64)}


class ImageStream:
    """Renders index ranges in worker processes, in order, a bounded number of jobs ahead.

    With ``workers=0`` everything is rendered in this process (tests, debugging).
    """

    def __init__(self, stream: StreamSpec, workers: int, ahead: int) -> None:
        self.stream, self.workers, self.ahead = stream, int(workers), max(1, int(ahead))
        self._pool: Any = None
        if self.workers > 0:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn: the parent holds TensorFlow's threads; forking it is unsafe.
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"))

    def _job(self, start: int, stop: int) -> Any:
        if self._pool is None:
            return None  # rendered when it is needed, in this process
        return self._pool.submit(render_job, self.stream, start, stop)

    def ranges(self, bounds: list[tuple[int, int]]) -> Iterator[dict[str, Any]]:
        """Rendered jobs for the index ranges ``bounds`` ([start, stop) pairs), in order."""
        pending: deque[tuple[Any, tuple[int, int]]] = deque()
        i = 0
        while i < len(bounds) or pending:
            while i < len(bounds) and len(pending) < self.ahead:
                pending.append((self._job(*bounds[i]), bounds[i]))
                i += 1
            fut, (a, b) = pending.popleft()
            try:
                part = render_job(self.stream, a, b) if fut is None else fut.result()
            except Exception as e:  # noqa: BLE001 - a generator bug must name the images
                raise LeptonError(
                    f"pretrain: rendering generated images {a}..{b - 1} of "
                    f"'{self.stream.generator}' failed: {type(e).__name__}: {e}",
                    hint="Lower pretrain.randomization or report the generator settings in pretrain.json.",
                ) from e
            yield part

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def job_bounds(start: int, stop: int, job: int) -> list[tuple[int, int]]:
    """``[start, stop)`` cut into jobs of at most ``job`` images."""
    return [(a, min(a + job, stop)) for a in range(start, stop, job)]


def job_size(stream: StreamSpec) -> int:
    """Images per rendering job: whole patients for CT (a patient is built once per job)."""
    if stream.detection:
        return JOB_IMAGES
    spp = int(stream.synthetic["slices_per_patient"])
    return spp * max(1, round(JOB_IMAGES / spp))


def _concat(parts: list[dict[str, Any]], detection: bool) -> dict[str, Any]:
    if detection:
        return {"images": np.concatenate([p["images"] for p in parts]),
                "boxes": [b for p in parts for b in p["boxes"]],
                "classes": [c for p in parts for c in p["classes"]]}
    return {"images": np.concatenate([p["images"] for p in parts]),
            "labels": np.concatenate([p["labels"] for p in parts])}


# ---------------------------------------------------------------------------------------------
# Cache key


def cache_root(spec: Any) -> Path:
    """Folder holding one sub-folder per pretraining hash."""
    if spec.cache_dir:
        return Path(spec.cache_dir).expanduser()
    env = os.environ.get("LEPTON_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "pretrain"
    return Path.home() / ".cache" / "lepton-vision" / "pretrain"


def pretrain_key(resolved: Any) -> tuple[str, dict[str, Any]]:
    """(sha256 hex, the JSON payload it hashes): everything the pretrained weights depend on."""
    from lepton_vision import __version__

    r = resolved.recipe
    spec = r.pretrain.model_dump(mode="json")
    for k in ("workers", "cache_dir"):
        spec.pop(k)
    spec["seed"] = int(r.seed if r.pretrain.seed is None else r.pretrain.seed)
    model = r.model.model_dump(mode="json")
    model.pop("weights")
    train = r.train
    payload = {
        "format": PRETRAIN_FORMAT,
        "lepton_vision": __version__,
        "pretrain": spec,
        "generator": stream_spec(resolved).synthetic,
        "kind": resolved.task.kind,
        "input": r.input.model_dump(mode="json"),
        "model": model,
        "augment": [op.model_dump(mode="json") for op in r.augment],
        "optimizer": train.optimizer.model_dump(mode="json"),
        "batch_size": int(r.pretrain.batch_size or train.batch_size),
        "class_weight": train.class_weight,
        "mixed_precision": train.mixed_precision,
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest(), payload


def check_pretrain_card(resolved: Any) -> list[Problem]:
    """Problems with ``pretrain.dataset`` for this task (empty when it fits)."""
    card = resolved.pretrain_dataset
    if card is None:
        return []
    if card.synthetic is None:
        return [Problem("pretrain.dataset", f"dataset '{card.name}' is not generated (its card has no "
                        "synthetic: section); pretraining streams generated images. Use synthetic_street, "
                        "synthetic_road or synthetic_ct")]
    gen = card.synthetic.generator
    det = resolved.task.kind == "object_detection"
    if det != (gen != "ct_phantom"):
        want = "street_scenes or road_scenes (boxes)" if det else "ct_phantom (slice labels)"
        return [Problem("pretrain.dataset", f"generator '{gen}' of '{card.name}' does not fit task "
                        f"'{resolved.task.name}' ({resolved.task.kind}); it needs {want}")]
    return []


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class PretrainResult:
    """The pretrained start point of a run."""

    weights: Path
    record: dict[str, Any]
    reused: bool


def _pretrain_recipe(recipe: Any, n_epochs: int) -> Any:
    """The recipe as pretraining sees it: its own batch size, learning rate and warm-up."""
    from lepton_vision.recipe import Finetune, Schedule

    spec = recipe.pretrain
    t = recipe.train
    opt = t.optimizer.model_copy(update={"learning_rate": float(spec.learning_rate or t.optimizer.learning_rate)})
    train = t.model_copy(update={
        "batch_size": int(spec.batch_size or t.batch_size), "optimizer": opt,
        "schedule": Schedule(name="cosine", warmup_epochs=float(spec.warmup_epochs)),
        "finetune": Finetune(), "epochs": max(1, n_epochs),
    })
    seed = int(recipe.seed if spec.seed is None else spec.seed)
    return recipe.model_copy(update={"train": train, "seed": seed})


def _default_workers() -> int:
    return max(1, (os.cpu_count() or 1) - 1)


def ensure_pretrained(resolved: Any, progress: bool = True) -> PretrainResult:
    """Pretrain (or reuse the cached pretraining of) ``resolved.recipe``.

    Returns:
        The cached weights file, its record (pretrain.json) and whether it was reused.

    Raises:
        RecipeError / CardError: ``pretrain.dataset`` cannot be generated for this task.
        TrainError: The loss became NaN/inf.
    """
    from lepton_vision.runio import atomic_write_json

    spec = resolved.recipe.pretrain
    if spec is None:
        raise RecipeError("this recipe has no pretrain: section")
    problems = check_pretrain_card(resolved)
    if problems:
        raise CardError("pretrain.dataset does not fit this recipe", problems=problems)
    key, payload = pretrain_key(resolved)
    root = cache_root(spec)
    final = root / key
    if (final / RECORD).is_file() and (final / WEIGHTS).is_file():
        record = json.loads((final / RECORD).read_text())
        return PretrainResult(final / WEIGHTS, record, True)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RecipeError(f"pretrain.cache_dir: cannot create {str(root)!r} ({e}).",
                          hint="Set pretrain.cache_dir or $LEPTON_CACHE_DIR to a writable folder.") from None
    tmp = root / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        record = _pretrain(resolved, tmp, key, payload, progress)
        atomic_write_json(tmp / RECORD, record)
        if final.exists():  # another process finished the same pretraining meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    record = json.loads((final / RECORD).read_text())
    return PretrainResult(final / WEIGHTS, record, False)


def _pretrain(resolved: Any, out: Path, key: str, payload: dict[str, Any], progress: bool) -> dict[str, Any]:
    from lepton_vision._keras import configure_devices, import_keras
    from lepton_vision.errors import TrainError

    tf, keras = import_keras()
    recipe = resolved.recipe
    spec = recipe.pretrain
    stream = stream_spec(resolved)
    per_epoch = min(int(spec.images_per_epoch), int(spec.images))
    n_epochs = math.ceil(int(spec.images) / per_epoch)
    rounds = int(spec.epochs_per_image)
    pre = _pretrain_recipe(recipe, n_epochs * rounds)
    gen_classes = generator_classes(stream.generator)
    det = stream.detection
    workers = _default_workers() if spec.workers is None else int(spec.workers)
    device, strategy = configure_devices(pre.seed, recipe.train.strategy, recipe.train.threads,
                                         recipe.train.mixed_precision)
    t_start = time.time()
    with strategy.scope():
        model, fit_block = _model_and_fitter(resolved, pre, len(gen_classes), per_epoch, n_epochs * rounds)
    job = job_size(stream)
    images_stream = ImageStream(stream, workers if stream.n_train > job else 0,
                                ahead=max(2, 2 * math.ceil(per_epoch / job)))
    history: list[dict[str, Any]] = []
    bar, task = _progress(progress, f"pretraining on {spec.images} generated images ({stream.generator})",
                          int(spec.images) * rounds)
    render_s = 0.0
    try:
        epoch_bounds = [job_bounds(e * per_epoch, min((e + 1) * per_epoch, stream.n_train), job)
                        for e in range(n_epochs)]
        jobs = images_stream.ranges([b for eb in epoch_bounds for b in eb])
        done = 0
        for epoch in range(n_epochs):
            n_here = min(per_epoch, stream.n_train - done)
            t0 = time.time()
            data = _concat([next(jobs) for _ in epoch_bounds[epoch]], det)
            t_render = time.time() - t0
            render_s += t_render
            for r in range(rounds):
                t1 = time.time()
                logs = fit_block(data, epoch * rounds + r)
                if not all(np.isfinite(v) for v in logs.values()):
                    raise TrainError(
                        f"pretrain: the loss became NaN/inf in pretraining epoch {epoch + 1}. Got {logs}.",
                        hint="Lower pretrain.learning_rate or lengthen pretrain.warmup_epochs.",
                    )
                secs = time.time() - t1
                lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
                history.append({"epoch": epoch * rounds + r + 1, "images": int(done + n_here), **logs, "lr": lr,
                                "seconds": round(secs, 2), "waited_for_images_s": round(t_render if r == 0 else 0.0, 2)})
                line = (f"pretrain epoch {epoch * rounds + r + 1}/{n_epochs * rounds} "
                        f"({done + n_here}/{stream.n_train} images) loss {logs.get('loss', float('nan')):.3f} "
                        f"lr {lr:.2g} ({secs:.0f} s training, {n_here / max(secs, 1e-9):.0f} img/s; "
                        f"{t_render if r == 0 else 0.0:.0f} s waiting for rendered images)")
                if bar is not None:
                    bar.update(task, advance=n_here, description=line)
                elif progress:
                    print(line, flush=True)
            done += n_here
        train_s = time.time() - t_start
        val = _validate(model, resolved, images_stream, stream, len(gen_classes)) if stream.n_val else None
    finally:
        images_stream.close()
        if bar is not None:
            bar.stop()
    model.save_weights(str(out / WEIGHTS))
    import pandas as pd

    from lepton_vision.runio import atomic_write_csv

    atomic_write_csv(out / HISTORY, pd.DataFrame(history))
    task_classes = list(resolved.task.classes)
    return {
        "key": key,
        "payload": payload,
        "dataset": resolved.pretrain_dataset.name,
        "generator": stream.generator,
        "generator_classes": list(gen_classes),
        "classes_match_task": list(gen_classes) == task_classes,
        "images": int(spec.images),
        "epochs": n_epochs * rounds,
        "batch_size": int(pre.train.batch_size),
        "learning_rate": float(pre.train.optimizer.learning_rate),
        "workers": workers,
        "seconds": round(train_s, 1),
        "seconds_waiting_for_images": round(render_s, 1),
        "images_per_second": round(int(spec.images) * rounds / max(train_s, 1e-9), 2),
        "final_loss": history[-1]["loss"] if history else None,
        "synthetic_validation": val,
        "execution": device,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _progress(enabled: bool, label: str, total: int) -> tuple[Any, Any]:
    """A rich bar on a terminal; elsewhere (logs, CI) one printed line per epoch instead."""
    import sys

    if enabled:
        print(label, flush=True)
    if not enabled or not sys.stdout.isatty():
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
    bar.start()
    return bar, bar.add_task(label, total=total)


def _model_and_fitter(resolved: Any, pre: Any, n_classes: int, per_epoch: int, epochs: int) -> tuple[Any, Any]:
    """The model to pretrain and ``fit_block(data, epoch) -> logs`` (one pass over ``data``)."""
    from lepton_vision.train import make_optimizer

    verbose = 0  # the stage has its own progress bar
    if resolved.task.kind == "object_detection":
        from lepton_vision.det_train import _box_augment
        from lepton_vision.detectors import adapter_for
        from lepton_vision.pipeline import make_detection_dataset

        spec = pre.model.detector
        adapter = adapter_for(spec)
        model = adapter.build(spec, n_classes, tuple(pre.input.image_size), pre.seed)
        adapter.compile(model, spec, make_optimizer(pre, per_epoch, epochs))
        augment = _box_augment(pre)

        def fit_block(data: dict[str, Any], epoch: int) -> dict[str, float]:
            x = data["images"].astype(np.float32) / np.float32(255.0)
            ds = make_detection_dataset(x, data["boxes"], data["classes"], pre.train.batch_size, training=True,
                                        augment=augment, seed=pre.seed + epoch, max_boxes=spec.max_boxes,
                                        min_box_size=spec.min_box_size)
            h = model.fit(ds, epochs=1, verbose=verbose, shuffle=False)
            return {k: float(v[-1]) for k, v in h.history.items()}

        return model, fit_block

    from lepton_vision.kinds import KINDS
    from lepton_vision.pipeline import make_dataset
    from lepton_vision.train import _augment, _compile, _sample_weights

    model = KINDS[resolved.task.kind].build_model(pre, weights="none", seed=pre.seed)
    _compile(model, pre, per_epoch, epochs)
    augment = _augment(pre)

    def fit_block(data: dict[str, Any], epoch: int) -> dict[str, float]:
        y = data["labels"]
        w = _sample_weights(y, pre) if len(np.unique(y)) == 2 else None
        ds = make_dataset(data["images"].astype(np.float32), y, pre.train.batch_size, training=True,
                          augment=augment, seed=pre.seed + epoch, sample_weights=w)
        h = model.fit(ds, epochs=1, verbose=verbose, shuffle=False)
        return {k: float(v[-1]) for k, v in h.history.items()}

    return model, fit_block


def _validate(model: Any, resolved: Any, images_stream: ImageStream, stream: StreamSpec,
              n_classes: int) -> dict[str, Any]:
    """Score the pretrained model on generated images it never saw (AP50 or ROC AUC)."""
    parts = list(images_stream.ranges(job_bounds(stream.n_train, stream.n_train + stream.n_val,
                                                 job_size(stream))))
    data = _concat(parts, stream.detection)
    if stream.detection:
        from lepton_vision.det_train import make_predict_fn, predict_detections, val_ap50
        from lepton_vision.detectors import adapter_for

        policy = resolved.task.detection
        predict = make_predict_fn(model, adapter_for(resolved.recipe.model.detector), policy.max_detections,
                                  policy.nms_iou, policy.min_score)
        x = data["images"].astype(np.float32) / np.float32(255.0)
        dets = predict_detections(predict, x)
        empty = [np.zeros((0, 4), np.float32)] * len(x)
        ap = val_ap50(dets, data["boxes"], data["classes"], empty, n_classes)
        return {"metric": "ap50", "value": round(float(ap), 4), "n_images": int(len(x)),
                "n_boxes": int(sum(len(b) for b in data["boxes"]))}
    from sklearn.metrics import roc_auc_score

    from lepton_vision.train import predict_scores

    y = data["labels"]
    scores = predict_scores(model, data["images"].astype(np.float32), 64)
    auc = float(roc_auc_score(y, scores)) if len(np.unique(y)) == 2 else float("nan")
    return {"metric": "roc_auc", "value": round(auc, 4), "n_images": int(len(y)),
            "n_positive": int(y.sum())}


# ---------------------------------------------------------------------------------------------
# The start point of a run


def prepare_start(resolved: Any, run_root: Path, progress: bool = True) -> dict[str, Any] | None:
    """Decide every fold's start weights, once per run, and record them in ``start_weights.json``.

    Runs (or reuses) the pretraining stage, or resolves ``model.weights``; builds one model and
    loads the weights into it to check they fit and to record what was loaded (the whole model
    or the backbone). Returns the record (``path`` is what fold builders load), or None when the
    folds start from random (or ImageNet) weights.
    """
    from lepton_vision.finetune import file_sha256, resolve_weights_source, write_start_record
    from lepton_vision.runio import atomic_write_json

    r = resolved.recipe
    record: dict[str, Any]
    if r.pretrain is not None:
        t0 = time.time()
        res = ensure_pretrained(resolved, progress=progress)
        record = {"source": "pretrain", "path": str(res.weights), "reused_cache": res.reused,
                  "cache_dir": str(res.weights.parent), "key": res.record["key"],
                  "pretrain": {k: v for k, v in res.record.items() if k != "payload"},
                  "stage_seconds": round(time.time() - t0, 1)}
        atomic_write_json(run_root / RECORD, res.record)
    elif r.model.weights not in ("none", "imagenet"):
        src = resolve_weights_source(r.model.weights, resolved.recipe_path.parent)
        record = {"source": "export" if src.suffix == ".keras" else "weights_file", "path": str(src.resolve())}
    else:
        return None
    src_path = Path(record["path"])
    record["sha256"] = file_sha256(src_path)
    record["loaded"] = _probe_load(resolved, src_path)
    ft = r.train.finetune
    record["finetune"] = ft.model_dump(mode="json")
    write_start_record(run_root / "start_weights.json", record)
    return record


def _probe_load(resolved: Any, path: Path) -> str:
    """Build the fold model once and load ``path`` into it: what fits (or a clear error)."""
    from lepton_vision.finetune import load_start_weights

    model = build_fold_model(resolved, resolved.recipe.seed, None)
    return load_start_weights(model, path)


def build_fold_model(resolved: Any, seed: int, start: str | None) -> Any:
    """A fresh model of the recipe's task with ``start`` weights loaded (None: as built)."""
    r = resolved.recipe
    if resolved.task.kind == "object_detection":
        from lepton_vision.detectors import adapter_for

        model = adapter_for(r.model.detector).build(r.model.detector, len(resolved.task.classes),
                                                    tuple(r.input.image_size), seed)
    else:
        from lepton_vision.kinds import KINDS

        weights = r.model.weights if r.model.weights in ("none", "imagenet") else "none"
        model = KINDS[resolved.task.kind].build_model(r, weights=weights, seed=seed)
    if start is not None:
        from lepton_vision.finetune import load_start_weights

        load_start_weights(model, start)
    return model


__all__ = ["ImageStream", "PretrainResult", "StreamSpec", "build_fold_model", "cache_root", "ensure_pretrained",
           "prepare_start", "pretrain_key", "render_job", "stream_spec"]

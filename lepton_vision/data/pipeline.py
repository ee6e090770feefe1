"""tf.data builders: the only place numpy arrays meet tf.data.

Images are decoded once (:func:`load_images`) into one float32 array that every fold reuses.
:func:`make_dataset` streams *indices* through tf.data and gathers (and augments) each batch in
``tf.numpy_function``, so the image array is never copied into the graph.

On a small CPU host (no GPU, at most 4 cores) the map runs inline without prefetching; with a
GPU or more cores it runs in parallel and prefetches (see :func:`_parallel_input`).

Reproducibility: the order of samples comes from ``shuffle(seed=...)`` and every sample gets its
own augmentation seed from ``Dataset.random(seed=..., rerandomize_each_iteration=True)``; both
are deterministic for a given seed and change from one epoch (iteration) to the next. The
augmentation of a batch is seeded once, from its first sample's seed (:func:`_reseed`). Because
an albumentations ``Compose`` keeps its random state on the object, reseeding and applying it is
done under a lock, so parallel map calls cannot interleave and the result does not depend on
thread timing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lepton_vision.backend import import_keras
from lepton_vision.config.errors import DataError


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray | None,
    batch_size: int,
    *,
    training: bool,
    augment: Any = None,
    seed: int = 0,
    sample_weights: np.ndarray | None = None,
) -> Any:
    """Build a batched, prefetched ``tf.data.Dataset`` over in-memory images.

    Args:
        images: float32 ``[N, h, w, C]`` in ``[0, 1]``.
        labels: ``[N]`` 0/1 labels, or None for prediction (the dataset then yields images only).
        batch_size: Images per batch (the last batch may be smaller).
        training: Shuffle every epoch and apply ``augment``.
        augment: An albumentations ``Compose`` (from ``augment.build_augment``) or None. Used only
            when ``training``.
        seed: Seed of the shuffle order and of the per-sample augmentation seeds.
        sample_weights: Optional ``[N]`` per-sample loss weights (e.g. balanced class weights);
            only with labels.

    Returns:
        A dataset of ``x`` / ``(x, y)`` / ``(x, y, w)`` batches with static shapes
        (``y`` float32 ``[B, 1]``).

    Raises:
        DataError: Mismatched lengths or a wrong image array.
    """
    tf, _ = import_keras()
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.float32:
        raise DataError(
            f"make_dataset: images must be float32 [N, h, w, C]. Got {images.dtype} {images.shape}. "
            "Load them with pipeline.load_images."
        )
    n = len(images)
    if n == 0:
        raise DataError("make_dataset: no images. Got 0. Check the sample table and folds.")
    y_all = None
    if labels is not None:
        y_all = np.asarray(labels, dtype=np.float32).reshape(-1, 1)
        if len(y_all) != n:
            raise DataError(f"make_dataset: {n} images but {len(y_all)} labels. Got mismatched lengths.")
    w_all = None
    if sample_weights is not None:
        if labels is None:
            raise DataError("make_dataset: sample_weights need labels. Got labels=None.")
        w_all = np.asarray(sample_weights, dtype=np.float32).reshape(-1)
        if len(w_all) != n:
            raise DataError(f"make_dataset: {n} images but {len(w_all)} sample weights.")

    use_aug = bool(training and augment is not None)
    lock = threading.Lock()
    img_shape = images.shape[1:]

    def gather(idx: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, ...]:
        batch = images[idx]  # fancy indexing copies: augmenting in place leaves `images` intact
        if use_aug:
            from lepton_vision.data.augment import apply_augment

            with lock:  # Compose's RNG lives on the object: reseed + apply must not interleave
                _reseed(augment, seeds)
                for j in range(len(idx)):
                    batch[j] = apply_augment(augment, batch[j])
        out: list[np.ndarray] = [np.ascontiguousarray(batch, dtype=np.float32)]
        if y_all is not None:
            out.append(y_all[idx])
        if w_all is not None:
            out.append(w_all[idx])
        return tuple(out)

    out_types = [tf.float32] + ([tf.float32] if y_all is not None else []) + (
        [tf.float32] if w_all is not None else []
    )

    def tf_gather(idx: Any, seeds: Any) -> Any:
        parts = tf.numpy_function(gather, [idx, seeds], out_types, stateful=False)
        parts[0].set_shape((None, *img_shape))
        if y_all is not None:
            parts[1].set_shape((None, 1))
        if w_all is not None:
            parts[2].set_shape((None,))
        return parts[0] if len(parts) == 1 else tuple(parts)

    ds = _index_batches(n, batch_size, training, use_aug, seed)
    if _parallel_input():
        ds = ds.map(tf_gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)
    # Few cores, no GPU: gather + augment inline, in step with the training step. Measured on 2
    # cores (small_cnn 64 px, 3 augmentations): parallel map + prefetch 400-520 img/s, inline
    # 830-880 img/s (no augmentation: 865). Running Python augmentation beside oneDNN's
    # intra-op threads oversubscribes the cores and stalls both.
    return _inline(ds.map(tf_gather))


def _reseed(augment: Any, seeds: np.ndarray) -> None:
    """Seed ``augment`` once for a batch, from the batch's first per-sample seed.

    Once per batch, not per image: ``Compose.set_random_seed`` rebuilds the generators of every
    transform, and per image it halved the input pipeline's rate (3.6k vs 6.5k img/s, small_cnn
    64 px, 3 augmentations). The batch's images are then drawn one after another from that one
    stream, so a batch is still a pure function of (seed, epoch, batch) whatever the thread timing.
    """
    if len(seeds):
        augment.set_random_seed(int(seeds[0]) % 2**32)


def _index_batches(n: int, batch_size: int, training: bool, use_aug: bool, seed: int,
                   drop_remainder: bool = False) -> Any:
    """Batches of (sample indices, per-sample augmentation seeds): shuffled every epoch when
    training; the seeds change every epoch only when augmenting (else constant 0)."""
    tf, _ = import_keras()
    ds = tf.data.Dataset.range(n)
    if training:
        ds = ds.shuffle(n, seed=int(seed), reshuffle_each_iteration=True)
    if use_aug:
        seeds = tf.data.Dataset.random(seed=int(seed) + 1, rerandomize_each_iteration=True)
    else:
        seeds = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).repeat()
    return tf.data.Dataset.zip(ds, seeds).batch(int(batch_size), drop_remainder=drop_remainder)


def _inline(ds: Any) -> Any:
    """The inline (small CPU host) pipeline, with tf.data's autotuner off.

    Nothing inline has a parallelism or buffer to tune, yet the autotuner's background thread
    still wakes up and competes with the two compute threads: on 2 cores whole epochs ran at
    half speed (small_cnn 64 px: ~405 img/s against ~800), at random, in ``fit`` and in a plain
    loop over the same dataset alike; with ``autotune.enabled = False`` every epoch ran at ~800.
    """
    tf, _ = import_keras()
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def sequential_input(ds: Any) -> Any:
    """A dataset whose elements must be made in order (one Python iterator behind them): prefetched
    where there is room (:func:`_parallel_input`), else inline with the autotuner off (:func:`_inline`)."""
    tf, _ = import_keras()
    return ds.prefetch(tf.data.AUTOTUNE) if _parallel_input() else _inline(ds)


def _parallel_input() -> bool:
    """Overlap input with training only where there is room: a GPU, or more than 4 CPU cores."""
    import os

    tf, _ = import_keras()
    return bool(tf.config.list_physical_devices("GPU")) or (os.cpu_count() or 1) > 4


def load_images(
    paths: Sequence[str | Path],
    size_hw: tuple[int, int],
    channels: int,
    window: tuple[float, float] | None,
    max_pixels: int,
    progress: bool = True,
    reencode_spec: dict | None = None,
) -> np.ndarray:
    """Decode and resize every image once, into one float32 array reused by all folds.

    Args:
        paths: Image files (PNG/JPEG/DICOM ...), in sample-table order.
        size_hw: Network input (height, width).
        channels: 1 or 3.
        window: CT window (level, width) in HU for DICOM, or None.
        max_pixels: Refuse images larger than this (see ``preprocess.read_image``).
        progress: Show a rich progress bar.
        reencode_spec: Recipe ``input.reencode`` (format normalisation), or None.

    Returns:
        float32 ``[N, h, w, C]`` in ``[0, 1]``.

    Raises:
        DataError: A file cannot be read (the message names it).
    """
    from lepton_vision.data.preprocess import load_for_model

    h, w = int(size_hw[0]), int(size_hw[1])
    out = np.empty((len(paths), h, w, int(channels)), dtype=np.float32)
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("decoding images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            transient=True,
        )
    else:
        bar = None
    if bar is not None:
        bar.start()
        task = bar.add_task("decode", total=len(paths))
    try:
        for i, p in enumerate(paths):
            out[i] = load_for_model(p, (h, w), int(channels), window, max_pixels, reencode_spec)
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    return out


def pad_targets(
    boxes: np.ndarray, classes: np.ndarray, max_boxes: int, min_box_size: float
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Fixed-size, -1-padded box targets for one image.

    Returns:
        (boxes ``[max_boxes, 4]`` float32, classes ``[max_boxes]`` float32, n_too_small, n_cut):
        boxes narrower/shorter than ``min_box_size`` are dropped; beyond ``max_boxes`` the
        largest are kept.
    """
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    c = np.asarray(classes, dtype=np.float32).reshape(-1)
    keep = ((b[:, 2] - b[:, 0]) >= min_box_size) & ((b[:, 3] - b[:, 1]) >= min_box_size)
    n_small = int((~keep).sum())
    b, c = b[keep], c[keep]
    n_cut = max(0, len(b) - max_boxes)
    if n_cut:
        order = np.argsort(-(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), kind="stable")[:max_boxes]
        b, c = b[order], c[order]
    ob = np.full((max_boxes, 4), -1.0, dtype=np.float32)
    oc = np.full((max_boxes,), -1.0, dtype=np.float32)
    ob[: len(b)] = b
    oc[: len(c)] = c
    return ob, oc, n_small, n_cut


def make_detection_dataset(
    images: np.ndarray,
    boxes: Sequence[np.ndarray],
    classes: Sequence[np.ndarray],
    batch_size: int,
    *,
    training: bool,
    augment: Any = None,
    seed: int = 0,
    max_boxes: int = 64,
    min_box_size: float = 2.0,
) -> Any:
    """Batches of ``(pixels 0..255, {"boxes", "classes"})`` for a detector.

    Args:
        images: float32 ``[N, H, W, 3]`` in ``[0, 1]``, letterboxed to the network input.
        boxes: Per image ``[n, 4]`` xyxy boxes in network (letterboxed) pixels.
        classes: Per image ``[n]`` class ids.
        batch_size: Images per batch.
        training: Shuffle every epoch and apply ``augment``.
        augment: ``augment.build_box_augment(...)`` or None.
        seed: Shuffle and per-sample augmentation seed.
        max_boxes: Padding length of the targets.
        min_box_size: Smallest box side kept in the targets (pixels).

    Returns:
        A ``tf.data.Dataset``; ``x`` is float32 ``[B, H, W, 3]`` in 0..255 (the detector rescales
        inside), ``boxes`` float32 ``[B, max_boxes, 4]``, ``classes`` float32 ``[B, max_boxes]``,
        padded with -1.
    """
    tf, _ = import_keras()
    images = np.asarray(images)
    n = len(images)
    if images.ndim != 4 or images.dtype != np.float32 or images.shape[-1] != 3 or n == 0:
        raise DataError(
            f"make_detection_dataset: images must be float32 [N, H, W, 3] with N > 0. "
            f"Got {images.dtype} {images.shape}."
        )
    if len(boxes) != n or len(classes) != n:
        raise DataError(
            f"make_detection_dataset: {n} images but {len(boxes)} box lists and {len(classes)} class lists."
        )
    use_aug = bool(training and augment is not None)
    lock = threading.Lock()
    img_shape = images.shape[1:]
    from lepton_vision.data.augment import augment_with_boxes, draw_partners, partners_needed

    n_partners = partners_needed(augment) if use_aug else 0

    def gather(idx: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, ...]:
        xs = np.empty((len(idx), *img_shape), dtype=np.float32)
        bs = np.empty((len(idx), max_boxes, 4), dtype=np.float32)
        cs = np.empty((len(idx), max_boxes), dtype=np.float32)
        with lock if use_aug else contextlib.nullcontext():
            # Compose's RNG lives on the object: reseed + apply must not interleave
            if use_aug:
                _reseed(augment, seeds)
            for j, i in enumerate(idx):
                img, b, c = images[i], boxes[i], classes[i]
                if use_aug:
                    # Mosaic partners: other training images, drawn from the sample's own seed.
                    pick = draw_partners(np.random.default_rng(int(seeds[j]) % 2**63), n, int(i), n_partners)
                    img, b, c = augment_with_boxes(augment, img, b, c,
                                                   [(images[q], boxes[q], classes[q]) for q in pick])
                xs[j] = img * np.float32(255.0)
                bs[j], cs[j], _, _ = pad_targets(b, c, max_boxes, min_box_size)
        return xs, bs, cs

    def tf_gather(idx: Any, seeds: Any) -> Any:
        x, b, c = tf.numpy_function(gather, [idx, seeds], [tf.float32] * 3, stateful=False)
        x.set_shape((None, *img_shape))
        b.set_shape((None, max_boxes, 4))
        c.set_shape((None, max_boxes))
        return x, {"boxes": b, "classes": c}

    # drop_remainder in training: a last batch of one image gives a noisy BatchNorm step.
    ds = _index_batches(n, batch_size, training, use_aug, seed, drop_remainder=bool(training and n > batch_size))
    if _parallel_input():
        return ds.map(tf_gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
    return _inline(ds.map(tf_gather))

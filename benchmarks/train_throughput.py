"""Training throughput: the framework's train step vs a plain hand-written Keras loop.

Both sides train the same model (the recipe's backbone, freshly built from the same seed) on the
same images with the same albumentations pipeline, batch size and optimizer, in this process,
one after the other. The framework side is what ``lepton-vision train`` runs for a fold
(``pipeline.make_dataset`` → ``model.fit`` with the compiled loss/metrics,
``steps_per_execution``, balanced sample weights and the per-batch NaN guard); the baseline is a
Python loop that augments each batch in numpy and calls a ``tf.function`` GradientTape step. Each side gets one untimed warm-up epoch (graph tracing),
then ``--epochs`` timed epochs; the script prints images/s for both and the ratio
framework / baseline (target ≥ 0.95), plus peak RSS.

Usage:
    python benchmarks/train_throughput.py [--recipe recipes/ct_screening/baseline.yaml]
        [--n 512] [--epochs 3] [--repeats 4]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _images(n: int, size: tuple[int, int], channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random smooth images in [0, 1] with a learnable blob on the positives (content is
    irrelevant to speed, but a learnable task keeps both loops doing real work)."""
    rng = np.random.default_rng(seed)
    h, w = size
    x = rng.normal(0.4, 0.1, size=(n, h, w, channels)).astype(np.float32)
    y = (rng.random(n) < 0.4).astype(np.int64)
    yy, xx = np.mgrid[:h, :w]
    for i in np.flatnonzero(y):
        cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
        x[i, (yy - cy) ** 2 + (xx - cx) ** 2 < (h // 10) ** 2] += 0.4
    return np.clip(x, 0, 1), y


def framework_epochs(recipe, x, y, epochs: int) -> float:
    """Seconds for ``epochs`` timed epochs of the framework's fit (after a warm-up epoch)."""
    from lepton_vision.data.augment import build_augment
    from lepton_vision.kinds.classification.kind import build_model
    from lepton_vision.data.pipeline import make_dataset
    from lepton_vision.engine.callbacks import NanGuard
    from lepton_vision.kinds.classification.train import compile_classifier, sample_weights

    model = build_model(recipe, seed=recipe.seed)
    compile_classifier(model, recipe, len(x), epochs + 1)
    aug = build_augment([op.model_dump() for op in recipe.augment], recipe.seed)
    ds = make_dataset(x, y, recipe.train.batch_size, training=True, augment=aug, seed=recipe.seed,
                      sample_weights=sample_weights(y, recipe))
    # The NaN guard is the one callback fit_fold runs on every batch; the others (validation,
    # checkpoint, logs) run once per epoch and are evaluation, not the train step.
    model.fit(ds, epochs=1, verbose=0, callbacks=[NanGuard()])
    t0 = time.perf_counter()
    model.fit(ds, epochs=epochs, verbose=0, callbacks=[NanGuard()])
    return time.perf_counter() - t0


def baseline_epochs(recipe, x, y, epochs: int) -> float:
    """Seconds for ``epochs`` timed epochs of a hand-written loop (after a warm-up epoch)."""
    from lepton_vision.backend import import_keras
    from lepton_vision.data.augment import apply_augment, build_augment
    from lepton_vision.kinds.classification.kind import build_model
    from lepton_vision.engine.optim import make_optimizer
    from lepton_vision.kinds.classification.train import sample_weights

    tf, keras = import_keras()
    model = build_model(recipe, seed=recipe.seed)
    opt = make_optimizer(recipe, len(x), epochs + 1)
    aug = build_augment([op.model_dump() for op in recipe.augment], recipe.seed)
    w_all = sample_weights(y, recipe)
    w_all = np.ones(len(y), np.float32) if w_all is None else w_all
    bce = keras.losses.BinaryCrossentropy(reduction="none")

    @tf.function
    def step(xb, yb, wb):
        with tf.GradientTape() as tape:
            p = model(xb, training=True)
            loss = tf.reduce_sum(bce(yb, p) * wb) / tf.cast(tf.shape(xb)[0], tf.float32)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    rng = np.random.default_rng(recipe.seed)
    bs = recipe.train.batch_size
    yf = y.astype(np.float32).reshape(-1, 1)

    def one_epoch() -> None:
        order = rng.permutation(len(x))
        for s in range(0, len(x), bs):
            idx = order[s : s + bs]
            xb = x[idx].copy()
            for j in range(len(idx)):
                xb[j] = apply_augment(aug, xb[j]) if aug is not None else xb[j]
            step(tf.constant(xb), tf.constant(yf[idx]), tf.constant(w_all[idx]))

    one_epoch()
    t0 = time.perf_counter()
    for _ in range(epochs):
        one_epoch()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(REPO / "recipes/ct_screening/baseline.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--n", type=int, default=512, help="training images")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per measurement")
    ap.add_argument("--repeats", type=int, default=4, help="measurements per side (order alternates)")
    args = ap.parse_args(argv)

    from lepton_vision.backend import configure_devices
    from lepton_vision.config.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    info, _ = configure_devices(recipe.seed)
    x, y = _images(args.n, tuple(recipe.input.image_size), recipe.input.channels, recipe.seed)
    print(f"recipe {recipe.name}: {recipe.model.backbone} {recipe.input.image_size[0]}x"
          f"{recipe.input.image_size[1]}x{recipe.input.channels}, batch {recipe.train.batch_size}, "
          f"{len(recipe.augment)} augmentations, {args.n} images, {args.epochs} timed epochs; "
          f"devices {info}")
    fw, base = [], []
    for r in range(args.repeats):
        # Alternate which side goes first: in one process the second measurement was
        # consistently faster (warm allocator / caches), which would bias a fixed order.
        sides = [("framework", framework_epochs, fw), ("loop", baseline_epochs, base)]
        for _, fn, out in (sides if r % 2 == 0 else sides[::-1]):
            out.append(args.n * args.epochs / fn(recipe, x, y, args.epochs))
        print(f"  repeat {r + 1}: framework {fw[-1]:7.1f} img/s   hand-written loop {base[-1]:7.1f} img/s")
    f_med, b_med = float(np.median(fw)), float(np.median(base))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"framework train step : {f_med:8.1f} images/s (median of {args.repeats})")
    print(f"hand-written loop    : {b_med:8.1f} images/s (median of {args.repeats})")
    print(f"ratio framework/loop : {f_med / b_med:8.2f}   (target >= 0.95)")
    print(f"peak RSS             : {rss_mb:8.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

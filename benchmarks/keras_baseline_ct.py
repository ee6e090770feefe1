"""A plain hand-written Keras baseline for CT screening, on the same folds as a lepton-vision run.

No lepton_vision import: this is what an engineer would write by hand. Same backbone shape
(the small CNN: four Conv3x3-BN-ReLU blocks 16/32/64/128, max-pool after the first three,
global average pooling, dropout, sigmoid), same input size and channels, the same folds
(read from the run's folds.csv), flip-only augmentation, Adam, a fixed number of epochs and no
early stopping. It prints per-fold AUC, pooled out-of-fold AUC and F1 (threshold 0.5) with 95%
bootstrap CIs over groups, so the numbers sit next to the run's metrics.json.

Usage:
    LEPTON_DATA_ROOT=../shared/data lepton-vision train recipes/ct_screening/covid_ct.yaml --out runs/covid
    python benchmarks/keras_baseline_ct.py runs/covid [--epochs 25]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from sklearn.metrics import f1_score, roc_auc_score  # noqa: E402


def load(paths: list[str], size: tuple[int, int], channels: int) -> np.ndarray:
    """Decode with OpenCV, convert to gray/RGB, resize bilinear, scale to [0, 1]."""
    out = []
    for p in paths:
        flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
        img = cv2.imread(p, flag)
        if img is None:
            raise SystemExit(f"{p}: cannot decode (this plain script reads PNG/JPEG only)")
        if channels == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        img = cv2.resize(img.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        out.append(img.reshape(size[0], size[1], channels) / 255.0)
    return np.stack(out).astype(np.float32)


def small_cnn(size: tuple[int, int], channels: int, dropout: float):
    import keras

    inp = keras.Input((*size, channels))
    x = inp
    for i, f in enumerate((16, 32, 64, 128)):
        x = keras.layers.Conv2D(f, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        if i < 3:
            x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(dropout)(x)
    return keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(x))


def bootstrap(y: np.ndarray, s: np.ndarray, groups: np.ndarray, fn, n: int = 1000, seed: int = 0):
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    idx_of = {g: np.flatnonzero(groups == g) for g in uniq}
    vals = []
    for _ in range(n):
        pick = np.concatenate([idx_of[g] for g in rng.choice(uniq, len(uniq))])
        if len(np.unique(y[pick])) == 2:
            vals.append(fn(y[pick], s[pick]))
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a finished lepton-vision run (folds.csv, samples.csv)")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)

    import keras
    import tensorflow as tf

    recipe = yaml.safe_load((args.run_dir / "recipe.resolved.yaml").read_text())
    size = tuple(recipe["input"]["image_size"])
    channels = int(recipe["input"]["channels"])
    dropout = float(recipe["model"]["dropout"])
    samples = pd.read_csv(args.run_dir / "samples.csv", dtype={"group": str}, keep_default_na=False)
    folds = pd.read_csv(args.run_dir / "folds.csv", dtype={"group": str}, keep_default_na=False)
    table = samples.merge(folds[["sample_id", "fold"]], on="sample_id")
    x = load(list(table["path"]), size, channels)
    y = table["label"].to_numpy()
    scores = np.zeros(len(y))
    t0 = time.time()
    for k in sorted(table["fold"].unique()):
        keras.utils.set_random_seed(args.seed + int(k))
        tr, va = np.flatnonzero(table["fold"] != k), np.flatnonzero(table["fold"] == k)
        model = small_cnn(size, channels, dropout)
        model.compile(optimizer=keras.optimizers.Adam(args.lr), loss="binary_crossentropy")
        ds = (tf.data.Dataset.from_tensor_slices((x[tr], y[tr].astype("float32")))
              .shuffle(len(tr), seed=args.seed).batch(args.batch_size)
              .map(lambda a, b: (tf.image.random_flip_left_right(a), b)))
        model.fit(ds, epochs=args.epochs, verbose=0)
        scores[va] = model.predict(x[va], verbose=0)[:, 0]
        print(f"fold {k}: AUC {roc_auc_score(y[va], scores[va]):.3f}", flush=True)
    groups = table["group"].replace("", np.nan).fillna(table["sample_id"]).to_numpy()
    auc = roc_auc_score(y, scores)
    f1 = f1_score(y, scores >= 0.5)
    auc_ci = bootstrap(y, scores, groups, roc_auc_score)
    f1_ci = bootstrap(y, scores, groups, lambda a, b: f1_score(a, b >= 0.5))
    print(f"plain Keras baseline ({args.epochs} epochs, flip only, same {table['fold'].nunique()} folds, "
          f"{time.time() - t0:.0f} s)")
    print(f"  pooled OOF ROC AUC {auc:.3f} [{auc_ci[0]:.3f}, {auc_ci[1]:.3f}]")
    print(f"  pooled OOF F1@0.5  {f1:.3f} [{f1_ci[0]:.3f}, {f1_ci[1]:.3f}]")
    metrics = json.loads((args.run_dir / "metrics.json").read_text())
    fw = metrics["pooled"]["roc_auc"]
    print(f"  lepton-vision run  ROC AUC {fw['value']:.3f} [{fw['lo']:.3f}, {fw['hi']:.3f}]  "
          f"(difference {fw['value'] - auc:+.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

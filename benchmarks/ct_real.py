"""CT screening on real slices (covid_ct): four approaches on the same patient-grouped folds.

Side by side, out of fold, on the 5 grouped folds the covid_ct recipes draw (seed 1234):

    floor        pixels (64x64 grey) -> PCA (50) -> logistic regression (scikit-learn)
    plain Keras  benchmarks/keras_baseline_ct.py's hand-written small CNN, 96 px, flip only, 25 epochs
    old recipe   recipes/ct_screening/covid_ct.yaml (lepton-vision train, stopped after metrics)
    new recipe   recipes/ct_screening/covid_ct_strong.yaml (lepton-vision train, the whole run:
                 average-of-folds export included)

For each: ROC AUC and specificity at sensitivity >= 0.95 (the ROC point, i.e. the best
threshold for that sensitivity chosen on the same out-of-fold scores: optimistic as an
operating point, comparable between rows), each with a 95 % group-bootstrap CI (patients
resampled), overall and on PNG slices alone (every covid slice is a PNG, 164 of the 310
non-covid ones are JPEG: the PNG-only numbers are what a model learned beyond the file format),
and wall times. Runs whose directory already holds metrics.json are reused (an interrupted one is
resumed); the table is written to OUT/ct_real.json.

    LEPTON_DATA_ROOT=../shared/data python benchmarks/ct_real.py --out runs/ct_real

Skipped (exit 0, with the reason) when covid_ct is absent. CPU work: about 5 min (old recipe),
about 30 min (new recipe), 3 min (plain Keras), seconds (floor) on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

OLD = REPO / "recipes" / "ct_screening" / "covid_ct.yaml"
NEW = REPO / "recipes" / "ct_screening" / "covid_ct_strong.yaml"
SENSITIVITY = 0.95


def run_recipe(recipe: Path, out: Path, stop_after: str, overrides: list[str]) -> tuple[Path, float | None]:
    """Train ``recipe`` into ``out``: reused when finished with the same recipe, resumed when
    interrupted (``pretraining_gain.run_arm``); wall seconds."""
    from pretraining_gain import run_arm

    return run_arm(recipe, overrides, out, stop_after=stop_after)


def is_png(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x89PNG"


def spec_at_sensitivity(y: np.ndarray, s: np.ndarray, w: np.ndarray | None = None) -> float:
    """Specificity at the ROC point with sensitivity >= SENSITIVITY (sklearn roc_curve, weighted)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, s, sample_weight=w)
    ok = tpr >= SENSITIVITY - 1e-12
    return float(1.0 - fpr[ok].min()) if ok.any() else float("nan")


def with_ci(y: np.ndarray, s: np.ndarray, groups: np.ndarray, n_bootstrap: int, seed: int) -> dict:
    """AUC and specificity at sensitivity 0.95, each with a 95 % group-bootstrap CI."""
    from sklearn.metrics import roc_auc_score

    from lepton_vision.evaluate.bootstrap import percentile_interval, resample_weights, resampling_units

    out = {"n": int(len(y)), "n_pos": int(y.sum()),
           "roc_auc": {"value": float(roc_auc_score(y, s))}, "spec_at_sens95": {"value": spec_at_sensitivity(y, s)}}
    gid, n_units, _ = resampling_units(groups, len(y))
    aucs, specs = [], []
    for block in resample_weights(np.random.default_rng(seed), gid, n_units, n_bootstrap):
        for w in block:
            m = w > 0
            if len(np.unique(y[m])) < 2:
                continue
            aucs.append(roc_auc_score(y[m], s[m], sample_weight=w[m]))
            specs.append(spec_at_sensitivity(y[m], s[m], w[m]))
    out["roc_auc"]["ci"] = percentile_interval(np.array(aucs), 0.95)
    out["spec_at_sens95"]["ci"] = percentile_interval(np.array(specs), 0.95)
    return out


def floor_scores(table: pd.DataFrame, seed: int) -> tuple[np.ndarray, float]:
    """Out-of-fold scores of pixels -> PCA -> logistic regression, and the wall seconds."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from lepton_vision.data.preprocess import load_for_model

    t0 = time.time()
    x = np.stack([load_for_model(p, (64, 64), 1).reshape(-1) for p in table["path"]])
    y = table["label"].to_numpy()
    scores = np.zeros(len(y))
    for k in sorted(table["fold"].unique()):
        tr, va = table["fold"].to_numpy() != k, table["fold"].to_numpy() == k
        model = make_pipeline(StandardScaler(), PCA(50, random_state=seed),
                              LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced"))
        model.fit(x[tr], y[tr])
        scores[va] = model.predict_proba(x[va])[:, 1]
    return scores, time.time() - t0


def plain_keras_scores(table: pd.DataFrame, seed: int, epochs: int) -> tuple[np.ndarray, float]:
    """Out-of-fold scores of benchmarks/keras_baseline_ct.py's hand-written CNN (96 px, flips)."""
    import keras
    import tensorflow as tf
    from keras_baseline_ct import load, small_cnn

    t0 = time.time()
    x = load(list(table["path"]), (96, 96), 1)
    y = table["label"].to_numpy()
    scores = np.zeros(len(y))
    for k in sorted(table["fold"].unique()):
        keras.utils.set_random_seed(seed + int(k))
        tr, va = np.flatnonzero(table["fold"] != k), np.flatnonzero(table["fold"] == k)
        model = small_cnn((96, 96), 1, 0.3)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        ds = (tf.data.Dataset.from_tensor_slices((x[tr], y[tr].astype("float32")))
              .shuffle(len(tr), seed=seed).batch(32)
              .map(lambda a, b: (tf.image.random_flip_left_right(a), b)))
        model.fit(ds, epochs=epochs, verbose=0)
        scores[va] = model.predict(x[va], verbose=0)[:, 0]
        print(f"  plain Keras fold {k}: done ({time.time() - t0:.0f} s)", flush=True)
    return scores, time.time() - t0


def cached(path: Path, table: pd.DataFrame, compute) -> tuple[np.ndarray, float | None]:
    """Out-of-fold scores from ``path`` (sample_id, score, wall_s) when an earlier run wrote them
    for the same samples, else ``compute(table)`` written there."""
    if path.is_file():
        old = pd.read_csv(path, keep_default_na=False)
        if list(old["sample_id"].astype(str)) == list(table["sample_id"].astype(str)):
            print(f"  {path.name}: computed earlier, reused", flush=True)
            return old["score"].to_numpy(float), float(old["wall_s"].iloc[0])
    scores, seconds = compute(table)
    pd.DataFrame({"sample_id": table["sample_id"], "score": scores, "wall_s": seconds}).to_csv(path, index=False)
    return scores, seconds


def run_scores(run: Path, table: pd.DataFrame) -> np.ndarray:
    """A run's out-of-fold scores in ``table``'s order."""
    oof = pd.read_csv(run / "oof_predictions.csv", dtype={"group": str}, keep_default_na=False)
    return table[["sample_id"]].merge(oof[["sample_id", "score"]], on="sample_id", how="left")["score"].to_numpy(float)


def _fmt(e: dict) -> str:
    lo, hi = e["ci"]
    return f"{e['value']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{e['value']:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "ct_real")
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--keras-epochs", type=int, default=25)
    ap.add_argument("--skip", default="", help="comma-separated rows to leave out: floor,keras,old,new")
    ap.add_argument("--set-new", dest="set_new", action="append", default=[], metavar="KEY=VALUE",
                    help="override for the new recipe (say so when you report its numbers)")
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    from lepton_vision.config.cards import data_root

    root = data_root()
    if root is None or not (root / "covid_ct").is_dir():
        print(f"ct_real: skipped (no covid_ct/ under LEPTON_DATA_ROOT={root})")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    print("== old recipe (covid_ct.yaml), stopped after metrics", flush=True)
    old, old_s = run_recipe(OLD, args.out / "old", "metrics", [])
    samples = pd.read_csv(old / "samples.csv", dtype={"group": str}, keep_default_na=False)
    folds = pd.read_csv(old / "folds.csv", dtype={"group": str}, keep_default_na=False)
    table = samples.merge(folds[["sample_id", "fold"]], on="sample_id")
    y = table["label"].to_numpy()
    groups = table["group"].to_numpy()
    png = np.array([is_png(p) for p in table["path"]])
    scores: dict[str, tuple[np.ndarray, float | None, str]] = {}
    if "floor" not in skip:
        print("== floor: pixels -> PCA -> logistic regression", flush=True)
        s, t = cached(args.out / "floor_oof.csv", table, lambda t: floor_scores(t, 1234))
        scores["floor (PCA + LR)"] = (s, t, "64 px grey pixels, PCA 50, logistic regression (C 0.1, balanced)")
    if "keras" not in skip:
        print(f"== plain Keras CNN, {args.keras_epochs} epochs", flush=True)
        s, t = cached(args.out / f"keras_{args.keras_epochs}ep_oof.csv", table,
                      lambda t: plain_keras_scores(t, 1234, args.keras_epochs))
        scores["plain Keras CNN"] = (s, t, f"hand-written small CNN, 96 px, flips, {args.keras_epochs} epochs")
    if "old" not in skip:
        scores["old recipe"] = (run_scores(old, table), old_s, "covid_ct.yaml, out of fold (folds only)")
    if "new" not in skip:
        print(f"== new recipe (covid_ct_strong.yaml) {' '.join(args.set_new)}", flush=True)
        new, new_s = run_recipe(NEW, args.out / "new", "all", args.set_new)
        same = (new / "folds.csv").read_bytes() == (old / "folds.csv").read_bytes()
        if not same:
            raise SystemExit(f"{new}/folds.csv differs from {old}/folds.csv: not the same folds")
        scores["new recipe"] = (run_scores(new, table), new_s,
                                "covid_ct_strong.yaml, out of fold; wall = the whole train run incl. export"
                                + (f" ({' '.join(args.set_new)})" if args.set_new else ""))
    for name, (s, seconds, what) in scores.items():
        rows[name] = {"what": what, "wall_s": None if seconds is None else round(seconds, 1),
                      "all": with_ci(y, s, groups, args.n_bootstrap, 0),
                      "png_only": with_ci(y[png], s[png], groups[png], args.n_bootstrap, 0)}
    result = {"data": str(root / "covid_ct"), "n": int(len(y)), "n_png": int(png.sum()),
              "folds": int(table["fold"].nunique()), "sensitivity": SENSITIVITY,
              "labels": "out of fold on the same patient-grouped folds; not selected among variants unless the "
                        "row says so; spec@sens0.95 is the ROC point on the same scores", "rows": rows}
    (args.out / "ct_real.json").write_text(json.dumps(result, indent=2))
    print(f"\ncovid_ct: {len(y)} slices ({png.sum()} PNG), {table['fold'].nunique()} patient-grouped folds, out of fold")
    print(f"{'':18s} {'ROC AUC':22s} {'spec@sens0.95':22s} {'PNG-only AUC':22s} {'PNG-only spec':22s} {'wall':>8s}")
    for name, r in rows.items():
        wall = "-" if r["wall_s"] is None else f"{r['wall_s'] / 60:.1f} min"
        print(f"{name:18s} {_fmt(r['all']['roc_auc']):22s} {_fmt(r['all']['spec_at_sens95']):22s} "
              f"{_fmt(r['png_only']['roc_auc']):22s} {_fmt(r['png_only']['spec_at_sens95']):22s} {wall:>8s}")
    print(f"\nresults: {args.out / 'ct_real.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

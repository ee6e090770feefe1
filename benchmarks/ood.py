"""Out-of-distribution scores on real data: a covid_ct export against USC pedestrian photos, and a
USC person export against CT slices, with a confidence baseline side by side.

For each task the dataset's groups (patients / sequences) are split once (seed 0): 80 % train the
export through ``lepton-vision train`` (the task's real recipe on a shortened schedule, stated
below), 20 % are held out and never seen by the model or its reference. Then, with the exported
model's ``Predictor``:

- **false-flag rate** on the held-out images of the training kind at the shipped threshold
  (``ood_score > 1``; the reference aims at 2 %), and bundle.json's ``held_back_flagged`` (the
  cross-fitted estimate made at export);
- **AUROC** of ``ood_score`` (and the share flagged at a threshold that flags 5 % of the
  held-out images, for comparison with the shipped 2 % one) separating the held-out in-distribution images from the other task's
  images (and from the held-out images corrupted by Gaussian noise sigma 25 and Gaussian blur
  sigma 2 at their own resolution), and the share of them flagged;
- the **baseline**: the model's own confidence as an OOD score (classification: 1 - |2 s - 1|,
  the usual maximum-softmax-probability baseline; detection: 1 - image score), its AUROC beside
  ours, as a ratio;
- the cost: ms/image of ``serve_ood`` next to ``serve_uint8`` (SavedModel, this machine).

The split data lives under ``--out`` as symlinks and filtered label files (nothing copied). Skips
(exit 0) when ``$LEPTON_DATA_ROOT`` (default ../shared/data) lacks covid_ct or usc_pedestrian.

Usage:
    python benchmarks/ood.py [--out benchmarks/out/ood] [--ct-epochs 10] [--person-epochs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.model_selection import GroupShuffleSplit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOISE_SIGMA, BLUR_SIGMA = 25.0, 2.0


def data_root() -> Path:
    return Path(os.environ.get("LEPTON_DATA_ROOT", REPO.parent / "shared" / "data")).resolve()


def split_groups(groups: pd.Series, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train mask, held-out mask): 20 % of the groups held out."""
    gss = GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=seed)
    tr, te = next(gss.split(np.zeros(len(groups)), groups=groups.to_numpy()))
    train = np.zeros(len(groups), bool)
    train[tr] = True
    return train, ~train


def split_covid(src: Path, dst: Path) -> tuple[list[Path], list[Path]]:
    """dst/covid_ct: images symlinked, labels.csv of the training groups; returns (train, held-out) paths."""
    labels = pd.read_csv(src / "labels.csv", keep_default_na=False)
    train, held = split_groups(labels["group_id"])
    (dst / "covid_ct").mkdir(parents=True, exist_ok=True)
    link = dst / "covid_ct" / "images"
    if not link.exists():
        link.symlink_to(src / "images", target_is_directory=True)
    labels[train].to_csv(dst / "covid_ct" / "labels.csv", index=False)
    return [src / p for p in labels["path"][train]], [src / p for p in labels["path"][held]]


def split_usc(src: Path, dst: Path) -> tuple[list[Path], list[Path]]:
    """dst/usc_pedestrian: images symlinked, annotations.json of the training groups."""
    coco = json.loads((src / "annotations.json").read_text())
    images = pd.DataFrame(coco["images"])
    train, held = split_groups(images["group_id"])
    keep = set(images["id"][train])
    (dst / "usc_pedestrian").mkdir(parents=True, exist_ok=True)
    link = dst / "usc_pedestrian" / "images"
    if not link.exists():
        link.symlink_to(src / "images", target_is_directory=True)
    sub = {**coco, "images": [im for im in coco["images"] if im["id"] in keep],
           "annotations": [a for a in coco["annotations"] if a["image_id"] in keep]}
    (dst / "usc_pedestrian" / "annotations.json").write_text(json.dumps(sub))
    return ([src / "images" / f for f in images["file_name"][train]],
            [src / "images" / f for f in images["file_name"][held]])


def train_export(recipe: str, overrides: list[str], root: Path, run: Path) -> Path:
    """``lepton-vision train`` into ``run`` with LEPTON_DATA_ROOT=root (reused when finished)."""
    if (run / "export" / "bundle.json").is_file():
        print(f"reusing {run}", flush=True)
        return run / "export"
    from lepton_vision.cli import main

    os.environ["LEPTON_DATA_ROOT"] = str(root)
    args = ["train", str(REPO / recipe), *sum((["--set", s] for s in overrides), []), "--out", str(run)]
    if run.exists():
        args += ["--resume", str(run)]
        args.remove("--out")
        args.remove(str(run))
    t = time.time()
    rc = main(args)
    if rc != 0:
        raise SystemExit(f"training {recipe} failed (exit {rc})")
    print(f"trained {recipe} in {time.time() - t:.0f} s", flush=True)
    return run / "export"


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"{path}: cannot decode")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def corrupt(rgb: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "noise":
        return np.clip(rgb.astype(np.float32) + rng.normal(0, NOISE_SIGMA, rgb.shape), 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(rgb, (0, 0), BLUR_SIGMA)


def score_sets(export: Path, sets: dict[str, list[np.ndarray]], kind: str) -> dict[str, dict[str, np.ndarray]]:
    """Per set: ood_score, flagged, and the confidence baseline of every image."""
    from lepton_vision import Predictor

    p = Predictor.from_bundle(export, backend="saved_model")
    out = {}
    for name, images in sets.items():
        ood, flag, base = [], [], []
        for rgb in images:
            r = p.predict(rgb)
            ood.append(r.ood_score)
            flag.append(not r.in_distribution)
            s = r.image_score if kind == "det" else r.score
            base.append(1.0 - s if kind == "det" else 1.0 - abs(2.0 * s - 1.0))
        out[name] = {"ood": np.array(ood), "flag": np.array(flag), "base": np.array(base)}
        print(f"  scored {len(images):4d} {name}", flush=True)
    return out


def timing(export: Path, images: list[np.ndarray], n: int = 100) -> dict[str, float]:
    """ms/image of serve_uint8 and serve_ood (SavedModel), median of ``n`` images after warm-up."""
    from lepton_vision import Predictor

    p = Predictor.from_bundle(export, backend="saved_model")
    img = [p.to_uint8(im) if hasattr(p, "to_uint8") else p.frame_rgb(im) for im in images[:n]]
    p.run_uint8(img[0]), p.run_ood(img[0])
    t_model, t_ood = [], []
    for im in img:
        t = time.perf_counter()
        p.run_uint8(im)
        t_model.append(time.perf_counter() - t)
        t = time.perf_counter()
        p.run_ood(im)
        t_ood.append(time.perf_counter() - t)
    return {"serve_uint8_ms": 1000 * float(np.median(t_model)), "serve_ood_ms": 1000 * float(np.median(t_ood))}


def report(title: str, export: Path, scores: dict[str, dict[str, np.ndarray]], held: str,
           cost: dict[str, float]) -> dict:
    bundle = json.loads((export / "bundle.json").read_text())
    ref = bundle["reference"]
    ident = scores[held]
    rows = []
    for name, s in scores.items():
        if name == held:
            continue
        y = np.r_[np.zeros(len(ident["ood"])), np.ones(len(s["ood"]))]
        auc = roc_auc_score(y, np.r_[ident["ood"], s["ood"]])
        base = roc_auc_score(y, np.r_[ident["base"], s["base"]])
        rows.append({"foreign set": name, "n": len(s["ood"]), "AUROC ood_score": round(auc, 3),
                     "AUROC confidence baseline": round(base, 3), "ratio": round(auc / base, 2),
                     "flagged at threshold": f"{s['flag'].mean():.1%}",
                     "flagged at held-out p95": f"{np.mean(s['ood'] > np.quantile(ident['ood'], 0.95)):.1%}"})
    print(f"\n{title}: export {export}")
    print(f"  false-flag rate on {len(ident['ood'])} held-out images of the training kind: {ident['flag'].mean():.1%} "
          f"(reference target {ref['false_flag_rate']:.0%}; cross-fitted estimate at export "
          f"{ref['held_back_flagged']:.1%}); reference.npz {(export / ref['file']).stat().st_size / 1024:.0f} KB")
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"  cost (SavedModel, median ms/image): serve_uint8 {cost['serve_uint8_ms']:.1f}, serve_ood "
          f"{cost['serve_ood_ms']:.1f} ({cost['serve_ood_ms'] / cost['serve_uint8_ms']:.2f}x)")
    return {"false_flag_rate_held_out": float(ident["flag"].mean()), "n_held_out": int(len(ident["ood"])),
            "held_back_flagged_at_export": ref["held_back_flagged"], "rows": rows, "cost": cost,
            "reference_kb": (export / ref["file"]).stat().st_size / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "ood")
    ap.add_argument("--ct-epochs", type=int, default=10)
    ap.add_argument("--person-epochs", type=int, default=30)
    args = ap.parse_args()
    src = data_root()
    if not (src / "covid_ct" / "labels.csv").is_file() or not (src / "usc_pedestrian" / "annotations.json").is_file():
        print(f"skipped: covid_ct and usc_pedestrian not found under {src} (set LEPTON_DATA_ROOT)")
        return 0
    out = args.out.resolve()
    split_root = out / "data"
    ct_train, ct_held = split_covid(src / "covid_ct", split_root)
    usc_train, usc_held = split_usc(src / "usc_pedestrian", split_root)
    print(f"covid_ct: {len(ct_train)} train / {len(ct_held)} held-out slices; usc: {len(usc_train)} train / "
          f"{len(usc_held)} held-out images", flush=True)
    ct_export = train_export("recipes/ct_screening/covid_ct.yaml",
                             [f"train.epochs={args.ct_epochs}", "cv.n_splits=3", "train.verbose=false",
                              "export.formats=[saved_model, tflite]"], split_root, out / "runs" / "ct")
    person_export = train_export("recipes/person_detection/usc_pedestrian.yaml",
                                 [f"train.epochs={args.person_epochs}", "cv.n_splits=2", "train.verbose=false",
                                  "export.formats=[saved_model, tflite]"], split_root, out / "runs" / "person")
    rng = np.random.default_rng(0)
    ct_held_img = [read_rgb(p) for p in ct_held]
    usc_held_img = [read_rgb(p) for p in usc_held]
    usc_all = [read_rgb(p) for p in [*usc_train, *usc_held]]
    ct_all = [read_rgb(p) for p in [*ct_train, *ct_held]]
    print("CT export:", flush=True)
    ct_scores = score_sets(ct_export, {
        "held-out CT patients": ct_held_img, "USC pedestrian images (all)": usc_all,
        f"held-out CT + noise sigma {NOISE_SIGMA:g}": [corrupt(x, "noise", rng) for x in ct_held_img],
        f"held-out CT + blur sigma {BLUR_SIGMA:g}": [corrupt(x, "blur", rng) for x in ct_held_img]}, "cls")
    print("person export:", flush=True)
    person_scores = score_sets(person_export, {
        "held-out USC groups": usc_held_img, "covid_ct slices (all)": ct_all,
        f"held-out USC + noise sigma {NOISE_SIGMA:g}": [corrupt(x, "noise", rng) for x in usc_held_img],
        f"held-out USC + blur sigma {BLUR_SIGMA:g}": [corrupt(x, "blur", rng) for x in usc_held_img]}, "det")
    results = {
        "split": "GroupShuffleSplit(test_size=0.2, random_state=0) over groups; held-out images never seen "
                 "by the model or its reference",
        "schedules": {"ct": f"recipes/ct_screening/covid_ct.yaml, {args.ct_epochs} epochs, 3 folds, refit",
                      "person": f"recipes/person_detection/usc_pedestrian.yaml, {args.person_epochs} epochs, "
                                f"2 folds, best fold"},
        "ct": report("CT export (covid_ct)", ct_export, ct_scores, "held-out CT patients",
                     timing(ct_export, ct_held_img)),
        "person": report("Person export (USC)", person_export, person_scores, "held-out USC groups",
                         timing(person_export, usc_held_img)),
    }
    (out / "ood.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"\nwrote {out / 'ood.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

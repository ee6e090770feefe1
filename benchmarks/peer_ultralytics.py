"""lepton-vision's detector against Ultralytics YOLOv8n from scratch, on the same images, the same
folds and the same CPU, scored by the same AP code; one table, both sides.

What it does, in one run:

1. **Our side**: ``lepton-vision train`` on the recipe (default the USC pedestrian recipe), into
   ``--out/lepton`` (reused when that directory already holds a finished run of the same recipe,
   resumed when interrupted).
2. **The peer**, for each fold of that run named by ``--folds`` (default: every fold it trained):
   the fold's training images (boxes from the run's own ``samples.csv``, ignore regions painted
   grey as lepton-vision paints them) are written as a YOLO dataset and Ultralytics YOLOv8n trains
   on them **from scratch** (``yolov8n.yaml``, Ultralytics' defaults), validating on the fold's
   validation images like ours does; by default with the **same wall-time budget** as our fold
   took (Ultralytics' ``time=``), or ``--epochs N``. Its best weights then predict the fold's
   validation images (every box down to score 0.001).
3. **Scoring**: both sides' out-of-fold boxes on exactly those validation images, through
   lepton-vision's AP code (COCO-style, pycocotools-identical): AP50 with 95 % CIs and the paired
   difference on the same group resamples, AP50:95.
4. **Speed**: both exported TFLite float32 models, in this process, with LiteRT on ``--threads``
   threads, on the same validation frames: ours is the run's ``export/model.tflite`` (letterbox,
   decoding and NMS inside, raw frame in, boxes out); Ultralytics' is its own TFLite export of
   ``best.pt`` (decoded boxes out, NMS not inside: what its exporter writes by default), fed
   frames already resized to its input. Ours therefore does more work per frame.

The Ultralytics side runs in its own venv (``benchmarks/ultralytics_side.py``), skipped with a
message when that venv is absent, like the HOG baseline::

    python3 -m venv benchmarks/.venv-ultralytics
    benchmarks/.venv-ultralytics/bin/pip install -r benchmarks/requirements-ultralytics.txt

Usage:
    LEPTON_DATA_ROOT=../shared/data python benchmarks/peer_ultralytics.py
        [--recipe recipes/person_detection/usc_pedestrian.yaml] [--set KEY=VALUE ...]
        [--folds 0,1] [--epochs N] [--imgsz 320] [--python PATH] [--out benchmarks/out/peer_ultralytics]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SIDE_SCRIPT = HERE / "ultralytics_side.py"
DEFAULT_PYTHON = HERE / ".venv-ultralytics" / "bin" / "python"
VENV_HINT = ("python3 -m venv benchmarks/.venv-ultralytics && "
             "benchmarks/.venv-ultralytics/bin/pip install -r benchmarks/requirements-ultralytics.txt")

sys.path.insert(0, str(HERE))


def write_yolo_fold(samples: Any, fold_of: dict[str, int], k: int, dest: Path) -> tuple[Path, Path]:
    """A YOLO dataset of fold ``k`` (train = the other folds, val = fold ``k``) under ``dest``.

    Returns ``(data.yaml, val.txt)``; val.txt lists fold ``k``'s images in sample-table order. Images are links to the
    originals unless they have ignore regions, which are painted with the letterbox grey (as
    lepton-vision's training does) in a copy; labels are ``class cx cy w h`` in 0..1.
    """
    import cv2
    import numpy as np

    from lepton_vision.data.readers.detection import boxes_of
    from lepton_vision.models.detectors import PAD_VALUE

    val_paths: list[str] = []
    for split in ("train", "val"):
        (dest / "images" / split).mkdir(parents=True, exist_ok=True)
        (dest / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i, row in samples.reset_index(drop=True).iterrows():
        sid = str(row["sample_id"])
        split = "val" if fold_of[sid] == k else "train"
        src = Path(row["path"])
        img = dest / "images" / split / f"{i:05d}{src.suffix.lower()}"
        boxes, classes, ignore = boxes_of(row)
        if not img.exists():
            if len(ignore):
                pixels = cv2.imread(str(src), cv2.IMREAD_COLOR)
                for x1, y1, x2, y2 in np.round(ignore).astype(int):
                    pixels[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = PAD_VALUE
                cv2.imwrite(str(img), pixels)
            else:
                img.symlink_to(src.resolve())
        w, h = float(row["width"]), float(row["height"])
        lines = [f"{int(c)} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
                 f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}" for b, c in zip(boxes, classes)]
        (dest / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        if split == "val":
            val_paths.append(str(img.absolute()))
    return _data_yaml(dest), _val_list(dest, val_paths)


def _data_yaml(dest: Path) -> Path:
    import yaml

    path = dest / "data.yaml"
    path.write_text(yaml.safe_dump({"path": str(dest.resolve()), "train": "images/train", "val": "images/val",
                                    "names": {0: "object"}}))
    return path


def _val_list(dest: Path, paths: list[str]) -> Path:
    out = dest / "val.txt"
    out.write_text("\n".join(paths) + "\n")
    return out


def tflite_fps(path: Path, frames: list[Any], threads: int, warmup: int = 5) -> dict[str, Any]:
    """Median ms and FPS of ``path``'s ``invoke`` on ``frames`` (uint8 RGB, already the model's size
    when its input is fixed; any size for lepton-vision's)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    sigs = interp.get_signature_list()
    times = []
    if "serve_uint8" in sigs:  # lepton-vision: raw uint8 frame of any size in, boxes out
        runner = interp.get_signature_runner("serve_uint8")
        key = next(iter(sigs["serve_uint8"]["inputs"]))
        call = lambda f: runner(**{key: f})  # noqa: E731 - one [H, W, 3] frame, no batch axis
    else:  # Ultralytics: float32 [1, H, W, 3] or (its LiteRT export, from torch) [1, 3, H, W] in 0..1
        interp.allocate_tensors()
        inp = interp.get_input_details()[0]
        nchw = int(inp["shape"][1]) == 3

        def call(f: Any) -> Any:
            x = f[None].astype(np.float32) / 255.0
            interp.set_tensor(inp["index"], (x.transpose(0, 3, 1, 2) if nchw else x).astype(inp["dtype"]))
            interp.invoke()
            return [interp.get_tensor(o["index"]) for o in interp.get_output_details()]
    for f in frames[:warmup]:
        call(f)
    for f in frames:
        t = time.perf_counter()
        call(f)
        times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1000.0
    return {"fps": float(len(times) / np.sum(times)), "ms_median": float(np.median(ms)), "n_frames": len(frames),
            "bytes": path.stat().st_size}


def _frames(paths: list[str], hw: tuple[int, int], letterbox: bool) -> list[Any]:
    import cv2
    import numpy as np

    from lepton_vision.data.preprocess import letterbox as lb

    out = []
    for p in paths:
        rgb = cv2.cvtColor(cv2.imread(p, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        if letterbox:
            img, _scale = lb(rgb, hw)
            out.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
        else:
            out.append(cv2.resize(rgb, (hw[1], hw[0]), interpolation=cv2.INTER_AREA))
    return out


def _fmt(v: float, lo: float | None = None, hi: float | None = None) -> str:
    return f"{v:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "person_detection" / "usc_pedestrian.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--folds", default=None, help="comma-separated fold indices (default: every fold the run trained)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="train Ultralytics for this many epochs instead of our fold's wall time")
    ap.add_argument("--imgsz", type=int, default=320, help="Ultralytics' input size (its default here: 320)")
    ap.add_argument("--model", default="yolov8n.yaml")
    ap.add_argument("--python", type=Path, default=DEFAULT_PYTHON, help="the Ultralytics venv's python")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fps-frames", type=int, default=100)
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=HERE / "out" / "peer_ultralytics")
    args = ap.parse_args(argv)

    if not args.python.is_file():
        print(f"skipped: no Ultralytics venv at {args.python}. Build it with:\n  {VENV_HINT}")
        return 0

    import pandas as pd

    from lepton_vision.config.cards import resolve_run
    from lepton_vision.data.folds import read_folds
    from lepton_vision.evaluate.bootstrap import percentile_interval
    from lepton_vision.evaluate.paired import read_run_csv
    from lepton_vision.kinds.detection.kind import DET_COLUMNS, image_table
    from lepton_vision.kinds.detection.metrics import coco_eval, paired_ap50, prepare
    from lepton_vision.runio import RunDir, atomic_write_json
    from pretraining_gain import run_arm

    args.out.mkdir(parents=True, exist_ok=True)
    print(f"our side: {args.recipe.name} {' '.join(args.overrides)}", flush=True)
    ours_dir, ours_wall = run_arm(args.recipe, list(args.overrides), args.out / "lepton", stop_after="all")
    run = RunDir(ours_dir)
    resolved = resolve_run(run)
    policy = resolved.task.detection
    assert policy is not None
    names = list(resolved.task.classes)
    samples = read_run_csv(ours_dir, "samples.csv")
    folds = read_folds(run.folds)
    fold_of = dict(zip(folds["sample_id"].astype(str), folds["fold"].astype(int)))
    done = sorted(int(json.loads(run.fold_done(k).read_text())["fold"]) for k in range(resolved.recipe.cv.n_splits)
                  if run.fold_done(k).is_file())
    chosen = [int(x) for x in args.folds.split(",")] if args.folds else done
    missing = sorted(set(chosen) - set(done))
    if missing:
        print(f"error: folds {missing} were not trained by {ours_dir}; it has {done}", file=sys.stderr)
        return 2
    ours_dets = read_run_csv(ours_dir, "oof_detections.csv")
    ours_images = read_run_csv(ours_dir, "oof_predictions.csv")

    peer_parts, peer_info, fold_seconds = [], [], {}
    for k in chosen:
        seconds = float(json.loads(run.fold_done(k).read_text())["seconds"])
        fold_seconds[k] = seconds
        dest = args.out / f"yolo_fold{k}"
        result_file = dest / "ultra" / "result.json"
        budget = f"{args.epochs} epochs" if args.epochs else f"{seconds / 60:.1f} min (our fold {k + 1}'s training)"
        if result_file.is_file():
            info = json.loads(result_file.read_text())
            print(f"fold {k + 1}: Ultralytics finished earlier, reused ({info['train_seconds'] / 60:.1f} min)")
        else:
            data_yaml, val_txt = write_yolo_fold(samples, fold_of, k, dest)
            cmd = [str(args.python), str(SIDE_SCRIPT), "--data", str(data_yaml), "--predict", str(val_txt),
                   "--out", str(dest / "ultra"), "--imgsz", str(args.imgsz), "--model", args.model,
                   "--threads", str(args.threads), "--seed", str(resolved.recipe.seed)]
            cmd += ["--epochs", str(args.epochs)] if args.epochs else ["--seconds", f"{seconds:.0f}", "--epochs", "1000"]
            if k == chosen[0]:
                cmd.append("--tflite")
            print(f"fold {k + 1}: Ultralytics {args.model} from scratch, {budget} ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(dest))
            (dest / "ultralytics.log").write_text(proc.stdout + "\n" + proc.stderr)
            if proc.returncode != 0:
                print(f"error: the Ultralytics side failed on fold {k + 1} (log: {dest / 'ultralytics.log'}):\n"
                      + "\n".join(proc.stderr.strip().splitlines()[-15:]), file=sys.stderr)
                return 1
            info = json.loads(proc.stdout.strip().splitlines()[-1])
            atomic_write_json(result_file, info)
        by_path = {str(Path(p)): i for i, p in enumerate((dest / "val.txt").read_text().split())}
        val_ids = [sid for sid in samples["sample_id"].astype(str) if fold_of[sid] == k]
        rows = json.loads((dest / "ultra" / "detections.json").read_text())
        part = pd.DataFrame([{"sample_id": val_ids[by_path[str(Path(r["path"]))]], "fold": k,
                              "class_id": r["class_id"], "class_name": names[r["class_id"]], "score": r["score"],
                              "x1": r["x1"], "y1": r["y1"], "x2": r["x2"], "y2": r["y2"]} for r in rows],
                            columns=list(DET_COLUMNS))
        peer_parts.append(part)
        peer_info.append({"fold": k, **info})

    keep = set(sid for sid, f in fold_of.items() if f in chosen)
    sub = samples[samples["sample_id"].astype(str).isin(keep)].reset_index(drop=True)
    table = sub.assign(fold=sub["sample_id"].astype(str).map(fold_of))
    peer_dets = pd.concat(peer_parts, ignore_index=True)
    peer_images = image_table(table, peer_dets, names)
    ours_d = ours_dets[ours_dets["sample_id"].astype(str).isin(keep)].reset_index(drop=True)
    ours_i = ours_images[ours_images["sample_id"].astype(str).isin(keep)].reset_index(drop=True)
    paired = paired_ap50(sub, [(ours_d, ours_i), (peer_dets, peer_images)], names, policy.max_detections,
                         n_bootstrap=args.n_bootstrap, seed=resolved.recipe.seed)
    ci_a, ci_b, ci_d = (percentile_interval(v, 0.95) for v in (paired.boot_a, paired.boot_b,
                                                                 paired.boot_a - paired.boot_b))
    coco = [coco_eval(prepare(sub, d, i, names), policy.max_detections) for d, i in ((ours_d, ours_i), (peer_dets, peer_images))]

    # ---- speed: both TFLite float32 exports, same frames, same runtime and threads ------------------
    first = chosen[0]
    val_paths = [str(p) for p in sub[sub["sample_id"].astype(str).map(fold_of) == first]["path"]][: args.fps_frames]
    hw = tuple(int(v) for v in resolved.recipe.input.image_size)
    speed: dict[str, Any] = {}
    ours_tfl = run.export_dir / "model.tflite"
    if ours_tfl.is_file():
        speed["lepton-vision"] = tflite_fps(ours_tfl, _frames(val_paths, hw, letterbox=True), args.threads)
        speed["lepton-vision"]["input"] = f"{hw[0]}x{hw[1]} uint8 frame; letterbox, decoding and NMS inside"
    peer_tfl = peer_info[0].get("tflite")
    if peer_tfl and Path(peer_tfl).is_file():
        speed["ultralytics"] = tflite_fps(Path(peer_tfl), _frames(val_paths, (args.imgsz, args.imgsz), letterbox=False),
                                          args.threads)
        speed["ultralytics"]["input"] = f"{args.imgsz}x{args.imgsz} float32; decoded boxes out, NMS not inside"

    n_img = len(sub)
    ours_train = sum(fold_seconds.values())
    peer_train = sum(float(p["train_seconds"]) for p in peer_info)
    out = {
        "recipe": str(args.recipe), "overrides": list(args.overrides), "folds": [k + 1 for k in chosen],
        "n_images": n_img, "unit": paired.unit, "n_units": paired.n_units,
        "lepton": {"ap50": paired.a, "ap50_ci": list(ci_a), "ap50_95": coco[0]["ap50_95"],
                   "train_seconds": ours_train, "run_wall_seconds": ours_wall, "tflite": speed.get("lepton-vision")},
        "ultralytics": {"ap50": paired.b, "ap50_ci": list(ci_b), "ap50_95": coco[1]["ap50_95"],
                        "train_seconds": peer_train, "epochs_run": [p.get("epochs_run") for p in peer_info],
                        "version": peer_info[0].get("ultralytics"), "model": args.model, "imgsz": args.imgsz,
                        "tflite": speed.get("ultralytics")},
        "difference_ap50": {"value": paired.a - paired.b, "ci": list(ci_d)},
    }
    atomic_write_json(args.out / "peer.json", out)

    def fps(side: str) -> str:
        s = speed.get(side)
        return f"{s['fps']:.1f} ({s['ms_median']:.1f} ms)" if s else "n/a"

    lep, ul = out["lepton"], out["ultralytics"]
    print(f"\nfolds {out['folds']} of {resolved.recipe.cv.n_splits}: {n_img} out-of-fold images "
          f"(bootstrap over {paired.n_units} {paired.unit} units), the same AP code for both sides")
    print(f"| side | AP50 [95 % CI] | AP50:95 | training wall (those folds) | TFLite FPS, {args.threads} threads |")
    print("|---|---|---|---|---|")
    print(f"| lepton-vision ({args.recipe.name}) | {_fmt(lep['ap50'], *lep['ap50_ci'])} | {lep['ap50_95']:.3f} | "
          f"{ours_train / 60:.1f} min (whole run {ours_wall / 60 if ours_wall else float('nan'):.1f} min) | "
          f"{fps('lepton-vision')} |")
    print(f"| Ultralytics {ul['version']} {args.model} @ {args.imgsz} | {_fmt(ul['ap50'], *ul['ap50_ci'])} | "
          f"{ul['ap50_95']:.3f} | {peer_train / 60:.1f} min ({', '.join(str(e) for e in ul['epochs_run'])} epochs) | "
          f"{fps('ultralytics')} |")
    lo, hi = out["difference_ap50"]["ci"]
    print(f"lepton-vision − Ultralytics AP50: {out['difference_ap50']['value']:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    if "lepton-vision" in speed and "ultralytics" in speed:
        print(f"TFLite speed ratio lepton-vision / Ultralytics: {speed['lepton-vision']['fps'] / speed['ultralytics']['fps']:.2f}x "
              "(ours includes letterbox and NMS)")
    print(f"written: {args.out / 'peer.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The Ultralytics side of ``peer_ultralytics.py``: train YOLOv8n from scratch on one fold, predict
its validation images, export TFLite (JSON on stdout's last line).

Runs in its own venv (``benchmarks/requirements-ultralytics.txt``); imports nothing of
lepton-vision. Everything it reads was written by ``peer_ultralytics.py``: a YOLO dataset folder
(``data.yaml``, images and labels of the fold's training and validation images) and the list of
validation images to predict. Ultralytics' defaults are kept (optimizer ``auto``, mosaic with
close-mosaic, HSV, its loss weights, EMA, best epoch by its own validation fitness) except what a
2-core, offline CPU run needs: ``device=cpu``, ``amp=False``, ``plots=False`` (plots download a
font) and ``YOLO_OFFLINE=1``.

Usage:
    benchmarks/.venv-ultralytics/bin/python benchmarks/ultralytics_side.py --data DIR/data.yaml \\
        --predict DIR/val.txt --out DIR/ultra [--epochs 30 | --seconds 600] [--imgsz 320] [--tflite]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--predict", type=Path, required=True, help="text file: one validation image path per line")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="yolov8n.yaml", help="a model YAML (from scratch); default yolov8n.yaml")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=None,
                    help="wall-time budget for training (Ultralytics' time=, which then sets the epochs)")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tflite", action="store_true", help="also export best.pt to TFLite (float32)")
    args = ap.parse_args(argv)

    import torch
    from ultralytics import YOLO, __version__

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    model = YOLO(args.model)
    train_kw = dict(data=str(args.data), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device="cpu",
                    workers=args.threads, pretrained=False, amp=False, plots=False, seed=args.seed,
                    project=str(args.out.resolve()), name="train", exist_ok=True, verbose=False)
    if args.seconds:
        train_kw["time"] = args.seconds / 3600.0
    t0 = time.time()
    model.train(**train_kw)
    train_seconds = time.time() - t0
    weights = args.out / "train" / "weights" / "best.pt"
    best = YOLO(str(weights))
    epochs_run = None
    results_csv = args.out / "train" / "results.csv"
    if results_csv.is_file():
        epochs_run = max(0, len(results_csv.read_text().strip().splitlines()) - 1)

    # Out-of-fold boxes: every box down to score 0.001 (Ultralytics' own validation setting), so AP
    # is computed over the whole precision-recall curve like lepton-vision's.
    paths = [p for p in args.predict.read_text().splitlines() if p.strip()]
    rows = []
    t1 = time.time()
    for i in range(0, len(paths), 16):
        for path, res in zip(paths[i : i + 16], best.predict(paths[i : i + 16], imgsz=args.imgsz, conf=0.001,
                                                            iou=0.7, max_det=300, device="cpu", verbose=False)):
            b = res.boxes
            for xyxy, score, cls in zip(b.xyxy.tolist(), b.conf.tolist(), b.cls.tolist()):
                rows.append({"path": path, "class_id": int(cls), "score": float(score),
                             "x1": xyxy[0], "y1": xyxy[1], "x2": xyxy[2], "y2": xyxy[3]})
    predict_seconds = time.time() - t1
    (args.out / "detections.json").write_text(json.dumps(rows))

    tflite = None
    if args.tflite:
        exported = best.export(format="tflite", imgsz=args.imgsz, half=False, int8=False)
        found = Path(exported)
        target = args.out / "ultralytics_float32.tflite"
        shutil.copyfile(found, target)
        tflite = str(target.resolve())

    print(json.dumps({
        "ultralytics": __version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "model": args.model, "imgsz": args.imgsz, "epochs_asked": args.epochs, "seconds_asked": args.seconds,
        "epochs_run": epochs_run, "train_seconds": round(train_seconds, 1),
        "predict_seconds": round(predict_seconds, 1), "n_predicted": len(paths), "n_boxes": len(rows),
        "weights": str(weights.resolve()), "tflite": tflite,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""OpenCV HOG people detector speed on the first N frames of a video (JSON on stdout).

Run by ``person_detection_speed.py`` in a separate venv with ``opencv-python-headless<5``:
OpenCV 5, which lepton-vision uses, has no ``cv2.HOGDescriptor``. This file imports nothing but
OpenCV, NumPy and the standard library so that it runs in that small venv.

Usage:
    benchmarks/.venv-hog/bin/python benchmarks/hog_fps.py --video vtest.avi [--frames 200] [--warmup 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import cv2
import numpy as np


def main(argv: list[str] | None = None) -> int:
    """Decode the frames, warm up, time ``detectMultiScale`` per frame and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", required=True)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)
    if not hasattr(cv2, "HOGDescriptor"):
        print(f"OpenCV {cv2.__version__} has no HOGDescriptor; use opencv-python-headless<5", file=sys.stderr)
        return 2
    cap = cv2.VideoCapture(args.video)
    frames = []
    while len(frames) < args.frames:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr)  # HOG runs on OpenCV's own BGR frames, as in the OpenCV sample
    cap.release()
    if not frames:
        print(f"{args.video}: no decodable frame", file=sys.stderr)
        return 2
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def detect(f: np.ndarray) -> int:
        rects, _weights = hog.detectMultiScale(f, winStride=(8, 8), padding=(8, 8), scale=1.05)
        return len(rects)

    for f in frames[: args.warmup]:
        detect(f)
    times, with_person = [], 0
    for f in frames:
        t = time.perf_counter()
        n = detect(f)
        times.append(time.perf_counter() - t)
        with_person += int(n > 0)
    ms = np.asarray(times) * 1000.0
    print(json.dumps({
        "backend": "opencv_hog",
        "opencv": cv2.__version__,
        "threads": cv2.getNumThreads(),
        "n_frames": len(frames),
        "frame_hw": list(frames[0].shape[:2]),
        "fps": len(times) / float(np.sum(times)),
        "ms_median": float(np.median(ms)),
        "ms_p90": float(np.percentile(ms, 90)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "frames_mb": sum(f.nbytes for f in frames) / 2**20,
        "frames_with_person": with_person,
        "alarm_frames": None,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

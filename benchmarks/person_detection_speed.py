"""Person detection speed: an exported lepton-vision detector vs OpenCV's HOG people detector.

Every backend sees the same first ``--frames`` full-size frames of the same video (default
OpenCV's 768x576 ``vtest.avi``): the exported detector through :class:`DetPredictor` (SavedModel
``serve_uint8``, TFLite float32 and TFLite int8; letterbox, NMS and the mapping back to frame
pixels happen inside the graph, so the timing covers the whole frame-in, boxes-out path) and
``cv2.HOGDescriptor`` with the default people SVM (``winStride=(8,8), padding=(8,8),
scale=1.05``). Each backend runs in its own subprocess, so its peak RSS is its own: frames are
decoded once up front (not timed; ``frames MB`` in the table is what they take), the first
``--warmup`` frames are run untimed (graph tracing, allocation), then every frame is timed.

HOG needs ``cv2.HOGDescriptor``, which OpenCV 5 (lepton-vision's) no longer has; it runs in a
separate venv with OpenCV 4 (``benchmarks/hog_fps.py``)::

    python3 -m venv benchmarks/.venv-hog && benchmarks/.venv-hog/bin/pip install -r benchmarks/requirements-hog.txt

"frames with a person" (a box at or above the export's score threshold; for HOG, any detection)
is a sanity figure, not an accuracy measure: the video has people in nearly every frame.

Usage:
    python benchmarks/person_detection_speed.py --export runs/<run>/export
        [--video PATH] [--frames 200] [--warmup 5] [--backends saved_model,tflite,tflite_int8]
        [--hog-python PATH] [--threads N] [--ood] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
HOG_SCRIPT = Path(__file__).resolve().parent / "hog_fps.py"
DEFAULT_HOG_PYTHON = Path(__file__).resolve().parent / ".venv-hog" / "bin" / "python"
BACKENDS = ("saved_model", "tflite", "tflite_int8")
VENV_HINT = ("python3 -m venv benchmarks/.venv-hog && "
             "benchmarks/.venv-hog/bin/pip install -r benchmarks/requirements-hog.txt")


def default_video() -> Path:
    """``$LEPTON_DATA_ROOT/video/vtest.avi``, else ``../shared/data/video/vtest.avi``."""
    root = os.environ.get("LEPTON_DATA_ROOT")
    if root:
        return Path(root) / "video" / "vtest.avi"
    return REPO.parent / "shared" / "data" / "video" / "vtest.avi"


def run_worker(export: Path, backend: str, video: Path, n_frames: int, warmup: int,
               threads: int | None, ood: bool = False) -> dict[str, Any]:
    """One backend, in this process: decode, warm up, time (called in a subprocess)."""
    import numpy as np

    from lepton_vision.kinds.detection.predictor import DetPredictor, iter_video_frames

    frames = [rgb for _, rgb in iter_video_frames(video, max_frames=n_frames)]
    t = time.perf_counter()
    pred = DetPredictor.from_bundle(export, backend=backend, num_threads=threads,  # type: ignore[arg-type]
                                    ood=ood)
    load_s = time.perf_counter() - t
    for f in frames[:warmup]:
        pred.predict_array(f)
    times, with_person, alarms = [], 0, 0
    for f in frames:
        t = time.perf_counter()
        d = pred.predict_array(f)
        times.append(time.perf_counter() - t)
        with_person += int(d.count > 0)
        alarms += int(d.alarm)
    ms = np.asarray(times) * 1000.0
    return {
        "backend": backend,
        "n_frames": len(frames),
        "frame_hw": list(frames[0].shape[:2]),
        "load_s": load_s,
        "fps": len(times) / float(np.sum(times)),
        "ms_median": float(np.median(ms)),
        "ms_p90": float(np.percentile(ms, 90)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "frames_mb": sum(f.nbytes for f in frames) / 2**20,
        "frames_with_person": with_person,
        "alarm_frames": alarms if pred.image_threshold is not None else None,
        "score_threshold": pred.score_threshold,
        "ood": bool(ood),
    }


def _subprocess_json(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run a worker; its JSON is the last stdout line (libraries may log above it)."""
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": f"no JSON from worker; stderr: {proc.stderr.strip()[-800:]}"}
    return json.loads(lines[-1])


def _table(rows: list[dict[str, Any]], hog: dict[str, Any] | None) -> str:
    """The side-by-side table: each backend's speed and its ratio to the HOG baseline and to the
    float TFLite file (the int8 file's speed-up is the last column of its row)."""
    hog_fps = hog.get("fps") if hog and "fps" in hog else None
    float_fps = next((r["fps"] for r in rows if r.get("backend") == "tflite" and "fps" in r), None)
    head = (f"{'backend':<14}{'frames/s':>10}{'ms med':>9}{'ms p90':>9}{'peak RSS MB':>13}"
            f"{'frames MB':>11}{'w/ person':>11}{'x HOG':>8}{'x tflite':>10}")
    out = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            out.append(f"{r['backend']:<14}  failed: {r['error']}")
            continue
        ratio = f"{r['fps'] / hog_fps:.2f}" if hog_fps else "n/a"
        vs_float = f"{r['fps'] / float_fps:.2f}" if float_fps else "n/a"
        out.append(f"{r['backend']:<14}{r['fps']:>10.2f}{r['ms_median']:>9.1f}{r['ms_p90']:>9.1f}"
                   f"{r['peak_rss_mb']:>13.0f}{r['frames_mb']:>11.0f}"
                   f"{r['frames_with_person']:>6}/{r['n_frames']:<4}{ratio:>8}{vs_float:>10}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every backend and HOG, print the table (and --json)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, help="export folder of a person detector (runs/<run>/export)")
    ap.add_argument("--video", type=Path, default=None, help=f"video (default {default_video()})")
    ap.add_argument("--frames", type=int, default=200, help="frames timed per backend (default 200)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed warm-up frames (default 5)")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated DetPredictor backends")
    ap.add_argument("--hog-python", type=Path, default=None,
                    help=f"a python with opencv-python-headless<5 (default {DEFAULT_HOG_PYTHON} if it exists)")
    ap.add_argument("--no-hog", action="store_true", help="skip the HOG baseline")
    ap.add_argument("--threads", type=int, default=None, help="LiteRT threads (default: LiteRT's choice)")
    ap.add_argument("--ood", action="store_true",
                    help="also score each frame's out-of-distribution score, as predict/monitor do (a second "
                    "network pass per frame, model_ood.tflite); default: the detector alone")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per backend before giving up")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    video = args.video or default_video()
    if args.worker:
        print(json.dumps(run_worker(args.export, args.worker, video, args.frames, args.warmup, args.threads,
                                    args.ood)))
        return 0
    if not video.is_file():
        print(f"skipped: video {video} not found (pass --video or set LEPTON_DATA_ROOT).")
        return 0
    if args.export is None or not (args.export / "bundle.json").is_file():
        print(f"error: --export must be a finished detection export folder (with bundle.json). Got {args.export}.",
              file=sys.stderr)
        return 2
    if args.frames < 1 or args.warmup < 0:
        print("error: --frames must be >= 1 and --warmup >= 0.", file=sys.stderr)
        return 2
    bundle = json.loads((args.export / "bundle.json").read_text())
    common = ["--video", str(video), "--frames", str(args.frames), "--warmup", str(args.warmup)]

    rows: list[dict[str, Any]] = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        print(f"running {backend} ...", flush=True)
        cmd = [sys.executable, __file__, "--worker", backend, "--export", str(args.export), *common]
        if args.threads is not None:
            cmd += ["--threads", str(args.threads)]
        if args.ood:
            cmd.append("--ood")
        r = _subprocess_json(cmd, args.timeout)
        rows.append({"backend": backend, **r})

    hog: dict[str, Any] | None = None
    if not args.no_hog:
        hog_python = args.hog_python or DEFAULT_HOG_PYTHON
        if not Path(hog_python).exists():
            print(f"HOG baseline skipped: no python with OpenCV<5 at {hog_python}. Create it with\n  {VENV_HINT}")
        else:
            print("running opencv_hog ...", flush=True)
            hog = _subprocess_json([str(hog_python), str(HOG_SCRIPT), *common], args.timeout)
            hog.setdefault("backend", "opencv_hog")
            if "error" in hog:
                print(f"HOG baseline failed: {hog['error']}\nRecreate its venv with\n  {VENV_HINT}")

    frame_hw = next((r["frame_hw"] for r in rows if "frame_hw" in r), None)
    print(f"\nvideo {video} ({frame_hw[1]}x{frame_hw[0]} frames)" if frame_hw else f"\nvideo {video}")
    print(f"export {args.export} (task {bundle.get('task')}, input {bundle.get('input', {}).get('image_size')}, "
          f"score threshold {bundle.get('score_threshold')}); {args.frames} frames timed per backend, "
          f"{args.warmup} warm-up; {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(_table(rows + ([hog] if hog and "error" not in hog else []), hog))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.json.parent, delete=False, suffix=".tmp") as fh:
            json.dump({"video": str(video), "export": str(args.export), "frames": args.frames,
                       "warmup": args.warmup, "cpus": os.cpu_count(), "backends": rows, "hog": hog}, fh, indent=2)
        os.replace(fh.name, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

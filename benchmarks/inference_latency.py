"""Batch-1 inference latency and model size of the exported CT classifier and person detector.

For each export folder (``runs/<run>/export``, or the run folder itself) every artefact is timed
on ONE realistic raw image, batch 1, the way a product scores images one at a time:

* ``keras_predict``: ``model.predict(x, verbose=0)`` on ``model.keras`` (what users wrongly do
  per image), ``keras_call``: ``model(x, training=False)`` inside a ``tf.function``. Both get
  the image preprocessed in numpy (classification: ``cv2.resize`` INTER_LINEAR + /255;
  detection: ``preprocess.letterbox``). For the detector ``keras_call`` times the network only
  (raw YOLOv8 heads); ``predict`` also runs keras-cv's own box decoding and NMS.
* ``saved_model``, ``tflite`` (float32), ``tflite_int8``, ``onnx``: the ``serve_uint8`` signature
  on the raw uint8 image (resize or letterbox, and for detection NMS, inside the graph);
  ``onnx`` is ``model.onnx`` in onnxruntime's CPUExecutionProvider.

The image: ``--ct-image`` (a file from the run's data; CT window from bundle.json) or a
deterministic synthetic 512x512xC slice; ``--person-image`` or a synthetic 640x480 RGB frame.
Each (model, backend) runs in its own subprocess with the same thread count (TF intra- and
inter-op, LiteRT ``num_threads``, onnxruntime ``intra_op_num_threads``), so its peak RSS is its
own: load, ``--warmup`` untimed calls, then ``--runs`` timed calls. A missing artefact is a row
marked "absent". ``x SM`` is the speed-up over the SavedModel (SavedModel median / median);
``output`` (score, or boxes above the threshold and the top score) is a sanity figure.
Acceptance: TFLite float32 at least 2x faster than the SavedModel for the CT classifier.

Usage:
    python benchmarks/inference_latency.py --ct runs/<ct run>/export --person runs/<person run>/export
        [--ct-image PATH] [--person-image PATH] [--runs 200] [--warmup 20] [--threads 2]
        [--backends keras_predict,keras_call,saved_model,tflite,tflite_int8,onnx] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BACKENDS = ("keras_predict", "keras_call", "saved_model", "tflite", "tflite_int8", "onnx")
SIGNATURE = "serve_uint8"
MODELS = {  # --flag: (title, bundle kind, recipe that makes one)
    "ct": ("CT classifier", "binary_classification", "recipes/ct_screening/baseline.yaml"),
    "person": ("person detector", "object_detection", "recipes/person_detection/baseline.yaml"),
}
#: Default file per backend, and the bundle.json ``files`` keys that may name it instead.
FILES = {"keras_predict": "model.keras", "keras_call": "model.keras", "saved_model": "saved_model",
         "tflite": "model.tflite", "tflite_int8": "model_int8.tflite", "onnx": "model.onnx"}
BUNDLE_KEYS = {"keras_predict": ("keras_model", "keras"), "keras_call": ("keras_model", "keras")}
#: (module, pip name) each backend needs.
MODULES = {"keras_predict": ("keras", "keras"), "keras_call": ("keras", "keras"), "saved_model": ("tensorflow",) * 2,
           "tflite": ("ai_edge_litert", "ai-edge-litert"), "tflite_int8": ("ai_edge_litert", "ai-edge-litert"),
           "onnx": ("onnxruntime",) * 2}


def resolve_export(path: Path) -> Path | None:
    """The export folder of a run folder or an export folder (the one holding bundle.json)."""
    for cand in (path / "export", path):
        if (cand / "bundle.json").is_file():
            return cand
    return None


def artefact(export: Path, backend: str) -> Path:
    """The file (or folder) a backend loads: bundle.json ``files`` when it names one, else the default."""
    files = json.loads((export / "bundle.json").read_text()).get("files") or {}
    for key in BUNDLE_KEYS.get(backend, (backend,)):
        if isinstance(files.get(key), dict) and files[key].get("path"):
            return export / files[key]["path"]
    return export / FILES[backend]


def raw_image(kind: str, bundle: dict[str, Any], image: Path | None) -> Any:
    """The raw uint8 image every backend sees: a file from the data, or a synthetic one."""
    import cv2
    import numpy as np

    from lepton_vision.data import preprocess

    inp = bundle["input"]
    channels = 3 if kind == "object_detection" else int(inp["channels"])
    if image is not None:
        from lepton_vision.kinds.classification.export import window_from_bundle

        window = None if kind == "object_detection" else window_from_bundle(inp.get("window"))
        return preprocess.to_uint8(preprocess.read_image(image), channels, window)
    rng = np.random.default_rng(0)
    h, w = (480, 640) if kind == "object_detection" else (512, 512)
    # Smooth structure plus sensor noise: pure noise would be an unrealistic worst case for NMS.
    coarse = cv2.resize(rng.uniform(0, 255, (h // 32, w // 32, channels)).astype(np.float32), (w, h),
                        interpolation=cv2.INTER_CUBIC).reshape(h, w, channels)
    return np.clip(coarse + rng.normal(0, 8, (h, w, channels)), 0, 255).astype(np.uint8)


def make_call(backend: str, kind: str, export: Path, img: Any, input_hw: tuple[int, int],
              threads: int) -> Callable[[], Any]:
    """Load one backend and return a zero-argument function that scores ``img`` once."""
    import numpy as np

    path = artefact(export, backend)
    if backend in ("tflite", "tflite_int8"):
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(path), num_threads=threads).get_signature_runner(SIGNATURE)
        spec = runner.get_input_details()["image"]
        feed = img
        if spec["dtype"] == np.int8:  # quantised input: map the uint8 pixels with its parameters
            scale, zero = spec["quantization"]
            feed = np.clip(np.round(img / scale + zero), -128, 127).astype(np.int8)
        elif spec["dtype"] != np.uint8:
            feed = img.astype(spec["dtype"])
        return lambda: runner(image=feed)
    if backend == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name, outs = sess.get_inputs()[0].name, [o.name for o in sess.get_outputs()]
        return lambda: dict(zip(outs, sess.run(None, {name: img}), strict=True))

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    if backend == "saved_model":
        sig = tf.saved_model.load(str(path)).signatures[SIGNATURE]
        return lambda: {k: v.numpy() for k, v in sig(image=tf.constant(img)).items()}

    import keras

    if kind == "object_detection":
        import keras_cv  # noqa: F401 - registers the YOLOv8 classes for load_model

        from lepton_vision.data.preprocess import letterbox

        x = letterbox(img, input_hw)[0][None]
    else:
        import cv2

        x = cv2.resize(img, (input_hw[1], input_hw[0]), interpolation=cv2.INTER_LINEAR)
        x = (x.reshape(*input_hw, img.shape[-1]).astype(np.float32) / 255.0)[None]
    model = keras.models.load_model(path, compile=False)
    if backend == "keras_predict":
        return lambda: model.predict(x, verbose=0)
    fn = tf.function(lambda t: model(t, training=False))
    xt = tf.constant(x)
    return lambda: tf.nest.map_structure(lambda v: v.numpy(), fn(xt))


def run_worker(backend: str, export: Path, image: Path | None, runs: int, warmup: int,
               threads: int) -> dict[str, Any]:
    """One (model, backend) in this process: load, warm up, time (called in a subprocess)."""
    import numpy as np

    bundle = json.loads((export / "bundle.json").read_text())
    kind = str(bundle.get("kind", "binary_classification"))
    img = raw_image(kind, bundle, image)
    hw = bundle["input"]["image_size"]
    t = time.perf_counter()
    call = make_call(backend, kind, export, img, (int(hw[0]), int(hw[1])), threads)
    load_s = time.perf_counter() - t
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1000.0
    out = call()
    if kind == "object_detection":  # sanity figure: backends should roughly agree
        summary = "-" if backend.startswith("keras") else (
            f"{int(np.ravel(out['count'])[0])} boxes, max {float(np.ravel(out['image_score'])[0]):.3f}")
    else:
        summary = f"score {float(np.ravel(out['score'] if isinstance(out, dict) else out)[0]):.4f}"
    return {"image_shape": list(img.shape), "output": summary, "load_s": load_s, "ms_median": float(np.median(ms)),
            "ms_p90": float(np.percentile(ms, 90)), "ms_mean": float(ms.mean()),
            "img_per_s": 1000.0 / float(ms.mean()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def size_mb(path: Path) -> float:
    """Bytes of a file, or of every file under a folder, in MB."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
    return path.stat().st_size / 2**20


def absent_reason(backend: str, export: Path) -> str | None:
    """Why a backend cannot run ("absent ..."), or None when it can."""
    path = artefact(export, backend)
    if not (path / "saved_model.pb" if backend == "saved_model" else path).exists():
        return f"absent ({path.name} not in export)"
    module, dist = MODULES[backend]
    if importlib.util.find_spec(module) is None:
        return f"absent (pip install {dist})"
    return None


def _subprocess_json(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run a worker; its JSON is the last stdout line (libraries may log above it)."""
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0][-300:]}"}
    return json.loads(lines[-1])


def _version(*dists: str) -> str | None:
    """Installed version of the first of ``dists`` that is installed."""
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _ms(v: float) -> str:
    return f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def _table(rows: list[dict[str, Any]]) -> str:
    sm = next((r for r in rows if r["backend"] == "saved_model" and "ms_median" in r), None)
    head = (f"{'backend':<15}{'size MB':>9}{'median ms':>11}{'p90 ms':>9}{'mean ms':>9}{'img/s':>9}"
            f"{'x SM':>7}{'peak RSS MB':>13}  output")
    out = [head, "-" * len(head)]
    for r in rows:
        size = f"{r['size_mb']:.2f}" if r.get("size_mb") is not None else "-"
        if "ms_median" not in r:
            out.append(f"{r['backend']:<15}{size:>9}  {r.get('status') or 'failed: ' + r.get('error', '?')}")
            continue
        ratio = f"{sm['ms_median'] / r['ms_median']:.2f}" if sm else "n/a"
        out.append(f"{r['backend']:<15}{size:>9}{_ms(r['ms_median']):>11}{_ms(r['ms_p90']):>9}{_ms(r['ms_mean']):>9}"
                   f"{r['img_per_s']:>9.1f}{ratio:>7}{r['peak_rss_mb']:>13.0f}  {r['output']}")
    return "\n".join(out)


def _speedup_line(flag: str, rows: list[dict[str, Any]]) -> tuple[str, bool | None]:
    """The TFLite-float vs SavedModel line; PASS/FAIL (>= 2x) for the CT classifier only."""
    by = {r["backend"]: r for r in rows}
    sm, tfl = by.get("saved_model", {}), by.get("tflite", {})
    title = MODELS[flag][0]
    if "ms_median" not in sm or "ms_median" not in tfl:
        missing = ", ".join(b for b, r in (("saved_model", sm), ("tflite", tfl)) if "ms_median" not in r)
        return f"{title}: TFLite float vs SavedModel speed-up: n/a ({missing} not measured)", None
    x = sm["ms_median"] / tfl["ms_median"]
    line = (f"{title}: TFLite float vs SavedModel speed-up at batch 1: {x:.2f}x "
            f"(SavedModel {_ms(sm['ms_median'])} ms, TFLite {_ms(tfl['ms_median'])} ms median)")
    if flag != "ct":
        return line, None
    return f"{line}  {'PASS' if x >= 2.0 else 'FAIL'} (target >= 2x)", x >= 2.0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every (model, backend) in a subprocess, print the tables (and --json)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", type=Path, help="CT classifier run folder or its export folder")
    ap.add_argument("--person", type=Path, help="person detector run folder or its export folder")
    ap.add_argument("--ct-image", type=Path, help="a CT image/DICOM from the run's data (default: synthetic 512x512)")
    ap.add_argument("--person-image", type=Path, help="an RGB frame (default: synthetic 640x480)")
    ap.add_argument("--runs", type=int, default=200, help="timed calls per backend (default 200)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed warm-up calls (default 20)")
    ap.add_argument("--threads", type=int, default=2, help="threads for every backend (default 2)")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of " + ",".join(BACKENDS))
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per backend before giving up")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--export", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(args.worker, args.export, args.image, args.runs, args.warmup, args.threads)))
        return 0
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in BACKENDS]
    problems = []
    if bad:
        problems.append(f"unknown backends {bad}; choose from {','.join(BACKENDS)}")
    if args.runs < 1 or args.warmup < 0 or args.threads < 1:
        problems.append("--runs and --threads must be >= 1 and --warmup >= 0")
    if args.ct is None and args.person is None:
        problems.append("pass --ct and/or --person (a run folder or its export folder)")
    for flag, img in (("ct", args.ct_image), ("person", args.person_image)):
        if img is not None and not img.is_file():
            problems.append(f"--{flag}-image {img} is not a file")
    exports: dict[str, Path] = {}
    for flag in MODELS:
        given = getattr(args, flag)
        if given is None:
            continue
        title, kind, recipe = MODELS[flag]
        export = resolve_export(given)
        if export is None:
            problems.append(f"--{flag}: no bundle.json in {given} or {given / 'export'}; make a {title} with "
                            f"'lepton-vision train {recipe}', then pass runs/<run>")
            continue
        got = json.loads((export / "bundle.json").read_text()).get("kind", "binary_classification")
        if got != kind:
            problems.append(f"--{flag}: {export} holds a {got} bundle; --{flag} takes a {kind} export")
        exports[flag] = export
    if problems:
        for p in problems:
            print(f"error: {p}.", file=sys.stderr)
        return 2

    versions = {"tensorflow": _version("tensorflow", "tensorflow-cpu"),
                **{d: _version(d) for d in ("keras", "keras-cv", "ai-edge-litert", "onnxruntime")}}
    host = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": args.threads, "python": platform.python_version()}
    results: dict[str, Any] = {}
    for flag, export in exports.items():
        image = args.ct_image if flag == "ct" else args.person_image
        rows: list[dict[str, Any]] = []
        for backend in backends:
            path = artefact(export, backend)
            row: dict[str, Any] = {"backend": backend, "size_mb": size_mb(path) if path.exists() else None}
            reason = absent_reason(backend, export)
            if reason:
                row["status"] = reason
            else:
                print(f"running {MODELS[flag][0]} / {backend} ...", flush=True)
                cmd = [sys.executable, __file__, "--worker", backend, "--export", str(export),
                       "--runs", str(args.runs), "--warmup", str(args.warmup), "--threads", str(args.threads)]
                row.update(_subprocess_json(cmd + (["--image", str(image)] if image else []), args.timeout))
            rows.append(row)
        results[flag] = {"export": str(export), "image": str(image) if image else "synthetic", "rows": rows}

    print(f"\nhost {host['platform']} ({host['processor']}), {host['cpus']} CPUs, {args.threads} threads per "
          f"backend, python {host['python']}")
    print("versions " + ", ".join(f"{d} {v}" for d, v in versions.items() if v))
    print(f"batch 1, {args.warmup} warm-up + {args.runs} timed calls per backend; threads: TF intra = inter = "
          f"LiteRT = onnxruntime intra = {args.threads}; img/s = 1000 / mean ms; x SM = SavedModel median / median")
    verdict: bool | None = None
    for flag, res in results.items():
        shape = next((r["image_shape"] for r in res["rows"] if "image_shape" in r), None)
        bundle = json.loads((Path(res["export"]) / "bundle.json").read_text())
        print(f"\n{MODELS[flag][0]}: {res['export']} (input {bundle['input']['image_size']}; image {res['image']}"
              + (f", {'x'.join(map(str, shape))} uint8)" if shape else ")"))
        print(_table(res["rows"]))
        if flag == "ct" and bundle.get("calibration"):
            print("note: serve_uint8 applies the bundle's temperature; keras rows show the uncalibrated score")
        if flag == "person" and any(b.startswith("keras") for b in backends):
            print("note: keras_call times the network only (raw YOLOv8 heads on the letterboxed frame), "
                  "keras_predict adds keras-cv's decoding + NMS (predict_step); serve_uint8 rows include "
                  "letterbox, decoding and NMS")
        line, ok = _speedup_line(flag, res["rows"])
        res["tflite_vs_saved_model"] = line
        verdict = ok if flag == "ct" else verdict
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.json.parent, delete=False, suffix=".tmp") as fh:
            json.dump({"host": host, "versions": versions, "runs": args.runs, "warmup": args.warmup,
                       "models": results, "ct_tflite_2x_pass": verdict}, fh, indent=2)
        os.replace(fh.name, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

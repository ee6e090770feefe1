"""Scaling out: wall time of k cross-validation folds on 1 vs 2 Ray workers.

The same recipe (the CT baseline on embedded synthetic data, shrunk so a fold takes seconds) runs
its k folds with ``train.executor: ray`` twice: on a private Ray with 1 CPU (one fold at a time)
and with 2 CPUs (two at a time). Each fold task asks for 1 CPU and trains with 1 TensorFlow
thread (``train.threads: 1``), so a worker is one core and the comparison is workers, not
threads. Both runs stop after metrics.json (no final model or export, which do not scale with
k). The script prints each wall time, the ratio, each fold's own training time, that the two
runs gave the same metrics, the default local executor's time for reference, and what an N-node
cluster is expected to give.

Ray's own start (a few seconds) is timed apart. Each fold task runs in a fresh worker process
(``max_calls=1``), so every fold pays TensorFlow's import once: that is part of the measured
overhead per fold. On a shared 2-core machine the numbers move with other load; compare ratios.

Usage:
    python benchmarks/scaling.py [--folds 4] [--epochs 6] [--patients 16] [--size 48]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]


def _project(root: Path, patients: int) -> Path:
    import yaml

    for d in ("tasks", "datasets", "recipes"):
        shutil.copytree(REPO / d, root / d)
    card = root / "datasets/synthetic_ct/dataset.yaml"
    data = yaml.safe_load(card.read_text())
    data["synthetic"].update(n_patients=patients, slices_per_patient=4, image_size=64)
    card.write_text(yaml.safe_dump(data, sort_keys=False))
    return root / "recipes/ct_screening/baseline.yaml"


def _timed_run(recipe: Path, overrides: list[str], out: Path, workers: int) -> tuple[float, float, dict]:
    """(Ray start seconds, fold-stage wall seconds, metrics) of one run on a private Ray."""
    from lepton_vision.engine.crossval import run_train
    from lepton_vision.engine.executors import connect_ray

    t0 = time.perf_counter()
    ray, _ = connect_ray(None, num_cpus=workers)
    started = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        run_train(recipe, overrides, out=out, stop_after="metrics")
        wall = time.perf_counter() - t1
    finally:
        ray.shutdown()
    return started, wall, json.loads((out / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--patients", type=int, default=16, help="synthetic patients (4 slices each)")
    ap.add_argument("--size", type=int, default=48, help="network input size in pixels")
    args = ap.parse_args()

    from lepton_vision.config.cards import load_resolved
    from lepton_vision.data.generate import ensure_generated

    tmp = Path(tempfile.mkdtemp(prefix="lepton-scaling-"))
    try:
        os.environ["LEPTON_HOME"] = str(tmp)
        os.environ["LEPTON_GENERATED_ROOT"] = str(tmp / "generated")
        recipe = _project(tmp, args.patients)
        resolved = load_resolved(recipe)
        ensure_generated(resolved.dataset, resolved.dataset_path, progress=False)  # not timed
        overrides = [
            f"cv.n_splits={args.folds}", f"train.epochs={args.epochs}", f"input.image_size=[{args.size}, {args.size}]",
            "train.early_stopping.enabled=false", "evaluate.n_bootstrap=200", "train.verbose=false",
            "train.executor=ray", "train.threads=1", "train.resources.cpus=1",
        ]
        results = {}
        for workers in (1, 2):
            results[workers] = _timed_run(recipe, overrides, tmp / f"run_{workers}", workers)
        # Reference: the default local executor, folds one after the other in this process with
        # TensorFlow's default threads (every core). Last, because it starts TensorFlow here.
        from lepton_vision.engine.crossval import run_train

        local_overrides = [o for o in overrides if not o.startswith(("train.executor", "train.threads"))]
        t0 = time.perf_counter()
        run_train(recipe, local_overrides, out=tmp / "run_local", stop_after="metrics")
        t_local = time.perf_counter() - t0
        fold_s = {w: [json.loads((tmp / f"run_{w}/folds/{k}/result.json").read_text())["seconds"]
                      for k in range(args.folds)] for w in (1, 2)}
        same = all(
            abs(results[1][2]["pooled"][m]["value"] - results[2][2]["pooled"][m]["value"]) <= 1e-6
            for m in results[1][2]["pooled"]
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    k = args.folds
    (s1, t1, _), (s2, t2, _) = results[1], results[2]
    ratio = t1 / t2
    mean_fit = sum(fold_s[1]) / k
    overhead = t1 / k - mean_fit  # per fold on one worker: process start, TF import, data, scoring
    print(f"scaling benchmark: {k} folds x {args.epochs} epochs, {args.patients * 4} CT slices at "
          f"{args.size} px, 1 CPU and 1 TF thread per fold task, {os.cpu_count()} cores on this machine")
    print(f"  Ray start                          {s1:6.1f} s (1 CPU)   {s2:6.1f} s (2 CPUs)  (not in the times below)")
    print(f"  1 worker : {k} folds in {t1:6.1f} s   (fold fit {min(fold_s[1]):.1f}-{max(fold_s[1]):.1f} s each)")
    print(f"  2 workers: {k} folds in {t2:6.1f} s   (fold fit {min(fold_s[2]):.1f}-{max(fold_s[2]):.1f} s each)")
    print(f"  speed-up 1 -> 2 workers: {ratio:.2f}x (ideal {min(2, k)}x; efficiency {ratio / min(2, k):.0%})")
    print(f"  reference, local executor (in-process, folds in turn, TF on all {os.cpu_count()} cores): {t_local:6.1f} s")
    print(f"  same pooled metrics on 1 and 2 workers (within 1e-6): {'yes' if same else 'NO'}")
    print(f"  per fold on one worker: {mean_fit:.1f} s training + {overhead:.1f} s overhead (worker start, "
          "TensorFlow import, data from the object store, scoring, files)")
    print()
    print("What a cluster gives: folds are independent Ray tasks (one per fold, each asking for "
          "train.resources), so with W workers")
    print("the fold stage takes about ceil(k / W) x (fold time + overhead): near-linear speed-up up to W = k "
          "workers, then flat,")
    print("because one fold never spans machines (Keras 3 fit does not run under MultiWorkerMirroredStrategy; "
          "use several GPUs of one")
    print("node for one fold with train.strategy: mirrored). Expected on N nodes with c cores each and "
          "resources.cpus = r per fold:")
    per_fold = mean_fit + overhead
    for nodes, cores in ((1, 2), (2, 2), (4, 8), (8, 8)):
        w = min(nodes * cores, k)  # workers that have a fold to run
        est = math.ceil(k / w) * per_fold
        print(f"  {nodes:2d} node(s) x {cores} cores, r = 1: {w:3d} folds at once -> "
              f"~{est:5.1f} s for these {k} folds ({t1 / est:.1f}x one worker)")
    print("A sweep (lepton-vision tune) multiplies the independent work by the trial count: trials x folds "
          "tasks keep up to that many workers busy.")
    print("Fold times here are from a shared machine: larger folds (real data, GPUs) make the fixed overhead "
          "per fold relatively smaller.")


if __name__ == "__main__":
    main()

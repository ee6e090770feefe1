"""Does pretraining on generated data help? Scratch vs synthetic-pretrained, on the real sets.

For each real dataset the script runs two cross-validations on the SAME grouped folds (same
data, seed and cv settings; stop after metrics, no refit or export):

    dataset         scratch recipe                               pretrained recipe
    usc_pedestrian  recipes/person_detection/usc_pedestrian.yaml   .../usc_pedestrian_pretrained.yaml
    kitti           recipes/obstacle_detection/kitti.yaml          .../kitti_pretrained.yaml
    covid_ct        recipes/ct_screening/covid_ct.yaml             .../covid_ct_pretrained.yaml

and prints, per dataset, the out-of-fold metric of both arms with bootstrap CIs, the paired
difference (pretrained - scratch) with its CI and the share of resamples where pretrained is
better (lepton_vision.evaluate.compare: the same resamples of the same groups for both arms), and wall
times (the pretrained arm's includes its pretrain stage unless it came from the cache; the
stage's own time is shown). KITTI is also scored with its classes merged (one "obstacle"
class). Results go to OUT/pretraining_gain.json.

Arms whose run directory already holds metrics.json are reused, unfinished ones are resumed
(finished folds are kept): a long benchmark can be stopped and started again.

    LEPTON_DATA_ROOT=../shared/data python benchmarks/pretraining_gain.py --out runs/pretraining_gain
    LEPTON_DATA_ROOT=../shared/data python benchmarks/pretraining_gain.py --only covid_ct --set train.epochs=5

Datasets whose files are absent are skipped with the reason. This is CPU work of hours at the
recipes' settings (2 cores); ``--set`` applies overrides to both arms of every dataset,
``--set-<dataset>`` to one dataset's two arms (e.g. ``--set-usc_pedestrian train.epochs=40``).
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

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ARMS = {
    "usc_pedestrian": ("person_detection/usc_pedestrian.yaml", "person_detection/usc_pedestrian_pretrained.yaml"),
    "kitti": ("obstacle_detection/kitti.yaml", "obstacle_detection/kitti_pretrained.yaml"),
    "covid_ct": ("ct_screening/covid_ct.yaml", "ct_screening/covid_ct_pretrained.yaml"),
}
DATA_FOLDER = {"usc_pedestrian": "usc_pedestrian", "kitti": "kitti_object_subset", "covid_ct": "covid_ct"}


def _wall(run: Path) -> float | None:
    """Seconds the arm took: measured by this script, else run.json's start to metrics.json."""
    timing = run / "bench_time.json"
    if timing.is_file():
        return float(json.loads(timing.read_text())["seconds"])
    info, metrics = run / "run.json", run / "metrics.json"
    if info.is_file() and metrics.is_file():
        import datetime as dt

        started = dt.datetime.fromisoformat(json.loads(info.read_text())["started"]).timestamp()
        return metrics.stat().st_mtime - started
    return None


def scratch_overrides(overrides: list[str]) -> list[str]:
    """The overrides for the scratch arm: ``pretrain`` ones concern only the pretrained arm.

    The scratch recipe has no ``pretrain:`` stage, so ``pretrain.seed=1234`` (which keeps the
    cached pretraining while ``seed=7`` redraws the folds) would fail its validation.
    """
    from lepton_vision.config.recipe import parse_override

    return [o for o in overrides if parse_override(o)[0][0] != "pretrain"]


def run_arm(recipe: Path, overrides: list[str], out: Path, stop_after: str = "metrics") -> tuple[Path, float | None]:
    """Cross-validate one arm into ``out`` (reused when finished with the same recipe, resumed
    when interrupted); ``stop_after="all"`` also needs the export to count as finished."""
    from lepton_vision.engine.crossval import run_train
    from lepton_vision.runio import atomic_write_json

    if (out / "metrics.json").is_file() and (stop_after == "metrics" or (out / "export" / "bundle.json").is_file()):
        from lepton_vision.config.cards import load_resolved
        from lepton_vision.config.errors import LeptonError
        from lepton_vision.config.recipe import recipe_from_text, result_sha256

        done = recipe_from_text((out / "recipe.resolved.yaml").read_text())
        if result_sha256(done) != result_sha256(load_resolved(recipe, overrides).recipe):
            raise LeptonError(f"{out}: finished with another recipe than {recipe.name} {' '.join(overrides)}",
                              hint="Use another --out, or delete that run directory to redo the arm.")
        print(f"  {out.name}: finished earlier with the same recipe, reused", flush=True)
        return out, _wall(out)
    resume = out if (out / "recipe.resolved.yaml").is_file() else None
    t0 = time.time()
    run_train(recipe, overrides, out=None if resume else out, resume=resume, stop_after=stop_after)
    seconds = time.time() - t0
    if resume is None:
        atomic_write_json(out / "bench_time.json", {"seconds": round(seconds, 1)})
    return out, seconds if resume is None else _wall(out)


def _fmt(entry: dict) -> str:
    lo, hi = entry["ci"]
    ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None else "[-, -]"
    return f"{entry['value']:.3f} {ci}"


def _minutes(s: float | None) -> str:
    return "-" if s is None else f"{s / 60:.1f} min"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "pretraining_gain", help="where the arms' runs go")
    p.add_argument("--only", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override for both arms of every dataset (pretrain.*: the pretrained arm only)")
    for name in ARMS:
        p.add_argument(f"--set-{name}", dest=f"set_{name}", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override for both arms of {name} (pretrain.*: the pretrained arm only)")
    p.add_argument("--n-bootstrap", type=int, default=1000)
    args = p.parse_args(argv)

    from lepton_vision.config.cards import data_root
    from lepton_vision.evaluate.compare import compare_runs

    root = data_root()
    results: dict[str, dict] = {}
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name not in ARMS:
            p.error(f"--only: unknown dataset {name!r}; choose from {', '.join(ARMS)}")
        if root is None or not (root / DATA_FOLDER[name]).is_dir():
            print(f"{name}: skipped (no {DATA_FOLDER[name]}/ under LEPTON_DATA_ROOT={root})", flush=True)
            continue
        overrides = [*args.overrides, *getattr(args, f"set_{name}")]
        scratch_recipe, pre_recipe = (REPO / "recipes" / r for r in ARMS[name])
        scratch = scratch_overrides(overrides)
        print(f"== {name}: scratch ({scratch_recipe.name}) {' '.join(scratch)}", flush=True)
        a, wall_a = run_arm(scratch_recipe, scratch, args.out / f"{name}-scratch")
        print(f"== {name}: pretrained ({pre_recipe.name}) {' '.join(overrides)}", flush=True)
        b, wall_b = run_arm(pre_recipe, overrides, args.out / f"{name}-pretrained")
        pre = json.loads((b / "pretrain.json").read_text())
        start = json.loads((b / "start_weights.json").read_text())
        entry = {"scratch_run": str(a), "pretrained_run": str(b), "overrides": overrides,
                 "wall_s": {"scratch": wall_a, "pretrained": wall_b},
                 "pretrain": {k: pre.get(k) for k in ("images", "seconds", "images_per_second", "synthetic_validation",
                                                      "generator")},
                 "pretrain_reused_from_cache": bool(start.get("reused_cache")),
                 "comparisons": [compare_runs(a, b, n_bootstrap=args.n_bootstrap)]}
        if name == "kitti":
            entry["comparisons"].append(compare_runs(a, b, merge_classes=True, n_bootstrap=args.n_bootstrap))
        results[name] = entry
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pretraining_gain.json").write_text(json.dumps(results, indent=2))

    print("\npretraining gain (out-of-fold, same folds; CIs: paired bootstrap over groups/images)")
    print(f"{'dataset':15s} {'metric':12s} {'scratch':22s} {'pretrained':22s} {'difference':24s} "
          f"{'P(pre>scr)':>10s} {'wall scratch':>13s} {'wall pretrained':>16s} {'(pretrain stage)':>17s}")
    for name, e in results.items():
        for c in e["comparisons"]:
            d = c["difference"]
            lo, hi = d["ci"]
            diff = f"{d['value']:+.3f} [{lo:+.3f}, {hi:+.3f}]" if lo is not None else f"{d['value']:+.3f}"
            stage = "cached" if e["pretrain_reused_from_cache"] else _minutes(e["pretrain"]["seconds"])
            print(f"{name:15s} {c['metric']:12s} {_fmt(c['a']):22s} {_fmt(c['b']):22s} {diff:24s} "
                  f"{(d['p_b_better'] or 0):>10.2f} {_minutes(e['wall_s']['scratch']):>13s} "
                  f"{_minutes(e['wall_s']['pretrained']):>16s} {stage:>17s}")
        sv = e["pretrain"].get("synthetic_validation") or {}
        if sv:
            print(f"{'':15s} pretraining: {e['pretrain']['images']} generated images ({e['pretrain']['generator']}), "
                  f"{e['pretrain']['images_per_second']} img/s, synthetic {sv['metric']} {sv['value']:.3f}")
    print(f"\nresults: {args.out / 'pretraining_gain.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

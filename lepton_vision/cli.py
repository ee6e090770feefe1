"""The ``lepton-vision`` command line.

Thin by design: parse arguments, call one engine function, print, set the exit code. Heavy
modules (TensorFlow, Keras) are imported inside the command functions, so ``--help`` and
``recipe validate`` stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from lepton_vision.version import __version__
from lepton_vision.config.errors import LeptonError

# Nothing here may call out to the internet at run time (albumentations checks PyPI on import,
# Gradio and huggingface_hub phone home unless told not to).
_OFFLINE_ENV = {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}

EXAMPLES = {
    "train": """
        examples:
          lepton-vision train recipes/ct_screening/baseline.yaml
          lepton-vision train recipes/ct_screening/baseline.yaml --set train.epochs=3 --set cv.n_splits=3
          LEPTON_DATA_ROOT=../shared/data lepton-vision train recipes/ct_screening/covid_ct.yaml
          lepton-vision train recipes/ct_screening/baseline.yaml --resume runs/ct_screening-baseline-20261123-101500
          lepton-vision train recipes/ct_screening/baseline.yaml --executor ray --address auto   # a Ray task per fold
          lepton-vision train recipes/ct_screening/baseline.yaml --tracking-uri sqlite:////shared/mlflow.db
    """,
    "pretrain": """
        examples:
          LEPTON_DATA_ROOT=../shared/data lepton-vision pretrain recipes/obstacle_detection/kitti_pretrained.yaml
          lepton-vision pretrain recipes/ct_screening/pretrained.yaml --set pretrain.images=2000

        Runs only the recipe's pretrain: stage (or finds it in the cache) and prints where the
        weights are; `lepton-vision train` with the same recipe then reuses them.
    """,
    "evaluate": """
        examples:
          lepton-vision evaluate runs/ct_screening-baseline-20261123-101500
          lepton-vision evaluate runs/RUN --policy min_specificity:0.9 --out metrics_spec90.json
    """,
    "export": """
        examples:
          lepton-vision export runs/ct_screening-baseline-20261123-101500
          lepton-vision export runs/RUN --format tflite,tflite_int8,onnx    # add ONNX to a finished run
          lepton-vision export runs/RUN --fold 1    # fold 1's model: int8 judged on its held-out images
    """,
    "predict": """
        examples:
          lepton-vision predict runs/RUN/export scans/ --out preds.csv
          lepton-vision predict runs/RUN/export slice_001.dcm slice_002.png --threshold 0.3
        object detection (COCO results JSON; images, folders and videos):
          lepton-vision predict runs/RUN/export frames/ street.mp4 --out preds.json --annotate annotated/
          lepton-vision predict runs/RUN/export street.mp4 --out preds.json --video-stride 5 --threshold 0.4
          lepton-vision predict runs/RUN/export frames/ --out all_boxes.json --all   # for mAP tools
    """,
    "monitor": """
        examples:
          lepton-vision monitor runs/RUN/export camera_frames/ --window 100 --out monitor/today
          lepton-vision monitor runs/RUN/export lobby.mp4 --video-stride 10 --max-psi 0.2
          lepton-vision monitor runs/RUN/export new_scans/ --out monitor/ward3 || alert "CT drift"

        Scores the inputs in order (folders sorted, video frames in order), compares each window of
        --window inputs with the reference stored in the export (score PSI and KS test,
        image-statistics shift, out-of-distribution share, positive/alarm rate) and writes
        monitor.json, monitor.html, windows.csv and observations.csv. Exit code 0: no limit
        crossed; 3: drift (a limit crossed); 1: an error.
    """,
    "explain": """
        examples:
          lepton-vision explain runs/ct_screening-baseline-20261123-101500 scans/slice_001.dcm --out heat.png
          lepton-vision explain runs/RUN/export image.png --out image_gradcam.png
    """,
    "data": """
        examples:
          lepton-vision data synth synthetic_ct
          lepton-vision data check recipes/ct_screening/baseline.yaml
    """,
    "recipe": """
        examples:
          lepton-vision recipe validate recipes/ct_screening/*.yaml
          lepton-vision recipe show recipes/ct_screening/baseline.yaml --set train.epochs=2
          lepton-vision recipe schema > recipe.schema.json
    """,
    "check": """
        examples:
          lepton-vision check
    """,
    "tune": """
        examples:
          lepton-vision tune recipes/ct_screening/baseline.yaml --space space.yaml --trials 8
          lepton-vision tune recipes/ct_screening/baseline.yaml --space space.yaml --trials 20 --address auto
        space.yaml maps recipe paths to Ray Tune domains:
          train.optimizer.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
          model.backbone: {choice: [small_cnn, mobilenet_v3_small]}
    """,
    "demo": """
        examples:
          lepton-vision demo runs/ct_screening-baseline-20261123-101500/export
          lepton-vision demo runs/RUN/export --port 7861 --auth reviewer:s3cret
          lepton-vision demo runs/RUN/export --host 0.0.0.0 --auth reviewer:s3cret   # reachable from the network
    """,
}


def _epilog(name: str) -> str:
    return textwrap.dedent(EXAMPLES[name])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests)."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="lepton-vision",
        description="From a YAML recipe to a cross-validated, exported vision model.",
        epilog=textwrap.dedent(
            """
            typical session:
              lepton-vision train recipes/ct_screening/baseline.yaml     # data -> folds -> CV -> export -> report
              lepton-vision predict runs/<run>/export image.png --out preds.csv
            run `lepton-vision COMMAND --help` for each command's options and examples.
            """
        ),
        formatter_class=fmt,
    )
    p.add_argument("--version", action="version", version=f"lepton-vision {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="cross-validate, refit, export and report a recipe",
                       epilog=_epilog("train"), formatter_class=fmt)
    t.add_argument("recipe", help="recipe YAML file")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field (YAML value), repeatable")
    t.add_argument("--out", type=Path, help="run directory (default runs/<recipe name>-<timestamp>)")
    t.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue an interrupted run: finished folds are not recomputed")
    _add_scale_out_options(t)
    t.add_argument("--debug", action="store_true", help="show full tracebacks", default=argparse.SUPPRESS)

    pt = sub.add_parser("pretrain", help="run (or find cached) a recipe's pretrain: stage on generated data",
                        epilog=_epilog("pretrain"), formatter_class=fmt)
    pt.add_argument("recipe", help="recipe YAML file with a pretrain: section")
    pt.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe field (YAML value), repeatable")
    pt.add_argument("--debug", action="store_true", help="show full tracebacks", default=argparse.SUPPRESS)

    tu = sub.add_parser("tune", help="Ray Tune sweep: every trial a full grouped cross-validation",
                        epilog=_epilog("tune"), formatter_class=fmt)
    tu.add_argument("recipe", help="recipe YAML file")
    tu.add_argument("--space", type=Path, required=True, help="search space YAML (recipe path: domain)")
    tu.add_argument("--trials", type=int, required=True, metavar="N",
                    help="trials to run (with grid domains: per grid point)")
    tu.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe field in every trial, repeatable")
    tu.add_argument("--out", type=Path, help="sweep directory (default runs/<recipe name>-tune-<timestamp>)")
    tu.add_argument("--address", metavar="ADDR",
                    help="Ray cluster: auto, host:port or ray://host:10001 (default: train.ray.address, "
                    "else a private Ray on this machine)")
    tu.add_argument("--max-concurrent", type=int, metavar="N", help="trials at once (default: as many as fit)")
    tu.add_argument("--debug", action="store_true", help="show full tracebacks", default=argparse.SUPPRESS)

    e = sub.add_parser("evaluate", help="rescore a run from oof_predictions.csv (no TensorFlow)",
                       epilog=_epilog("evaluate"), formatter_class=fmt)
    e.add_argument("run_dir", type=Path)
    e.add_argument("--policy", help="threshold policy, e.g. max_f1, youden, min_sensitivity:0.95, fixed:0.5")
    e.add_argument("--out", type=Path, help="where to write the metrics (default RUN_DIR/metrics.json, "
                   "or RUN_DIR/metrics_<policy>.json with --policy)")
    e.add_argument("--debug", action="store_true", help="show full tracebacks", default=argparse.SUPPRESS)

    x = sub.add_parser("export", help="re-export a finished run without retraining",
                       epilog=_epilog("export"), formatter_class=fmt)
    x.add_argument("run_dir", type=Path)
    x.add_argument("--format", dest="formats", metavar="LIST",
                   help="comma-separated artefacts, replacing the recipe's export.formats: saved_model "
                   "(always), tflite, tflite_int8, onnx (needs the [onnx] extra)")
    x.add_argument("--fold", type=int, metavar="K",
                   help="export fold K's model (1-based) into RUN/folds/<K-1>/export instead of the final "
                   "model: its int8 check is then on that fold's held-out validation images")
    x.add_argument("--debug", action="store_true", help="show full tracebacks", default=argparse.SUPPRESS)

    pr = sub.add_parser("predict", help="score images (PNG/JPEG/DICOM files or folders) or, with a "
                        "detection export, detect objects in images and videos",
                        epilog=_epilog("predict"), formatter_class=fmt)
    pr.add_argument("export_dir", type=Path)
    pr.add_argument("inputs", nargs="+", type=Path, help="files or folders (detection: also videos)")
    pr.add_argument("--out", type=Path, required=True,
                    help="classification: CSV to write (path,score,decision,ood_score,in_distribution); object detection: COCO "
                    "results JSON (file_name, category_id, category_name, bbox [x,y,w,h] in original "
                    "pixels, score, and frame for videos) holding only boxes with score >= the "
                    "threshold in use (the export's, or --threshold); --all keeps every box")
    pr.add_argument("--threshold", type=float, help="override the exported threshold (detection: the box "
                    "score threshold)")
    pr.add_argument("--backend", choices=["auto", "saved_model", "tflite", "tflite_int8"], default="saved_model",
                    help="tflite: float32 LiteRT; tflite_int8: the int8 file (see bundle.json "
                    "files.tflite_int8.recommended); auto: tflite when LiteRT is installed (default: saved_model)")
    pr.add_argument("--all", dest="keep_all", action="store_true",
                    help="detection: write every box the model returns (score >= the task's min_score), "
                    "not only those at or above the threshold, as mAP tools need")
    pr.add_argument("--annotate", type=Path, metavar="DIR",
                    help="detection: write images (.png) and videos (.mp4, or .avi) with the boxes drawn")
    pr.add_argument("--video-stride", type=int, metavar="N",
                    help="detection: run every N-th video frame (default 1)")
    pr.add_argument("--debug", action="store_true", help="show full tracebacks", default=argparse.SUPPRESS)

    mo = sub.add_parser("monitor", help="compare new images or video with an export's reference: drift "
                        "per window, monitor.html, exit 3 when a limit is crossed",
                        epilog=_epilog("monitor"), formatter_class=fmt)
    mo.add_argument("export_dir", type=Path, help="RUN/export (or RUN) with an OOD reference")
    mo.add_argument("inputs", nargs="+", type=Path, help="images, folders and videos, in stream order")
    mo.add_argument("--window", type=int, default=50, metavar="N", help="inputs per window (default 50)")
    mo.add_argument("--out", type=Path, metavar="DIR",
                    help="folder to write (default ./monitor-<run>-<timestamp>)")
    mo.add_argument("--max-psi", type=float, default=0.25, help="score PSI limit per window (default 0.25)")
    mo.add_argument("--max-ood-share", type=float, default=0.2,
                    help="limit on the share of out-of-distribution inputs per window (default 0.2)")
    mo.add_argument("--max-stat-shift", type=float, default=3.0, help="limit on a window's median image "
                    "statistic, in training spreads from the training median (default 3)")
    mo.add_argument("--ks-alpha", type=float, default=None, help="make the KS test part of the alarm at this "
                    "level, Bonferroni-corrected over the windows (default: reported, not alarmed on, since "
                    "slices of a patient or frames of a sequence are not independent)")
    mo.add_argument("--video-stride", type=int, default=1, metavar="N", help="use every N-th video frame")
    mo.add_argument("--backend", choices=["auto", "saved_model", "tflite", "tflite_int8"], default="saved_model",
                    help="model backend (default saved_model)")
    mo.add_argument("--quiet", action="store_true", help="no progress bar")
    mo.add_argument("--debug", action="store_true", help="show full tracebacks", default=argparse.SUPPRESS)

    xp = sub.add_parser("explain", help="Grad-CAM overlay: where the model looked for one image",
                        epilog=_epilog("explain"), formatter_class=fmt)
    xp.add_argument("source", type=Path, help="run directory or its export directory")
    xp.add_argument("image", type=Path, help="image file (PNG/JPEG/DICOM)")
    xp.add_argument("--out", type=Path, required=True, help="PNG to write (heat map over the image)")
    xp.add_argument("--debug", action="store_true", help="show full tracebacks", default=argparse.SUPPRESS)

    d = sub.add_parser("data", help="generate the embedded data or check a recipe's data",
                       epilog=_epilog("data"), formatter_class=fmt)
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION")
    ds = dsub.add_parser("synth", help="generate a synthetic dataset from its card")
    ds.add_argument("dataset", help="dataset card name (e.g. synthetic_ct) or path to dataset.yaml")
    ds.add_argument("--force", action="store_true", help="regenerate even if it exists")
    ds.add_argument("--debug", action="store_true", help="show full tracebacks", default=argparse.SUPPRESS)
    dc = dsub.add_parser("check", help="read every file of a recipe's dataset and report problems")
    dc.add_argument("recipe")
    dc.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    dc.add_argument("--debug", action="store_true", help="show full tracebacks", default=argparse.SUPPRESS)

    r = sub.add_parser("recipe", help="validate, show or describe recipes (no TensorFlow)",
                       epilog=_epilog("recipe"), formatter_class=fmt)
    rsub = r.add_subparsers(dest="recipe_command", metavar="ACTION")
    rv = rsub.add_parser("validate", help="validate recipes and their cards")
    rv.add_argument("recipes", nargs="+")
    rv.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    rv.add_argument("--debug", action="store_true", help="show full tracebacks", default=argparse.SUPPRESS)
    rs = rsub.add_parser("show", help="print the resolved recipe (defaults filled in)")
    rs.add_argument("recipe")
    rs.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    rs.add_argument("--debug", action="store_true", help="show full tracebacks", default=argparse.SUPPRESS)
    rsub.add_parser("schema", help="print the recipe JSON Schema")

    dm = sub.add_parser("demo", help="serve a Gradio demo of an export in the browser (127.0.0.1 by default)",
                        epilog=_epilog("demo"), formatter_class=fmt)
    dm.add_argument("export_dir", type=Path, help="RUN/export (or RUN)")
    dm.add_argument("--host", default="127.0.0.1",
                    help="interface to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    dm.add_argument("--port", type=int, help="port (default 7860, or the next free one)")
    dm.add_argument("--auth", metavar="USER:PASSWORD", help="require this login on the page")
    dm.add_argument("--backend", choices=["auto", "saved_model", "tflite", "tflite_int8"], default="auto",
                    help="auto: LiteRT float32 when installed, else the SavedModel (default auto)")
    dm.add_argument("--max-file-size", default="100mb", metavar="SIZE",
                    help="largest upload, e.g. 20mb or 1gb (default 100mb)")
    dm.add_argument("--max-pixels", type=int, default=50_000_000, metavar="N",
                    help="refuse images with more pixels (default 50,000,000)")
    dm.add_argument("--debug", action="store_true", help="show full tracebacks", default=argparse.SUPPRESS)

    c = sub.add_parser("check", help="versions, devices and data root",
                       epilog=_epilog("check"), formatter_class=fmt)
    c.add_argument("--debug", action="store_true", help="show full tracebacks", default=argparse.SUPPRESS)
    return p


# ---------------------------------------------------------------------------------------------


def _add_scale_out_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=["local", "ray"],
                   help="where the folds run (sets train.executor): local, or one Ray task per fold")
    p.add_argument("--address", metavar="ADDR",
                   help="Ray cluster for --executor ray (sets train.ray.address): auto, host:port or "
                   "ray://host:10001; default: a private Ray on this machine")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="log the run to MLflow at URI (sets tracking.backend=mlflow and tracking.uri), "
                   "e.g. sqlite:////shared/mlflow.db")


def _scale_out_overrides(args: argparse.Namespace) -> list[str]:
    """``--executor/--address/--tracking-uri`` as ``--set`` overrides (recorded in the recipe)."""
    import json

    out = []
    if args.executor:
        out.append(f"train.executor={args.executor}")
    if args.address:
        out.append(f"train.ray.address={json.dumps(args.address)}")
    if args.tracking_uri:
        out += ["tracking.backend=mlflow", f"tracking.uri={json.dumps(args.tracking_uri)}"]
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from lepton_vision.engine.crossval import run_train

    overrides = [*args.overrides, *_scale_out_overrides(args)]
    run_dir = run_train(args.recipe, overrides=overrides, out=args.out, resume=args.resume)
    print(f"\nrun directory: {run_dir}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from lepton_vision.config.cards import load_resolved
    from lepton_vision.config.errors import RecipeError
    from lepton_vision.engine.pretrain import ensure_pretrained

    resolved = load_resolved(args.recipe, args.overrides)
    if resolved.recipe.pretrain is None:
        raise RecipeError(f"{args.recipe}: the recipe has no pretrain: section",
                          hint="Add pretrain: {dataset: synthetic_road, images: 20000} (see "
                          "`lepton-vision recipe schema`).")
    res = ensure_pretrained(resolved, progress=resolved.recipe.train.verbose)
    rec = res.record
    val = rec.get("synthetic_validation") or {}
    print(f"pretrained on {rec['images']} generated images ({rec['generator']}) in {rec['seconds']:.0f} s"
          + (" (reused from the cache)" if res.reused else "")
          + (f"; synthetic {val['metric']} {val['value']:.3f}" if val else ""))
    print(f"weights: {res.weights}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from lepton_vision.engine.sweep import run_tune

    sweep = run_tune(args.recipe, args.space, args.trials, overrides=args.overrides, out=args.out,
                     address=args.address, max_concurrent=args.max_concurrent)
    print(f"\nsweep directory: {sweep}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from lepton_vision.console import console
    from lepton_vision.engine.crossval import rescore_run
    from lepton_vision.evaluate.thresholds import parse_policy
    from lepton_vision.kinds import kind_of
    from lepton_vision.runio import RunDir, atomic_write_json

    run = RunDir(args.run_dir)
    policy = parse_policy(args.policy) if args.policy else None
    metrics = rescore_run(args.run_dir, policy)
    # Another policy must not overwrite the metrics the exported threshold came from.
    default = run.metrics
    if args.policy:
        default = default.with_name(f"metrics_{args.policy.replace(':', '_')}.json")
    out = args.out or default
    atomic_write_json(out, metrics)
    kind_of(run.task_kind).print_summary(metrics, console())
    print(f"metrics written to {out}")
    return 0


def _parse_formats(text: str) -> tuple[str, ...]:
    from lepton_vision.export.bundle import KNOWN_FORMATS

    items = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in items if f not in KNOWN_FORMATS]
    if bad or not items:
        raise LeptonError(f"--format: unknown format(s) {bad or [text]}. Expected a comma-separated "
                          f"list of {list(KNOWN_FORMATS)}.")
    return tuple(dict.fromkeys(["saved_model", *items]))  # saved_model first: the others convert from it


def _cmd_export(args: argparse.Namespace) -> int:
    from lepton_vision.engine.crossval import export_run

    formats = _parse_formats(args.formats) if args.formats else None
    out = export_run(args.run_dir, formats, args.fold)
    print(f"export written to {out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from lepton_vision.export.bundle import bundle_kind
    from lepton_vision.kinds import kind_of

    kind = kind_of(bundle_kind(args.export_dir))
    print(kind.predict_files(args.export_dir, args.inputs, out=args.out, backend=args.backend,
                             threshold=args.threshold, keep_all=args.keep_all, annotate=args.annotate,
                             video_stride=args.video_stride))
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from lepton_vision.serve.monitor import Limits, monitor

    export_dir = args.export_dir
    if not (export_dir / "bundle.json").is_file() and (export_dir / "export" / "bundle.json").is_file():
        export_dir = export_dir / "export"
    limits = Limits(max_psi=args.max_psi, max_ood_share=args.max_ood_share, max_stat_shift=args.max_stat_shift,
                    ks_alpha=args.ks_alpha)
    result = monitor(export_dir, args.inputs, args.out, window=args.window, limits=limits,
                     video_stride=args.video_stride, backend=args.backend, progress=not args.quiet)
    print(result.summary())
    return result.exit_code


def _cmd_explain(args: argparse.Namespace) -> int:
    import cv2

    from lepton_vision.kinds.classification.explain import load_explainer
    from lepton_vision.runio import atomic_write_bytes

    if not args.image.is_file():  # fail before the model is loaded (seconds)
        raise LeptonError(f"{args.image}: no such file", hint="Pass an existing PNG/JPEG/DICOM file.")
    explainer = load_explainer(args.source)
    score, _heat, rgb = explainer.explain(args.image)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise LeptonError(f"{args.out}: could not encode the overlay as PNG")
    atomic_write_bytes(args.out, png.tobytes())
    verdict = ""
    if explainer.threshold is not None:
        side = "at or above" if score >= explainer.threshold else "below"
        verdict = f" ({side} threshold {explainer.threshold:.4g})"
    print(f"{args.image}: score {score:.4f}{verdict}; Grad-CAM overlay written to {args.out}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        from lepton_vision.config.cards import find_card, load_dataset_card, project_root
        from lepton_vision.data.generate import ensure_generated

        path = find_card(args.dataset, "datasets", "dataset.yaml", project_root(), "data synth")
        card = load_dataset_card(path)
        out = ensure_generated(card, path, force=args.force)
        print(f"{card.name}: {out}")
        return 0
    if args.data_command == "check":
        from lepton_vision.config.cards import load_resolved
        from lepton_vision.data.samples import load_samples

        resolved = load_resolved(args.recipe, args.overrides)
        sample_set = load_samples(resolved, progress=True)
        t = sample_set.table
        print(f"{len(t)} samples, {int(t['label'].sum())} positive, "
              f"{t['group'].replace('', None).nunique()} groups, {len(sample_set.excluded)} excluded")
        for row in sample_set.excluded:
            print(f"  excluded {row['path']}: {row['reason']}")
        return 0
    build_parser().parse_args(["data", "--help"])
    return 2


def _cmd_recipe(args: argparse.Namespace) -> int:
    if args.recipe_command == "schema":
        import json

        from lepton_vision.config.recipe import recipe_schema

        print(json.dumps(recipe_schema(), indent=2))
        return 0
    from lepton_vision.config.cards import load_resolved

    if args.recipe_command == "validate":
        failed = 0
        for path in args.recipes:
            try:
                resolved = load_resolved(path, args.overrides)
            except LeptonError as e:
                failed += 1
                print(str(e), file=sys.stderr)
            else:
                print(f"{path}: ok (task {resolved.task.name}, dataset {resolved.dataset.name})")
        return 1 if failed else 0
    if args.recipe_command == "show":
        from lepton_vision.config.recipe import dump_recipe

        resolved = load_resolved(args.recipe, args.overrides)
        print(dump_recipe(resolved.recipe), end="")
        return 0
    build_parser().parse_args(["recipe", "--help"])
    return 2


def _cmd_demo(args: argparse.Namespace) -> int:
    import re

    from lepton_vision.export.bundle import load_bundle_json

    # Argument and bundle checks first: a typo fails in a fraction of a second, before Gradio loads.
    if args.port is not None and not 0 < args.port < 65536:
        raise LeptonError(f"--port must be 1..65535. Got {args.port}.")
    if args.max_pixels < 1:
        raise LeptonError(f"--max-pixels must be positive. Got {args.max_pixels}.")
    size = str(args.max_file_size).replace(" ", "").lower()
    if not re.fullmatch(r"[1-9]\d*(b|kb|mb|gb|tb)", size):
        raise LeptonError(f"--max-file-size must be a whole number with a unit (b, kb, mb, gb, tb), e.g. "
                          f"20mb or 1gb. Got {args.max_file_size!r}.")
    export_dir = args.export_dir
    if not (export_dir / "bundle.json").is_file() and (export_dir / "export" / "bundle.json").is_file():
        export_dir = export_dir / "export"
    load_bundle_json(export_dir)
    from lepton_vision.serve.bind import check_bind

    check_bind(args.host, args.port)
    from lepton_vision.serve.demo import launch_demo, parse_auth

    auth = parse_auth(args.auth)
    launch_demo(export_dir, host=args.host, port=args.port, auth=auth, backend=args.backend,
                max_file_size=size, max_pixels=args.max_pixels)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from lepton_vision.engine.runinfo import environment_report

    for key, value in environment_report().items():
        print(f"{key:>22}: {value}")
    return 0


COMMANDS = {
    "train": _cmd_train,
    "pretrain": _cmd_pretrain,
    "evaluate": _cmd_evaluate,
    "export": _cmd_export,
    "predict": _cmd_predict,
    "monitor": _cmd_monitor,
    "explain": _cmd_explain,
    "data": _cmd_data,
    "recipe": _cmd_recipe,
    "check": _cmd_check,
    "tune": _cmd_tune,
    "demo": _cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lepton-vision`` console script.

    Returns:
        The exit code: 0 on success, 1 for a user error (bad recipe, bad data), 3 when
        ``monitor`` found drift, 130 when interrupted.
    """
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False))
    try:
        return COMMANDS[args.command](args)
    except LeptonError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        print("(run with --debug for the full traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: finished folds are kept; continue with --resume RUN_DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""Object detection end to end through the real CLI on tiny generated street scenes (slow tier,
CI's second stage).

One run (2 folds grouped by sequence, 1 epoch, 64x96 input, 20 frames with some empty; the
session's shared ``tiny_det_run``, built once per code version) is shared: every artefact of the run directory, OOF boxes in original pixels, metrics
with CIs, the export's parity and the SavedModel contract (any frame size in, boxes in that
frame's pixels out, letterboxing identical to training), and resume.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lepton_vision.cli import main

pytestmark = [pytest.mark.tf, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "train.epochs=1",
    "cv.n_splits=2",
    "input.image_size=[64, 96]",
    "evaluate.n_bootstrap=50",
    "export.parity_samples=4",
    "final.mode=best_fold",
    "train.verbose=false",
]


@pytest.fixture(scope="module")
def project(tiny_det_run):
    assert tiny_det_run["overrides"] == TINY  # the shared run was made with these settings
    root = tiny_det_run["root"]
    mp = pytest.MonkeyPatch()
    mp.setenv("LEPTON_GENERATED_ROOT", str(root / "generated"))
    mp.setenv("LEPTON_HOME", str(root))
    yield root, tiny_det_run["recipe"], tiny_det_run["run"]
    mp.undo()


def test_run_directory_holds_every_detection_artefact(project):
    _, _, run = project
    for rel in ("recipe.resolved.yaml", "samples.csv", "folds.csv", "data_report.json", "run.json",
                "oof_detections.csv", "oof_predictions.csv", "metrics.json", "report.html",
                "final/model.keras", "export/bundle.json", "export/parity.json", "export/model.tflite",
                "export/model_int8.tflite", "export/saved_model/saved_model.pb",
                "folds/0/result.json", "folds/1/oof_detections.csv", "plots/pr_curves.png"):
        assert (run / rel).exists(), rel
    folds = pd.read_csv(run / "folds.csv", keep_default_na=False)
    # Frames of one sequence never straddle folds.
    assert (folds.groupby("group")["fold"].nunique() == 1).all()


def test_oof_boxes_are_in_original_pixels_and_metrics_have_cis(project):
    _, _, run = project
    dets = pd.read_csv(run / "oof_detections.csv")
    if len(dets):
        assert dets["x1"].min() >= 0 and dets["y1"].min() >= 0
        assert dets["x2"].max() <= 120 and dets["y2"].max() <= 80  # the 120x80 frames, not 96x64
    m = json.loads((run / "metrics.json").read_text())
    for key in ("ap50", "ap50_95", "precision", "recall", "f1"):
        lo, hi = m["ci"][key]
        assert 0.0 <= m[key] <= 1.0
        assert lo is None or lo <= hi
    assert m["n_empty_images"] == 5 and m["image_level"]["available"] is True
    assert 0.0 <= m["image_level"]["auc"] <= 1.0
    html = (run / "report.html").read_text()
    assert "AP50" in html and "int8 check on" in html and "held out" in html
    # training cost per epoch in history.csv, run.json and the report (best_fold: no refit to cost)
    hist = pd.read_csv(run / "folds/1/history.csv")
    assert (hist["images_per_s"] > 0).all() and (hist["peak_rss_mb"] > 100).all()
    cost = json.loads((run / "run.json").read_text())["training_cost"]
    assert cost["final_model"] is None and cost["total_seconds"] > 0 and len(cost["folds"]) == 2
    assert "<h2>Training cost</h2>" in html and (run / "plots/training_cost.png").is_file()


def test_export_contract_any_size_boxes_in_frame_pixels(project, readme_schema_fields):
    import tensorflow as tf

    from lepton_vision.data.preprocess import read_image

    _, _, run = project
    bundle = json.loads((run / "export/bundle.json").read_text())
    assert bundle["kind"] == "object_detection" and bundle["classes"] == ["person"]
    assert not set(bundle) - readme_schema_fields, set(bundle) - readme_schema_fields
    assert json.loads((run / "export/parity.json").read_text())["pass"] is True
    serve = tf.saved_model.load(str(run / "export/saved_model")).signatures["serve_uint8"]
    frame = read_image(pd.read_csv(run / "samples.csv")["path"].iloc[0])
    small = serve(image=tf.constant(frame))
    big = serve(image=tf.constant(np.repeat(np.repeat(frame, 2, axis=0), 2, axis=1)))
    assert set(small) >= {"boxes", "scores", "classes", "num_detections", "count", "image_score", "alarm"}
    b = small["boxes"].numpy()
    assert b[:, [0, 2]].max() <= frame.shape[1] and b[:, [1, 3]].max() <= frame.shape[0]
    # Doubling the frame doubles the boxes of the top detections (letterbox maps back exactly).
    n = int(min(small["num_detections"], big["num_detections"], 3))
    if n:
        np.testing.assert_allclose(big["boxes"].numpy()[:n], 2 * b[:n], atol=3.0)
    with open(run / "samples.csv") as f:
        first = pd.read_csv(f)["path"].iloc[0]
    by_bytes = tf.saved_model.load(str(run / "export/saved_model")).signatures["serve_bytes"](
        image_bytes=tf.constant(Path(first).read_bytes()))
    np.testing.assert_allclose(by_bytes["scores"].numpy(), small["scores"].numpy(), atol=1e-5)


def test_int8_tflite_quantises_the_network_and_keeps_post_processing_float(project):
    from ai_edge_litert.interpreter import Interpreter

    from lepton_vision.kinds.detection.export import HEAD_OUTPUT_LAYERS, NETWORK_SCOPE

    _, _, run = project
    interp = Interpreter(model_path=str(run / "export/model_int8.tflite"))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    net_dtypes, head_out_dtypes, post_dtypes = set(), set(), {}
    for op in interp._get_ops_details():
        if not len(op["outputs"]):
            continue
        t = tensors[op["outputs"][0]]
        if NETWORK_SCOPE + "/" in t["name"]:
            if op["op_name"] == "CONV_2D":
                out = head_out_dtypes if any(layer in t["name"] for layer in HEAD_OUTPUT_LAYERS) else net_dtypes
                out.add(np.dtype(t["dtype"]).name)
        elif op["op_name"] in ("NON_MAX_SUPPRESSION_V5", "SOFTMAX", "RESIZE_BILINEAR"):
            post_dtypes[op["op_name"]] = np.dtype(tensors[op["inputs"][0]]["dtype"]).name
    # Every convolution of the network runs in int8 but the head's last box and class ones, whose
    # outputs (box logits, class probabilities) stay float32.
    assert net_dtypes == {"int8"} and head_out_dtypes == {"float32"}
    # Letterbox resize, DFL softmax and NMS stay float32.
    assert post_dtypes == {"NON_MAX_SUPPRESSION_V5": "float32", "SOFTMAX": "float32", "RESIZE_BILINEAR": "float32"}
    pairs = json.loads((run / "export/parity.json").read_text())["pairs"]
    assert pairs["saved_model_vs_tflite_int8"]["tolerance"]["near_threshold"] == 0.03
    # The bundle tells an embedder whether each TFLite file met its parity tolerance.
    files = json.loads((run / "export/bundle.json").read_text())["files"]
    assert files["tflite"]["parity_pass"] is True
    assert files["tflite_int8"]["parity_pass"] is pairs["saved_model_vs_tflite_int8"]["pass"]


def test_resume_skips_finished_folds(project, tmp_path, capsys):
    """Resumed up to metrics.json (the export after it is the same code as the first run's, and the
    classification resume test goes through the CLI to the end)."""
    from lepton_vision.engine.crossval import run_train

    root, recipe, run = project
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    mtime0 = (copy / "folds/0/best.keras").stat().st_mtime_ns
    shutil.rmtree(copy / "folds/1")
    for name in ("metrics.json", "report.html", "oof_detections.csv"):
        (copy / name).unlink()
    assert run_train(recipe, TINY, resume=copy, stop_after="metrics") == copy
    out = capsys.readouterr().out
    assert "fold 1/2: finished earlier" in out and (copy / "folds/1/result.json").is_file()
    assert (copy / "folds/0/best.keras").stat().st_mtime_ns == mtime0, "fold 1 was recomputed"
    assert json.loads((copy / "metrics.json").read_text())["n_images"] == 20
    # Same folds, same seeds: the resumed out-of-fold boxes are the uninterrupted run's.
    a = pd.read_csv(run / "oof_detections.csv", dtype={"sample_id": str})
    b = pd.read_csv(copy / "oof_detections.csv", dtype={"sample_id": str})
    np.testing.assert_allclose(a[["score", "x1", "y1", "x2", "y2"]], b[["score", "x1", "y1", "x2", "y2"]], atol=1e-6)


def test_evaluate_rescores_without_tensorflow_and_export_reexports(project, tmp_path):
    import subprocess
    import sys

    _, _, run = project
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = json.loads((copy / "metrics.json").read_text())
    code = (
        "import sys; from lepton_vision.cli import main; rc = main(['evaluate', sys.argv[1]]); "
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
        "print('HEAVY', bad); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    after = json.loads((copy / "metrics.json").read_text())
    assert after["ap50"] == before["ap50"] and after["ci"]["ap50"] == before["ci"]["ap50"]
    # best_fold export (the run's own): int8 is judged on that fold's validation frames, which it never saw.
    exported = json.loads((copy / "export/bundle.json").read_text())
    q = exported["quantization"]
    assert q["evaluated_on"].startswith("held out") and q["change"]["metric"] == "ap50"
    assert exported["files"]["tflite_int8"]["metric_change"]["drop"] == q["change"]["drop"]
    # re-export from final/model.keras (the SavedModel alone: the LiteRT conversions are the run's)
    (copy / "export/bundle.json").unlink()
    assert main(["export", str(copy), "--format", "saved_model"]) == 0
    bundle = json.loads((copy / "export/bundle.json").read_text())
    assert bundle["kind"] == "object_detection" and "saved_model" in bundle["files"]
    assert not {"tflite", "tflite_int8"} & set(bundle["files"]) and not (copy / "export/model.tflite").exists()
    assert bundle["score_threshold"] == exported["score_threshold"] and bundle["reference"]["n_fit"] == exported["reference"]["n_fit"]


def test_compare_a_run_with_itself_matches_its_metrics(project):
    from lepton_vision.evaluate.compare import compare_runs

    _, _, run = project
    m = json.loads((run / "metrics.json").read_text())
    c = compare_runs(run, run, n_bootstrap=50)
    assert c["metric"] == "ap50" and c["a"]["value"] == pytest.approx(m["ap50"], abs=1e-9)
    assert c["difference"]["value"] == 0 and c["difference"]["ci"] == [0.0, 0.0]
    merged = compare_runs(run, run, merge_classes=True, n_bootstrap=50)
    # One class (person) already: merging changes nothing.
    assert merged["metric"] == "ap50_merged" and merged["a"]["value"] == pytest.approx(m["ap50"], abs=1e-9)

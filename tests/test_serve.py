"""The Gradio demos' logic without a browser: prediction functions against the Predictor, friendly
errors for bad uploads, sliders, video, model card, examples, launch settings, CLI and apps.

The browser tier (tests/test_browser.py) drives the same pages in Chromium.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import gradio as gr  # noqa: E402 - a core dependency (the demo command)

import demo_exports  # tests/demo_exports.py: the shared tiny exports and their thresholds

REPO = Path(__file__).resolve().parents[1]


def _frame_det(boxes, scores, classes, threshold=0.0, names=("a", "b")):
    from lepton_vision.kinds.detection.predictor import FrameDetections

    scores = np.asarray(scores, np.float32)
    return FrameDetections(boxes=np.asarray(boxes, np.float32).reshape(-1, 4), scores=scores,
                           classes=np.asarray(classes, np.int32), class_names=list(names), threshold=threshold,
                           count=int((scores >= threshold).sum()), image_score=float(scores.max(initial=0.0)),
                           alarm=False, width=100, height=100)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ---------------------------------------------------------------------------------------------
# No TensorFlow


def test_class_nms_is_class_wise_and_suppresses_only_above_the_iou():
    from lepton_vision.kinds.detection.demo import class_nms

    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]]
    scores = [0.9, 0.8, 0.7, 0.6]
    classes = [0, 0, 1, 0]
    iou01 = _iou(boxes[0], boxes[1])  # 9/11 = 0.818
    keep = class_nms(boxes, scores, classes, iou=0.5)
    # box 1 overlaps box 0 (same class) -> gone; box 2 is the same place but another class -> kept
    assert sorted(keep.tolist()) == [0, 2, 3]
    assert sorted(class_nms(boxes, scores, classes, iou=iou01 + 1e-6).tolist()) == [0, 1, 2, 3]
    assert class_nms(np.zeros((0, 4)), [], [], 0.5).tolist() == []


def test_filter_detections_applies_threshold_and_extra_nms_only_below_the_exported_iou():
    from lepton_vision.kinds.detection.demo import filter_detections

    det = _frame_det([[0, 0, 10, 10], [2, 0, 12, 10], [30, 30, 40, 40], [0, 0, 10, 10]],
                     [0.9, 0.8, 0.3, 0.6], [0, 0, 0, 1], threshold=0.5)
    same = filter_detections(det, 0.5, 0.5, exported_nms_iou=0.5)
    assert same.count == 3 and same.scores.tolist() == pytest.approx([0.9, 0.8, 0.6])
    assert filter_detections(det, 0.5, 0.9, exported_nms_iou=0.5).count == 3  # above exported: no-op
    tighter = filter_detections(det, 0.5, 0.3, exported_nms_iou=0.5)  # IoU(0,1) = 0.667 > 0.3
    assert tighter.count == 2 and tighter.classes.tolist() == [0, 1] and tighter.threshold == 0.5
    assert filter_detections(det, 0.25, 0.5, 0.5).count == 4
    assert filter_detections(det, 1.0, 0.5, 0.5).count == 0


def test_boxes_get_per_class_colours_and_labels_stay_inside_the_frame():
    from lepton_vision.kinds.detection.predictor import CLASS_COLORS_RGB, draw_detections

    img = np.full((100, 120, 3), 128, np.uint8)
    det = _frame_det([[10, 40, 40, 90], [70, 40, 118, 90]], [0.9, 0.8], [0, 1], names=("car", "pedestrian"))
    out = draw_detections(img, det, colors=CLASS_COLORS_RGB, font_scale=0.4, thickness=2)
    assert tuple(out[60, 10]) == CLASS_COLORS_RGB[0] and tuple(out[60, 117]) == CLASS_COLORS_RGB[1]
    # "pedestrian 0.80" is wider than the 50 px left of x1 = 70: the label is moved left, inside the frame
    label_row = out[32:38]
    assert (label_row[:, 40:70] == CLASS_COLORS_RGB[1]).all(axis=2).any()
    assert tuple(draw_detections(img, det)[60, 118]) == (255, 40, 40)  # default: one red for all classes


def test_parse_auth():
    from lepton_vision.config.errors import LeptonError
    from lepton_vision.serve.demo import parse_auth

    assert parse_auth("ann:pa:ss") == ("ann", "pa:ss")
    assert parse_auth(None) is None
    cases = (("annsecret", "lacks the ':'"), (":secret", "lacks the user name"), ("ann:", "lacks the password"))
    for bad, why in cases:
        with pytest.raises(LeptonError, match=why) as e:
            parse_auth(bad)
        assert "secret" not in str(e.value).replace("s3cret", "")  # the password is never echoed


def _det_bundle(**extra):
    return {
        "schema_version": 1, "task": "obstacle_detection", "kind": "object_detection",
        "title": "Obstacle detection", "intended_use": "Engineering only.",
        "classes": ["car", "pedestrian"], "score_threshold": 0.31, "image_threshold": 0.2,
        "threshold_policy": {"policy": "max_f1", "value": None},
        "detection": {"nms_iou": 0.45, "min_score": 0.01, "max_detections": 100},
        "metrics": {"ap50": 0.61, "ap50_95": 0.3, "precision": 0.7, "recall": 0.6, "f1": 0.65,
                    "ci": {"ap50": [0.55, 0.67], "image_auc": [0.7, 0.9]}, "bootstrap_unit": "group",
                    "per_class": {"car": {"ap50": 0.7, "n_gt": 90},
                                  "pedestrian": {"ap50": 0.5, "recall": 0.2, "n_gt": 40}}},
        "image_level": {"available": True, "auc": 0.8},
        "input": {"image_size": [192, 640], "channels": 3},
        "files": {"tflite_int8": {"path": "model_int8.tflite", "recommended": False,
                                  "metric_change": {"metric": "ap50", "float": 0.39, "int8": 0.30, "drop": 0.09}}},
        "dataset": {"name": "synthetic_road", "fingerprint": "0123456789abcdef" * 4, "n_samples": 240},
        "recipe": {"name": "obstacle_detection-baseline", "sha256": "f" * 64, "seed": 1},
        "versions": {"lepton_vision": "0.1.0", "tensorflow": "2.21.0"},
        **extra,
    }


def test_model_card_for_a_detector_states_metrics_cis_thresholds_and_int8():
    from lepton_vision.serve.demo import model_card_markdown

    md = model_card_markdown(_det_bundle(), "LiteRT float32 (`model.tflite`)")
    assert "### Model card: Obstacle detection" in md and "**Intended use.** Engineering only." in md
    assert "| AP50 | 0.610 | [0.550, 0.670] |" in md
    assert "| Image-level AUC (object present) | 0.800 | [0.700, 0.900] |" in md
    assert "| pedestrian | 0.500 | – | 0.200 | 40 |" in md  # per class when there are several classes
    assert "score ≥ 0.310" in md and "IoU 0.45" in md and "image score (highest box score) ≥ 0.200" in md
    assert "**not recommended**" in md and "drop +0.0900" in md
    assert "`0123456789abcdef…`" in md and "bootstrap over sequences" in md
    assert "**Served by** LiteRT float32" in md
    no_alarm = model_card_markdown(_det_bundle(image_threshold=None))
    assert "No \"object present\" alarm" in no_alarm


def test_pick_examples_spreads_over_groups_and_skips_missing_files(tmp_path):
    from lepton_vision.serve.ui import pick_examples, stage_examples as _stage_examples

    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    rows = ["sample_id,path,label,label_name,group"]
    for i in range(12):
        f = tmp_path / "img" / f"P{i // 2}" / f"{i}.png"
        f.parent.mkdir(parents=True, exist_ok=True)
        if i != 0:  # the first file of patient P0 is gone
            cv2.imwrite(str(f), np.zeros((4, 4), np.uint8))
        rows.append(f"{i},{f},{i % 2},{['normal', 'abnormal'][i % 2]},P{i // 2}")
    (run / "samples.csv").write_text("\n".join(rows) + "\n")
    picked = pick_examples(run / "export", per_class=2)
    labels = [lab for lab, _ in picked]
    assert labels.count("normal") <= 2 and labels.count("abnormal") == 2
    assert all(p.is_file() for _, p in picked)
    assert len({p.parent.name for lab, p in picked if lab == "abnormal"}) == 2  # two patients
    staged = _stage_examples(picked, tmp_path / "staged")
    assert all(Path(s).name.startswith(("normal_", "abnormal_")) and Path(s).is_file() for s in staged)
    assert pick_examples(tmp_path / "nowhere" / "export") == []


def test_latest_export_picks_the_newest_of_the_task_and_says_how_to_train(tmp_path, capsys):
    from lepton_vision.config.errors import LeptonError
    from lepton_vision.serve.demo import app_main, latest_export

    with pytest.raises(LeptonError, match=r"train it first: lepton-vision train recipes/ct_screening/baseline.yaml"):
        latest_export("ct_screening", tmp_path)
    for i, (name, task) in enumerate([("ct-old", "ct_screening"), ("ct-new", "ct_screening"),
                                      ("person", "person_detection")]):
        b = tmp_path / name / "export" / "bundle.json"
        b.parent.mkdir(parents=True)
        b.write_text(json.dumps({"schema_version": 1, "task": task}))
        os.utime(b, (1_000_000 + i, 1_000_000 + i))
    assert latest_export("ct_screening", tmp_path) == tmp_path / "ct-new" / "export"
    assert latest_export("person_detection", tmp_path) == tmp_path / "person" / "export"
    assert app_main("obstacle_detection", [], runs_dir=tmp_path) == 1
    assert "train it first: lepton-vision train recipes/obstacle_detection/baseline.yaml" in capsys.readouterr().err
    # an export of another task is refused with the app to use instead
    assert app_main("ct_screening", [str(tmp_path / "person" / "export")], runs_dir=tmp_path) == 1
    assert "apps/person_detection.py" in capsys.readouterr().err


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lepton_vision", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def test_cli_demo_refuses_bad_arguments_in_one_line(tmp_path):
    r = _cli("demo", str(tmp_path / "missing"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and "no bundle.json" in r.stderr.splitlines()[0]
    fake = tmp_path / "run" / "export"
    fake.mkdir(parents=True)
    (fake / "bundle.json").write_text(json.dumps({"schema_version": 1, "kind": "binary_classification"}))
    r = _cli("demo", str(fake), "--auth", "ann")
    assert r.returncode == 1 and "--auth must be USER:PASSWORD" in r.stderr and "Traceback" not in r.stderr
    r = _cli("demo", str(fake), "--max-file-size", "10")
    assert r.returncode == 1 and "--max-file-size" in r.stderr
    r = _cli("demo", str(fake), "--port", "70000")
    assert r.returncode == 1 and "--port must be 1..65535" in r.stderr


def test_demo_that_cannot_bind_says_so_in_one_line(tmp_path):
    import socket

    from lepton_vision.config.errors import LeptonError
    from lepton_vision.serve.bind import bind_error, check_bind

    fake = tmp_path / "run" / "export"
    fake.mkdir(parents=True)
    (fake / "bundle.json").write_text(json.dumps({"schema_version": 1, "kind": "binary_classification"}))
    with socket.socket() as held:  # a port another server holds
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert "already in use" in bind_error("127.0.0.1", port)
        with pytest.raises(LeptonError, match="already in use"):
            check_bind("127.0.0.1", port)
        r = _cli("demo", str(fake), "--port", str(port))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("error: ") and f"port {port} on 127.0.0.1 is already in use" in first
    # a host that is not an address of this machine (TEST-NET-1, RFC 5737)
    r = _cli("demo", str(fake), "--host", "192.0.2.1", "--port", "7860")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "192.0.2.1 is not an address of this machine" in r.stderr.splitlines()[0]
    # once free, the same port binds
    assert bind_error("127.0.0.1", port) is None


def test_apps_are_thin_launchers_of_build_demo():
    for task in ("ct_screening", "person_detection", "obstacle_detection"):
        path = REPO / "apps" / f"{task}.py"
        text = path.read_text()
        assert 10 <= len(text.splitlines()) <= 30, f"{path}: {len(text.splitlines())} lines"
        assert f'TASK = "{task}"' in text and "app_main(TASK" in text
    r = subprocess.run([sys.executable, str(REPO / "apps" / "obstacle_detection.py"), "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "apps/obstacle_detection.py" in r.stdout and "--auth" in r.stdout


# ---------------------------------------------------------------------------------------------
# Classification (tf)


@pytest.fixture(scope="module")
def ct(ct_demo_export):
    return ct_demo_export


@pytest.fixture(scope="module")
def ct_demo(ct):
    from lepton_vision.kinds.classification.demo import ClassificationDemo

    return ClassificationDemo(ct["dir"])


@pytest.mark.tf
def test_classify_equals_the_predictor_on_dicom_and_png(ct, ct_demo):
    from lepton_vision import Predictor
    from lepton_vision.data import preprocess

    p = Predictor.from_bundle(ct["dir"], backend=ct_demo.predictor.backend)
    assert ct_demo.predictor.backend == "tflite"  # auto: LiteRT when installed
    labels = set()
    for path in [*ct["dicoms"], ct["png"]]:
        r = ct_demo.classify(str(path))
        ref = p.predict(path)
        labels.add(r.label)
        assert r.score == ref.score and r.decision == ref.decision and r.label == ref.label
        assert r.threshold == pytest.approx(demo_exports.CT_THRESHOLD) and r.name == path.name
        shown = preprocess.to_uint8(preprocess.read_image(path), 1, demo_exports.CT_WINDOW)
        assert np.array_equal(r.display, np.repeat(shown, 3, axis=2)) and r.heat is None
    assert labels == {"normal", "abnormal"}
    dicom_notes = " ".join(ct_demo.classify(str(ct["dicoms"][0])).details)
    assert "DICOM 40×48" in dicom_notes and "level -600 HU, width 1500 HU" in dicom_notes
    assert "used as it is" in " ".join(ct_demo.classify(str(ct["png"])).details)
    # the Gradio payload form names the upload by its original name
    r = ct_demo.classify({"path": str(ct["dicoms"][1]), "orig_name": "patient_slice.dcm"})
    assert r.name == "patient_slice.dcm" and r.score == p.predict(ct["dicoms"][1]).score


@pytest.mark.tf
def test_threshold_slider_re_decides_without_the_model(ct, ct_demo):
    from lepton_vision.kinds.classification.demo import decision_html

    scores = sorted(ct_demo.classify(str(d)).score for d in ct["dicoms"])
    assert scores[0] < scores[-1]
    mid = (scores[0] + scores[-1]) / 2
    low, high = ct_demo.classify(str(ct["dicoms"][0]), threshold=mid), None
    for d in ct["dicoms"]:
        r = ct_demo.classify(str(d), threshold=mid)
        assert r.decision == (r.score >= mid) and r.label == ["normal", "abnormal"][r.decision]
        if r.decision:
            high = r
    assert high is not None and any(not ct_demo.classify(str(d), mid).decision for d in ct["dicoms"])
    assert ct_demo.decide(high.score, high.score) == (True, "abnormal", high.score)
    assert ct_demo.decide(high.score, min(1.0, high.score + 1e-3))[0] is False
    html = decision_html(high, mid, ct_demo.classes)
    assert "abnormal" in html and "≥" in html and f"{high.score:.4f}" in html
    assert "normal" in decision_html(0.1, 0.2, ct_demo.classes) and "<" in decision_html(0.1, 0.2, ["n", "p"])
    with pytest.raises(gr.Error, match="between 0 and 1"):
        ct_demo.classify(str(ct["png"]), threshold=1.5)
    del low


@pytest.mark.tf
def test_gradcam_overlay_from_model_keras(ct, ct_demo):
    r = ct_demo.classify(str(ct["dicoms"][2]), show_cam=True)
    assert ct_demo.cam_available and r.heat is not None and r.heat.shape == demo_exports.CT_SIZE
    assert 0.0 <= float(r.heat.min()) and float(r.heat.max()) <= 1.0
    assert float(r.heat.max()) == pytest.approx(1.0)  # the fixture's model has positive evidence
    assert r.image.shape == r.display.shape and r.image.dtype == np.uint8
    assert not np.array_equal(r.image, r.display)
    # the hot spot is where the slice is bright (the model's score rises with brightness)
    from lepton_vision.data import preprocess

    small = preprocess.to_model_input(r.display[:, :, :1], demo_exports.CT_SIZE)[:, :, 0]
    bright = small > np.median(small)
    assert r.heat[bright].mean() > r.heat[~bright].mean()
    # the score is the exported model's, not the Keras model's
    assert r.score == ct_demo.classify(str(ct["dicoms"][2])).score


@pytest.mark.tf
def test_colour_image_is_converted_to_grey_with_a_note(ct, ct_demo):
    from lepton_vision import Predictor

    with pytest.warns(UserWarning, match="colour image"):
        r = ct_demo.classify(str(ct["colour"]))
    assert "converted to grey" in " ".join(r.details)
    assert r.score == Predictor.from_bundle(ct["dir"], backend="tflite").predict(ct["colour"]).score


@pytest.mark.tf
def test_bad_ct_uploads_give_friendly_errors(ct, ct_demo, tmp_path):
    from lepton_vision.kinds.classification.demo import ClassificationDemo

    cases = [
        (None, r"Upload a CT slice first"),
        (str(ct["text"]), r"notes\.txt is not a PNG, JPEG, BMP, TIFF or DICOM image\. Upload one of: .*\.dcm"),
        (str(ct["corrupt"]), r"corrupt\.png: Cannot decode the file as an image"),
        (np.zeros((8, 8, 2), np.uint8), r"shape \(8, 8, 2\); expected a grey"),
    ]
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    cases.append((str(empty), r"empty\.png is empty \(0 bytes\)"))
    bad_dcm = tmp_path / "scan.dcm"
    bad_dcm.write_bytes(b"\0" * 200)
    cases.append((str(bad_dcm), r"scan\.dcm: Not a readable DICOM file"))
    for value, pattern in cases:
        with pytest.raises(gr.Error, match=pattern) as e:
            ct_demo.classify(value)
        assert str(tmp_path) not in str(e.value) and "Traceback" not in str(e.value)
    small = ClassificationDemo(ct["dir"], max_pixels=1000)
    with pytest.raises(gr.Error, match=r"000\.dcm is 40×48 = 1,920 pixels; this demo takes images of at most 1,000"):
        small.classify(str(ct["dicoms"][0]))
    with pytest.raises(gr.Error, match=r"slice_gray\.png is 36×40 = 1,440 pixels"):
        small.classify(str(ct["png"]))


@pytest.mark.tf
def test_ct_page_layout_examples_and_model_card(ct):
    from lepton_vision.serve.demo import build_demo

    blocks = build_demo(ct["dir"])
    comps = {c.get("props", {}).get("elem_id"): c for c in blocks.config["components"]}
    for elem in ("ct-file", "ct-threshold", "ct-cam", "ct-run", "ct-image", "ct-score", "ct-label",
                 "ct-decision", "ct-examples"):
        assert elem in comps, elem
    assert comps["ct-threshold"]["props"]["value"] == pytest.approx(demo_exports.CT_THRESHOLD)
    assert ".dcm" in comps["ct-file"]["props"]["file_types"]
    examples = [Path(row[0]).name for row in blocks.lepton_examples]
    assert sorted(n.split("_")[0] for n in examples) == ["abnormal"] * 3 + ["normal"] * 3
    card = " ".join(str(c.get("props", {}).get("value", "")) for c in blocks.config["components"])
    assert "Model card: CT screening (test export)" in card and "| ROC AUC | 0.810 | [0.720, 0.890] |" in card
    assert "policy min_sensitivity 0.95" in card and "`cdcdcdcdcdcdcdcd…`" in card
    assert "CT window level -600 HU, width 1500 HU" in card


@pytest.mark.tf
def test_launch_demo_binds_loopback_without_share_and_limits_uploads(ct, monkeypatch, capsys):
    from lepton_vision.serve import demo as serve

    calls = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: calls.append(kw) or (None, "http://x", None))
    serve.launch_demo(ct["dir"], port=7999, prevent_thread_lock=True, quiet=True)
    kw = calls[-1]
    assert kw["server_name"] == "127.0.0.1" and kw["server_port"] == 7999 and kw["share"] is False
    assert kw["max_file_size"] == serve.DEFAULT_MAX_FILE_SIZE and kw["auth"] is None
    assert kw["ssr_mode"] is False and kw["mcp_server"] is False and kw["show_error"] is False
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and os.environ["HF_HUB_OFFLINE"] == "1"
    serve.launch_demo(ct["dir"], host="0.0.0.0", auth="ann:secret", prevent_thread_lock=True, quiet=True)
    assert calls[-1]["auth"] == ("ann", "secret") and calls[-1]["server_name"] == "0.0.0.0"
    assert "reachable from other machines" in capsys.readouterr().err
    serve.launch_demo(ct["dir"], host="0.0.0.0", prevent_thread_lock=True, quiet=True)
    assert "WITHOUT a login" in capsys.readouterr().err


_NET_SPY = r"""
import json, os, socket, sys, time, urllib.request
export, port = sys.argv[1], int(sys.argv[2])
seen = []
_gai, _connect = socket.getaddrinfo, socket.socket.connect
def gai(host, *a, **k):
    seen.append(str(host))
    return _gai(host, *a, **k)
def connect(self, address):
    seen.append(str(address[0]) if isinstance(address, tuple) else str(address))
    return _connect(self, address)
socket.getaddrinfo, socket.socket.connect = gai, connect
from lepton_vision.serve.demo import launch_demo
app, url, share = launch_demo(export, port=port, prevent_thread_lock=True, quiet=True)
for path in ("", "config", "gradio_api/info"):
    urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=30).read()
time.sleep(3)  # time for any background update check or analytics call
print(json.dumps({"share": share, "seen": sorted(set(seen)),
                  "env": [os.environ.get(k) for k in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE")]}))
sys.stdout.flush()
os._exit(0)
"""


@pytest.mark.tf
def test_demo_server_makes_no_outbound_connection(ct, tmp_path):
    """Every DNS lookup and socket connect of a running demo (page, config and API info fetched) is
    to the loopback, even when the caller's environment does not switch Gradio's analytics off."""
    import socket

    script = tmp_path / "spy.py"
    script.write_text(_NET_SPY)
    env = {k: v for k, v in os.environ.items()
           if k not in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, str(script), str(ct["dir"]), str(port)], capture_output=True, text=True,
                       timeout=180, env={**env, "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["share"] is None and out["env"] == ["False", "1"]
    assert out["seen"] and set(out["seen"]) <= {"127.0.0.1", "localhost", "::1"}, out["seen"]


# ---------------------------------------------------------------------------------------------
# Detection (tf)


@pytest.fixture(scope="module")
def det(det_demo_export):
    return det_demo_export


@pytest.fixture(scope="module")
def det_demo(det, tmp_path_factory):
    from lepton_vision.kinds.detection.demo import DetectionDemo

    return DetectionDemo(det["dir"], work_dir=tmp_path_factory.mktemp("det_work"))


@pytest.mark.tf
def test_detect_equals_the_predictor_and_draws_the_boxes(det, det_demo):
    from lepton_vision import Predictor

    p = Predictor.from_bundle(det["dir"], backend=det_demo.predictor.backend)
    assert det_demo.score_threshold == pytest.approx(demo_exports.DET_SCORE_THR)
    assert det_demo.nms_iou == pytest.approx(0.5)
    for path in [*det["frames"], det["empty"]]:
        r = det_demo.detect(str(path))
        ref = p.predict(path)
        assert r.count == ref.count and r.count == int(ref.above().sum())
        assert np.array_equal(r.detections.boxes, ref.boxes[ref.above()])
        assert sum(n for n, _ in r.per_class.values()) == r.count and list(r.per_class) == ["person"]
        assert r.raw.image_score == ref.image_score and r.raw.alarm == ref.alarm
        # 160x120 frames are drawn 4x enlarged; the boxes change pixels
        assert r.image.shape == (480, 640, 3)
        plain = cv2.resize(r.frame, (640, 480), interpolation=cv2.INTER_LINEAR)
        assert (r.count == 0) == np.array_equal(r.image, plain)
        assert r.latency_ms > 0
    md = det_demo.summary_markdown(det_demo.detect(str(det["frames"][0])))
    assert "f0.png" in md and "(160×120)" in md and f"at score ≥ {demo_exports.DET_SCORE_THR:.3f}" in md and "object present:" in md


@pytest.mark.tf
def test_detection_sliders_refilter_without_the_model(det, det_demo):
    r = det_demo.detect(str(det["frames"][1]))
    assert r.count > 1
    none = det_demo.refilter(r.raw, r.frame, r.name, 1.0, 0.5)
    assert none.count == 0 and none.per_class["person"] == (0, 0.0)
    top = float(r.detections.scores.max())
    assert det_demo.refilter(r.raw, r.frame, r.name, top, 0.5).count == int((r.raw.scores >= np.float32(top)).sum())
    assert det_demo.refilter(r.raw, r.frame, r.name, None, 0.95).count == r.count  # above exported IoU: no-op
    tight = det_demo.refilter(r.raw, r.frame, r.name, None, 0.05)
    assert tight.count <= r.count
    b = tight.detections.boxes
    assert all(_iou(b[i], b[j]) <= 0.05 + 1e-6 for i in range(len(b)) for j in range(i + 1, len(b)))
    assert "extra NMS at IoU 0.05 removed" in det_demo.summary_markdown(tight)
    with pytest.raises(gr.Error, match="NMS IoU in"):
        det_demo.detect(str(det["frames"][0]), 0.5, 0.0)


@pytest.mark.tf
def test_webcam_arrays_and_bad_detection_inputs(det, det_demo, ct, tmp_path):
    from lepton_vision import Predictor
    from lepton_vision.kinds.detection.demo import DetectionDemo

    rgb = det["scenes"][2][0]
    ref = Predictor.from_bundle(det["dir"], backend="tflite").predict(rgb)
    assert det_demo.detect(rgb).count == ref.count and det_demo.detect(rgb).name == "webcam frame"
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert det_demo.detect(rgba).count == ref.count  # browser canvases send RGBA
    cases = [
        (None, "Upload an image"),
        (str(ct["dicoms"][0]), r"000\.dcm is a CT image \(DICOM, Hounsfield units\); this detector takes photos"),
        (str(det["corrupt"]), r"corrupt\.png: Cannot decode the file as an image"),
        (str(det["video"]), r"clip\.mp4 is not an image \(PNG, JPEG, BMP or TIFF\)"),
        (np.zeros((5, 5, 2), np.uint8), r"shape \(5, 5, 2\)"),
        (np.zeros((5, 5, 3), np.float32), "float32 pixels; expected 8- or 16-bit"),
    ]
    for value, pattern in cases:
        with pytest.raises(gr.Error, match=pattern):
            det_demo.detect(value)
    small = DetectionDemo(det["dir"], max_pixels=10_000, work_dir=tmp_path)
    with pytest.raises(gr.Error, match=r"f0\.png is 160×120 = 19,200 pixels; this demo takes images of at most 10,0"):
        small.detect(str(det["frames"][0]))
    with pytest.raises(gr.Error, match=r"webcam frame is 160×120"):
        small.detect(rgb)


@pytest.mark.tf
def test_detect_video_writes_a_playable_annotated_video_with_progress(det, det_demo):
    from lepton_vision import Predictor

    ticks = []
    v = det_demo.detect_video({"path": str(det["video"]), "orig_name": "street.mp4"}, stride=2,
                              progress=lambda frac, desc=None, unit=None: ticks.append(frac))
    assert v.frames_run == 5 and v.frames_in_video == 10 and v.stride == 2 and not v.capped
    assert ticks == [(k, 5) for k in range(1, 6)]
    assert v.path.suffix == ".webm" and v.path.is_file() and v.name == "street.mp4"  # VP8: plays in browsers
    cap = cv2.VideoCapture(str(v.path))
    n, size = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, size = n + 1, frame.shape
    cap.release()
    assert n == 5 and size == (480, 640, 3)
    p = Predictor.from_bundle(det["dir"], backend="tflite")
    expected = [d.count for d in p.iter_video(det["video"], stride=2)]
    assert v.per_class["person"][0] == sum(expected) and v.frames_with_boxes == sum(c > 0 for c in expected)
    md = det_demo.video_markdown(v)
    assert "ran 5 frames of 10 (every 2nd frame)" in md and "frames/s" in md and "cap" not in md


@pytest.mark.tf
def test_video_frame_cap_and_bad_videos(det, tmp_path):
    from lepton_vision.kinds.detection.demo import DetectionDemo

    demo = DetectionDemo(det["dir"], max_video_frames=3, work_dir=tmp_path / "work")
    v = demo.detect_video(str(det["video"]))
    assert v.frames_run == 3 and v.capped and "Stopped at the 3-frame cap" in demo.video_markdown(v)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0\1\2" * 100)
    with pytest.raises(gr.Error, match=r"junk\.mp4: Cannot open the file as a video"):
        demo.detect_video(str(junk))
    with pytest.raises(gr.Error, match=r"f0\.png is not a video"):
        demo.detect_video(str(det["frames"][0]))
    with pytest.raises(gr.Error, match="Upload a video first"):
        demo.detect_video(None)
    with pytest.raises(gr.Error, match="stride must be 1 or more"):
        demo.detect_video(str(det["video"]), stride=0)


@pytest.mark.tf
def test_detection_page_layout_and_examples(det):
    from lepton_vision.serve.demo import build_demo

    blocks = build_demo(det["dir"])
    comps = {c.get("props", {}).get("elem_id"): c for c in blocks.config["components"]}
    for elem in ("det-threshold", "det-nms", "det-image-in", "det-run", "det-image-out", "det-count",
                 "det-latency", "det-counts", "det-video-in", "det-video-run", "det-video-out", "det-stride"):
        assert elem in comps, elem
    assert comps["det-threshold"]["props"]["value"] == pytest.approx(demo_exports.DET_SCORE_THR)
    assert comps["det-nms"]["props"]["value"] == pytest.approx(0.5)
    assert "webcam" in comps["det-image-in"]["props"]["sources"]
    names = sorted(Path(row[0]).name.split("_")[0] for row in blocks.lepton_examples)
    assert names == ["empty", "objects", "objects", "objects"]
    assert build_demo(det["dir"], examples=[]).lepton_examples == []


@pytest.mark.tf
def test_out_of_distribution_inputs_get_a_visible_warning(ct, ct_demo, det, det_demo, tmp_path):
    """A street frame in the CT demo and a CT slice in the detection demo: each result says the
    input is unlike the training images, in the details and in a warning block on the result."""
    import cv2

    from lepton_vision.kinds.classification.demo import decision_html

    frame = tmp_path / "street.png"
    cv2.imwrite(str(frame), cv2.imread(str(det["frames"][0]), cv2.IMREAD_COLOR))
    r = ct_demo.classify(str(frame))
    assert r.in_distribution is False and r.ood_score > 1
    assert any("unlike the training images" in d for d in r.details)
    html = decision_html(r, r.threshold, ct_demo.classes)
    assert "id='ct-ood-warning'" in html and "Out of distribution" in html and f"{r.ood_score:.2f}" in html
    d = det_demo.detect(str(ct["png"]))
    assert d.raw.in_distribution is False and d.raw.ood_score > 1
    assert "unlike the training images" in det_demo.summary_markdown(d)
    # a frame like the training frames: no warning
    same = det_demo.detect(str(det["frames"][0]))
    assert same.raw.in_distribution is True
    assert "like the training images (OOD score" in det_demo.summary_markdown(same)

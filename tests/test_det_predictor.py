"""DetPredictor on a tiny exported YOLOv8 detector: backends, original-pixel boxes, COCO, video, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lepton_vision.config.errors import DataError, ExportError

import demo_exports  # tests/demo_exports.py: the shared detector export's frame and file helpers

_scene, _write_png, _write_video = demo_exports.scene, demo_exports.write_png, demo_exports.write_video

pytestmark = pytest.mark.tf

INPUT_HW = (128, 128)
SCORE_THR, IMAGE_THR = demo_exports.DET_SCORE_THR, demo_exports.DET_IMAGE_THR  # the export's thresholds


@pytest.fixture(scope="session")
def det_export(det_demo_export) -> Path:
    """The suite's tiny exported YOLOv8 person detector (tests/demo_exports.py, shared with the demo,
    monitor and OOD tests): 128 px, fitted briefly on rectangles, exported to every format with the
    head kept float in int8; its labelled frames and the int8 rows are beside it in ``run/``."""
    return det_demo_export["dir"]


@pytest.fixture(scope="session")
def predictors(det_export):
    from lepton_vision.kinds.detection.predictor import DetPredictor

    return {b: DetPredictor.from_bundle(det_export, backend=b) for b in ("saved_model", "tflite", "tflite_int8")}


def test_bundle_and_thresholds(predictors, det_export):
    p = predictors["saved_model"]
    assert p.classes == ["person"]
    assert p.score_threshold == pytest.approx(SCORE_THR) and p.image_threshold == pytest.approx(IMAGE_THR)
    assert {b: q.backend for b, q in predictors.items()} == {b: b for b in predictors}
    from lepton_vision.kinds.detection.predictor import DetPredictor

    assert DetPredictor.from_bundle(det_export, score_threshold=0.9).score_threshold == 0.9
    with pytest.raises(ExportError, match="score threshold override"):
        DetPredictor.from_bundle(det_export, score_threshold=1.5)
    with pytest.raises(ExportError, match="backend must be one of"):
        DetPredictor.from_bundle(det_export, backend="onnx")


def test_saved_model_and_tflite_agree(predictors):
    rng = np.random.default_rng(1)
    n_boxes = 0
    for h, w in [(96, 160), (200, 120), (128, 128)]:
        img, _ = _scene(rng, h, w)
        sm = predictors["saved_model"].predict_array(img)
        tfl = predictors["tflite"].predict_array(img)
        assert sm.count == tfl.count
        # No padding rows (TFLite pads NMS output to K rows with score 0 / class 0).
        assert len(tfl.scores) == len(sm.scores) and len(sm.scores) < 100
        for d in (sm, tfl):
            assert (d.scores >= 0.01).all() and (d.classes == 0).all()
        assert tfl.image_score == pytest.approx(sm.image_score, abs=1e-4)
        assert sm.alarm == tfl.alarm
        keep_sm, keep_tfl = sm.above(), tfl.above()
        np.testing.assert_allclose(tfl.scores[keep_tfl], sm.scores[keep_sm], atol=1e-4)
        # Same boxes in the same (score) order; coordinates, as clipped boxes can have zero area.
        np.testing.assert_allclose(tfl.boxes[keep_tfl], sm.boxes[keep_sm], atol=0.05)
        n_boxes += sm.count
        int8 = predictors["tflite_int8"].predict_array(img)  # quantised: same contract, looser numbers
        assert int8.boxes.shape == (len(int8.scores), 4) and int8.image_score == pytest.approx(sm.image_score, abs=0.1)
    assert n_boxes > 0, "the fixture model should find boxes above the threshold on these scenes"


def test_int8_ap50_change_and_onnx_are_recorded(det_export, predictors):
    """The bundle's int8 AP50s are those of the float and int8 files on the labelled frames,
    recomputed here independently with pycocotools; ONNX matches the SavedModel."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    bundle = json.loads((det_export / "bundle.json").read_text())
    q = bundle["quantization"]
    assert q["evaluated_on"] == "test frames" and q["change"]["metric"] == "ap50"
    rows = json.loads((det_export.parent / "export_result.json").read_text())["rows"]

    def ap50(backend: str) -> float:
        gt = COCO()
        gt.dataset = {"images": [{"id": i + 1} for i in range(len(rows["path"]))], "categories": [{"id": 1}],
                      "annotations": [{"id": 1000 * i + j + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                       "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])}
                                      for i, bs in enumerate(rows["boxes"]) for j, b in enumerate(json.loads(bs))]}
        gt.createIndex()
        res = []
        for i, path in enumerate(rows["path"]):
            out = predictors[backend].run_uint8(cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB))
            res += [{"image_id": i + 1, "category_id": 1, "score": float(sc),
                     "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
                    for b, sc in zip(out["boxes"], out["scores"]) if sc > 0]
        ev = COCOeval(gt, gt.loadRes(res), iouType="bbox")
        ev.params.maxDets = [100]
        ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e10]], ["all"]
        ev.evaluate(), ev.accumulate()
        return float(ev.eval["precision"][0, :, 0, 0, 0].mean())

    c = q["change"]
    assert c["float"] == pytest.approx(ap50("tflite"), abs=1e-9)
    assert c["int8"] == pytest.approx(ap50("tflite_int8"), abs=1e-9)
    assert bundle["files"]["tflite_int8"]["recommended"] is bool(c["drop"] <= 0.02)
    assert bundle["files"]["onnx"]["path"] == "model.onnx" and "rejected_files" not in bundle
    import onnxruntime as ort

    sess = ort.InferenceSession(str(det_export / "model.onnx"), providers=["CPUExecutionProvider"])
    img, _ = _scene(np.random.default_rng(4), 96, 160)
    names = [o.name for o in sess.get_outputs()]
    onnx_out = dict(zip(names, sess.run(names, {"image": img})))
    sm = predictors["saved_model"].run_uint8(img)
    assert int(onnx_out["count"]) == int(sm["count"])
    np.testing.assert_allclose(onnx_out["scores"], sm["scores"], atol=1e-4)
    np.testing.assert_allclose(onnx_out["boxes"], sm["boxes"], atol=1e-2)


def test_raw_outputs_follow_the_export_contract(predictors):
    """num_detections and the padding rows (score 0, class -1, zero box) agree across backends."""
    img, _ = _scene(np.random.default_rng(2), 96, 160)
    outs = {b: p.run_uint8(img) for b, p in predictors.items()}
    n = int(outs["saved_model"]["num_detections"])
    assert 0 < n < 100
    assert int(outs["tflite"]["num_detections"]) == n
    for out in outs.values():
        k = int(out["num_detections"])
        assert out["boxes"].shape == (100, 4) and out["scores"].shape == (100,)
        assert (out["classes"][k:] == -1).all() and (out["scores"][k:] == 0).all() and (out["boxes"][k:] == 0).all()
        assert (out["classes"][:k] == 0).all() and (out["scores"][:k] >= 0.01).all()


def test_boxes_come_back_in_original_pixels(predictors):
    # Noise-free blocks on even coordinates: the 2x-downscaled image is exact, both letterbox
    # to the same 128x64 network input up to resampling at block edges.
    img_big, _ = _scene(np.random.default_rng(3), 200, 400, noise=0)
    img_small = cv2.resize(img_big, (200, 100), interpolation=cv2.INTER_AREA)
    for backend in ("saved_model", "tflite"):
        big = predictors[backend].predict_array(img_big)
        small = predictors[backend].predict_array(img_small)
        assert (big.width, big.height, small.width, small.height) == (400, 200, 200, 100)
        assert big.image_score == pytest.approx(small.image_score, abs=0.03)
        # Coordinates, not IoU: boxes clipped to the frame edge can have zero area.
        top = small.boxes[:5] * 2.0
        gap = np.abs(top[:, None, :] - big.boxes[None, :, :]).max(axis=2).min(axis=1)
        assert gap.max() < 2.0, gap  # pixels of the 400x200 frame
        assert big.boxes[:, [0, 2]].max() <= 400 and big.boxes[:, [1, 3]].max() <= 200
        assert big.boxes.max() > 128, "boxes must not stay in 128 px network coordinates"


def test_coco_results(predictors, tmp_path):
    from lepton_vision.kinds.detection.predictor import to_coco_results

    p = predictors["saved_model"]
    img, _ = _scene(np.random.default_rng(4), 120, 180)
    path = _write_png(tmp_path / "a.png", img)
    d = p.predict_file(path)
    assert d.path == str(path) and d.frame is None
    rows = to_coco_results([d])
    assert len(rows) == d.count
    all_rows = to_coco_results([d], keep_all=True)
    assert len(all_rows) == len(d.scores) >= len(rows)
    assert min(r["score"] for r in all_rows) >= 0.01  # the policy's min_score, applied in the graph
    for r in rows:
        # the export has an OOD reference: every row carries the frame's OOD score and verdict
        assert set(r) == {"file_name", "category_id", "category_name", "bbox", "score", "ood_score", "in_distribution"}
        assert r["ood_score"] == pytest.approx(d.ood_score, abs=1e-4) and r["in_distribution"] is d.in_distribution
        assert r["file_name"] == str(path) and r["category_id"] == 1 and r["category_name"] == "person"
        assert r["score"] >= SCORE_THR
    x1, y1, x2, y2 = d.boxes[0].tolist()
    assert all_rows[0]["bbox"] == [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]
    assert to_coco_results([d], threshold=1.0) == []
    json.dumps(all_rows)  # plain JSON types


def test_draw_detections(predictors):
    from lepton_vision.kinds.detection.predictor import draw_detections

    img, _ = _scene(np.random.default_rng(5), 120, 180)
    d = predictors["saved_model"].predict_array(img)
    out = draw_detections(img, d, threshold=0.0)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img) and np.array_equal(img, _scene(np.random.default_rng(5), 120, 180)[0])
    assert np.array_equal(draw_detections(img, d, threshold=1.0), img)


def test_video_frames_and_stride(predictors, tmp_path):
    from lepton_vision.kinds.detection.predictor import iter_video_frames, to_coco_results

    rng = np.random.default_rng(6)
    frames = [_scene(rng, 96, 160)[0] for _ in range(6)]
    frames[0][:] = (220, 20, 20)  # solid red (RGB): checks OpenCV's BGR is turned into RGB
    video = _write_video(tmp_path / "clip.mp4", frames)
    decoded = list(iter_video_frames(video))
    assert [i for i, _ in decoded] == list(range(6))
    assert np.abs(decoded[0][1].reshape(-1, 3).mean(0) - (220, 20, 20)).max() < 12
    dets = list(predictors["tflite"].iter_video(video, stride=2))
    assert [d.frame for d in dets] == [0, 2, 4]
    assert all(d.path == str(video) and (d.width, d.height) == (160, 96) for d in dets)
    rows = to_coco_results(dets, keep_all=True)
    assert rows and {r["frame"] for r in rows} <= {0, 2, 4} and all(r["file_name"] == str(video) for r in rows)


def test_bad_inputs_name_the_file(predictors, tmp_path):
    from lepton_vision.kinds.detection.predictor import collect_inputs, iter_video_frames

    p = predictors["saved_model"]
    with pytest.raises(DataError, match="missing.png"):
        p.predict_file(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="bad.png.*cannot decode"):
        p.predict_file(bad)
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"garbage" * 50)
    with pytest.raises(DataError, match="junk.avi"):
        list(p.iter_video(junk))
    with pytest.raises(DataError, match="nothere.mp4.*not found"):
        next(iter_video_frames(tmp_path / "nothere.mp4"))
    with pytest.raises(DataError, match="dtype float"):
        p.predict_array(np.zeros((10, 10, 3), np.float32))
    for arr, expect in ((np.zeros((1, 1, 3), np.uint8), "at least 4 px"),
                        (np.zeros((0, 16, 3), np.uint8), "at least 4 px"),
                        (np.zeros((16, 16, 2), np.uint8), "Expected H x W or H x W x 3"),
                        (np.zeros((2, 16, 16, 3), np.uint8), "Expected H x W or H x W x 3")):
        with pytest.raises(DataError, match=expect):
            p.predict_array(arr)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"empty.*no images or videos.*\.png.*\.mp4"):
        collect_inputs([empty])
    with pytest.raises(DataError, match="gone"):
        collect_inputs([tmp_path / "gone"])
    with pytest.raises(DataError, match=r"notes.txt.*unsupported file type '.txt'"):
        collect_inputs([empty / "notes.txt"])


def test_one_predictor_entry_point_for_every_kind(det_export, predictors):
    """``from lepton_vision import Predictor``: a detection bundle gives a DetPredictor with the
    same predict / predict_many / iter_folder API as the classifier's."""
    from lepton_vision import Predictor
    from lepton_vision.kinds.detection.predictor import DetPredictor

    p = Predictor.from_bundle(det_export, backend="tflite", threshold=0.35, num_threads=1)
    assert isinstance(p, DetPredictor) and p.backend == "tflite" and p.score_threshold == 0.35
    frames = sorted((det_export.parent / "frames").glob("*.png"))
    by_path = p.predict(frames[0])
    by_array = p.predict(cv2.cvtColor(cv2.imread(str(frames[0])), cv2.COLOR_BGR2RGB))
    np.testing.assert_array_equal(by_path.boxes, by_array.boxes)
    assert by_path.path == str(frames[0]) and by_array.path is None
    folder = list(p.iter_folder(det_export.parent / "frames"))
    assert [d.path for d in folder] == [str(f) for f in frames]
    assert [d.count for d in folder] == [d.count for d in p.predict_many(frames)]
    ref = predictors["tflite"].predict_file(frames[0])
    np.testing.assert_allclose(by_path.scores, ref.scores, atol=1e-6)


def test_readme_examples_reproduce_the_predictor_on_a_detector(det_export, predictors, tmp_path, readme_example,
                                                                 readme_schema_fields):
    """The README's plain-TF and LiteRT scripts (no lepton_vision) give the Predictor's outputs."""
    frame = str(sorted((det_export.parent / "frames").glob("*.png"))[1])
    stdout, out = readme_example("plain-tf-example", tmp_path, str(det_export), frame)
    ref = predictors["saved_model"].run_uint8(cv2.cvtColor(cv2.imread(frame), cv2.COLOR_BGR2RGB))
    np.testing.assert_allclose(out["boxes"], ref["boxes"], atol=1e-3)
    np.testing.assert_allclose(out["scores"], ref["scores"], atol=1e-6)
    assert out["count"] == int(ref["count"]) and out["alarm"] == int(ref["alarm"])
    assert len(stdout.splitlines()) - 1 == predictors["saved_model"].predict_file(frame).count  # one line per box
    for backend, name in (("tflite", "model.tflite"), ("tflite_int8", "model_int8.tflite")):
        _, out = readme_example("litert-example", tmp_path, str(det_export), frame, name)
        ref = predictors[backend].run_uint8(cv2.cvtColor(cv2.imread(frame), cv2.COLOR_BGR2RGB))
        np.testing.assert_allclose(out["boxes"], ref["boxes"], atol=1e-4)
        np.testing.assert_allclose(out["scores"], ref["scores"], atol=1e-6)
        assert out["count"] == int(ref["count"])
    bundle = json.loads((det_export / "bundle.json").read_text())
    assert not set(bundle) - readme_schema_fields, set(bundle) - readme_schema_fields


def test_kind_mismatch_is_explained(det_export, tmp_path):
    from lepton_vision.kinds.detection.predictor import DetPredictor

    cls_dir = tmp_path / "cls"
    cls_dir.mkdir()
    (cls_dir / "bundle.json").write_text(json.dumps({"schema_version": 1, "kind": "binary_classification",
                                                     "classes": ["a", "b"], "threshold": {"value": 0.5}}))
    with pytest.raises(ExportError, match="'binary_classification' bundle.*Predictor.from_bundle"):
        DetPredictor.from_bundle(cls_dir)


def test_cli_end_to_end(det_export, tmp_path, capsys):
    from lepton_vision.cli import main

    rng = np.random.default_rng(7)
    imgs = tmp_path / "imgs"
    for i in range(2):
        _write_png(imgs / "sub" / f"img{i}.png", _scene(rng, 100, 150)[0])
    video = _write_video(tmp_path / "street.mp4", [_scene(rng, 96, 160)[0] for _ in range(4)])
    out, ann = tmp_path / "preds.json", tmp_path / "annotated"
    rc = main(["predict", str(det_export), str(imgs), str(video), "--out", str(out), "--annotate", str(ann),
               "--all", "--backend", "tflite"])
    text = capsys.readouterr().out
    assert rc == 0, text
    rows = json.loads(out.read_text())
    assert {Path(r["file_name"]).name for r in rows} == {"img0.png", "img1.png", "street.mp4"}
    assert all(("frame" in r) == r["file_name"].endswith(".mp4") for r in rows)
    assert all(len(r["bbox"]) == 4 and r["category_id"] == 1 and r["score"] >= 0.01 for r in rows)
    assert "img0.png: " in text and "street.mp4: 4 frames" in text and "2 images, 1 videos (4 frames)" in text
    assert sorted(p.name for p in ann.iterdir()) == ["img0.png", "img1.png", "street.mp4"]
    cap = cv2.VideoCapture(str(ann / "street.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    cap.release()
    # Default: only boxes at or above the (overridden) threshold are written.
    rc = main(["predict", str(det_export), str(imgs), "--out", str(out), "--threshold", "0.35"])
    assert rc == 0
    assert all(r["score"] >= 0.35 for r in json.loads(out.read_text()))
    # Bad input: a message naming the file and exit code 1, no traceback.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(det_export), str(empty), "--out", str(out)]) == 1
    assert "empty: no images or videos" in capsys.readouterr().err
    assert main(["predict", str(det_export), str(tmp_path / "nope.mp4"), "--out", str(out)]) == 1
    assert "nope.mp4: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("array, expect", [
    (np.zeros((32, 40, 3), np.float32), "expected to be a uint8 tensor"),
    (np.zeros((32, 40), np.uint8), r"expected shape \[\?,\?,3\]"),
    (np.zeros((32, 40, 4), np.uint8), r"expected shape \[\?,\?,3\]"),
    (np.zeros((1, 32, 40, 3), np.uint8), r"expected shape \[\?,\?,3\]"),
])
def test_detector_signature_refuses_wrong_inputs_at_the_boundary(det_export, array, expect):
    import tensorflow as tf

    serve = tf.saved_model.load(str(det_export / "saved_model")).signatures["serve_uint8"]
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError), match=expect) as err:
        serve(image=tf.constant(array))
    assert "ResizeBilinear" not in str(err.value) and "conv" not in str(err.value).lower()


def test_int8_float_layers_keep_those_layers_float(det_export):
    """export.int8_float_layers (the fixture keeps the head float): the named layers' ops join
    letterbox/decode/NMS on the float32 list, and in model_int8.tflite their convolutions keep
    float32 weights while the rest of the network's are int8."""
    from ai_edge_litert.interpreter import Interpreter

    from lepton_vision.kinds.detection.export import NETWORK_SCOPE, _float_only_nodes

    float_file = det_export / "model.tflite"
    base = _float_only_nodes(float_file)
    head = _float_only_nodes(float_file, ["yolo_v8_head"])
    extra = set(head) - set(base)
    assert set(base) < set(head) and all("yolo_v8_head" in n and NETWORK_SCOPE in n for n in extra)

    interp = Interpreter(model_path=str(det_export / "model_int8.tflite"))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    conv_weights = {}
    for op in interp._get_ops_details():
        if op["op_name"] == "CONV_2D":
            name = tensors[op["outputs"][0]]["name"]
            conv_weights[name] = tensors[op["inputs"][1]]["dtype"]
    head_convs = [d for n, d in conv_weights.items() if "yolo_v8_head" in n]
    other_convs = [d for n, d in conv_weights.items() if "yolo_v8_head" not in n]
    assert head_convs and all(d == np.float32 for d in head_convs)
    assert other_convs and all(d == np.int8 for d in other_convs)


def test_int8_keeps_the_head_outputs_float_so_scores_keep_their_resolution(det_export, tmp_path):
    """By default (no export.int8_float_layers) the int8 file quantises the backbone, neck and
    head convolutions but keeps float32 the head's last box/class convolutions, the class sigmoid
    and the concatenations that join box logits (about +-70) and class probabilities (0..1):
    an int8 concatenation shares one scale between its inputs, which rounded every USC
    pedestrian score to steps of ~0.57 (held-out AP50 0.747 -> 0.566 on one fold)."""
    from ai_edge_litert.interpreter import Interpreter

    from lepton_vision.kinds.detection.export import HEAD_OUTPUT_LAYERS, NETWORK_SCOPE, _convert_tflite, _float_only_nodes

    float_file = det_export / "model.tflite"
    nodes = _float_only_nodes(float_file)
    inside = [n for n in nodes if n.split(";")[0].startswith(NETWORK_SCOPE + "/")]
    assert any("_classifier" in n for n in inside) and any("output_reshape" in n for n in inside)
    assert not any("functional" in n or "pa_fpn" in n for n in inside)  # backbone and neck stay int8

    rng = np.random.default_rng(0)
    frames = [_scene(rng, 120, 160)[0] for _ in range(12)]
    out = _convert_tflite(det_export / "saved_model", tmp_path / "int8.tflite", frames[:8], float_tflite=float_file)
    interp = Interpreter(model_path=str(out))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    sigmoids = [op for op in ops if op["op_name"] == "LOGISTIC" and "_classifier" in tensors[op["outputs"][0]]["name"]]
    assert sigmoids and all(tensors[op["outputs"][0]]["dtype"] == np.float32 for op in sigmoids)
    # The class probabilities reach the joins (through the quantiser's int8 round trip at 1/256
    # on 0..1, no coarser) and the joins are float32.
    on_path = [t for t in tensors.values() if "_classifier" in t["name"]]
    assert all(t["dtype"] == np.float32 or t["quantization"][0] <= 1 / 255 for t in on_path)
    joins = [op for op in ops if op["op_name"] == "CONCATENATION"
             and any("_classifier" in tensors[int(i)]["name"] for i in op["inputs"] if int(i) >= 0)]
    assert joins and all(tensors[op["outputs"][0]]["dtype"] == np.float32 for op in joins)
    convs = {tensors[op["outputs"][0]]["name"]: tensors[op["inputs"][1]]["dtype"] for op in ops if op["op_name"] == "CONV_2D"}
    last = [d for n, d in convs.items() if any(layer in n for layer in HEAD_OUTPUT_LAYERS)]
    rest = [d for n, d in convs.items() if not any(layer in n for layer in HEAD_OUTPUT_LAYERS)]
    assert last and all(d == np.float32 for d in last) and rest and all(d == np.int8 for d in rest)

    # The scores themselves: the int8 file's image score follows the float file's closely.
    def image_scores(path):
        it = Interpreter(model_path=str(path))
        run = it.get_signature_runner("serve_uint8")
        return np.array([float(np.asarray(run(image=f)["image_score"])) for f in frames])

    assert np.abs(image_scores(out) - image_scores(float_file)).max() < 0.05


def test_tflite_graph_copies_no_image_with_strided_slice(det_export, image_slices):
    """Indexing an image tensor ([None], [0]) converts to a TFLite STRIDED_SLICE that copies element
    by element: on a 768x576 frame it was 11.5 ms of the person detector's 27 ms. The letterbox and
    the network input use EXPAND_DIMS/SQUEEZE instead; no STRIDED_SLICE reads an image-sized tensor."""
    for name in ("model.tflite", "model_int8.tflite"):
        assert not image_slices(det_export / name, (300, 420, 3), INPUT_HW[0] * INPUT_HW[1]), name
        # not vacuous: the box decoding still slices its small [anchors, 4 x bins] tensors
        assert image_slices(det_export / name, (300, 420, 3), 1), name

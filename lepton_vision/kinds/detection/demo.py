"""The detection page: boxes on an image, a webcam picture or a whole video, with threshold and
NMS sliders, boxes per class and latency.

:class:`DetectionDemo` is the page's logic in plain Python around the export's
:class:`~lepton_vision.kinds.detection.predictor.DetPredictor` (tests call it without a browser);
:func:`build_detection_demo` lays the page out. The shell around it (binding, auth, upload limits)
is :mod:`lepton_vision.serve.demo`.
"""

from __future__ import annotations

import html
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import gradio as gr
import numpy as np

from lepton_vision.config.errors import DataError
from lepton_vision.data import preprocess
from lepton_vision.kinds.detection.predictor import (
    CLASS_COLORS_RGB,
    DET_IMAGE_EXTENSIONS,
    DetPredictor,
    FrameDetections,
    draw_detections,
)
from lepton_vision.serve.media import BROWSER_VIDEO_CODECS, VIDEO_EXTENSIONS, AnnotatedVideoWriter, iter_video_frames, video_info
from lepton_vision.serve import ui


#: Small frames are drawn at least this many pixels wide/high so labels stay legible.
_DISPLAY_MIN_SIDE = 640


def class_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Greedy class-wise NMS: indices (in descending score order) of the boxes kept.

    A box is dropped when it overlaps a higher-scoring box of the same class with IoU > ``iou``
    (the rule of TensorFlow's NMS, which the exported graph uses).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    suppressed = np.zeros(len(boxes), bool)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        rest = order[pos + 1:]
        rest = rest[(classes[rest] == classes[i]) & ~suppressed[rest]]
        if not len(rest):
            continue
        ix1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        iy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        ix2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        iy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
        union = area[i] + area[rest] - inter
        ious = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        suppressed[rest[ious > iou]] = True
    return np.asarray(keep, dtype=np.int64)


def filter_detections(det: FrameDetections, score_threshold: float, nms_iou: float,
                      exported_nms_iou: float) -> FrameDetections:
    """The boxes at or above ``score_threshold`` after an extra class-wise NMS at ``nms_iou``.

    The exported graph already ran NMS at ``exported_nms_iou``; at or above it the extra NMS
    cannot remove anything and is skipped, so the result equals the model's own output.
    """
    keep = det.above(score_threshold)
    boxes, scores, classes = det.boxes[keep], det.scores[keep], det.classes[keep]
    if float(nms_iou) < float(exported_nms_iou) and len(scores) > 1:
        idx = np.sort(class_nms(boxes, scores, classes, float(nms_iou)))
        boxes, scores, classes = boxes[idx], scores[idx], classes[idx]
    return replace(det, boxes=boxes, scores=scores, classes=classes, threshold=float(score_threshold),
                   count=int(len(scores)))


@dataclass
class DetectionResult:
    """What the detection page shows for one image.

    Attributes:
        name: The uploaded file's name (or "webcam frame").
        image: uint8 RGB with the boxes drawn (small frames enlarged for legibility).
        detections: Boxes at or above the score threshold after the extra NMS (original pixels).
        raw: Every box the model returned (score >= the bundle's min_score).
        frame: The input frame, uint8 RGB.
        score_threshold: The slider's box threshold.
        nms_iou: The slider's NMS IoU.
        per_class: ``{class: (boxes, max score)}`` over the shown boxes, every class listed.
        latency_ms: Time of the model call (letterbox, network and NMS inside the graph).
        decode_ms: Time to read and decode the upload.
    """

    name: str
    image: np.ndarray
    detections: FrameDetections
    raw: FrameDetections
    frame: np.ndarray
    score_threshold: float
    nms_iou: float
    per_class: dict[str, tuple[int, float]]
    latency_ms: float
    decode_ms: float

    @property
    def count(self) -> int:
        """Boxes shown."""
        return int(self.detections.count)


@dataclass
class VideoResult:
    """The annotated video and its summary.

    Attributes:
        path: The annotated video (VP8 WebM when OpenCV can write it, else mp4v MP4 / MJPG AVI).
        name: The uploaded file's name.
        frames_run: Frames the model ran on.
        frames_in_video: Frames the container reports (0 when unknown).
        stride: Every n-th frame was run.
        capped: The frame cap cut the video short.
        frames_with_boxes: Frames with at least one shown box.
        alarm_frames: Frames whose image score reached the bundle's image threshold.
        ood_frames: Frames unlike the training frames (OOD score above 1; 0 without a reference).
        per_class: ``{class: (boxes over all frames, max score)}``.
        latency_ms: Model time per frame, one entry per frame run.
        seconds: Wall time of the whole run (decode, model, drawing, encoding).
    """

    path: Path
    name: str
    frames_run: int
    frames_in_video: int
    stride: int
    capped: bool
    frames_with_boxes: int
    alarm_frames: int
    per_class: dict[str, tuple[int, float]]
    latency_ms: list[float]
    seconds: float
    ood_frames: int = 0


class DetectionDemo:
    """Detects objects in uploaded images, webcam frames and videos (the detection page's logic).

    Args:
        export_dir: An export folder of kind ``object_detection``.
        backend: Predictor backend (``auto``: LiteRT float32 when installed, else SavedModel).
        max_pixels: Refuse larger images and video frames.
        max_video_frames: Frames of one video run at most.
        num_threads: LiteRT threads (None: LiteRT's default).
        work_dir: Where annotated videos are written (default: a temp folder removed with the demo).
    """

    def __init__(self, export_dir: str | Path, backend: str = "auto", max_pixels: int = ui.DEFAULT_MAX_PIXELS,
                 max_video_frames: int = ui.MAX_VIDEO_FRAMES, num_threads: int | None = None,
                 work_dir: str | Path | None = None) -> None:
        self.export_dir = Path(export_dir)
        self.predictor = DetPredictor.from_bundle(self.export_dir, backend=backend, num_threads=num_threads)
        predictor = self.predictor
        self.bundle = predictor.bundle
        self.classes = list(predictor.classes)
        self.score_threshold = float(predictor.score_threshold)
        det = self.bundle.get("detection") or {}
        self.nms_iou = float(det.get("nms_iou", 0.5))
        self.min_score = float(det.get("min_score", 0.0))
        self.max_pixels = int(max_pixels)
        self.max_video_frames = int(max_video_frames)
        self.colors = CLASS_COLORS_RGB if len(self.classes) > 1 else None
        self._lock = threading.Lock()
        self.work_dir = ui.work_dir(self, work_dir)

    # -----------------------------------------------------------------------------------
    def _frame(self, image: Any) -> tuple[np.ndarray, str]:
        raw, name = ui.read_upload(image, array_name="webcam frame",
                                   missing="Upload an image (or take a webcam picture) first.",
                                   extensions=DET_IMAGE_EXTENSIONS, what="an image (PNG, JPEG, BMP or TIFF)",
                                   max_pixels=self.max_pixels)
        if np.issubdtype(raw.dtype, np.floating):
            raise ui.user_error(f"{name} is a CT image (DICOM, Hounsfield units); this detector takes photos or "
                           f"video frames ({', '.join(DET_IMAGE_EXTENSIONS)}).", title="Not a photo")
        return preprocess.to_uint8(raw, 3, None), name

    def _run(self, rgb: np.ndarray, name: str, frame: int | None = None) -> tuple[FrameDetections, float]:
        with self._lock:
            t0 = time.perf_counter()
            det = self.predictor.predict_array(rgb, path=name, frame=frame)
            return det, (time.perf_counter() - t0) * 1000.0

    def _thresholds(self, score_threshold: float | None, nms_iou: float | None) -> tuple[float, float]:
        thr = self.score_threshold if score_threshold is None else float(score_threshold)
        iou = self.nms_iou if nms_iou is None else float(nms_iou)
        if not 0.0 <= thr <= 1.0 or not 0.0 < iou <= 1.0:
            raise ui.user_error(f"Score threshold must be in [0, 1] and NMS IoU in (0, 1]. Got {thr}, {iou}.",
                           title="Bad setting")
        return thr, iou

    def draw(self, rgb: np.ndarray, det: FrameDetections) -> np.ndarray:
        """The frame with ``det``'s boxes, class and score drawn; frames smaller than 640 px are
        enlarged (2x, 3x or 4x) first so the labels stay legible."""
        h, w = rgb.shape[:2]
        s = min(4, max(1, math.ceil(_DISPLAY_MIN_SIDE / max(h, w)))) if max(h, w) < _DISPLAY_MIN_SIDE else 1
        if s > 1:
            rgb = cv2.resize(rgb, (w * s, h * s), interpolation=cv2.INTER_LINEAR)
            det = replace(det, boxes=det.boxes * np.float32(s), width=w * s, height=h * s)
        # Labels sized to the frame's width: the page shows every frame about 600 px wide.
        width = rgb.shape[1]
        return draw_detections(rgb, det, threshold=det.threshold, colors=self.colors,
                               font_scale=max(0.4, width / 1200), thickness=max(1, round(width / 400)))

    def per_class(self, dets: Sequence[FrameDetections]) -> dict[str, tuple[int, float]]:
        """{class: (boxes, max score)} over the given (already filtered) detections."""
        out = {c: (0, 0.0) for c in self.classes}
        for d in dets:
            for cls, s in zip(d.classes, d.scores, strict=True):
                name = self.classes[int(cls)]
                n, top = out[name]
                out[name] = (n + 1, max(top, float(s)))
        return out

    def refilter(self, raw: FrameDetections, rgb: np.ndarray, name: str, score_threshold: float | None,
                 nms_iou: float | None, latency_ms: float = 0.0, decode_ms: float = 0.0) -> DetectionResult:
        """Apply the sliders to an earlier model output (no model call)."""
        thr, iou = self._thresholds(score_threshold, nms_iou)
        shown = filter_detections(raw, thr, iou, self.nms_iou)
        return DetectionResult(name=name, image=self.draw(rgb, shown), detections=shown, raw=raw, frame=rgb,
                               score_threshold=thr, nms_iou=iou, per_class=self.per_class([shown]),
                               latency_ms=latency_ms, decode_ms=decode_ms)

    def detect(self, image: Any, score_threshold: float | None = None, nms_iou: float | None = None) -> DetectionResult:
        """Detect objects in one image: an upload payload, a path, or a uint8 array (webcam).

        Raises:
            gradio.Error: No image, not an image, unreadable, a DICOM, wrong channels, too large.
        """
        self._thresholds(score_threshold, nms_iou)
        t0 = time.perf_counter()
        rgb, name = self._frame(image)
        decode = (time.perf_counter() - t0) * 1000.0
        raw, latency = self._run(rgb, name)
        ui.warn_if_ood(name, raw.ood_score, raw.in_distribution)
        return self.refilter(raw, rgb, name, score_threshold, nms_iou, latency, decode)

    def detect_video(self, video: Any, score_threshold: float | None = None, nms_iou: float | None = None,
                     stride: int = 1, progress: Callable[..., Any] | None = None) -> VideoResult:
        """Run every ``stride``-th frame of a video (at most ``max_video_frames``) and write it
        annotated.

        Args:
            video: The upload payload or a path.
            score_threshold: Box threshold (default: the exported one).
            nms_iou: Extra NMS IoU (default: the exported one, i.e. none).
            stride: Run every n-th frame (1..).
            progress: Called as ``progress((done, total), desc=...)`` after each frame
                (a :class:`gradio.Progress` draws the bar).

        Raises:
            gradio.Error: No file, not a video, unreadable, frames too large.
        """
        thr, iou = self._thresholds(score_threshold, nms_iou)
        stride = int(stride)
        if stride < 1:
            raise ui.user_error(f"The frame stride must be 1 or more. Got {stride}.", title="Bad setting")
        path, name = ui.input_path(video)
        if path is None:
            raise ui.user_error("Upload a video first.", title="No video")
        ui.check_suffix(path, name, VIDEO_EXTENSIONS, "a video")
        if not path.is_file() or path.stat().st_size == 0:
            raise ui.user_error(f"{name} is empty or gone from the server. Upload it again.", title="No video")
        n_frames, fps = video_info(path)
        planned = min(math.ceil(n_frames / stride), self.max_video_frames) if n_frames else self.max_video_frames
        out_base = self.work_dir / f"{ui.safe_name(Path(name).stem)}_annotated_{uuid.uuid4().hex[:8]}"
        writer = AnnotatedVideoWriter(out_base, (fps or 10.0) / stride, codecs=BROWSER_VIDEO_CODECS)
        shown: list[FrameDetections] = []
        latencies: list[float] = []
        alarms = 0
        ood_frames = 0
        last_index = -1
        t_start = time.perf_counter()
        try:
            with writer:
                for k, (index, rgb) in enumerate(iter_video_frames(path, stride=stride,
                                                                  max_frames=self.max_video_frames)):
                    if k == 0 and rgb.shape[0] * rgb.shape[1] > self.max_pixels:
                        raise ui.too_big(name, rgb.shape[1], rgb.shape[0], self.max_pixels)
                    raw, latency = self._run(rgb, name, frame=index)
                    d = filter_detections(raw, thr, iou, self.nms_iou)
                    writer.write(self.draw(rgb, d))
                    shown.append(d)
                    latencies.append(latency)
                    alarms += int(raw.alarm)
                    ood_frames += int(raw.in_distribution is False)
                    last_index = index
                    if progress is not None:
                        progress((k + 1, max(planned, k + 1)), desc=f"frame {index + 1}"
                                 + (f" of {n_frames}" if n_frames else ""), unit="frames")
        except DataError as e:
            raise ui.user_error(ui.friendly(e, name, path), title="Cannot read this video") from None
        if writer.path is None:
            raise ui.user_error(f"{name}: no frame could be decoded.", title="Cannot read this video")
        run_frames = len(shown)
        capped = run_frames >= self.max_video_frames and (n_frames == 0 or last_index + stride < n_frames)
        return VideoResult(path=writer.path, name=name, frames_run=run_frames, frames_in_video=n_frames,
                           stride=stride, capped=capped, frames_with_boxes=sum(d.count > 0 for d in shown),
                           alarm_frames=alarms, per_class=self.per_class(shown), latency_ms=latencies,
                           seconds=time.perf_counter() - t_start, ood_frames=ood_frames)

    # -----------------------------------------------------------------------------------
    def summary_markdown(self, r: DetectionResult) -> str:
        """One paragraph under the image: boxes, object-present score, timings."""
        parts = [f"**{html.escape(r.name)}** ({r.frame.shape[1]}×{r.frame.shape[0]}): "
                 f"**{r.count} box{'es' if r.count != 1 else ''}** at score ≥ {r.score_threshold:.3f}"]
        if r.nms_iou < self.nms_iou:
            parts.append(f"extra NMS at IoU {r.nms_iou:.2f} removed "
                         f"{int(r.raw.above(r.score_threshold).sum()) - r.count}")
        if self.predictor.image_threshold is not None:
            present = "yes" if r.raw.alarm else "no"
            parts.append(f"object present: **{present}** (image score {r.raw.image_score:.3f} vs "
                         f"{self.predictor.image_threshold:.3f})")
        parts.append(f"model {r.latency_ms:.1f} ms ({ui.backend_text(self.predictor)}), decode {r.decode_ms:.1f} ms")
        parts.append(ui.ood_markdown(self.predictor, r.raw.ood_score, r.raw.in_distribution))
        return " · ".join(parts)

    def video_markdown(self, v: VideoResult) -> str:
        """The video run in a few lines."""
        lat = np.asarray(v.latency_ms or [0.0])
        lines = [f"**{html.escape(v.name)}**: ran {v.frames_run} frames"
                 + (f" of {v.frames_in_video}" if v.frames_in_video else "")
                 + (f" (every {_ordinal(v.stride)} frame)" if v.stride > 1 else "")
                 + f"; {v.frames_with_boxes} with boxes; "
                 + ", ".join(f"{c} {n}" for c, (n, _) in v.per_class.items()) + " boxes in total."]
        if self.predictor.image_threshold is not None:
            lines.append(f"Object present in {v.alarm_frames} of {v.frames_run} frames.")
        if self.predictor.ood and v.ood_frames:
            lines.append(f"**⚠ {v.ood_frames} of {v.frames_run} frames are unlike the training frames** (OOD score "
                         "> 1): boxes on them may be missing or wrong.")
        elif self.predictor.ood:
            lines.append("Every frame is like the training frames (OOD score ≤ 1).")
        else:
            lines.append(f"No out-of-distribution check ({self.predictor.ood_note}).")
        if v.capped:
            lines.append(f"**Stopped at the {self.max_video_frames}-frame cap**; raise the stride to cover "
                         "the whole video.")
        lines.append(f"Model {np.median(lat):.1f} ms per frame (median; mean {lat.mean():.1f} ms); "
                     f"{v.frames_run / max(v.seconds, 1e-9):.1f} frames/s including decoding, drawing and "
                     f"encoding ({v.seconds:.1f} s).")
        return "\n\n".join(lines)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _counts_table(per_class: dict[str, tuple[int, float]]) -> list[list[Any]]:
    return [[c, n, round(top, 3) if n else None] for c, (n, top) in per_class.items()]


def _page(demo: DetectionDemo, examples: list[str], png_file: ui.ImageFiles) -> gr.Blocks:
    b = demo.bundle
    pol = ui.policy_text(b.get("threshold_policy"))
    headers = ["class", "boxes", "max score"]
    with gr.Blocks(title=f"{b.get('title', 'Object detection')} · lepton-vision", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(f"# {b.get('title', 'Object detection')}\n{b.get('intended_use', '')}", elem_id="header")
        with gr.Row():
            thr = gr.Slider(demo.min_score, 1.0, value=round(demo.score_threshold, 4), step=0.001,
                            label="Box score threshold",
                            info=f"Boxes below it are hidden. Starts at the exported {demo.score_threshold:.3f} "
                                 f"({pol} on out-of-fold boxes).", elem_id="det-threshold")
            iou = gr.Slider(0.05, 0.95, value=demo.nms_iou, step=0.05, label="NMS IoU",
                            info=f"The exported model already ran class-wise NMS at IoU {demo.nms_iou:.2f}. Lower "
                                 "values also merge less-overlapping boxes of one class; values at or above "
                                 f"{demo.nms_iou:.2f} change nothing.", elem_id="det-nms")
        with gr.Tabs():
            with gr.Tab("Image", id="image"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1):
                        img_in = gr.Image(label="Frame: upload, webcam or paste", type="filepath",
                                          sources=["upload", "webcam", "clipboard"], image_mode=None,
                                          height=360, elem_id="det-image-in")
                        run = gr.Button("Detect", variant="primary", elem_id="det-run")
                        if examples:
                            gr.Examples(examples=[[p] for p in examples], inputs=[img_in], elem_id="det-examples",
                                        label="Examples from the training data (file name = with/without objects)",
                                        examples_per_page=12)
                    with gr.Column(scale=1):
                        img_out = gr.Image(label="Detections", type="filepath", interactive=False,
                                           elem_id="det-image-out")
                        with gr.Row():
                            count = gr.Textbox(label="Boxes shown", interactive=False, elem_id="det-count")
                            img_score = gr.Textbox(label="Image score (object present)", interactive=False,
                                                   elem_id="det-image-score")
                            latency = gr.Textbox(label="Model latency (ms)", interactive=False,
                                                 elem_id="det-latency")
                        table = gr.Dataframe(headers=headers, datatype=["str", "number", "number"],
                                             label="Boxes per class", interactive=False, elem_id="det-counts")
                        ood_box = gr.HTML(elem_id="det-ood")
                        summary = gr.Markdown(elem_id="det-summary")
            with gr.Tab("Video", id="video"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1):
                        # A file input, not gr.Video: any codec OpenCV decodes is run, also those the
                        # browser cannot preview (mp4v, MJPG AVI from cameras).
                        vid_in = gr.File(label="Video file (" + " ".join(VIDEO_EXTENSIONS) + ")",
                                         file_count="single", file_types=list(VIDEO_EXTENSIONS), type="filepath",
                                         elem_id="det-video-in")
                        stride = gr.Slider(1, 10, value=1, step=1, label="Run every n-th frame",
                                           info=f"At most {demo.max_video_frames} frames are run; longer videos "
                                                "stop there (the summary says so). The sliders above apply.",
                                           elem_id="det-stride")
                        vid_run = gr.Button("Detect in video", variant="primary", elem_id="det-video-run")
                    with gr.Column(scale=1):
                        vid_out = gr.Video(label="Annotated video", interactive=False, height=320,
                                           elem_id="det-video-out")
                        vid_table = gr.Dataframe(headers=headers, datatype=["str", "number", "number"],
                                                 label="Boxes per class (all frames)", interactive=False,
                                                 elem_id="det-video-counts")
                        vid_summary = gr.Markdown(elem_id="det-video-summary")
        with gr.Accordion("Model card", open=True, elem_id="model-card"):
            gr.Markdown(ui.card_markdown(b, card_section(b), ui.backend_text(demo.predictor)))
        state = gr.State(None)

        def _outputs(r: DetectionResult) -> tuple[Any, ...]:
            st = {"raw": r.raw, "frame": r.frame, "name": r.name, "latency": r.latency_ms, "decode": r.decode_ms}
            return (png_file(r.image), str(r.count), f"{r.raw.image_score:.3f}", f"{r.latency_ms:.1f}",
                    _counts_table(r.per_class), ui.ood_warning_html(r.raw.ood_score, r.raw.in_distribution,
                                                                    "det-ood-warning"),
                    demo.summary_markdown(r), st)

        empty = (None, "", "", "", _counts_table(demo.per_class([])), "", "", None)

        @ui.with_friendly_errors
        def on_detect(image: Any, threshold: float, nms: float) -> tuple[Any, ...]:
            return _outputs(demo.detect(image, threshold, nms))

        @ui.with_friendly_errors
        def on_image(image: Any, threshold: float, nms: float) -> tuple[Any, ...]:
            if ui.input_path(image)[0] is None:
                return empty
            return _outputs(demo.detect(image, threshold, nms))

        @ui.with_friendly_errors
        def on_sliders(st: dict[str, Any] | None, threshold: float, nms: float) -> tuple[Any, ...]:
            if not st:
                return tuple(gr.skip() for _ in range(8))
            return _outputs(demo.refilter(st["raw"], st["frame"], st["name"], threshold, nms,
                                          st["latency"], st["decode"]))

        @ui.with_friendly_errors
        def on_video(video: Any, threshold: float, nms: float, n: float,
                     progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008 - Gradio's API
            v = demo.detect_video(video, threshold, nms, int(n), progress=progress)
            return str(v.path), _counts_table(v.per_class), demo.video_markdown(v)

        outs = [img_out, count, img_score, latency, table, ood_box, summary, state]
        common = dict(preprocess=False, concurrency_id="model")
        run.click(on_detect, [img_in, thr, iou], outs, **common)
        # A new frame first clears the old result, so a refused upload never leaves one on screen.
        img_in.change(lambda: empty, None, outs, queue=False, show_progress="hidden").then(
            on_image, [img_in, thr, iou], outs, **common)
        for slider in (thr, iou):
            slider.change(on_sliders, [state, thr, iou], outs, preprocess=False, concurrency_limit=None,
                          show_progress="hidden")
        vid_outs = [vid_out, vid_table, vid_summary]
        vid_run.click(on_video, [vid_in, thr, iou, stride], vid_outs, **common)
        vid_in.change(lambda: (None, _counts_table(demo.per_class([])), ""), None, vid_outs, queue=False,
                      show_progress="hidden")
    return blocks


def card_section(bundle: dict[str, Any]) -> list[str]:
    """The model card's operating point (box and alarm thresholds, NMS) and cross-validated box
    metrics of a detector."""
    metrics = bundle.get("metrics") or {}
    unit_text = ui.bootstrap_unit_text(bundle, "sequences")
    lines: list[str] = []
    det = bundle.get("detection") or {}
    inside = []
    if det.get("nms_iou") is not None:
        inside.append(f"NMS inside the model at IoU {ui.fmt(det['nms_iou'], 2)}")
    if det.get("min_score") is not None:
        inside.append(f"boxes below {ui.fmt(det['min_score'], 2)} are never returned")
    if det.get("max_detections") is not None:
        inside.append(f"at most {det['max_detections']} per frame")
    lines += [
        f"**Operating point.** boxes count at score ≥ {ui.fmt(bundle.get('score_threshold'))} "
        f"(policy {ui.policy_text(bundle.get('threshold_policy'))} on out-of-fold boxes)"
        + (f"; {', '.join(inside)}." if inside else "."),
    ]
    if bundle.get("image_threshold") is not None:
        lines.append(f"\"Object present\" alarm at image score (highest box score) ≥ "
                     f"{ui.fmt(bundle['image_threshold'])}.")
    else:
        lines.append("No \"object present\" alarm: the training data had no empty frames.")
    cis = metrics.get("ci") if isinstance(metrics.get("ci"), dict) else {}
    lines += ["", f"**Cross-validated metrics** (out-of-fold; 95 % CI, bootstrap over {unit_text})", "",
              "| metric | value | 95 % CI |", "|---|---|---|"]
    for key in ("ap50", "ap50_95", "precision", "recall", "f1"):
        if metrics.get(key) is not None:
            lines.append(f"| {ui.METRIC_NAMES[key]} | {ui.fmt(metrics[key])} | {ui.ci_text(cis.get(key))} |")
    il = bundle.get("image_level") or {}
    if il.get("available") and il.get("auc") is not None:
        lines.append(f"| Image-level AUC (object present) | {ui.fmt(il['auc'])} | {ui.ci_text(cis.get('image_auc'))} |")
    per_class = metrics.get("per_class") or {}
    if len(per_class) > 1:
        lines += ["", "Per class (no CI in the bundle; precision and recall at the box threshold):", "",
                  "| class | AP50 | precision | recall | ground-truth boxes |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {ui.fmt(v.get('ap50'))} | {ui.fmt(v.get('precision'))} | {ui.fmt(v.get('recall'))} | "
                  f"{v.get('n_gt', '–')} |" for c, v in per_class.items()]
    return lines


def build_page(export_dir: Path, *, backend: str = "auto", examples: Any = None,
               max_pixels: int = ui.DEFAULT_MAX_PIXELS, max_video_frames: int = ui.MAX_VIDEO_FRAMES,
               num_threads: int | None = None) -> gr.Blocks:
    """The page of a detection export (not launched); ``blocks.lepton_demo`` is its
    :class:`DetectionDemo`. ``examples``: see :func:`lepton_vision.serve.demo.build_demo`."""
    demo = DetectionDemo(export_dir, backend=backend, max_pixels=max_pixels, max_video_frames=max_video_frames,
                         num_threads=num_threads)
    items = ui.pick_examples(export_dir, extensions=DET_IMAGE_EXTENSIONS) if examples is None else list(examples)
    staged = ui.stage_examples(items, demo.work_dir / "examples")
    blocks = _page(demo, staged, ui.ImageFiles(demo.work_dir / "results"))
    blocks.lepton_demo = demo  # type: ignore[attr-defined]
    blocks.lepton_examples = [[p] for p in staged]  # type: ignore[attr-defined]
    return blocks

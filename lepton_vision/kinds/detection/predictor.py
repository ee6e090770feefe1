"""Run an exported object detector on images and videos.

:class:`DetPredictor` reads ``bundle.json`` (kind ``object_detection``) and calls the exported
``serve_uint8`` signature, which letterboxes, decodes, runs NMS and maps boxes back to the
frame's own pixels inside the graph (see :mod:`lepton_vision.kinds.detection.export`). Here we only
decode files (images with :func:`preprocess.read_image`, videos with ``cv2.VideoCapture``,
BGR -> RGB), apply the score threshold in use, and turn results into COCO detection results or
annotated pictures. TensorFlow or LiteRT are imported only when a bundle is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lepton_vision.config.errors import DataError
from lepton_vision.data import preprocess
from lepton_vision.serve.media import (
    AnnotatedVideoWriter,
    is_video,
    iter_video_frames,
    video_info,
    write_image_rgb,
    VIDEO_EXTENSIONS,
)
from lepton_vision.serve.predictor import (
    Backend,
    BundlePredictor,
    Observation,
    collect_inputs as collect_inputs_of,
    check_threshold_override,
    open_runner,
    read_kind_bundle,
)

#: Image files a detection bundle reads (DICOM is CT, which detection bundles do not take).
DET_IMAGE_EXTENSIONS = tuple(preprocess.IMAGE_EXTENSIONS)
#: Box colour (RGB) and thickness of annotated output.
_BOX_RGB = (255, 40, 40)


@dataclass(frozen=True)
class FrameDetections:
    """Detections of one image or video frame, in the frame's ORIGINAL pixels.

    Attributes:
        boxes: float32 [N, 4] x1, y1, x2, y2, every kept box (score >= the bundle's min_score),
            sorted by score.
        scores: float32 [N].
        classes: int32 [N], index into ``class_names``.
        class_names: The bundle's classes.
        threshold: The box score threshold in use (bundle ``score_threshold`` or an override).
        count: Boxes with ``score >= threshold``.
        image_score: Highest box score (0.0 when none): "object present" score.
        alarm: ``image_score >= image_threshold`` of the bundle (False when it has none).
        width: Frame width in pixels.
        height: Frame height in pixels.
        path: The file, or None for an in-memory array.
        frame: 0-based frame index for video frames, else None.
        ood_score: How unlike the training frames this one is (:mod:`lepton_vision.export.reference`;
            above 1: out of distribution); None when the export has no reference.
        in_distribution: ``ood_score <= 1``; None without a reference.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    class_names: list[str]
    threshold: float
    count: int
    image_score: float
    alarm: bool
    width: int
    height: int
    path: str | None = None
    frame: int | None = None
    ood_score: float | None = None
    in_distribution: bool | None = None

    def above(self, threshold: float | None = None) -> np.ndarray:
        """Boolean mask of boxes with ``score >= threshold`` (default: the threshold in use)."""
        thr = self.threshold if threshold is None else threshold
        # float32 as in the graph, so ``count`` here equals the exported ``count``.
        return self.scores >= np.float32(thr)


class DetPredictor(BundlePredictor):
    """Detects objects with an exported detection bundle (SavedModel or TFLite).

    Build it with :meth:`from_bundle` (or ``lepton_vision.Predictor.from_bundle``, any kind).
    """

    def __init__(self, export_dir: Path, bundle: dict[str, Any], backend: str, runner: Any,
                 score_threshold: float, ood: bool = True) -> None:
        super().__init__(export_dir, bundle, backend, runner, ood)
        self.score_threshold = float(score_threshold)
        self.classes = [str(c) for c in bundle["classes"]]
        thr = bundle.get("image_threshold")
        self.image_threshold = None if thr is None else float(thr)

    # ---------------------------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, export_dir: str | Path, backend: Backend = "auto",
                    score_threshold: float | None = None, num_threads: int | None = None,
                    ood: bool = True) -> DetPredictor:
        """Load ``export_dir/bundle.json`` and the detector it describes.

        Args:
            export_dir: An export folder written by ``kinds.detection.export.export_detector``.
            backend: "saved_model" (TensorFlow), "tflite" (LiteRT, float32), "tflite_int8"
                (LiteRT, int8) or "auto": float TFLite when model.tflite exists and
                ai_edge_litert is installed, else the SavedModel.
            score_threshold: Override the bundle's box score threshold (0..1).
            num_threads: LiteRT interpreter threads (None: LiteRT's default).
            ood: Score how unlike the training frames each frame is (when the export has a
                reference; one more backbone pass per frame).

        Raises:
            ExportError: The bundle is missing, unreadable, not an object-detection bundle, or
                lacks the requested model file.
        """
        export_dir = Path(export_dir)
        bundle = read_kind_bundle(export_dir, "object_detection", ("classes", "score_threshold", "input"))
        backend, runner = open_runner(export_dir, bundle, backend, num_threads)
        score_threshold = (float(bundle["score_threshold"]) if score_threshold is None
                           else check_threshold_override(score_threshold, "score threshold", export_dir))
        return cls(export_dir, bundle, backend, runner, score_threshold, ood)

    def predict_array(self, img: np.ndarray, *, path: str | None = None,
                      frame: int | None = None) -> FrameDetections:
        """Detect objects in one uint8 RGB frame (H x W x 3; gray H x W is repeated to RGB).

        Args:
            img: The frame's pixels (uint8, or uint16 scaled to 0..255).
            path: Recorded in the result (and named in errors).
            frame: Video frame index recorded in the result.

        Raises:
            DataError: The array is not an 8/16-bit gray or RGB image.
        """
        rgb = self.frame_rgb(img, path)
        ood_score, in_distribution = self.ood_of(rgb)
        return dataclasses.replace(self._detect(rgb, path, frame), ood_score=ood_score,
                                   in_distribution=in_distribution)

    #: ``monitor`` reports the alarm rate of a detector.
    positive_name = "alarm"

    @property
    def positive_threshold(self) -> float | None:
        """The image (alarm) threshold, None when the export has none."""
        return self.image_threshold

    def observe(self, image_or_path: str | Path | np.ndarray) -> Observation:
        """The image score, the alarm, the OOD score and image statistics of one frame (``monitor``)."""
        path = str(image_or_path) if isinstance(image_or_path, (str, Path)) else None
        rgb = self.frame_rgb(read_rgb(image_or_path) if path else image_or_path, path)
        d = self._detect(rgb, path, None)
        return self.observation(d.image_score, d.alarm, rgb)

    def frame_rgb(self, img: np.ndarray, path: str | None = None) -> np.ndarray:
        """A frame's pixels as the uint8 RGB array the model takes.

        Raises:
            DataError: The array is not an 8/16-bit gray or RGB image.
        """
        raw = np.asarray(img)
        where = path or "image array"
        if raw.dtype not in (np.uint8, np.uint16):
            raise DataError(
                f"got pixels of dtype {raw.dtype} (shape {raw.shape}); a detection model takes "
                "uint8 RGB frames (H x W x 3). Convert with np.clip(x, 0, 255).astype(np.uint8).",
                file=where,
            )
        if raw.ndim in (2, 3):
            preprocess.check_size(raw.shape[0], raw.shape[1], where)
        try:
            return preprocess.to_uint8(raw, 3, None)
        except ValueError as exc:
            raise DataError(f"cannot use these pixels: {exc}. Expected H x W or H x W x 3.", file=where) from exc

    def _detect(self, rgb: np.ndarray, path: str | None, frame: int | None) -> FrameDetections:
        """The detections of a uint8 RGB frame, without the OOD score."""
        h, w = rgb.shape[:2]
        out = self.run_uint8(rgb)
        scores = out["scores"].astype(np.float32).reshape(-1)
        classes = out["classes"].astype(np.int32).reshape(-1)
        # Rows past num_detections are padding. TFLite exports from before the nms_padded fix
        # report num_detections = K and pad with score 0 / class 0, so padding is also told
        # apart by its zero score (real boxes have score >= min_score > 0 in practice).
        keep = (np.arange(len(scores)) < int(out["num_detections"])) & (classes >= 0) & (scores > 0)
        image_score = float(out["image_score"])
        alarm = self.image_threshold is not None and bool(np.float32(image_score) >= np.float32(self.image_threshold))
        return FrameDetections(
            boxes=out["boxes"].astype(np.float32).reshape(-1, 4)[keep],
            scores=scores[keep],
            classes=classes[keep],
            class_names=self.classes,
            threshold=self.score_threshold,
            count=int((scores[keep] >= np.float32(self.score_threshold)).sum()),
            image_score=image_score,
            alarm=alarm,
            width=int(w),
            height=int(h),
            path=path,
            frame=frame,
        )

    def predict_file(self, path: str | Path) -> FrameDetections:
        """Detect objects in an image file (PNG/JPEG/BMP/TIFF).

        Raises:
            DataError: The file is missing, unreadable or not an 8/16-bit image; the message
                names it.
        """
        return self.predict_array(read_rgb(path), path=str(path))

    def predict(self, image_or_path: str | Path | np.ndarray) -> FrameDetections:
        """Detect objects in one image: a file path or a uint8 RGB array (same as the
        classification Predictor's ``predict``)."""
        if isinstance(image_or_path, (str, Path)):
            return self.predict_file(image_or_path)
        return self.predict_array(image_or_path)

    def iter_video(self, path: str | Path, stride: int = 1) -> Iterator[FrameDetections]:
        """Detect objects in every ``stride``-th frame of a video, in order.

        Raises:
            DataError: The video is missing, cannot be opened, or yields no decodable frame.
        """
        for index, rgb in iter_video_frames(path, stride=stride):
            yield self.predict_array(rgb, path=str(path), frame=index)


# -------------------------------------------------------------------------------------------
# Input files


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 H x W x 3 RGB (gray is repeated, 16-bit scaled).

    Raises:
        DataError: Missing, unreadable, or a CT image (Hounsfield units); names the file.
    """
    raw = preprocess.read_image(path)  # DataError naming the file
    if np.issubdtype(raw.dtype, np.floating):
        raise DataError(
            "this is a CT image (Hounsfield units); an object-detection bundle takes RGB "
            f"photos or video frames ({', '.join(DET_IMAGE_EXTENSIONS)}).",
            file=str(path),
        )
    return preprocess.to_uint8(raw, 3, None)


def collect_inputs(items: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into the images and videos to run, in order
    (:func:`lepton_vision.serve.predictor.collect_inputs` with :data:`DET_IMAGE_EXTENSIONS` and videos).

    Raises:
        DataError: A path does not exist, a named file has an unsupported extension, or a
            folder holds no image or video.
    """
    return collect_inputs_of(items, DET_IMAGE_EXTENSIONS + VIDEO_EXTENSIONS, "images or videos")


# -------------------------------------------------------------------------------------------
# Output


def to_coco_results(dets: Iterable[FrameDetections], threshold: float | None = None,
                    keep_all: bool = False) -> list[dict[str, Any]]:
    """COCO detection results, one dict per box.

    Args:
        dets: Results of :meth:`DetPredictor.predict_file` / ``iter_video`` / ``predict_array``.
        threshold: Keep boxes with ``score >= threshold``; default: each result's threshold in
            use (bundle score_threshold or the override).
        keep_all: Keep every box the model returned (score >= the bundle's min_score), as mAP
            tools need the full ranking.

    Returns:
        ``{"file_name", "category_id" (1-based index into the classes, COCO style),
        "category_name", "bbox" [x, y, w, h] original pixels rounded to 2 decimals, "score"}``,
        plus ``"frame"`` for video frames and the frame's ``"ood_score"`` / ``"in_distribution"``
        when the export has a reference.
    """
    rows: list[dict[str, Any]] = []
    for d in dets:
        keep = np.ones(len(d.scores), bool) if keep_all else d.above(threshold)
        for box, score, cls in zip(d.boxes[keep], d.scores[keep], d.classes[keep], strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            row: dict[str, Any] = {
                "file_name": d.path,
                "category_id": int(cls) + 1,
                "category_name": d.class_names[int(cls)],
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": float(score),
            }
            if d.frame is not None:
                row["frame"] = int(d.frame)
            if d.ood_score is not None:
                row["ood_score"] = round(float(d.ood_score), 4)
                row["in_distribution"] = bool(d.in_distribution)
            rows.append(row)
    return rows


#: Per-class box colours (RGB), e.g. ``draw_detections(..., colors=CLASS_COLORS_RGB)``; the first is
#: the default single colour, the others are told apart from it and from each other.
CLASS_COLORS_RGB = ((255, 40, 40), (30, 144, 255), (255, 170, 0), (0, 170, 90), (170, 60, 220),
                    (0, 190, 190), (230, 60, 150), (120, 120, 120))


def draw_detections(img: np.ndarray, det: FrameDetections, class_names: list[str] | None = None,
                    threshold: float | None = None,
                    colors: Sequence[tuple[int, int, int]] | None = None,
                    font_scale: float | None = None, thickness: int | None = None) -> np.ndarray:
    """A copy of a uint8 RGB frame with the boxes at or above the threshold drawn and labelled.

    Args:
        img: uint8 H x W x 3 RGB (the frame ``det`` was computed on).
        det: Its detections.
        class_names: Labels (default ``det.class_names``).
        threshold: Draw boxes with ``score >= threshold`` (default: the threshold in use).
        colors: RGB colour per class index (cycled); default: one red for every class.
        font_scale: OpenCV font scale of the labels (default: from the frame's shorter side).
        thickness: Box line width in pixels (default: from the frame's shorter side).
    """
    names = class_names or det.class_names
    palette = tuple(colors) if colors else (_BOX_RGB,)
    out = np.ascontiguousarray(preprocess.to_uint8(np.asarray(img), 3, None)).copy()
    h, w = out.shape[:2]
    thick = int(thickness) if thickness else max(1, round(min(h, w) / 300))
    font_scale = float(font_scale) if font_scale else max(0.35, min(h, w) / 900)
    keep = det.above(threshold)
    for box, score, cls in zip(det.boxes[keep], det.scores[keep], det.classes[keep], strict=True):
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        colour = tuple(int(v) for v in palette[int(cls) % len(palette)])
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        label = f"{names[int(cls)]} {float(score):.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + 2  # inside the box at the top edge
        tx = max(0, min(x1, w - tw - 3))  # keep the label inside the frame at the right edge
        cv2.rectangle(out, (tx, ty - th - base + 1), (tx + tw + 2, ty + base - 1), colour, -1)
        cv2.putText(out, label, (tx + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


# -------------------------------------------------------------------------------------------
# Many files at once (the CLI's detection path)


@dataclass
class FileSummary:
    """What one input file gave.

    Attributes:
        path: The file.
        kind: "image" or "video".
        frames: Frames run (1 for an image).
        frames_with_boxes: Frames with at least one box at or above the threshold.
        boxes: Boxes at or above the threshold, over all frames.
        max_image_score: Highest image score over the frames.
        alarms: Frames whose image score reached the bundle's image threshold.
        out_of_distribution: Frames unlike the training frames (OOD score above 1).
        annotated: The annotated image or video written, if any.
    """

    path: Path
    kind: str
    frames: int = 0
    frames_with_boxes: int = 0
    boxes: int = 0
    max_image_score: float = 0.0
    alarms: int = 0
    out_of_distribution: int = 0
    annotated: Path | None = None

    def add(self, d: FrameDetections) -> None:
        """Count one frame's detections."""
        self.frames += 1
        self.frames_with_boxes += int(d.count > 0)
        self.boxes += d.count
        self.max_image_score = max(self.max_image_score, d.image_score)
        self.alarms += int(d.alarm)
        self.out_of_distribution += int(d.in_distribution is False)

    def line(self, threshold: float) -> str:
        """One human line: boxes, image score, alarms."""
        if self.kind == "image":
            text = (f"{self.path}: {self.boxes} boxes at score >= {threshold:.3g}, "
                    f"image score {self.max_image_score:.3f}" + (", ALARM" if self.alarms else "")
                    + (", UNLIKE THE TRAINING DATA (ood_score > 1)" if self.out_of_distribution else ""))
        else:
            text = (f"{self.path}: {self.frames} frames, {self.frames_with_boxes} with boxes, "
                    f"{self.boxes} boxes at score >= {threshold:.3g}, max image score "
                    f"{self.max_image_score:.3f}, {self.alarms} alarm frames"
                    + (f", {self.out_of_distribution} frames unlike the training data" if self.out_of_distribution else ""))
        return text + (f"; annotated: {self.annotated}" if self.annotated else "")


def predict_paths(
    predictor: DetPredictor,
    paths: list[Path],
    *,
    keep_all: bool = False,
    video_stride: int = 1,
    annotate_dir: str | Path | None = None,
    progress: bool | None = None,
) -> tuple[list[dict[str, Any]], list[FileSummary]]:
    """Run images and videos, printing one line per file.

    Args:
        predictor: A loaded detector.
        paths: Image and video files (see :func:`collect_inputs`).
        keep_all: COCO results with every box (score >= min_score) instead of those at or
            above the threshold in use.
        video_stride: Run every n-th video frame.
        annotate_dir: Write annotated images (``<stem>.png``) and videos (``<stem>.mp4`` or
            ``.avi``) here.
        progress: Show a rich progress bar (default: when there is a video or more than 10 files).

    Returns:
        (COCO results, one summary per file).

    Raises:
        DataError: A file cannot be read (the message names it).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    out_dir = Path(annotate_dir) if annotate_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()

    def annotated_name(p: Path) -> Path:
        assert out_dir is not None
        stem, k = p.stem, 1
        while stem in used:  # same file name from two folders: keep both
            stem, k = f"{p.stem}_{k}", k + 1
        used.add(stem)
        return out_dir / stem

    units = [video_info(p)[0] // video_stride + 1 if is_video(p) else 1 for p in paths]
    show = progress if progress is not None else (any(map(is_video, paths)) or len(paths) > 10)
    console = Console(stderr=True)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, transient=True, disable=not show, redirect_stdout=False)
    results: list[dict[str, Any]] = []
    summaries: list[FileSummary] = []

    def say(text: str) -> None:
        # On a terminal the line goes above the bar; piped output stays on stdout.
        if show and console.is_terminal:
            bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, flush=True)

    with bar:
        task = bar.add_task("detecting", total=sum(units))
        for p in paths:
            bar.update(task, description=p.name)
            if is_video(p):
                s = FileSummary(p, "video")
                _, fps = video_info(p)
                writer = AnnotatedVideoWriter(annotated_name(p), fps / video_stride) if out_dir else None
                try:
                    for index, rgb in iter_video_frames(p, stride=video_stride):
                        d = predictor.predict_array(rgb, path=str(p), frame=index)
                        s.add(d)
                        results += to_coco_results([d], keep_all=keep_all)
                        if writer is not None:
                            writer.write(draw_detections(rgb, d))
                        bar.advance(task)
                finally:
                    if writer is not None:
                        writer.close()
                        s.annotated = writer.path
            else:
                s = FileSummary(p, "image")
                rgb = read_rgb(p)
                d = predictor.predict_array(rgb, path=str(p))
                s.add(d)
                results += to_coco_results([d], keep_all=keep_all)
                if out_dir is not None:
                    base = annotated_name(p)
                    s.annotated = write_image_rgb(base.with_name(base.name + ".png"), draw_detections(rgb, d))
                bar.advance(task)
            summaries.append(s)
            say(s.line(predictor.score_threshold))
    return results, summaries


def predict_files(export_dir: Path, inputs: list[Path], *, out: Path, backend: str = "saved_model",
                  threshold: float | None = None, keep_all: bool = False, annotate: Path | None = None,
                  video_stride: int | None = None) -> str:
    """``lepton-vision predict`` for a detection export: images, folders and videos into COCO
    results JSON (and annotated pictures and videos with ``annotate``); returns the summary line.

    Raises:
        LeptonError: A bad stride, a missing or unsupported path.
    """
    from lepton_vision.config.errors import LeptonError
    from lepton_vision.runio import atomic_write_json

    stride = 1 if video_stride is None else video_stride
    if stride < 1:
        raise LeptonError(f"--video-stride must be >= 1. Got {stride}.")
    paths = collect_inputs(inputs)  # before loading the model: bad paths fail in a second
    p = DetPredictor.from_bundle(export_dir, backend=backend, score_threshold=threshold)
    results, summaries = predict_paths(p, paths, keep_all=keep_all, video_stride=stride, annotate_dir=annotate)
    atomic_write_json(out, results)
    n_img = sum(s.kind == "image" for s in summaries)
    videos = [s for s in summaries if s.kind == "video"]
    frames = sum(s.frames for s in summaries)
    boxes = sum(s.boxes for s in summaries)
    with_boxes = sum(s.frames_with_boxes for s in summaries)
    kept = "every box (--all)" if keep_all else f"boxes with score >= {p.score_threshold:.4g}"
    n_ood = sum(s.out_of_distribution for s in summaries)
    ood = f"{n_ood} of {frames} frames unlike the training data (ood_score > 1)" if p.ood else p.ood_note
    return (f"{n_img} images, {len(videos)} videos ({sum(s.frames for s in videos)} frames): {boxes} boxes at "
            f"score >= {p.score_threshold:.4g} in {with_boxes} of {frames} frames; {ood}; wrote {len(results)} "
            f"detections ({kept}) to {out}" + (f"; annotated output in {annotate}" if annotate else ""))

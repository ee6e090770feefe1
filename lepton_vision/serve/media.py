"""Video and picture files for every kind's predictor and demo: read frames, write annotated output.

Videos are decoded with OpenCV (``cv2.VideoCapture``, BGR turned into RGB); annotated frames are
written as MP4 (mp4v), AVI (MJPG) or, for a browser, WebM (VP8), whichever the OpenCV build can
write. Every problem is a :class:`~lepton_vision.config.errors.DataError` naming the file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import cv2
import numpy as np

from lepton_vision.config.errors import DataError
from lepton_vision.runio import atomic_write_bytes


#: Video files read frame by frame with OpenCV.
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")


def is_video(path: str | Path) -> bool:
    """Whether ``path`` has a video extension (:data:`VIDEO_EXTENSIONS`)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def iter_video_frames(path: str | Path, stride: int = 1,
                      max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Decode a video with OpenCV: (frame index, uint8 H x W x 3 RGB) for every stride-th frame.

    Args:
        path: Video file (anything the OpenCV build's FFmpeg backend reads).
        stride: Keep frames 0, stride, 2*stride, ...
        max_frames: Stop after yielding this many frames.

    Raises:
        DataError: Missing file, a file OpenCV cannot open, or no decodable frame.
    """
    path = Path(path)
    if stride < 1:
        raise DataError(f"video stride must be >= 1. Got {stride}.", file=str(path))
    if not path.is_file():
        raise DataError("file not found; expected a video", file=str(path))
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DataError(
                "cannot open the file as a video (corrupt, or a codec this OpenCV build lacks). "
                f"Expected a readable {', '.join(VIDEO_EXTENSIONS)} file; re-encode it, e.g. "
                "`ffmpeg -i IN -c:v libx264 OUT.mp4`.",
                file=str(path),
            )
        index = yielded = 0
        while max_frames is None or yielded < max_frames:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            if index % stride == 0:
                yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # OpenCV decodes to BGR
                yielded += 1
            index += 1
        if index == 0:
            raise DataError(
                "the video has no decodable frame (empty, truncated or an unsupported codec). "
                "Re-encode it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`.",
                file=str(path),
            )
    finally:
        cap.release()


def video_info(path: str | Path) -> tuple[int, float]:
    """(frame count as the container reports it, 0 when unknown; frames per second, 0 when unknown)."""
    cap = cv2.VideoCapture(str(path))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        fps = float(cap.get(cv2.CAP_PROP_FPS)) if cap.isOpened() else 0.0
    finally:
        cap.release()
    return max(n, 0), fps if fps > 0 else 0.0


def write_image_rgb(path: str | Path, rgb: np.ndarray) -> Path:
    """Write a uint8 RGB image (format from the extension) atomically."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DataError(f"OpenCV cannot encode an image as '{path.suffix}'. Use .png or .jpg.", file=str(path))
    atomic_write_bytes(path, buf.tobytes())
    return path


#: (suffix, fourcc) tried in order by :class:`AnnotatedVideoWriter` by default.
VIDEO_CODECS = ((".mp4", "mp4v"), (".avi", "MJPG"))


#: Codecs a web browser plays (VP8 WebM; OpenCV's pip wheels cannot write H.264), then the default.
BROWSER_VIDEO_CODECS = ((".webm", "VP80"), *VIDEO_CODECS)


class AnnotatedVideoWriter:
    """Writes RGB frames to ``<stem>.mp4`` (mp4v), or ``<stem>.avi`` (MJPG) when mp4v cannot open.

    The frame size is taken from the first frame. Use as a context manager; ``path`` is the
    file actually written. ``codecs`` replaces the (suffix, fourcc) pairs tried, e.g.
    :data:`BROWSER_VIDEO_CODECS` for a file a browser can play.
    """

    def __init__(self, path_without_suffix: str | Path, fps: float,
                 codecs: Sequence[tuple[str, str]] = VIDEO_CODECS) -> None:
        self._base = Path(path_without_suffix)
        self.fps = fps if fps > 0 else 10.0
        self.codecs = tuple(codecs)
        self.path: Path | None = None
        self._writer: Any = None

    def _open(self, w: int, h: int) -> None:
        self._base.parent.mkdir(parents=True, exist_ok=True)
        for suffix, fourcc in self.codecs:
            path = self._base.with_name(self._base.name + suffix)
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), self.fps, (w, h))
            if writer.isOpened():
                self._writer, self.path = writer, path
                return
            writer.release()
            path.unlink(missing_ok=True)
        tried = ", ".join(f"{fourcc} {suffix}" for suffix, fourcc in self.codecs)
        raise DataError(f"OpenCV can write none of {tried} here; drop --annotate for videos.",
                        file=str(self._base))

    def write(self, rgb: np.ndarray) -> None:
        """Append one uint8 RGB frame."""
        if self._writer is None:
            self._open(rgb.shape[1], rgb.shape[0])
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        """Finish the file."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

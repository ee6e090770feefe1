"""The CT screening page: score a slice (DICOM, PNG, JPEG), move the threshold, see Grad-CAM.

:class:`ClassificationDemo` is the page's logic in plain Python around the export's
:class:`~lepton_vision.kinds.classification.predictor.ClassificationPredictor` (tests call it
without a browser); :func:`build_classification_demo` lays the page out. The shell around it
(binding, auth, upload limits) is :mod:`lepton_vision.serve.demo`.
"""

from __future__ import annotations

import html
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from lepton_vision.config.errors import DataError, LeptonError
from lepton_vision.data import preprocess
from lepton_vision.kinds.classification.predictor import ClassificationPredictor
from lepton_vision.serve import ui


#: CT slices smaller than this are shown enlarged (integer factor, nearest neighbour).
_CT_MIN_SIDE = 384


#: Files the page takes: images and DICOM.
CT_EXTENSIONS = tuple(preprocess.IMAGE_EXTENSIONS) + tuple(preprocess.DICOM_EXTENSIONS)


#: Decision badge colours (positive: red, negative: green).
_POS_STYLE = "background:#fde2e1;color:#9b1c1c;border:2px solid #e02424"


_NEG_STYLE = "background:#def7ec;color:#03543f;border:2px solid #0e9f6e"


@dataclass
class ClassificationResult:
    """What the CT page shows for one slice.

    Attributes:
        name: The uploaded file's name.
        score: Probability of the positive class (the exported model's ``score``).
        decision: ``score >= threshold``.
        label: The class the decision stands for.
        threshold: The threshold applied (the slider's value).
        model_image: uint8 H x W x C: the slice as the model gets it (DICOM windowed).
        display: ``model_image`` as RGB.
        image: ``display`` or, with Grad-CAM on, the heat-map overlay.
        heat: Grad-CAM map float32 [h, w] in [0, 1] at the network size, or None.
        latency_ms: Time of the model call.
        details: Markdown lines about the input and the model call.
        ood_score: How unlike the training images the slice is (above 1: out of distribution);
            None when the export has no reference.
        in_distribution: ``ood_score <= 1``; None without a reference.
    """

    name: str
    score: float
    decision: bool
    label: str
    threshold: float
    model_image: np.ndarray
    display: np.ndarray
    image: np.ndarray
    heat: np.ndarray | None
    latency_ms: float
    details: list[str] = field(default_factory=list)
    ood_score: float | None = None
    in_distribution: bool | None = None


class ClassificationDemo:
    """Scores uploaded slices with a classification bundle (the CT page's logic).

    Args:
        export_dir: An export folder (``RUN/export``) of kind ``binary_classification``.
        backend: Predictor backend (``auto``: LiteRT float32 when installed, else SavedModel).
        max_pixels: Refuse larger images.
        num_threads: LiteRT threads (None: LiteRT's default).
    """

    def __init__(self, export_dir: str | Path, backend: str = "auto", max_pixels: int = ui.DEFAULT_MAX_PIXELS,
                 num_threads: int | None = None) -> None:
        self.export_dir = Path(export_dir)
        self.predictor = ClassificationPredictor.from_bundle(self.export_dir, backend=backend, num_threads=num_threads)
        predictor = self.predictor
        self.bundle = predictor.bundle
        self.classes = list(predictor.classes)
        self.threshold = float(predictor.threshold)
        self.max_pixels = int(max_pixels)
        self._lock = threading.Lock()
        self._explainer: Any = None
        keras_file = self.bundle.get("files", {}).get("keras_model", {}).get("path", "model.keras")
        self.cam_available = (self.export_dir / keras_file).is_file()
        self.cam_note = "" if self.cam_available else (
            f"Grad-CAM needs {keras_file}, which this export lacks (re-export with 'lepton-vision export RUN').")

    # -----------------------------------------------------------------------------------
    def decide(self, score: float, threshold: float | None = None) -> tuple[bool, str, float]:
        """(decision, label, threshold) for a score; float32 comparison as in the exported graph."""
        thr = self.threshold if threshold is None else float(threshold)
        if not 0.0 <= thr <= 1.0:
            raise ui.user_error(f"The threshold must be between 0 and 1. Got {thr}.", title="Bad threshold")
        decision = bool(np.float32(score) >= np.float32(thr))
        return decision, self.classes[int(decision)], thr

    def _load(self, image: Any) -> tuple[np.ndarray, str, list[str]]:
        """(uint8 H x W x C model image, name, notes) of an upload or array."""
        notes: list[str] = []
        raw, name = ui.read_upload(image, array_name="image array", missing="Upload a CT slice first (PNG, JPEG or DICOM).",
                                   extensions=CT_EXTENSIONS, what="a PNG, JPEG, BMP, TIFF or DICOM image",
                                   max_pixels=self.max_pixels, allow_float_arrays=True)
        if np.issubdtype(raw.dtype, np.floating):
            lo, hi = float(np.nanmin(raw)), float(np.nanmax(raw))
            notes.append(f"DICOM {raw.shape[1]}×{raw.shape[0]}, {lo:.0f} … {hi:.0f} HU")
            if self.predictor.window is None:
                raise ui.user_error(f"{name} holds Hounsfield units (DICOM), but this model was trained on "
                               "8-bit images and its export has no CT window. Upload a PNG or JPEG.",
                               title="DICOM not supported by this model")
            notes.append(_window_text(self.predictor.window))
        else:
            kind = "colour" if raw.ndim == 3 else "grey"
            notes.append(f"{kind} {raw.dtype.itemsize * 8}-bit image {raw.shape[1]}×{raw.shape[0]}, used as it "
                         "is (the CT window applies to DICOM Hounsfield units only)")
            if raw.ndim == 3 and self.predictor.channels == 1:
                gr.Warning(f"{name} is a colour image; this model takes one grey channel, so it was "
                           "converted to grey.")
                notes.append("converted to grey (the model takes 1 channel)")
        try:
            img = self.predictor.to_uint8(raw)
        except DataError as e:
            raise ui.user_error(ui.friendly(e, name), title="Wrong image format") from None
        return img, name, notes

    def classify(self, image: Any, threshold: float | None = None, show_cam: bool = False) -> ClassificationResult:
        """Score one slice: an upload payload, a file path or a uint8/HU array.

        Args:
            image: The upload (Gradio payload dict), a path, or an array.
            threshold: Decision threshold (default: the exported operating point).
            show_cam: Also compute the Grad-CAM overlay (needs model.keras in the export).

        Raises:
            gradio.Error: No file, not an image, unreadable, wrong channel count, too large.
        """
        img, name, notes = self._load(image)
        with self._lock:
            t0 = time.perf_counter()
            score = self.predictor.score_uint8(img)
            latency = (time.perf_counter() - t0) * 1000.0
            ood_score, in_dist = self.predictor.ood_of(img)
        ui.warn_if_ood(name, ood_score, in_dist)
        decision, label, thr = self.decide(score, threshold)
        display = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
        heat = None
        if show_cam:
            try:
                heat = self.gradcam(img)
            except gr.Error as e:  # the score stands; say why there is no overlay
                gr.Warning(str(e))
                notes.append(f"no Grad-CAM: {e}")
        shown = display if heat is None else self.overlay(img, heat)
        h, w = self.predictor.image_size
        notes.append(f"model input {h}×{w}×{self.predictor.channels}, {ui.backend_text(self.predictor)}, "
                     f"{latency:.1f} ms")
        notes.append(ui.ood_markdown(self.predictor, ood_score, in_dist))
        return ClassificationResult(name=name, score=score, decision=decision, label=label, threshold=thr,
                                    model_image=img, display=display, image=shown, heat=heat, latency_ms=latency,
                                    details=notes, ood_score=ood_score, in_distribution=in_dist)

    def gradcam(self, img_uint8: np.ndarray) -> np.ndarray:
        """Grad-CAM map (float32 [h, w] in [0, 1]) of the positive score, from model.keras.

        Raises:
            gradio.Error: The export has no Keras model, or it has no Grad-CAM layer.
        """
        if not self.cam_available:
            raise ui.user_error(self.cam_note, title="Grad-CAM not available")
        from lepton_vision.kinds.classification.explain import gradcam_with_scores, load_explainer

        with self._lock:
            if self._explainer is None:
                self._explainer = load_explainer(self.export_dir)
            ex = self._explainer
            x = preprocess.to_model_input(img_uint8, ex.size_hw)[None]
            try:
                heat, _ = gradcam_with_scores(ex.model, x, ex.layer)
            except LeptonError as e:
                raise ui.user_error(f"Grad-CAM is not available for this model: {e.message}",
                           title="Grad-CAM not available") from None
        return heat[0]

    @staticmethod
    def overlay(img_uint8: np.ndarray, heat: np.ndarray) -> np.ndarray:
        """The heat map blended over the slice (uint8 RGB)."""
        from lepton_vision.kinds.classification.explain import overlay

        return overlay(img_uint8, heat)


def enlarge(img: np.ndarray, min_side: int = _CT_MIN_SIDE) -> np.ndarray:
    """An integer-factor nearest-neighbour enlargement (up to 8x) of a small image, so the page
    shows it at a readable size without inventing pixels; images at least ``min_side`` high or
    wide are returned as they are."""
    h, w = img.shape[:2]
    if max(h, w) >= min_side:
        return img
    s = min(8, math.ceil(min_side / max(h, w)))
    return np.repeat(np.repeat(img, s, axis=0), s, axis=1)


def _window_text(window: Any) -> str:
    if window and isinstance(window[0], (tuple, list)):
        return "rendered with the bundle's CT windows " + ", ".join(f"L {lv:g} / W {wd:g} HU" for lv, wd in window)
    level, width = window
    return f"rendered with the bundle's CT window: level {level:g} HU, width {width:g} HU"


def decision_html(result_or_score: ClassificationResult | float, threshold: float, classes: Sequence[str],
                  ood: tuple[float | None, bool | None] = (None, None)) -> str:
    """The decision badge: class, score and the threshold it was compared with, and under it a
    warning when the input is out of distribution (``ood``: score and flag; a result brings its own)."""
    if isinstance(result_or_score, ClassificationResult):
        ood = (result_or_score.ood_score, result_or_score.in_distribution)
    score = result_or_score.score if isinstance(result_or_score, ClassificationResult) else float(result_or_score)
    decision = bool(np.float32(score) >= np.float32(threshold))
    label = html.escape(str(classes[int(decision)]))
    rel = "≥" if decision else "<"
    style = _POS_STYLE if decision else _NEG_STYLE
    return (f"<div id='ct-decision-badge' style='{style};border-radius:10px;padding:10px 14px'>"
            f"<div style='font-size:1.5em;font-weight:700'>{label}</div>"
            f"<div>score {score:.4f} {rel} threshold {threshold:.4f}</div></div>"
            + ui.ood_warning_html(ood[0], ood[1], "ct-ood-warning"))


def _page(demo: ClassificationDemo, examples: list[str], png_file: ui.ImageFiles) -> gr.Blocks:
    b = demo.bundle
    classes = demo.classes
    pol = ui.policy_text((b.get("threshold") or {}).get("policy"))
    with gr.Blocks(title=f"{b.get('title', 'CT screening')} · lepton-vision", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(f"# {b.get('title', 'CT slice classifier')}\n{b.get('intended_use', '')}", elem_id="header")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                file_in = gr.File(label="CT slice: DICOM (.dcm), PNG or JPEG", file_count="single",
                                  file_types=list(CT_EXTENSIONS), type="filepath", elem_id="ct-file")
                thr = gr.Slider(0.0, 1.0, value=round(demo.threshold, 4), step=0.0001,
                                label=f"Decision threshold ('{classes[-1]}' when score ≥ threshold)",
                                info=f"Starts at the exported operating point {demo.threshold:.4f} ({pol} "
                                     "on out-of-fold scores). Moving it re-decides without re-running the model.",
                                elem_id="ct-threshold")
                cam = gr.Checkbox(value=False, label="Grad-CAM overlay (where the model looked)",
                                  info=demo.cam_note or "Computed from model.keras; the first use loads TensorFlow "
                                                        "(a few seconds).",
                                  interactive=demo.cam_available, elem_id="ct-cam")
                run = gr.Button("Score slice", variant="primary", elem_id="ct-run")
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[file_in], elem_id="ct-examples",
                                label="Examples from the training data (file name = dataset label)",
                                examples_per_page=12)
            with gr.Column(scale=1):
                image_out = gr.Image(label="Slice as the model sees it", type="filepath",
                                     interactive=False, elem_id="ct-image")
                decision = gr.HTML(elem_id="ct-decision")
                with gr.Row():
                    score = gr.Textbox(label=f"Score (probability of '{classes[-1]}')", interactive=False,
                                       elem_id="ct-score")
                    label = gr.Textbox(label="Decision", interactive=False, elem_id="ct-label")
                details = gr.Markdown(elem_id="ct-details")
        with gr.Accordion("Model card", open=True, elem_id="model-card"):
            gr.Markdown(ui.card_markdown(b, card_section(b), ui.backend_text(demo.predictor)))
        state = gr.State(None)

        def _outputs(r: ClassificationResult) -> tuple[Any, ...]:
            st = {"score": r.score, "display": r.display, "model_img": r.model_image, "heat": r.heat,
                  "ood": (r.ood_score, r.in_distribution)}
            return (png_file(enlarge(r.image)), decision_html(r, r.threshold, classes), f"{r.score:.4f}", r.label,
                    f"**{html.escape(r.name)}** · " + " · ".join(r.details), st)

        @ui.with_friendly_errors
        def on_score(file: Any, threshold: float, show_cam: bool) -> tuple[Any, ...]:
            return _outputs(demo.classify(file, threshold, bool(show_cam)))

        @ui.with_friendly_errors
        def on_file(file: Any, threshold: float, show_cam: bool) -> tuple[Any, ...]:
            if ui.input_path(file)[0] is None:  # cleared: clear the results, no error
                return None, "", "", "", "", None
            return _outputs(demo.classify(file, threshold, bool(show_cam)))

        @ui.with_friendly_errors
        def on_threshold(st: dict[str, Any] | None, threshold: float) -> tuple[Any, ...]:
            if not st:
                return gr.skip(), gr.skip()
            decision_, label_, thr_ = demo.decide(st["score"], threshold)
            return decision_html(st["score"], thr_, classes, st.get("ood", (None, None))), label_

        @ui.with_friendly_errors
        def on_cam(st: dict[str, Any] | None, show_cam: bool) -> tuple[Any, ...]:
            if not st:
                return gr.skip(), gr.skip()
            if not show_cam:
                return png_file(enlarge(st["display"])), st
            if st.get("heat") is None:
                st = {**st, "heat": demo.gradcam(st["model_img"])}
            return png_file(enlarge(demo.overlay(st["model_img"], st["heat"]))), st

        outs = [image_out, decision, score, label, details, state]
        common = dict(preprocess=False, concurrency_id="model", show_progress="minimal")
        cleared = (None, "", "", "", "", None)
        run.click(on_score, [file_in, thr, cam], outs, **common)
        # A new file first clears the old result, so a refused upload never leaves one on screen.
        file_in.change(lambda: cleared, None, outs, queue=False, show_progress="hidden").then(
            on_file, [file_in, thr, cam], outs, **common)
        thr.change(on_threshold, [state, thr], [decision, label], preprocess=False, concurrency_limit=None,
                   show_progress="hidden")
        cam.change(on_cam, [state, cam], [image_out, state], **common)
    return blocks


def card_section(bundle: dict[str, Any]) -> list[str]:
    """The model card's operating point and pooled cross-validated metrics of a classifier."""
    metrics = bundle.get("metrics") or {}
    ci = metrics.get("ci", 0.95)
    ci_pct = f"{float(ci) * 100:.0f} %" if isinstance(ci, (int, float)) else "95 %"
    unit_text = ui.bootstrap_unit_text(bundle, "patients")
    lines: list[str] = []
    thr = bundle.get("threshold") or {}
    classes = bundle.get("classes", ["negative", "positive"])
    lines.append(f"**Operating point.** `{classes[-1]}` when score ≥ {ui.fmt(thr.get('value'), 4)} "
                 f"(policy {ui.policy_text(thr.get('policy'))}, chosen on out-of-fold scores).")
    cal = bundle.get("calibration")
    if cal:
        lines.append(f"Scores are temperature-scaled inside the model (T = {ui.fmt(cal.get('temperature'))}).")
    pooled, mean_sd = metrics.get("pooled") or {}, metrics.get("mean_sd") or {}
    lines += ["", f"**Cross-validated metrics** (pooled out-of-fold; {ci_pct} CI, bootstrap over "
              f"{unit_text})", "", "| metric | value | 95 % CI | mean ± SD over folds |", "|---|---|---|---|"]
    for key, m in pooled.items():
        if not isinstance(m, dict):
            continue
        ms = mean_sd.get(key) or {}
        spread = f"{ui.fmt(ms.get('mean'))} ± {ui.fmt(ms.get('sd'))}" if ms else "–"
        lines.append(f"| {ui.METRIC_NAMES.get(key, key)} | {ui.fmt(m.get('value'))} | "
                     f"{ui.ci_text([m.get('lo'), m.get('hi')])} | {spread} |")
    return lines


def build_page(export_dir: Path, *, backend: str = "auto", examples: Any = None,
               max_pixels: int = ui.DEFAULT_MAX_PIXELS, max_video_frames: int = 0,
               num_threads: int | None = None) -> gr.Blocks:
    """The page of a classification export (not launched); ``blocks.lepton_demo`` is its
    :class:`ClassificationDemo`. ``examples``: see :func:`lepton_vision.serve.demo.build_demo`;
    ``max_video_frames`` is unused (slices are single images)."""
    demo = ClassificationDemo(export_dir, backend=backend, max_pixels=max_pixels, num_threads=num_threads)
    items = ui.pick_examples(export_dir, extensions=CT_EXTENSIONS) if examples is None else list(examples)
    work = ui.work_dir(demo, None)
    staged = ui.stage_examples(items, work / "examples")
    blocks = _page(demo, staged, ui.ImageFiles(work / "results"))
    blocks.lepton_demo = demo  # type: ignore[attr-defined]
    blocks.lepton_examples = [[p] for p in staged]  # type: ignore[attr-defined]
    return blocks

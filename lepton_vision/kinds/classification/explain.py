"""Grad-CAM heat maps: which part of an image drove the positive score.

Models from :func:`lepton_vision.models.backbones.build_classifier` are flat functional models with the
last convolutional feature map named ``last_conv``, so the Keras 3 pattern of stack.md section 7
works: one model that returns the feature map and the head's input, and ``tf.GradientTape``.

Gradients are taken of the pre-sigmoid logit (recomputed from the ``score`` Dense layer's kernel
and bias) rather than of the sigmoid score: a confident score saturates the sigmoid, and its
gradient, and hence the map, would shrink to numerical noise.

TensorFlow is imported inside the functions only.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lepton_vision.config.errors import LeptonError, did_you_mean, format_choices

DEFAULT_LAYER = "last_conv"
#: Heat-map opacity in :func:`overlay`: enough colour to read, enough image to see the anatomy.
OVERLAY_ALPHA = 0.4
#: Images per Grad-CAM forward/backward pass (bounds memory on big inputs).
_BATCH = 32
#: Shown file names are cut to this many characters: CT file names may carry patient ids.
_NAME_CHARS = 24


def _import() -> tuple[Any, Any]:
    from lepton_vision.backend import import_keras

    return import_keras()


def _layer_names(model: Any) -> list[str]:
    return [layer.name for layer in model.layers]


def _grad_model(model: Any, layer: str) -> tuple[Any, Any]:
    """A model ``x -> [feature map, head input or None, score]`` and the Dense head (or None)."""
    _, keras = _import()
    names = _layer_names(model)
    if layer not in names:
        raise LeptonError(
            f"Grad-CAM: model '{model.name}' has no layer '{layer}'.{did_you_mean(layer, names)} "
            f"Got layers: {format_choices(names, limit=40)}.",
            hint="Models built by lepton_vision.models.backbones.build_classifier name their last "
                 f"feature map '{DEFAULT_LAYER}'; pass layer= for other models.",
        )
    target = model.get_layer(layer).output
    head = model.layers[-1]
    activation = getattr(getattr(head, "activation", None), "__name__", "")
    if isinstance(head, keras.layers.Dense) and activation == "sigmoid" and head.units == 1:
        return keras.Model(model.inputs, [target, head.input, model.outputs[0]]), head
    # Unknown head: fall back to the gradient of the score itself.
    return keras.Model(model.inputs, [target, model.outputs[0]]), None


def _normalise(cam: np.ndarray) -> np.ndarray:
    """Scale one non-negative map to [0, 1]; a map without positive evidence stays all zero."""
    top = float(cam.max()) if cam.size else 0.0
    if not np.isfinite(top) or top <= 1e-12:
        return np.zeros_like(cam, dtype=np.float32)
    return (cam / top).astype(np.float32)


def gradcam_with_scores(
    model: Any, x: np.ndarray, layer: str = DEFAULT_LAYER
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps and the model's scores in one pass.

    Args:
        model: Keras binary classifier, float32 [N, h, w, C] in [0, 1] -> sigmoid score [N, 1].
        x: float32 [N, h, w, C] model input (``preprocess.to_model_input`` output, stacked).
        layer: Name of the convolutional layer to explain.

    Returns:
        ``(heat, scores)``: heat float32 [N, h, w] in [0, 1], scores float64 [N].

    Raises:
        LeptonError: The model has no layer named ``layer``, or ``x`` is not [N, h, w, C].
    """
    tf, _ = _import()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise LeptonError(f"Grad-CAM: input must be float32 [N, h, w, C]. Got shape {x.shape}.")
    if layer not in _layer_names(model):
        from lepton_vision.kinds.classification.model import ensemble_members

        members = ensemble_members(model)
        if members:  # final.mode average: the mean of the fold models' maps, the ensemble's score
            maps = [gradcam_with_scores(m, x, layer)[0] for m in members]
            heat = np.stack([_normalise(np.mean([mp[i] for mp in maps], axis=0)) for i in range(len(x))]) \
                if len(x) else np.zeros((0, *x.shape[1:3]), np.float32)
            return heat, np.asarray(model(x, training=False), np.float64).reshape(-1)
    grad_model, head = _grad_model(model, layer)
    h, w = x.shape[1:3]
    heats: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for start in range(0, len(x), _BATCH):
        batch = tf.constant(x[start:start + _BATCH])
        with tf.GradientTape() as tape:
            # A list input matches the model's input structure (silences a Keras 3 warning).
            outs = grad_model([batch], training=False)
            feat = outs[0]
            if head is not None:
                pooled = tf.cast(outs[1], tf.float32)
                kernel = tf.convert_to_tensor(head.kernel, dtype=tf.float32)
                bias = tf.convert_to_tensor(head.bias, dtype=tf.float32) if head.use_bias else 0.0
                target = tf.reshape(tf.matmul(pooled, kernel) + bias, [-1])
            else:
                target = tf.reshape(tf.cast(outs[-1], tf.float32), [-1])
        grads = tape.gradient(target, feat)
        feat_np = np.asarray(tf.cast(feat, tf.float32))
        grads_np = np.zeros_like(feat_np) if grads is None else np.asarray(tf.cast(grads, tf.float32))
        if feat_np.ndim != 4:
            raise LeptonError(
                f"Grad-CAM: layer '{layer}' must output a feature map [N, h, w, C]. "
                f"Got shape {feat_np.shape}. Pick a convolutional layer."
            )
        weights = grads_np.mean(axis=(1, 2))  # [N, C]: how much each channel pushes the logit
        cams = np.maximum(np.einsum("nijc,nc->nij", feat_np, weights), 0.0)
        for cam in cams:
            up = cv2.resize(cam.astype(np.float32), (int(w), int(h)), interpolation=cv2.INTER_LINEAR)
            heats.append(_normalise(np.maximum(up, 0.0)))
        scores.append(np.asarray(tf.cast(outs[-1], tf.float64)).reshape(-1))
    if not heats:
        return np.zeros((0, h, w), np.float32), np.zeros((0,), np.float64)
    return np.stack(heats), np.concatenate(scores)


def gradcam(model: Any, x: np.ndarray, layer: str = DEFAULT_LAYER) -> np.ndarray:
    """Grad-CAM heat maps of the positive score.

    Channel weights are the spatial means of the gradients of the pre-sigmoid logit with respect
    to ``layer``'s output; the map is the ReLU of the weighted channel sum, upsampled bilinearly
    to the input size and scaled per image to [0, 1] (a map with no positive evidence stays 0).

    Args:
        model: Keras binary classifier, float32 [N, h, w, C] in [0, 1] -> sigmoid score [N, 1].
        x: float32 [N, h, w, C] model input.
        layer: Name of the convolutional layer to explain.

    Returns:
        float32 [N, h, w] in [0, 1].

    Raises:
        LeptonError: The model has no layer named ``layer`` (the message lists the layers).
    """
    return gradcam_with_scores(model, x, layer)[0]


def overlay(display: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend a heat map (matplotlib 'jet') over an image.

    Args:
        display: uint8 HxW, HxWx1 or HxWx3 image (``preprocess.to_uint8`` output).
        heat: float [h, w] in [0, 1]; resized bilinearly to H x W.
        alpha: Opacity of the colour map.

    Returns:
        uint8 RGB HxWx3.
    """
    import matplotlib

    img = np.asarray(display)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"display image must be HxW, HxWx1 or HxWx3. Got shape {np.shape(display)}.")
    big_h, big_w = img.shape[:2]
    hm = cv2.resize(np.asarray(heat, dtype=np.float32), (big_w, big_h), interpolation=cv2.INTER_LINEAR)
    colour = matplotlib.colormaps["jet"](np.clip(hm, 0.0, 1.0))[..., :3] * 255.0
    out = (1.0 - alpha) * img.astype(np.float64) + alpha * colour
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def _display_and_input(
    path: str | Path, size_hw: tuple[int, int], channels: int, window: tuple[float, float] | None,
    reencode_spec: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 image a person sees and the float model input, by the training preprocessing
    (format normalisation included: the person sees what the model saw)."""
    from lepton_vision.config.errors import DataError
    from lepton_vision.data.preprocess import read_image, reencode, to_model_input, to_uint8

    raw = read_image(path)
    try:
        disp = to_uint8(raw, channels, window)
    except ValueError as e:
        raise DataError(
            f"cannot convert the pixels for this model: {e}. A model without a CT window cannot "
            "read DICOM Hounsfield units",
            file=str(path),
        ) from None
    disp = reencode(disp, reencode_spec)
    return disp, to_model_input(disp, size_hw)


@dataclass
class Explainer:
    """A Keras model plus the preprocessing it was trained with, ready to explain files.

    Attributes:
        model: The Keras classifier.
        size_hw: Network input (height, width).
        channels: 1 or 3.
        window: CT window (level, width) in HU, or None.
        threshold: Operating threshold of the run/export, if known.
        source: The run or export directory it came from.
        layer: The layer Grad-CAM explains.
        reencode: Format normalisation (recipe/bundle ``input.reencode``), or None.
    """

    model: Any
    size_hw: tuple[int, int]
    channels: int
    window: tuple[float, float] | None
    threshold: float | None
    source: Path
    layer: str = DEFAULT_LAYER
    reencode: dict | None = None

    def explain(self, image_path: str | Path) -> tuple[float, np.ndarray, np.ndarray]:
        """Score one image file and explain the score.

        Returns:
            ``(score, heat, overlay_rgb)``: the sigmoid score, the Grad-CAM map float32 [h, w]
            in [0, 1] at the network size, and uint8 RGB HxWx3 at the image's own size.

        Raises:
            DataError: The file cannot be read (the message names it).
        """
        disp, x = _display_and_input(image_path, self.size_hw, self.channels, self.window, self.reencode)
        heat, scores = gradcam_with_scores(self.model, x[None], self.layer)
        return float(scores[0]), heat[0], overlay(disp, heat[0])


def load_explainer(source: str | Path, layer: str = DEFAULT_LAYER) -> Explainer:
    """Load the Keras model and preprocessing of a run directory or an export directory.

    Args:
        source: A finished run (recipe.resolved.yaml + final/model.keras) or an export
            (bundle.json + model.keras).
        layer: The layer Grad-CAM explains.

    Raises:
        LeptonError: ``source`` is neither, or its Keras model is missing.
    """
    from lepton_vision.runio import RunDir

    source = Path(source)
    if (source / "bundle.json").is_file():
        bundle = json.loads((source / "bundle.json").read_text())
        model_path = source / bundle.get("files", {}).get("keras_model", {}).get("path", "model.keras")
        inp = bundle["input"]
        from lepton_vision.kinds.classification.export import window_from_bundle

        window = window_from_bundle(inp.get("window"))
        size_hw = (int(inp["image_size"][0]), int(inp["image_size"][1]))
        channels = int(inp["channels"])
        threshold = float(bundle["threshold"]["value"])
        reencode_spec = inp.get("reencode")
        hint = ("Exports made before Grad-CAM support lack model.keras: re-export with "
                "`lepton-vision export RUN_DIR`, or pass the run directory instead.")
    elif RunDir(source).recipe.is_file():
        from lepton_vision.config.recipe import recipe_from_text

        run = RunDir(source)
        recipe = recipe_from_text(run.recipe.read_text(), file=str(run.recipe))
        model_path = run.final_dir / "model.keras"
        # Training always hands the recipe's window to preprocessing (it only acts on HU pixels).
        window = recipe.input.window_spec()
        size_hw = (int(recipe.input.image_size[0]), int(recipe.input.image_size[1]))
        channels = int(recipe.input.channels)
        reencode_spec = recipe.input.reencode_spec()
        threshold = None
        if run.metrics.is_file():
            threshold = json.loads(run.metrics.read_text()).get("final_threshold")
        hint = f"Finish the run first: lepton-vision train RECIPE --resume {source}"
    else:
        raise LeptonError(
            f"{source}: not a run directory (recipe.resolved.yaml) or an export directory "
            "(bundle.json).",
            hint="Pass runs/<run> or runs/<run>/export.",
        )
    if not model_path.is_file():
        raise LeptonError(f"{source}: the Keras model {model_path.name} is missing", hint=hint)
    _, keras = _import()
    model = keras.models.load_model(model_path, compile=False)
    return Explainer(model=model, size_hw=size_hw, channels=channels, window=window,
                     threshold=None if threshold is None else float(threshold), source=source,
                     layer=layer, reencode=reencode_spec)


def _short_name(path: str) -> str:
    return Path(str(path)).stem[:_NAME_CHARS]


def _pick(oof: Any, threshold: float, seed: int) -> dict[str, Any]:
    """TP by highest score; FP by highest score; FN by lowest score (most confident mistakes)."""
    rng = np.random.default_rng(seed)
    # A seeded shuffle before a stable sort breaks ties in score reproducibly.
    table = oof.iloc[rng.permutation(len(oof))]
    pos, neg = table["label"].astype(int) == 1, table["label"].astype(int) == 0
    above = table["score"].astype(float) >= float(threshold)
    return {
        "tp": table[pos & above].sort_values("score", ascending=False, kind="stable"),
        "fp": table[neg & above].sort_values("score", ascending=False, kind="stable"),
        "fn": table[pos & ~above].sort_values("score", ascending=True, kind="stable"),
    }


def write_gradcam_panel(
    model: Any,
    oof: Any,
    threshold: float,
    size_hw: tuple[int, int],
    channels: int,
    window: tuple[float, float] | None,
    out_png: str | Path,
    per_group: int = 4,
    seed: int = 0,
    layer: str = DEFAULT_LAYER,
    reencode_spec: dict | None = None,
) -> dict[str, Any]:
    """Draw Grad-CAM for true positives, false positives and false negatives in one PNG.

    Rows are TP (highest scores), FP and FN (the most confident mistakes first); each example is
    shown as the image and its overlay, titled with the out-of-fold score and the file name stem
    (cut to 24 characters, as CT names may hold patient ids). The maps come from ``model`` (the
    final model), the selection from the out-of-fold scores.

    Args:
        model: Keras classifier with layer ``layer``.
        oof: Out-of-fold predictions (columns path, label, score at least).
        threshold: Operating threshold that splits positives from negatives.
        size_hw: Network input (height, width).
        channels: 1 or 3.
        window: CT window (level, width) in HU, or None.
        out_png: PNG to write (atomically).
        per_group: Examples per row at most.
        seed: Breaks ties between equal scores.
        layer: The layer Grad-CAM explains.
        reencode_spec: The recipe's format normalisation (``input.reencode``), or None.

    Returns:
        ``{"tp": n, "fp": n, "fn": n, "path": str, "skipped": [message, ...]}``; files that
        cannot be read are skipped (and named in ``skipped``) and the next example stands in.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lepton_vision.runio import atomic_write_bytes

    from lepton_vision.config.errors import DataError

    picks = _pick(oof, threshold, seed)
    rows = [("tp", "true positives"), ("fp", "false positives"), ("fn", "false negatives")]
    items: list[tuple[str, str, float, np.ndarray, np.ndarray]] = []
    skipped: list[str] = []
    for key, _ in rows:
        taken = 0
        for _, r in picks[key].iterrows():
            if taken >= per_group:
                break
            try:
                disp, x = _display_and_input(r["path"], size_hw, channels, window, reencode_spec)
            except DataError as e:
                # A moved or deleted file must not cost the whole report; the next one stands in.
                skipped.append(e.render())
                continue
            items.append((key, str(r["path"]), float(r["score"]), disp, x))
            taken += 1
    heats = gradcam(model, np.stack([it[4] for it in items]), layer) if items else []

    n_cols = 2 * max(1, per_group)
    fig = Figure(figsize=(1.9 * n_cols, 2.2 * len(rows) + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    counts: dict[str, Any] = {}
    for row, (key, label) in enumerate(rows):
        mine = [(it, heats[i]) for i, it in enumerate(items) if it[0] == key]
        counts[key] = len(mine)
        axes[row, 0].set_ylabel(f"{key.upper()} ({len(mine)})\n{label}", fontsize=9)
        if not mine:
            axes[row, 0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=11,
                              color="0.4", transform=axes[row, 0].transAxes)
        for j, ((_, path, score, disp, _), heat) in enumerate(mine):
            ax_img, ax_cam = axes[row, 2 * j], axes[row, 2 * j + 1]
            shown = disp[:, :, 0] if disp.shape[2] == 1 else disp
            ax_img.imshow(shown, cmap="gray" if disp.shape[2] == 1 else None, vmin=0, vmax=255)
            ax_img.set_title(f"score {score:.2f} | {_short_name(path)}", fontsize=7, loc="left")
            ax_cam.imshow(overlay(disp, heat))
            ax_cam.set_title("Grad-CAM", fontsize=7)
    fig.suptitle(f"Grad-CAM ({layer}) of the final model; selection by out-of-fold score, "
                 f"threshold {float(threshold):.3g}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(out_png, buf.getvalue())
    counts["path"] = str(out_png)
    counts["skipped"] = skipped
    return counts

"""Backbone table: name -> factory, and the binary classifier built on it.

Importing this module does not import TensorFlow; every function imports Keras lazily through
:func:`lepton_vision.backend.import_keras`.

Every classifier takes float32 ``[B, h, w, C]`` in ``[0, 1]`` (input named ``image``) and returns a
sigmoid score ``[B, 1]`` (layer ``score``, float32 even under mixed precision). Models are built
*flat* (``input_tensor=`` to ``keras.applications``, stack.md section 7 pattern C) and the last
convolutional feature map is the layer ``last_conv``, so Grad-CAM can use
``keras.Model(model.inputs, [model.get_layer("last_conv").output, model.output])``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lepton_vision.config.errors import RecipeError, did_you_mean, format_choices
from lepton_vision.config.recipe import BACKBONE_NAMES


#: Names of the layers this module adds around a backbone. They are excluded when weights are
#: matched to "the backbone part" of a model.
_OWN_LAYERS = ("image", "to_backbone_range", "gray_to_rgb", "last_conv", "pool", "dropout", "score")


def _plain_cnn(x: Any, *, name: str, filters: tuple[int, ...], weights: str, width: float) -> Any:
    """Conv3x3-BN-ReLU blocks (``filters`` x width), max-pooling after every block but the last."""
    _, keras = _import()
    layers = keras.layers
    if weights == "imagenet":
        raise RecipeError(
            f"model.weights: {name} has no ImageNet weights. Got 'imagenet'. "
            "Use weights: none, a .weights.h5 file, or an ImageNet backbone "
            f"({format_choices(n for n in BACKBONE_NAMES if n not in _PLAIN_CNNS)})."
        )
    need = 2 ** (len(filters) - 1)
    if min(int(x.shape[1]), int(x.shape[2])) < need:
        raise RecipeError(
            f"input.image_size: {name} pools {len(filters) - 1} times and needs at least {need} px on "
            f"each side. Got {int(x.shape[1])}x{int(x.shape[2])}.",
            hint="Raise input.image_size, or use small_cnn for very small inputs.",
        )
    for i, f in enumerate(filters):
        n = max(1, int(round(f * width)))
        x = layers.Conv2D(n, 3, padding="same", use_bias=False, name=f"block{i + 1}_conv")(x)
        # momentum 0.9 (Keras default 0.99): small datasets give few steps per fold, and slow
        # moving statistics made validation scores collapse to a constant in early epochs.
        x = layers.BatchNormalization(momentum=0.9, name=f"block{i + 1}_bn")(x)
        x = layers.ReLU(name=f"block{i + 1}_relu")(x)
        if i < len(filters) - 1:
            x = layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x)
    return x


def _small_cnn(x: Any, *, weights: str, width: float) -> Any:
    """Four Conv3x3-BN-ReLU blocks (16/32/64/128 filters x width), max-pooling after the first
    three so the last feature map keeps some resolution for Grad-CAM (8x8 at 64 px). Each output
    unit sees 38 px of the input, so the pooled features describe local texture, not the layout
    of a whole 128-px slice."""
    return _plain_cnn(x, name="small_cnn", filters=(16, 32, 64, 128), weights=weights, width=width)


def _cnn6(x: Any, *, weights: str, width: float) -> Any:
    """Six Conv3x3-BN-ReLU blocks (16/32/64/96/128/192 filters x width), max-pooling after the
    first five: each output unit sees 158 px, the whole of a 128-px slice (4x4 map for Grad-CAM),
    at about the CPU cost of small_cnn (the extra blocks run on small maps). On covid_ct
    (covid_ct_strong.yaml) it gave out-of-fold AUC 0.865 against small_cnn's 0.772-0.774 at 30
    epochs (docs/results.md). Needs at least 32 px."""
    return _plain_cnn(x, name="cnn6", filters=(16, 32, 64, 96, 128, 192), weights=weights, width=width)


#: The backbones built here (no ImageNet weights, no input rescaling).
_PLAIN_CNNS = ("small_cnn", "cnn6")


def _to_minus1_1(x: Any) -> Any:
    _, keras = _import()
    return keras.layers.Rescaling(2.0, offset=-1.0, name="to_backbone_range")(x)


def _application(fn_name: str, x: Any, weights: str, **kwargs: Any) -> Any:
    _, keras = _import()
    fn = getattr(keras.applications, fn_name)
    try:
        base = fn(
            include_top=False,
            weights="imagenet" if weights == "imagenet" else None,
            input_tensor=x,
            **kwargs,
        )
    except ValueError as e:
        raise RecipeError(
            f"model: keras.applications.{fn_name} refused these settings: {e}. "
            f"Got weights={weights!r}, {kwargs}. Change model.width / input.image_size "
            "(ImageNet weights exist only for some widths; every backbone needs >= 32 px)."
        ) from None
    return base.output


def _mobilenet_v3_small(x: Any, *, weights: str, width: float) -> Any:
    # include_preprocessing=False: we map [0,1] -> [-1,1] ourselves, which is what its own
    # Rescaling(1/127.5, offset=-1) would do to 0..255 input.
    x = _to_minus1_1(x)
    return _application(
        "MobileNetV3Small", x, weights, alpha=float(width), include_preprocessing=False
    )


def _mobilenet_v2(x: Any, *, weights: str, width: float) -> Any:
    x = _to_minus1_1(x)
    return _application("MobileNetV2", x, weights, alpha=float(width))


def _efficientnet_b0(x: Any, *, weights: str, width: float) -> Any:
    _, keras = _import()
    if width != 1.0:
        raise RecipeError(
            f"model.width: efficientnet_b0 has a fixed width. Got {width}. "
            "Set model.width: 1.0, or use small_cnn / cnn6 / mobilenet_* for a width multiplier."
        )
    # EfficientNetB0 contains its own Rescaling(1/255) + ImageNet Normalization: feed it 0..255.
    x = keras.layers.Rescaling(255.0, name="to_backbone_range")(x)
    return _application("EfficientNetB0", x, weights)


#: name -> factory(x in [0,1] with the backbone's channel count, *, weights, width) -> features.
BACKBONES: dict[str, Callable[..., Any]] = {
    "small_cnn": _small_cnn,
    "cnn6": _cnn6,
    "mobilenet_v3_small": _mobilenet_v3_small,
    "mobilenet_v2": _mobilenet_v2,
    "efficientnet_b0": _efficientnet_b0,
}
assert tuple(BACKBONES) == BACKBONE_NAMES


def _import() -> tuple[Any, Any]:
    from lepton_vision.backend import import_keras

    return import_keras()


def build_classifier(
    backbone: str,
    image_size_hw: tuple[int, int],
    channels: int,
    weights: str = "none",
    dropout: float = 0.2,
    width: float = 1.0,
    seed: int = 0,
) -> Any:
    """Build a binary classifier: backbone -> last_conv -> GAP -> Dropout -> Dense(1, sigmoid).

    Args:
        backbone: One of :data:`BACKBONE_NAMES`.
        image_size_hw: Input (height, width) in pixels (>= 32 for the keras.applications ones).
        channels: 1 (grayscale) or 3 (RGB). Grayscale is tiled to 3 channels in the graph only
            for ``weights="imagenet"``; otherwise the first convolution takes 1 channel.
        weights: ``"none"``, ``"imagenet"`` (downloaded and cached by Keras), a path to a
            ``.weights.h5`` file for the whole model or its backbone part, or a legacy
            keras.applications ImageNet ``*_no_top.h5`` file (loaded by layer name).
        dropout: Dropout rate before the head.
        width: Width multiplier (small_cnn/cnn6 filters, MobileNet alpha; must be 1 for EfficientNet).
        seed: Seeds Keras' global generators (weight init, dropout) so builds are reproducible.
            This resets the process-wide seed, like ``keras.utils.set_random_seed``.

    Returns:
        An uncompiled ``keras.Model`` named after the backbone.

    Raises:
        RecipeError: Unknown backbone, bad weights file, or settings the backbone refuses.
    """
    if backbone not in BACKBONES:
        raise RecipeError(
            f"model.backbone: unknown backbone. Got {backbone!r}.{did_you_mean(backbone, BACKBONES)} "
            f"Valid: {format_choices(BACKBONES)}."
        )
    if channels not in (1, 3):
        raise RecipeError(f"input.channels: must be 1 or 3. Got {channels!r}.")
    weights = str(weights)
    path = None
    if weights not in ("none", "imagenet"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise RecipeError(
                f"model.weights: weights file not found. Got {weights!r}. "
                "Use 'none', 'imagenet', or the path of an existing .weights.h5 file "
                "(e.g. a fold's best weights saved with model.save_weights) or of a keras.applications "
                "*_no_top.h5 ImageNet file."
            )
    _, keras = _import()
    layers = keras.layers
    keras.utils.set_random_seed(int(seed))

    h, w = int(image_size_hw[0]), int(image_size_hw[1])
    inp = keras.Input((h, w, channels), dtype="float32", name="image")
    x = inp
    if channels == 1 and weights == "imagenet":
        # ImageNet filters expect RGB; repeating the grey channel is the standard adaptation.
        x = layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    features = BACKBONES[backbone](x, weights=weights, width=width)
    # A named identity so Grad-CAM finds the feature map whatever the backbone calls it.
    features = layers.Activation("linear", name="last_conv")(features)
    x = layers.GlobalAveragePooling2D(name="pool")(features)
    x = layers.Dropout(dropout, seed=int(seed), name="dropout")(x)
    out = layers.Dense(1, activation="sigmoid", dtype="float32", name="score")(x)
    model = keras.Model(inp, out, name=backbone)
    if path is not None:
        load_weights_file(model, path)
    return model


def load_weights_file(model: Any, path: str | Path) -> str:
    """Load a ``.weights.h5`` file into the whole model, else into its backbone part (a legacy
    keras.applications ``.h5`` file goes to :func:`load_legacy_h5`).

    The whole-model load is strict (architecture must match). If it fails, layers are matched
    the way Keras names them in the file (snake-case class name + counter, in layer order),
    counted once over all layers and once over the backbone layers only (a file saved from a
    bare ``keras.applications`` backbone); every layer whose variables all have the same shapes
    is loaded. This covers a different head, a different channel count or a bare backbone.

    Args:
        model: A model from :func:`build_classifier`.
        path: The weights file.

    Returns:
        ``"model"`` or ``"backbone (N layers)"``: what was loaded.

    Raises:
        RecipeError: Missing or unreadable file, or no layer matched.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"model.weights: weights file not found. Got {str(path)!r}.")
    if is_legacy_h5(path):
        return load_legacy_h5(model, path)
    initial = model.get_weights()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras warns per missing group; we report ourselves
            model.load_weights(str(path))
        return "model"
    except Exception:  # noqa: BLE001 - any failure means "not this model's file"; try by layer
        # Keras loads what it can before raising: start the by-layer match from a clean model.
        model.set_weights(initial)
    try:
        stored = _read_weight_groups(h5py, path)
    except OSError as e:
        raise RecipeError(
            f"model.weights: cannot read {str(path)!r} as a Keras .weights.h5 file ({e}). "
            "Save weights with model.save_weights('name.weights.h5')."
        ) from None

    from keras.src.utils import naming

    def keyed(layer_list: list[Any]) -> dict[str, Any]:
        used: dict[str, int] = {}
        out = {}
        for layer in layer_list:
            base = naming.to_snake_case(type(layer).__name__)
            n = used.get(base, 0)
            used[base] = n + 1
            out[base if n == 0 else f"{base}_{n}"] = layer
        return out

    def matches(mapping: dict[str, Any]) -> list[tuple[Any, list[Any]]]:
        found = []
        for key, layer in mapping.items():
            vars_ = layer.weights
            arrays = stored.get(key)
            if not vars_ or arrays is None or len(arrays) != len(vars_):
                continue
            if all(tuple(v.shape) == a.shape for v, a in zip(vars_, arrays)):
                found.append((layer, arrays))
        return found

    everything = keyed(list(model.layers))
    backbone_only = keyed([la for la in model.layers if la.name not in _OWN_LAYERS])
    best = max((matches(everything), matches(backbone_only)), key=len)
    if not best:
        raise RecipeError(
            f"model.weights: no layer of {str(path)!r} fits the {model.name} model "
            "(different backbone or width?). Got 0 matching layers. Use weights saved from the "
            "same backbone, width and input channels."
        )
    for layer, arrays in best:
        for var, arr in zip(layer.weights, arrays):
            var.assign(arr)
    return f"backbone ({len(best)} layers)"


def _read_weight_groups(h5py: Any, path: Path) -> dict[str, list[Any]]:
    """Read ``layers/<key>/vars/<i>`` arrays from a Keras 3 weights file."""
    import numpy as np

    out: dict[str, list[Any]] = {}
    with h5py.File(path, "r") as f:
        group = f.get("layers")
        if group is None:
            return out
        for key in group:
            vars_group = group[key].get("vars")
            if vars_group is None or len(vars_group) == 0:
                continue
            out[key] = [np.asarray(vars_group[str(i)]) for i in range(len(vars_group))]
    return out


# ---------------------------------------------------------------------------------------------
# Legacy Keras-applications weight files (the ``*_no_top.h5`` ImageNet files)


def _legacy_root(f: Any) -> Any:
    """The group holding ``layer_names`` in a legacy Keras HDF5 file (weights-only, or a whole
    saved model's ``model_weights``), or None for any other file."""
    if "layer_names" in f.attrs:
        return f
    group = f.get("model_weights")
    if group is not None and "layer_names" in group.attrs:
        return group
    return None


def is_legacy_h5(path: str | Path) -> bool:
    """Whether ``path`` is a legacy Keras HDF5 weights file (``layer_names`` at its root, as the
    keras.applications ImageNet downloads ``*_weights_tf_dim_ordering_tf_kernels*_no_top.h5``)
    rather than a Keras 3 ``.weights.h5`` file."""
    path = Path(path)
    if path.name.endswith(".weights.h5") or path.suffix.lower() not in (".h5", ".hdf5") or not path.is_file():
        return False
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return _legacy_root(f) is not None
    except OSError:
        return False


def _as_text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def load_legacy_h5(model: Any, path: str | Path) -> str:
    """Load a legacy Keras HDF5 weights file into the model's layers of the same names.

    keras.applications backbones keep their layer names inside lepton-vision's classifier, so an
    ImageNet ``*_no_top.h5`` file an air-gapped site already has loads into them layer by layer.
    A grey (1-channel) model gets the first convolution's RGB kernel summed over its input
    channels: the same as feeding the grey image three times, as ``weights: imagenet`` does.

    Returns:
        ``"backbone (N of M layers by name, legacy .h5)"``.

    Raises:
        RecipeError: Unreadable file, or no layer of the file fits the model.
    """
    import h5py
    import numpy as np

    path = Path(path)
    by_name = {layer.name: layer for layer in model.layers}
    loaded, mismatched = 0, []
    try:
        with h5py.File(path, "r") as f:
            root = _legacy_root(f)
            if root is None:
                raise OSError("no 'layer_names' attribute: not a legacy Keras weights file")
            names = [_as_text(n) for n in root.attrs["layer_names"]]
            for name in names:
                group = root[name]
                arrays = [np.asarray(group[_as_text(w)]) for w in group.attrs.get("weight_names", [])]
                layer = by_name.get(name)
                if not arrays or layer is None:
                    continue
                if len(layer.weights) != len(arrays):
                    mismatched.append(name)
                    continue
                fitted = []
                for var, arr in zip(layer.weights, arrays):
                    want = tuple(var.shape)
                    if arr.shape != want and arr.ndim == 4 and arr.shape[2] == 3 and want[2] == 1 \
                            and arr.shape[:2] + arr.shape[3:] == want[:2] + want[3:]:
                        arr = arr.sum(axis=2, keepdims=True)  # RGB filters on a grey image tiled to RGB
                    fitted.append(arr)
                if all(a.shape == tuple(v.shape) for a, v in zip(fitted, layer.weights)):
                    layer.set_weights(fitted)
                    loaded += 1
                else:
                    mismatched.append(name)
    except OSError as e:
        raise RecipeError(f"model.weights: cannot read {str(path)!r} as a legacy Keras .h5 weights file ({e}).") from None
    if loaded == 0:
        raise RecipeError(
            f"model.weights: no layer of {str(path)!r} fits the {model.name} model by name "
            f"({len(names)} layers in the file, {len(mismatched)} with other shapes).",
            hint="Use the keras.applications file of this backbone and width (e.g. "
                 "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5 for mobilenet_v2 at width 1.0).",
        )
    with_weights = sum(1 for n in names if n in by_name and by_name[n].weights)
    note = f", {len(mismatched)} with other shapes left as they were" if mismatched else ""
    return f"backbone ({loaded} of {with_weights} named layers by name, legacy .h5{note})"

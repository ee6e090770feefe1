"""Start points and fine-tuning: where a fold's weights come from, and how the backbone adapts.

A fold starts from random weights, from the ``pretrain:`` stage (:mod:`lepton_vision.engine.pretrain`),
or from ``model.weights``: a Keras ``.weights.h5`` file or a previous run's export (its
``model.keras``). :func:`load_start_weights` puts those weights into a freshly built model: the
whole model when every variable fits, else the backbone alone (a different class list or head),
and says which.

Fine-tuning (``train.finetune``): the backbone's learning rate is ``backbone_lr_scale`` times the
head's, and zero for the first ``freeze_backbone_epochs``. Keras 3 has one learning rate per
optimizer, so :func:`layerwise_optimizer` subclasses the recipe's optimizer and scales the rate in
``update_step`` for the backbone's variables (a pure function of the step counter: the same on
resume and in every executor). Scaling the *learning rate*, not the gradient, is what works for
Adam, whose update does not depend on the gradient's scale.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lepton_vision.config.errors import RecipeError

#: Names of a classifier's own layers around its backbone (see backbones.build_classifier).
_CLASSIFIER_HEAD = ("image", "to_backbone_range", "gray_to_rgb", "last_conv", "pool", "dropout", "score")


def backbone_variables(model: Any) -> list[Any]:
    """The trainable variables of ``model``'s backbone (feature extractor).

    Detectors (keras-cv YOLOv8) carry it as ``model.backbone``; a classifier's backbone is every
    layer but the ones :func:`~lepton_vision.models.backbones.build_classifier` adds around it.
    """
    bb = getattr(model, "backbone", None)
    if bb is not None and hasattr(bb, "trainable_variables"):
        return list(bb.trainable_variables)
    out = []
    for layer in model.layers:
        if layer.name not in _CLASSIFIER_HEAD:
            out += list(layer.trainable_variables)
    return out


def _layerwise(base: type) -> type:
    import keras
    from keras import ops

    class Layerwise(base):  # type: ignore[misc, valid-type]
        """``base`` with the backbone's learning rate scaled (and zero while frozen)."""

        def __init__(self, *args: Any, backbone_paths: list[str] | tuple[str, ...] = (),
                     backbone_lr_scale: float = 1.0, freeze_steps: int = 0, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.backbone_paths = tuple(str(p) for p in backbone_paths)
            self.backbone_lr_scale = float(backbone_lr_scale)
            self.freeze_steps = int(freeze_steps)
            self._lw_is_backbone: list[bool] = []

        def build(self, var_list: list[Any]) -> None:
            super().build(var_list)
            paths = set(self.backbone_paths)
            self._lw_is_backbone = [v.path in paths for v in var_list]

        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> Any:
            if self._lw_is_backbone and self._lw_is_backbone[self._get_variable_index(variable)]:
                step = ops.cast(self.iterations, "float32")
                scale = ops.where(step < float(self.freeze_steps), 0.0, self.backbone_lr_scale)
                learning_rate = ops.cast(learning_rate, "float32") * scale
            return super().update_step(gradient, variable, learning_rate)

        def get_config(self) -> dict[str, Any]:
            cfg = super().get_config()
            cfg.update(backbone_paths=list(self.backbone_paths), backbone_lr_scale=self.backbone_lr_scale,
                       freeze_steps=self.freeze_steps)
            return cfg

    Layerwise.__name__ = Layerwise.__qualname__ = f"Layerwise{base.__name__}"
    return keras.saving.register_keras_serializable(package="lepton_vision")(Layerwise)


_LAYERWISE: dict[str, type] = {}


def layerwise_class(base: type) -> type:
    """The (registered, cached) layer-wise subclass of a Keras optimizer class."""
    if base.__name__ not in _LAYERWISE:
        _LAYERWISE[base.__name__] = _layerwise(base)
    return _LAYERWISE[base.__name__]


def layerwise_optimizer(optimizer: Any, model: Any, backbone_lr_scale: float, freeze_steps: int) -> Any:
    """Rebuild ``optimizer`` (not yet built) as its layer-wise subclass for ``model``'s backbone.

    Args:
        optimizer: A Keras optimizer from ``train.make_optimizer``.
        model: The model it will train (its backbone variables get the scaled rate).
        backbone_lr_scale: Backbone learning rate / head learning rate.
        freeze_steps: Optimizer steps during which the backbone's rate is 0.
    """
    cls = layerwise_class(type(optimizer))
    cfg = optimizer.get_config()
    import keras

    lr = optimizer._learning_rate  # the schedule object itself (get_config serialises it)
    if not isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    cfg.pop("learning_rate", None)
    for key in ("name",):
        cfg.pop(key, None)
    return cls(learning_rate=lr, backbone_paths=[v.path for v in backbone_variables(model)],
               backbone_lr_scale=backbone_lr_scale, freeze_steps=freeze_steps, **cfg)


# ---------------------------------------------------------------------------------------------
# Start weights


def resolve_weights_source(value: str, base_dir: Path) -> Path:
    """The file behind ``model.weights``: a ``.weights.h5`` file, a legacy keras.applications
    ``.h5`` file (ImageNet ``*_no_top.h5``), or the ``model.keras`` of a previous run's export
    directory (or of the run directory holding ``export/``).

    Raises:
        RecipeError: Nothing usable at that path (says what was looked for).
    """
    p = Path(value).expanduser()
    if not p.is_absolute() and not p.exists():
        p = base_dir / p
    if p.is_dir():
        for cand in (p / "model.keras", p / "export" / "model.keras"):
            if cand.is_file():
                return cand
        raise RecipeError(
            f"model.weights: {str(p)!r} is a directory without model.keras. Got {value!r}.",
            hint="Point at a run's export/ directory (it holds model.keras), the run directory, "
            "or a .weights.h5 file.",
        )
    if p.is_file():
        from lepton_vision.models.backbones import is_legacy_h5

        if p.name.endswith(".weights.h5") or p.suffix == ".keras" or is_legacy_h5(p):
            return p
        raise RecipeError(
            f"model.weights: {str(p)!r} is neither a Keras .weights.h5 file, a legacy keras.applications .h5 "
            f"file nor a .keras model. Got {value!r}.",
            hint="Save weights with model.save_weights('name.weights.h5'), or point at a run's export/.",
        )
    raise RecipeError(
        f"model.weights: no such file or directory. Got {value!r} (looked at {str(p)!r}).",
        hint="Use 'none', a .weights.h5 file, or a previous run's export/ directory.",
    )


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _variables_fit(dst: list[Any], src: list[Any]) -> bool:
    return len(dst) == len(src) and all(tuple(a.shape) == tuple(b.shape) for a, b in zip(dst, src))


def _load_from_model(model: Any, src: Any) -> str:
    """Copy weights from a loaded Keras model: all of them, else the backbone's."""
    if _variables_fit(model.weights, src.weights):
        model.set_weights(src.get_weights())
        return "model"
    mb, sb = getattr(model, "backbone", None), getattr(src, "backbone", None)
    if mb is not None and sb is not None and _variables_fit(mb.weights, sb.weights):
        mb.set_weights(sb.get_weights())
        return f"backbone ({len(mb.weights)} variables)"
    if mb is None and sb is None:
        from lepton_vision.models.backbones import load_weights_file
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "src.weights.h5"
            src.save_weights(str(f))
            return load_weights_file(model, f)
    raise RecipeError(
        f"model.weights: the start model ({src.name}, {len(src.weights)} variables) does not fit "
        f"this recipe's model ({model.name}, {len(model.weights)} variables), not even its backbone.",
        hint="Use weights of the same architecture and size (model.detector.size / model.backbone, "
        "model.width, input.channels).",
    )


def load_start_weights(model: Any, path: str | Path) -> str:
    """Load a start point into a freshly built model.

    Args:
        model: The fold's model (classifier or detector), built and not yet trained.
        path: A ``.weights.h5`` file or a ``.keras`` model (a previous export's ``model.keras``).

    Returns:
        What was loaded: ``"model"`` or ``"backbone (...)"``.

    Raises:
        RecipeError: Unreadable file, or weights that fit neither the model nor its backbone.
    """
    from lepton_vision.backend import import_keras

    path = Path(path)
    _, keras = import_keras()
    if path.suffix == ".keras":
        try:
            src = keras.models.load_model(str(path), compile=False)
        except Exception as e:  # noqa: BLE001 - any load failure is a bad start point
            raise RecipeError(f"model.weights: cannot load {str(path)!r} as a Keras model ({type(e).__name__}: {e}).") from None
        return _load_from_model(model, src)
    from lepton_vision.models.backbones import is_legacy_h5

    if is_legacy_h5(path) and getattr(model, "backbone", None) is not None:
        raise RecipeError(f"model.weights: {str(path)!r} is a legacy keras.applications .h5 file; those fit the "
                          "classification backbones (mobilenet_v2, mobilenet_v3_small, efficientnet_b0), not a detector.",
                          hint="Start a detector from 'none', a pretrain stage, a .weights.h5 file or a previous export.")
    if getattr(model, "backbone", None) is None:  # classifier: whole model, else by layer
        from lepton_vision.models.backbones import load_weights_file

        return load_weights_file(model, path)
    initial = model.get_weights()
    try:
        model.load_weights(str(path))
        return "model"
    except Exception:  # noqa: BLE001 - not this model's file: try the backbone alone
        model.set_weights(initial)
    try:
        _load_backbone_part(model.backbone, path)
        return f"backbone ({len(model.backbone.weights)} variables)"
    except Exception as e:  # noqa: BLE001
        model.set_weights(initial)
        raise RecipeError(
            f"model.weights: {str(path)!r} fits neither this detector nor its backbone ({type(e).__name__}: {e}).",
            hint="Use weights saved from the same detector size (model.detector.size), e.g. a "
            "previous run's export/ directory or its pretrain cache's weights.weights.h5.",
        ) from None


def _load_backbone_part(backbone: Any, path: Path) -> None:
    """Load a detector's backbone from a weights file of the whole detector (another class list)
    or of the backbone alone.

    In a Keras 3 weights file the detector's nested backbone model is the one group under
    ``layers/`` that has layers of its own; it is copied out as a file of its own and loaded.
    """
    import tempfile
    import warnings

    import h5py

    with h5py.File(path, "r") as f, warnings.catch_warnings():
        # Keras warns about the detector-level containers a backbone file does not have.
        warnings.simplefilter("ignore")
        layers = f.get("layers")
        nested = [k for k in (layers or {}) if isinstance(layers[k], h5py.Group) and "layers" in layers[k]]
        if len(nested) != 1:  # not a whole-detector file: maybe the backbone's own
            backbone.load_weights(str(path))
            return
        with tempfile.TemporaryDirectory() as tmp:
            part = Path(tmp) / "backbone.weights.h5"
            with h5py.File(part, "w") as g:
                for key in layers[nested[0]]:
                    f.copy(layers[nested[0]][key], g, name=key)
            backbone.load_weights(str(part))


def write_start_record(path: Path, record: dict[str, Any]) -> None:
    """Write ``start_weights.json`` atomically."""
    from lepton_vision.runio import atomic_write_json

    atomic_write_json(path, json.loads(json.dumps(record, default=str)))


def fold_model_builder(resolved: Any, build_model: Any, seed: int) -> Any:
    """A zero-argument factory of one fold's fresh model, with the run's start weights loaded.

    Each fold (and the refit) starts from its own ``seed``. The start weights are the run's
    (``resolved.start_weights``: the pretrain stage or ``model.weights``, decided once per run),
    or, when called outside ``lepton-vision train``, the recipe's ``model.weights`` file.

    Args:
        resolved: The resolved recipe (:class:`lepton_vision.config.cards.Resolved`).
        build_model: The kind's ``build_model(recipe, weights=, seed=, n_classes=)``.
        seed: Weight-initialisation seed.
    """
    r = resolved.recipe
    weights = r.model.weights if r.model.weights in ("none", "imagenet") else "none"
    start = resolved.start_weights
    if start is None and r.model.weights not in ("none", "imagenet"):  # not through run_train
        start = str(resolve_weights_source(r.model.weights, resolved.recipe_path.parent))
    n_classes = len(resolved.task.classes)

    def build() -> Any:
        model = build_model(r, weights=weights, seed=seed, n_classes=n_classes)
        if start is not None:
            load_start_weights(model, start)
        return model

    return build

"""albumentations pipelines from the recipe's ``augment:`` list, checked at load time.

A recipe names transforms by their albumentations class name with keyword ``params``.
:func:`augment_problems` finds every problem before training starts: unknown names (with a
"did you mean"), unknown or invalid parameters (albumentations 2 validates them with pydantic;
its errors are mapped back to the parameter), and transforms that fail on an image like the
ones they will get (float32 in [0, 1], the recipe's channel count and size).
"""

from __future__ import annotations

import inspect
import os
import warnings
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton_vision.config.errors import RecipeError, did_you_mean

if TYPE_CHECKING:
    import albumentations as A

Loc = tuple[Any, ...]

# Transforms that cannot be written in a recipe: abstract bases, callables, and transforms
# that need extra inputs (volumes, masks, boxes, reference images) a classification sample has not.
_EXCLUDED = {
    "BasicTransform",
    "DualTransform",
    "ImageOnlyTransform",
    "Transform3D",
    "Lambda",
}

#: Transforms that combine the sample with other training images and their boxes (albumentations
#: ``Mosaic``): detection recipes only; the training pipelines hand them the other images.
MULTI_IMAGE = {"Mosaic"}


def sized_for_input(ops: list[dict[str, Any]], image_size: tuple[int, int] | None) -> list[dict[str, Any]]:
    """``ops`` with a multi-image transform's output and cell size defaulting to the network
    input (``Mosaic``'s own default, 512 x 512, would change the image size), so one recipe line
    works at ``input.image_size`` and at ``pretrain.image_size``; sizes the recipe sets are kept."""
    if image_size is None:
        return ops
    hw = [int(image_size[0]), int(image_size[1])]
    out = []
    for op in ops:
        if op.get("name") in MULTI_IMAGE:
            params = dict(op.get("params") or {})
            params.setdefault("target_size", hw)
            params.setdefault("cell_shape", list(params["target_size"]))
            op = {**op, "params": params}
        out.append(op)
    return out


def _albumentations() -> Any:
    # albumentations 2.0.8 calls pypi.org on import unless this is set.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


@lru_cache(maxsize=1)
def transform_names() -> tuple[str, ...]:
    """Names of the albumentations image transforms a recipe may use."""
    A = _albumentations()
    from albumentations.core.transforms_interface import BasicTransform

    base3d = getattr(A, "Transform3D", None)
    names = []
    for name in dir(A):
        obj = getattr(A, name)
        if not (inspect.isclass(obj) and issubclass(obj, BasicTransform)) or name in _EXCLUDED:
            continue
        if base3d is not None and issubclass(obj, base3d):
            continue
        names.append(name)
    return tuple(sorted(names))


def _param_names(cls: type) -> list[str]:
    return [n for n in inspect.signature(cls).parameters if n not in ("self", "strict", "args", "kwargs")]


def _fmt_value(v: Any) -> str:
    return repr(list(v)) if isinstance(v, tuple) else repr(v)


def _pydantic_problems(err: Exception, base: Loc, params: dict[str, Any]) -> list[tuple[Loc, str]]:
    """Map albumentations' pydantic ValidationError (its ``__cause__``) to per-parameter problems."""
    from pydantic import ValidationError

    cause = err.__cause__
    if not isinstance(cause, ValidationError):
        return [(base + ("params",), f"invalid parameters: {err}")]
    by_param: dict[str, list[dict[str, Any]]] = {}
    for e in cause.errors():
        name = str(e["loc"][0]) if e["loc"] else ""
        by_param.setdefault(name, []).append(e)
    out: list[tuple[Loc, str]] = []
    for name, errs in by_param.items():
        if name in ("", "strict") or name not in params and errs[0]["type"] != "missing":
            msgs = "; ".join(e["msg"].removeprefix("Value error, ") for e in errs)
            out.append((base + ("params",), f"invalid parameters: {msgs}"))
            continue
        if errs[0]["type"] == "missing":
            out.append((base + ("params",), f"required parameter '{name}' is missing"))
            continue
        # A union-typed parameter gives one error per member type; the member is loc[1].
        members = [str(e["loc"][1]) for e in errs if len(e["loc"]) > 1 and isinstance(e["loc"][1], str)]
        first = errs[0]["msg"].removeprefix("Value error, ")
        if len(members) > 1:
            msg = f"expected one of {', '.join(members)} ({first})"
        else:
            sub = "".join(f"[{p}]" for p in errs[0]["loc"][1:] if isinstance(p, int))
            msg = f"{first}" + (f" (at {name}{sub})" if sub else "")
        got = "" if "got" in msg.lower() else f" Got {_fmt_value(params[name])}."
        out.append((base + ("params", name), f"{msg}.{got}"))
    return out


def _build_one(A: Any, name: str, p: float, params: dict[str, Any]) -> Any:
    # strict=True turns albumentations' "argument not valid" warning into an error.
    return getattr(A, name)(p=p, strict=True, **params)


def augment_problems(
    ops: list[dict[str, Any]],
    channels: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> list[tuple[Loc, str]]:
    """Check an ``augment:`` list without training.

    Args:
        ops: Dicts with ``name``, ``p`` and ``params`` (``AugmentOp.model_dump()``).
        channels: When given, each transform is also run on a dummy float32 image with this many
            channels (grayscale recipes use 1), and failures or warnings are reported.
        image_size: (height, width) of that dummy image, normally input.image_size; when
            given, a transform that changes the image size is reported (augmentation runs on
            network-sized images and must keep their size). Without it a 64x64 image is used
            and the size is not checked.

    Returns:
        ``(loc, message)`` pairs; ``loc`` is like ``("augment", 2, "params", "scale")``.
    """
    A = _albumentations()
    names = transform_names()
    problems: list[tuple[Loc, str]] = []
    for i, op in enumerate(ops):
        base: Loc = ("augment", i)
        name = str(op.get("name", ""))
        p = float(op.get("p", 0.5))
        params = dict(op.get("params") or {})
        if name not in names:
            problems.append(
                (
                    base + ("name",),
                    f"unknown albumentations transform '{name}'.{did_you_mean(name, names)} "
                    "Names are class names, e.g. HorizontalFlip, Affine, RandomBrightnessContrast.",
                )
            )
            continue
        cls = getattr(A, name)
        valid = _param_names(cls)
        unknown = [k for k in params if k not in valid or k == "p"]
        others = [v for v in valid if v != "p"]
        for k in unknown:
            if k == "p":
                msg = f"p is set next to name (p: {params[k]}), not under params."
            else:
                msg = (
                    f"{name} has no parameter '{k}'.{did_you_mean(k, valid)} "
                    f"Valid: {', '.join(others) or 'none besides p'}."
                )
            problems.append((base + ("params", k), msg))
        # Still build with the known parameters, so bad values are reported in the same pass.
        params = {k: v for k, v in params.items() if k not in unknown}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                _build_one(A, name, p, params)
        except ValueError as e:
            problems += _pydantic_problems(e, base, params)
            continue
        except TypeError as e:
            problems.append((base + ("params",), f"{name}: {e}"))
            continue
        if channels is not None and not unknown:
            if name in MULTI_IMAGE:
                params = sized_for_input([{"name": name, "params": params}], image_size)[0]["params"]
            msg = _trial(A, name, params, channels, image_size or (64, 64), image_size is not None)
            if msg:
                problems.append((base, msg))
    return problems


def _trial(
    A: Any, name: str, params: dict[str, Any], channels: int, size: tuple[int, int], check_shape: bool
) -> str | None:
    """Run one transform (p=1) on a dummy float32 image; say what went wrong, or None."""
    h, w = size
    img = np.random.default_rng(0).random((h, w, channels), dtype=np.float32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            t = _build_one(A, name, 1.0, params)
            # Multi-image transforms get no other images here: they tile the one they have.
            extra = {t.metadata_key: []} if name in MULTI_IMAGE else {}
            out = A.Compose([t], seed=0)(image=img, **extra)["image"]
    except Exception as e:  # noqa: BLE001 - anything it raises on a plain image is a recipe problem
        return (
            f"{name} fails on a float32 {h}x{w}x{channels} image "
            f"(input.channels={channels}): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        )
    if check_shape and out.shape != img.shape:
        size_param = next((k for k in ("size", "target_size") if k in _param_names(getattr(A, name))), "size")
        return (
            f"{name} changes the image shape from {h}x{w}x{channels} to "
            f"{'x'.join(map(str, out.shape))}; augmentation must keep input.image_size "
            f"(e.g. set {size_param}: [{h}, {w}])"
        )
    return None


def build_augment(ops: list[dict[str, Any]], seed: int) -> A.Compose | None:
    """Build the training augmentation pipeline.

    Args:
        ops: The recipe's augment list as dicts (name, p, params), already checked.
        seed: Seed of the pipeline's random stream (reproducible augmentation).

    Returns:
        ``A.Compose`` or None when ``ops`` is empty.

    Raises:
        RecipeError: When the list has problems (see :func:`augment_problems`).
    """
    if not ops:
        return None
    problems = augment_problems(ops)
    if problems:
        from lepton_vision.config.errors import Problem
        from lepton_vision.config.yamlfile import render_path

        raise RecipeError(
            "invalid augment list", problems=[Problem(render_path(loc), msg) for loc, msg in problems]
        )
    A = _albumentations()
    transforms = [_build_one(A, op["name"], float(op.get("p", 0.5)), dict(op.get("params") or {})) for op in ops]
    return A.Compose(transforms, seed=seed)


def build_box_augment(ops: list[dict[str, Any]], seed: int, min_visibility: float = 0.3,
                      image_size: tuple[int, int] | None = None) -> A.Compose | None:
    """The training augmentation for object detection: boxes move with the image.

    ``image_size``: the network input (height, width) the images arrive at; a ``Mosaic``
    without sizes of its own assembles frames of that size (:func:`sized_for_input`).

    Boxes are ``pascal_voc`` (x1, y1, x2, y2 in pixels), the sample table's format; boxes left
    with less than ``min_visibility`` of their area after a crop/affine are dropped with their
    labels (stack.md section 11: default params would keep 10 % slivers as labels).

    Raises:
        RecipeError: When the list has problems (see :func:`augment_problems`).
    """
    plain = build_augment(sized_for_input(ops, image_size), seed)
    if plain is None:
        return None
    A = _albumentations()
    return A.Compose(
        list(plain.transforms),
        seed=seed,
        bbox_params=A.BboxParams(
            format="pascal_voc", label_fields=["labels"], min_visibility=min_visibility,
            clip=True, filter_invalid_bboxes=True,
        ),
    )


def partners_needed(compose: A.Compose | None) -> int:
    """How many other training images one sample needs for ``compose``'s multi-image transforms
    (``Mosaic`` with an ``r x c`` grid: ``r * c - 1``); 0 when it has none."""
    if compose is None:
        return 0
    return max((int(np.prod(t.grid_yx)) - 1 for t in compose.transforms if type(t).__name__ in MULTI_IMAGE),
               default=0)


def augment_with_boxes(compose: A.Compose, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                       partners: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augment one detection sample (float32 image in [0, 1], ``pascal_voc`` boxes, labels).

    ``partners``: (image, boxes, labels) of other training images for ``Mosaic``, at least
    :func:`partners_needed` of them (the caller draws them from the training set, seeded).

    Returns:
        (image clipped to [0, 1], boxes ``[n, 4]`` float32, labels ``[n]``).
    """
    extra: dict[str, Any] = {}
    for t in compose.transforms:
        if type(t).__name__ in MULTI_IMAGE:
            extra[t.metadata_key] = [
                {"image": im, "bboxes": np.asarray(b, np.float32).reshape(-1, 4), "labels": np.asarray(c).reshape(-1)}
                for im, b, c in (partners or [])
            ]
    out = compose(image=image, bboxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                  labels=np.asarray(labels).reshape(-1), **extra)
    return (np.clip(out["image"], 0.0, 1.0), np.asarray(out["bboxes"], np.float32).reshape(-1, 4),
            np.asarray(out["labels"]))


def draw_partners(rng: np.random.Generator, n: int, i: int, k: int) -> np.ndarray:
    """``k`` indices of other images than ``i`` among ``n`` (with replacement when there are
    fewer than ``k`` others; ``i`` itself only when it is the only image)."""
    if k == 0:
        return np.zeros(0, np.int64)
    others = np.delete(np.arange(n), i) if n > 1 else np.arange(n)
    return rng.choice(others, size=k, replace=len(others) < k)


def apply_augment(compose: A.Compose | None, image: np.ndarray) -> np.ndarray:
    """Augment one float32 HxWxC image in [0, 1]; returns float32 of the same shape in [0, 1].

    Raises:
        RecipeError: A transform changed the image shape (a recipe that should have been caught
            by :func:`augment_problems` with ``image_size``).
    """
    if compose is None:
        return image
    out = compose(image=np.ascontiguousarray(image, dtype=np.float32))["image"]
    if out.ndim == 2 and image.ndim == 3:
        out = out[:, :, None]
    if out.shape != image.shape:
        raise RecipeError(
            f"augmentation changed the image shape from {image.shape} to {out.shape}; "
            "every transform must keep input.image_size"
        )
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)

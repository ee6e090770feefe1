"""Embedded default detection data: street scenes with people, road scenes with obstacles.

Two generators write COCO detection datasets with exact boxes:

* ``street_scenes`` (class ``person``): building facades with window grids, sky, paved ground
  with perspective tiling, lighting gradients and some night scenes; people of varying pose
  (walking side-on or towards/away from the camera, standing), size, clothing, skin tone, hats
  and bags; distractors that are not people (poles, street lights, bins, trees, signs, parked
  cars) which also occlude.
* ``road_scenes`` (classes ``car``, ``pedestrian``, ``cyclist``, ids 1, 2, 3): a straight road
  in perspective (horizon, vanishing point, lanes, kerbs, sidewalks, verges, roadside buildings),
  cars seen from the rear, front or side, pedestrians, and riders on bicycles; roadside poles,
  signs, trees and bins. ``spec.car_model == "perspective"`` draws cars as 3-D bodies through
  the camera instead (:func:`_car3d_prims`: rear or front and side together, as beside a real
  lane), and ``spec.parked_rows`` adds rows of cars parked nose to tail along the kerbs
  (:func:`_parked_rows`, from its own random stream, so everything else is drawn as without).

Geometry is a pinhole camera over a flat ground plane: an object at depth ``Z`` metres is
``f / Z`` pixels per metre and stands on the row ``horizon + f * camera_height / Z``, so far
objects are smaller and higher. Frames come in sequences of ``spec.sequence_length``: a
sequence shares background, camera and static distractors, and its people and vehicles move
between frames, so frames of a sequence are strongly correlated and must stay in one fold
(``images[].group_id``).

Boxes: everything is drawn far to near. Every shape of an object is drawn twice with the same
call, once in colour and once into an integer owner map holding the object's id; whatever is
drawn later (nearer objects, occluders) overwrites both. An object's box is the tight extent of
its pixels left in the owner map, i.e. of its visible pixels (clipped at the frame edge); with
``spec.boxes == "amodal"`` (KITTI's convention) it is the extent of all its pixels drawn alone,
hidden ones included, clipped at the frame edge. An object whose visible pixels are fewer than
``spec.min_visible`` (default :data:`MIN_VISIBLE_FRACTION`) of its unoccluded, unclipped pixels
is removed from the scene and the frame is drawn again without it, so every drawn object has a
box and no box is a sliver. Shapes are drawn without anti-aliasing so that
the colour and the owner map agree pixel for pixel; a light blur afterwards (lens softness)
smooths edges by at most a pixel or so. COCO ``area`` is the visible pixel count.

Determinism: sequence ``q`` draws from ``SeedSequence(spec.seed, spawn_key=(q, 0))`` and its
frame ``j`` from ``spawn_key=(q, 1 + j)``; which frames are empty comes from a permutation
seeded by ``spec.seed`` alone. No global random state is used, so the same spec gives
byte-identical files.

Domain randomisation (``spec.randomization`` r in 0..1, for pretraining on generated frames):
r = 0 is the default data exactly (byte-identical files; ``randomization`` is then not even
written into the settings). With r > 0 every randomisation parameter comes from separate
generators (``spawn_key=(q, 0xD0)`` per sequence, ``(q, 0xD0, j)`` per frame), and the ranges
widen linearly with r:

* camera: horizon row (pitch), camera height (road 1.5-1.8 m -> 1.2-2.6 m, horizon 0.36-0.48 H
  -> 0.25-0.6 H), focal length and vanishing point; no roll (boxes must stay exact);
* lighting: more night, dusk (warm, dark), exposure, contrast, gamma, stronger colour casts,
  haze/fog blended towards a grey-blue, thicker with ground depth;
* textures: procedural grain / stripes / blotches over the background (road, pavement,
  facades, sky) and over object pixels (car bodies, clothing), background tints;
* camera effects: lens blur 0-2.2 px, motion blur, sensor noise up to 16 grey levels, JPEG
  artefacts (probability 0.6 r, quality down to 15), grayscale sequences (probability 0.3 r);
* occlusion: about 3 r extra distractors per sequence (poles, signs, trees, bins, ...);
* road_scenes: each car is dropped with probability :data:`ROAD_CAR_DROP` r and extra
  pedestrians and cyclists are added, so the classes approach a third each at r = 1; depths
  widen (:data:`ROAD_DEPTH_WIDE`) and are drawn log-uniformly, giving KITTI-like sizes (cars
  ~0.04-0.5 of the frame height, pedestrians ~0.06-0.6); street_scenes people span
  0.08-0.85 H at r = 1.

Only pixels move (blur, JPEG, noise, haze): geometry never does, so every box is still the
tight extent of the object's owner-map pixels.

Streaming: :func:`iter_scene_frames` yields ``(rgb, boxes xyxy, classes)`` for a range of frame
indices in memory, identical to :func:`render_scene_frame` (the written files), for any
``n_images``.
"""

from __future__ import annotations

import colorsys
import functools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lepton_vision.config.cards import SyntheticSpec
from lepton_vision.config.errors import DataError, Problem
from lepton_vision.runio import atomic_write_bytes, atomic_write_json, atomic_write_text

#: Class names per generator, in category-id order (ids start at 1).
CLASSES: dict[str, tuple[str, ...]] = {
    "street_scenes": ("person",),
    "road_scenes": ("car", "pedestrian", "cyclist"),
}
#: An object with fewer visible pixels than this fraction of its full (unoccluded, unclipped)
#: pixels is removed from the frame, so it is neither drawn nor boxed (SyntheticSpec.min_visible
#: sets it per dataset; this is its default).
MIN_VISIBLE_FRACTION = 0.4
#: People in street scenes: height as a fraction of the frame height (log-uniform).
STREET_PERSON_HEIGHT = (0.15, 0.7)
#: Road scenes: depth ranges (metres) in which each class is placed.
ROAD_DEPTH = {"car": (5.0, 34.0), "pedestrian": (4.0, 18.0), "cyclist": (4.5, 20.0)}
NIGHT_FRACTION = 0.2  # sequences that are night-like (dark, lit windows, lamp glow)
#: Road scenes with randomisation r: each car is dropped with probability ROAD_CAR_DROP * r and
#: up to round(ROAD_EXTRA_* * r) extra pedestrians / cyclists are added (class balance).
ROAD_CAR_DROP = 0.35
ROAD_EXTRA_PEDESTRIANS = 3
ROAD_EXTRA_CYCLISTS = 3
ANNOTATIONS = "annotations.json"
IMAGES = "images"

_SHIFT = 3  # cv2 fixed-point bits: sub-pixel coordinates, still exact integer rasterisation
_ONE = 1 << _SHIFT
_SKIN = [(255, 224, 196), (241, 194, 150), (224, 172, 125), (198, 134, 86), (161, 102, 62), (120, 72, 42), (88, 54, 34)]
_HAIR = [(20, 18, 16), (60, 40, 25), (110, 75, 40), (170, 130, 70), (200, 170, 110), (140, 140, 140), (90, 30, 20)]

Colour = tuple[int, int, int]
Prim = tuple  # ("poly", pts, colour) | ("line", pts, thickness, colour) | ("circle", c, r, colour) | ("ellipse", c, axes, colour)


# ------------------------------------------------------------------------------------------
# drawing: primitives drawn identically into the colour image and the owner map
# ------------------------------------------------------------------------------------------


def _fx(pts: Any, off: tuple[int, int]) -> np.ndarray:
    """Float pixel coordinates -> cv2 fixed-point int32 (minus an integer offset)."""
    a = np.asarray(pts, dtype=np.float64) - np.asarray(off, dtype=np.float64)
    return np.round(a * _ONE).astype(np.int32)


def _draw(prims: list[Prim], targets: list[tuple[np.ndarray, Any]], off: tuple[int, int] = (0, 0)) -> None:
    """Draw primitives into each ``(image, value)`` target; ``value`` None = the prim's colour."""
    for p in prims:
        kind = p[0]
        for img, value in targets:
            col = p[-1] if value is None else value
            if kind == "poly":
                cv2.fillPoly(img, [_fx(p[1], off)], col, lineType=cv2.LINE_8, shift=_SHIFT)
            elif kind == "line":
                t = max(1, round(p[2]))
                cv2.polylines(img, [_fx(p[1], off)], False, col, thickness=t, lineType=cv2.LINE_8, shift=_SHIFT)
            elif kind == "circle":
                c = _fx(p[1], off)
                r = max(1, round(p[2] * _ONE))
                cv2.circle(img, (int(c[0]), int(c[1])), r, col, thickness=-1, lineType=cv2.LINE_8, shift=_SHIFT)
            elif kind == "ellipse":
                c = _fx(p[1], off)
                ax = (max(1, round(p[2][0] * _ONE)), max(1, round(p[2][1] * _ONE)))
                cv2.ellipse(img, (int(c[0]), int(c[1])), ax, 0.0, 0.0, 360.0, col, thickness=-1,
                            lineType=cv2.LINE_8, shift=_SHIFT)
            else:  # pragma: no cover - builders only emit the kinds above
                raise ValueError(f"unknown primitive {kind!r}")


def _bounds(prims: list[Prim]) -> tuple[int, int, int, int]:
    """Integer pixel bounds (x0, y0, x1, y1) that contain every primitive, with a margin."""
    xs, ys = [], []
    for p in prims:
        if p[0] in ("poly", "line"):
            a = np.asarray(p[1], dtype=np.float64)
            pad = p[2] / 2 + 1 if p[0] == "line" else 0.0
            xs += [a[:, 0].min() - pad, a[:, 0].max() + pad]
            ys += [a[:, 1].min() - pad, a[:, 1].max() + pad]
        else:
            c = p[1]
            rx, ry = (p[2], p[2]) if p[0] == "circle" else p[2]
            xs += [c[0] - rx, c[0] + rx]
            ys += [c[1] - ry, c[1] + ry]
    return math.floor(min(xs)) - 3, math.floor(min(ys)) - 3, math.ceil(max(xs)) + 4, math.ceil(max(ys)) + 4


def _full_extent(prims: list[Prim]) -> tuple[int, tuple[int, int, int, int]]:
    """An object drawn alone on an unbounded canvas (no occlusion, no clipping): its pixel count
    and the tight extent ``(x0, y0, x1, y1)`` of those pixels in frame coordinates (x1, y1
    exclusive), which is the visible box's extent wherever nothing hides it."""
    x0, y0, x1, y1 = _bounds(prims)
    canvas = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    _draw(prims, [(canvas, 1)], off=(x0, y0))
    area = int(canvas.sum())
    if area == 0:
        return 0, (x0, y0, x0, y0)
    cols, rows = np.flatnonzero(canvas.any(axis=0)), np.flatnonzero(canvas.any(axis=1))
    return area, (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)


def _shade(c: Colour | tuple[float, ...], k: float) -> Colour:
    return (int(np.clip(c[0] * k, 0, 255)), int(np.clip(c[1] * k, 0, 255)), int(np.clip(c[2] * k, 0, 255)))


def _hsv(h: float, s: float, v: float) -> Colour:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return (int(r * 255), int(g * 255), int(b * 255))


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=np.float64)


# ------------------------------------------------------------------------------------------
# camera and scene description
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera over flat ground; ``y`` grows downwards, ``Y`` (height) upwards."""

    width: int
    height: int
    f: float  # focal length, pixels
    horizon: float  # image row of the horizon
    vx: float  # image column of the vanishing point
    cam_h: float  # camera height above the ground, metres

    def project(self, X: float, Y: float, Z: float) -> tuple[float, float]:
        return self.vx + self.f * X / Z, self.horizon + self.f * (self.cam_h - Y) / Z

    def ground_row(self, Z: float) -> float:
        return self.horizon + self.f * self.cam_h / Z


@dataclass
class _Item:
    """One thing drawn in a frame: an object with a box (category > 0) or a distractor (0)."""

    depth: float  # metres; drawn far (large) to near (small)
    prims: list[Prim]
    category: int = 0
    key: str = ""  # which actor (objects), to remove it from the frame when hidden


@dataclass
class _Look:
    """A person's appearance."""

    skin: Colour
    hair: Colour
    top: Colour
    bottom: Colour
    shoes: Colour
    build: float
    hat: Colour | None
    bag: Colour | None
    bag_kind: str  # backpack | handbag


@dataclass
class _Actor:
    """Something that moves through a sequence (person, car, cyclist)."""

    kind: str  # person | car | cyclist
    X: float  # lateral position at frame 0, metres (right positive)
    Z: float  # depth at frame 0, metres
    vX: float  # metres per frame
    vZ: float
    view: str  # front | back | left | right
    phase: float  # gait / pedal phase at frame 0
    walking: bool
    size: float  # person height (m) or vehicle scale
    look: Any
    category: int
    key: str


@dataclass
class _Sequence:
    """What all frames of a sequence share."""

    camera: _Camera
    background: np.ndarray  # uint8 HxWx3 RGB
    statics: list[_Item]
    actors: list[_Actor]
    light: float  # colour multiplier for things drawn over the background (night < 1)
    noise: float  # sensor noise std (grey levels)
    blur: float  # lens blur sigma (pixels)
    cast: np.ndarray  # per-channel white-balance gains
    rand: _Rand | None = None  # domain randomisation (spec.randomization > 0), else None
    amodal: bool = False  # boxes: whole object extent clipped to the frame (else visible pixels)
    perspective_cars: bool = False  # cars as 3-D bodies through the camera (else flat views)
    min_visible: float = MIN_VISIBLE_FRACTION  # objects less visible than this are not drawn


@dataclass
class _Rand:
    """Per-sequence domain randomisation settings (only when ``spec.randomization > 0``)."""

    r: float  # strength 0..1
    person_h: tuple[float, float]  # accepted person height, fraction of the frame height
    obj_tex: np.ndarray | None  # HxWx1 multiplicative texture on object pixels
    haze_w: np.ndarray | None  # Hx1x1 blend weight towards haze_col
    haze_col: np.ndarray  # RGB
    exposure: float
    contrast: float
    gamma: float
    motion: tuple[float, float]  # motion blur length (px, 0 = none) and angle (radians)
    jpeg_p: float  # probability a frame is JPEG-compressed
    jpeg_q: tuple[int, int]  # JPEG quality range
    gray: bool  # grayscale output (surveillance cameras)


# ------------------------------------------------------------------------------------------
# people
# ------------------------------------------------------------------------------------------


def _random_look(rng: np.random.Generator) -> _Look:
    top = _hsv(rng.random(), rng.uniform(0.0, 0.9), rng.uniform(0.15, 0.95))
    bottom = _hsv(rng.random(), rng.uniform(0.0, 0.7), rng.uniform(0.1, 0.7))
    if rng.random() < 0.35:  # jeans
        bottom = _hsv(rng.uniform(0.58, 0.64), rng.uniform(0.4, 0.7), rng.uniform(0.25, 0.55))
    return _Look(
        skin=_SKIN[int(rng.integers(len(_SKIN)))],
        hair=_HAIR[int(rng.integers(len(_HAIR)))],
        top=top,
        bottom=bottom,
        shoes=_hsv(rng.random(), rng.uniform(0, 0.4), rng.uniform(0.05, 0.5)),
        build=float(rng.uniform(0.85, 1.2)),
        hat=_hsv(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.8)) if rng.random() < 0.2 else None,
        bag=_hsv(rng.random(), rng.uniform(0.1, 0.8), rng.uniform(0.1, 0.7)) if rng.random() < 0.35 else None,
        bag_kind="backpack" if rng.random() < 0.5 else "handbag",
    )


def _person_prims(x: float, yf: float, h: float, look: _Look, view: str, phase: float, walking: bool,
                  light: float, pose: int = 0) -> list[Prim]:
    """A person standing on (x, yf), ``h`` pixels tall, in one of four views."""

    def P(dx: float, up: float) -> tuple[float, float]:
        return (x + dx * h, yf - up * h)

    def c(col: Colour, k: float = 1.0) -> Colour:
        return _shade(col, light * k)

    t_leg = max(2.0, 0.075 * h * look.build)
    t_arm = max(1.5, 0.055 * h * look.build)
    out: list[Prim] = []
    if view in ("left", "right"):
        d = 1.0 if view == "right" else -1.0
        amp = 0.42 if walking else 0.04
        sx = 0.02 * d if walking else 0.0

        def leg(i: int, k: float) -> None:
            ph = phase + math.pi * i
            a = amp * math.sin(ph)
            bend = 0.6 * max(0.0, math.cos(ph)) if walking else 0.02
            b = a - bend  # the shin trails the thigh while the leg swings forward
            kx, ku = d * 0.245 * math.sin(a), 0.50 - 0.245 * math.cos(a)
            ax_, au = kx + d * 0.225 * math.sin(b), ku - 0.225 * math.cos(b)
            out.append(("line", [P(0.0, 0.50), P(kx, ku), P(ax_, au)], t_leg, c(look.bottom, k)))
            out.append(("line", [P(ax_, au), P(ax_ + d * 0.06, au - 0.01)], t_leg * 0.8, c(look.shoes, k)))

        def arm(i: int, k: float) -> None:
            s = math.sin(phase + math.pi * i)
            a = -0.7 * amp * s
            sh = P(sx, 0.79)
            ex, eu = sx + d * 0.16 * math.sin(a), 0.79 - 0.16 * math.cos(a)
            b = a + (0.35 if walking else 0.1)
            hx, hu = ex + d * 0.15 * math.sin(b), eu - 0.15 * math.cos(b)
            out.append(("line", [sh, P(ex, eu), P(hx, hu)], t_arm, c(look.top, k)))
            out.append(("circle", P(hx, hu), t_arm * 0.6, c(look.skin, k)))

        arm(0, 0.75)
        leg(0, 0.8)
        torso = [P(sx - 0.06 * d, 0.83), P(sx + 0.065 * d, 0.83), P(0.06 * d, 0.52), P(-0.065 * d, 0.50)]
        out.append(("poly", torso, c(look.top)))
        out.append(("poly", [P(-0.065 * d, 0.53), P(0.06 * d, 0.54), P(0.055 * d, 0.45), P(-0.06 * d, 0.45)], c(look.bottom)))
        if look.bag is not None and look.bag_kind == "backpack":
            out.append(("poly", _rect(*P(sx - 0.055 * d, 0.79), *P(sx - 0.13 * d, 0.56)), c(look.bag)))
        leg(1, 1.0)
        out.append(("line", [P(sx, 0.81), P(sx + 0.01 * d, 0.87)], 0.045 * h, c(look.skin)))
        out.append(("ellipse", P(sx, 0.925), (0.058 * h, 0.066 * h), c(look.hair)))
        out.append(("ellipse", P(sx + 0.014 * d, 0.915), (0.045 * h, 0.056 * h), c(look.skin)))
        if look.hat is not None:
            out.append(("ellipse", P(sx, 0.965), (0.06 * h, 0.035 * h), c(look.hat)))
            out.append(("line", [P(sx - 0.05 * d, 0.95), P(sx + 0.1 * d, 0.95)], max(1.0, 0.015 * h), c(look.hat)))
        arm(1, 1.0)
        if look.bag is not None and look.bag_kind == "handbag":
            a = -0.7 * amp * math.sin(phase + math.pi)
            hx = sx + d * (0.16 * math.sin(a) + 0.15 * math.sin(a + 0.35))
            out.append(("poly", _rect(*P(hx - 0.05, 0.47), *P(hx + 0.05, 0.36)), c(look.bag)))
        return out

    # front / back
    bw = look.build
    back = view == "back"
    swing = 0.03 if walking else 0.0
    spread = 0.06 + 0.03 * ((pose % 3) / 2.0)
    for sgn in (-1.0, 1.0):
        s = math.sin(phase + (math.pi if sgn > 0 else 0.0))
        lift = 0.06 * max(0.0, s) if walking else 0.0
        hip = P(sgn * 0.05 * bw, 0.50)
        knee = P(sgn * 0.055 * bw, 0.27 + lift)
        ankle = P(sgn * spread * bw, 0.04 + 1.3 * lift)
        out.append(("line", [hip, knee, ankle], t_leg, c(look.bottom)))
        out.append(("ellipse", P(sgn * (spread + 0.005) * bw, 0.025 + 1.3 * lift), (0.035 * h, 0.02 * h), c(look.shoes)))
    torso = [P(-0.115 * bw, 0.825), P(0.115 * bw, 0.825), P(0.095 * bw, 0.62), P(0.09 * bw, 0.48),
             P(-0.09 * bw, 0.48), P(-0.095 * bw, 0.62)]
    if look.bag is not None and look.bag_kind == "backpack" and not back:
        out.append(("line", [P(-0.09 * bw, 0.8), P(-0.08 * bw, 0.6)], max(1.0, 0.02 * h), c(look.bag)))
        out.append(("line", [P(0.09 * bw, 0.8), P(0.08 * bw, 0.6)], max(1.0, 0.02 * h), c(look.bag)))
    out.append(("poly", torso, c(look.top)))
    out.append(("poly", [P(-0.09 * bw, 0.53), P(0.09 * bw, 0.53), P(0.09 * bw, 0.45), P(-0.09 * bw, 0.45)], c(look.bottom)))
    if look.bag is not None and look.bag_kind == "backpack" and back:
        out.append(("poly", _rect(*P(-0.085 * bw, 0.78), *P(0.085 * bw, 0.55)), c(look.bag)))
    for sgn in (-1.0, 1.0):
        s = abs(math.sin(phase + (math.pi if sgn > 0 else 0.0)))
        sh = P(sgn * 0.105 * bw, 0.80)
        if not walking and pose == 1:  # hands on hips
            elbow, hand = P(sgn * 0.19 * bw, 0.64), P(sgn * 0.1 * bw, 0.53)
        elif not walking and pose == 2 and sgn > 0:  # looking at a phone
            elbow, hand = P(sgn * 0.13 * bw, 0.62), P(sgn * 0.04 * bw, 0.74)
        else:
            elbow = P(sgn * 0.135 * bw, 0.635 + swing * s)
            hand = P(sgn * 0.145 * bw, 0.475 + 1.6 * swing * s)
        out.append(("line", [sh, elbow, hand], t_arm, c(look.top)))
        out.append(("circle", hand, t_arm * 0.6, c(look.skin)))
    out.append(("line", [P(0.0, 0.80), P(0.0, 0.87)], 0.045 * h, c(look.skin)))
    if back:
        out.append(("ellipse", P(0.0, 0.925), (0.058 * h, 0.068 * h), c(look.hair)))
    else:
        out.append(("ellipse", P(0.0, 0.935), (0.06 * h, 0.062 * h), c(look.hair)))
        out.append(("ellipse", P(0.0, 0.915), (0.048 * h, 0.058 * h), c(look.skin)))
    if look.hat is not None:
        out.append(("ellipse", P(0.0, 0.965), (0.062 * h, 0.035 * h), c(look.hat)))
        out.append(("line", [P(-0.08, 0.95), P(0.08, 0.95)], max(1.0, 0.015 * h), c(look.hat)))
    if look.bag is not None and look.bag_kind == "handbag":
        out.append(("line", [P(-0.1 * bw, 0.81), P(0.14 * bw, 0.58)], max(1.0, 0.015 * h), c(look.bag, 0.8)))
        out.append(("poly", _rect(*P(0.12 * bw, 0.6), *P(0.21 * bw, 0.47)), c(look.bag)))
    return out


# ------------------------------------------------------------------------------------------
# vehicles
# ------------------------------------------------------------------------------------------


@dataclass
class _CarLook:
    body: Colour
    width: float  # metres
    height: float
    length: float
    glass: Colour


def _random_car(rng: np.random.Generator) -> _CarLook:
    if rng.random() < 0.45:  # white, silver, grey, black are the common car colours
        body = _shade((1, 1, 1), float(rng.choice([235, 190, 140, 90, 35])))
    else:
        body = _hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.35, 0.9))
    tall = rng.random() < 0.3  # SUVs and vans
    return _CarLook(
        body=body,
        width=float(rng.uniform(1.7, 1.95)),
        height=float(rng.uniform(1.6, 1.95) if tall else rng.uniform(1.35, 1.55)),
        length=float(rng.uniform(4.4, 5.0) if tall else rng.uniform(3.9, 4.7)),
        glass=_hsv(rng.uniform(0.55, 0.65), rng.uniform(0.1, 0.4), rng.uniform(0.15, 0.4)),
    )


def _car_prims(xc: float, yb: float, s: float, view: str, look: _CarLook, light: float) -> list[Prim]:
    """A car standing on the ground row ``yb`` centred on ``xc``; ``s`` pixels per metre."""
    body, glass = _shade(look.body, light), _shade(look.glass, light)
    dark = _shade((28, 28, 30), light)
    hgt = look.height * s
    out: list[Prim] = []
    if view in ("front", "back"):
        w = look.width * s
        for sgn in (-1.0, 1.0):  # tyres under the body
            out.append(("poly", _rect(xc + sgn * 0.44 * w, yb - 0.36 * s, xc + sgn * 0.27 * w, yb), dark))
        out.append(("poly", _rect(xc - 0.5 * w, yb - 0.55 * hgt, xc + 0.5 * w, yb - 0.2 * s), body))
        cab = [(xc - 0.46 * w, yb - 0.55 * hgt), (xc + 0.46 * w, yb - 0.55 * hgt), (xc + 0.36 * w, yb - hgt), (xc - 0.36 * w, yb - hgt)]
        out.append(("poly", cab, body))
        win = [(xc - 0.41 * w, yb - 0.59 * hgt), (xc + 0.41 * w, yb - 0.59 * hgt), (xc + 0.33 * w, yb - 0.94 * hgt),
               (xc - 0.33 * w, yb - 0.94 * hgt)]
        out.append(("poly", win, glass))
        out.append(("poly", _rect(xc - 0.5 * w, yb - 0.3 * s, xc + 0.5 * w, yb - 0.2 * s), _shade(look.body, 0.6 * light)))
        lamp = (210, 30, 30) if view == "back" else (250, 245, 215)
        for sgn in (-1.0, 1.0):
            out.append(("poly", _rect(xc + sgn * 0.47 * w, yb - 0.5 * hgt, xc + sgn * 0.3 * w, yb - 0.41 * hgt), _shade(lamp, max(light, 0.8))))
            out.append(("poly", _rect(xc + sgn * 0.5 * w, yb - 0.62 * hgt, xc + sgn * 0.57 * w, yb - 0.55 * hgt), body))  # mirrors
        out.append(("poly", _rect(xc - 0.14 * w, yb - 0.36 * hgt, xc + 0.14 * w, yb - 0.27 * hgt), _shade((235, 235, 225), light)))
        if view == "front":
            out.append(("poly", _rect(xc - 0.22 * w, yb - 0.46 * hgt, xc + 0.22 * w, yb - 0.38 * hgt), dark))
        return out
    d = 1.0 if view == "right" else -1.0
    L = look.length * s
    rw = 0.33 * s
    base = yb - 0.52 * hgt
    lower = [(xc - 0.5 * L, yb - 0.2 * s), (xc + 0.5 * L, yb - 0.2 * s), (xc + 0.5 * L, base + 0.1 * hgt),
             (xc + 0.47 * L, base), (xc - 0.47 * L, base), (xc - 0.5 * L, base + 0.1 * hgt)]
    out.append(("poly", lower, body))
    cab = [(xc - 0.36 * L * d, base), (xc + 0.2 * L * d, base), (xc + 0.06 * L * d, yb - hgt), (xc - 0.27 * L * d, yb - hgt)]
    out.append(("poly", cab, body))
    i0 = [(xc - 0.33 * L * d, base - 0.04 * hgt), (xc - 0.1 * L * d, base - 0.04 * hgt), (xc - 0.1 * L * d, yb - 0.94 * hgt),
          (xc - 0.26 * L * d, yb - 0.94 * hgt)]
    i1 = [(xc - 0.07 * L * d, base - 0.04 * hgt), (xc + 0.16 * L * d, base - 0.04 * hgt), (xc + 0.05 * L * d, yb - 0.94 * hgt),
          (xc - 0.07 * L * d, yb - 0.94 * hgt)]
    out += [("poly", i0, glass), ("poly", i1, glass)]
    for sgn in (-1.0, 1.0):
        cx = xc + sgn * 0.31 * L
        out.append(("circle", (cx, yb - rw), rw * 1.12, _shade(look.body, 0.35 * light)))
        out.append(("circle", (cx, yb - rw), rw, dark))
        out.append(("circle", (cx, yb - rw), rw * 0.55, _shade((150, 150, 155), light)))
    out.append(("poly", _rect(xc + d * 0.49 * L, base + 0.05 * hgt, xc + d * 0.44 * L, base + 0.15 * hgt), _shade((250, 240, 200), max(light, 0.8))))
    out.append(("poly", _rect(xc - d * 0.5 * L, base + 0.05 * hgt, xc - d * 0.46 * L, base + 0.15 * hgt), _shade((200, 30, 30), max(light, 0.8))))
    return out


#: Direction of the light that shades the faces of perspective cars (up, to the right, ahead).
_SUN = np.array([0.45, 0.8, 0.4]) / np.linalg.norm([0.45, 0.8, 0.4])
#: Heading (radians, 0 = away from the camera along +Z) of each flat view's car.
_VIEW_YAW = {"back": 0.0, "front": math.pi, "right": math.pi / 2, "left": -math.pi / 2}


#: The six faces of a hexahedron whose 8 corners are the bottom ring, then the top ring, each
#: ordered rear-left, rear-right, front-right, front-left: name and corner indices.
_FACES = (("bottom", (3, 2, 1, 0)), ("top", (4, 5, 6, 7)), ("rear", (0, 1, 5, 4)), ("front", (2, 3, 7, 6)),
          ("left", (3, 0, 4, 7)), ("right", (1, 2, 6, 5)))
_FACE_INDEX = np.array([f for _, f in _FACES])


def _car3d_prims(cam: _Camera, X: float, Z: float, yaw: float, look: _CarLook, light: float) -> list[Prim]:
    """A car as a 3-D body standing on the ground at ``(X, Z)`` (metres, its centre), heading
    ``yaw``, seen through ``cam``: the faces that look towards the camera, shaded by their angle
    to the light, with windows, wheels, lamps and a number plate.

    A car beside the camera's lane shows its rear (or front) and its side, as on a real road, and
    its drawn extent is the projection of the whole body, so an amodal box fits it exactly.
    Empty when part of the car is beside or behind the camera (it is then left out)."""
    fwd = np.array([math.sin(yaw), 0.0, math.cos(yaw)])
    right = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
    centre = np.array([X, 0.0, Z])
    eye = np.array([0.0, cam.cam_h, 0.0])
    L, W, H = look.length, look.width, look.height
    tall = H > 1.58
    sill, belt = 0.2 * min(1.0, H / 1.45), 0.55 * H if tall else 0.62 * H

    def at(a: Any, b: Any, y: Any) -> np.ndarray:
        """Points ``a`` lengths ahead of the centre, ``b`` widths to the right, ``y`` metres up."""
        a, b, y = (np.asarray(v, dtype=np.float64)[..., None] for v in (a, b, y))
        return centre + a * L * fwd + b * W * right + y * np.array([0.0, 1.0, 0.0])

    def solid(a: tuple[float, float], b: float, ta: tuple[float, float], tb: float, y0: float, y1: float) -> np.ndarray:
        return at([a[0], a[0], a[1], a[1], ta[0], ta[0], ta[1], ta[1]], [-b, b, b, -b, -tb, tb, tb, -tb],
                  [y0] * 4 + [y1] * 4)

    def project(pts: np.ndarray) -> np.ndarray:
        return np.stack([cam.vx + cam.f * pts[:, 0] / pts[:, 2], cam.horizon + cam.f * (cam.cam_h - pts[:, 1]) / pts[:, 2]], axis=1)

    def faces(corners: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """(name, 3-D corners, projected corners, unit outward normal) of the faces the camera sees."""
        f = corners[_FACE_INDEX]  # 6 x 4 x 3
        n = np.cross(f[:, 1] - f[:, 0], f[:, 2] - f[:, 0])
        mid = f.mean(axis=1)
        n *= np.sign(np.einsum("ij,ij->i", n, mid - corners.mean(axis=0)))[:, None]
        seen = np.einsum("ij,ij->i", n, eye - mid) > 1e-9
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
        q = project(corners)[_FACE_INDEX]
        return [(_FACES[k][0], f[k], q[k], n[k]) for k in np.flatnonzero(seen)]

    def shade(colour: Colour, n: np.ndarray) -> Colour:
        return _shade(colour, light * (0.55 + 0.5 * max(0.0, float(n @ _SUN))))

    under = solid((-0.46, 0.46), 0.46, (-0.46, 0.46), 0.46, 0.04, sill + 0.02)
    body = solid((-0.5, 0.5), 0.5, (-0.48, 0.47), 0.48, sill, belt)
    cab_a, cab_ta = ((-0.46, 0.3), (-0.44, 0.12)) if tall else ((-0.36, 0.22), (-0.25, 0.06))
    cabin = solid(cab_a, 0.46, cab_ta, 0.39, belt, H)
    if min(body[:, 2].min(), cabin[:, 2].min()) < 0.5:  # (partly) beside or behind the camera
        return []
    dark, rim = _shade((28, 28, 30), light), _shade((150, 150, 155), light)
    out: list[Prim] = [("poly", q, dark) for _, _, q, _ in faces(under)]
    seen: set[str] = set()
    for name, _, q, n in faces(body):
        out.append(("poly", q, shade(look.body, n)))
        seen.add(name)
    ang = np.linspace(0, 2 * math.pi, 14, endpoint=False)
    for side in seen & {"left", "right"}:  # wheels on a side the camera sees
        bb = 0.505 if side == "right" else -0.505
        for a in (-0.31, 0.31):
            for rad, col in ((0.34, dark), (0.19, rim)):
                out.append(("poly", project(at(a + rad * np.cos(ang) / L, bb, 0.33 + rad * np.sin(ang))), col))

    def quad(a: float, b0: float, b1: float, y0: float, y1: float) -> np.ndarray:
        return project(at(a, [b0, b1, b1, b0], [y0, y0, y1, y1]))

    for end, lamp in (("rear", (210, 30, 30)), ("front", (250, 245, 215))):
        if end not in seen:
            continue
        a = -0.505 if end == "rear" else 0.505
        lamp_col = _shade(lamp, max(light, 0.8))
        out += [("poly", quad(a, b0, b1, belt - 0.2, belt - 0.07), lamp_col) for b0, b1 in ((-0.48, -0.3), (0.3, 0.48))]
        out.append(("poly", quad(a, -0.13, 0.13, sill + 0.1, sill + 0.22), _shade((235, 235, 225), light)))
        if end == "front":
            out.append(("poly", quad(a, -0.24, 0.24, belt - 0.2, belt - 0.09), dark))
    for name, f, q, n in faces(cabin):
        out.append(("poly", q, shade(look.body, n)))
        if name not in ("top", "bottom"):  # windows: the face shrunk towards its centre
            c = q.mean(axis=0)
            out.append(("poly", c + (q - c) * 0.86, shade(look.glass, n)))
    return out


def _parked_rows(rng: np.random.Generator, p: float, road: dict[str, float], depth_far: float) -> list[_Actor]:
    """Rows of cars parked nose to tail along the kerbs (right kerb with chance ``p``, left with
    0.7 ``p``): mostly facing the way the camera drives, with gaps, so they hide each other."""
    actors: list[_Actor] = []
    for side, chance in (("r", p), ("l", 0.7 * p)):
        if rng.random() >= chance:
            continue
        kerb = road["right"] - 1.05 if side == "r" else road["left"] + 1.05
        Z = float(rng.uniform(3.0, 14.0))
        for i in range(int(rng.integers(2, 9))):
            look = _random_car(rng)
            view = "back" if rng.random() < 0.75 else "front"
            actors.append(_Actor("car", float(kerb + rng.uniform(-0.2, 0.2)), Z, 0.0, 0.0, view,
                                 float(rng.normal(0.0, 0.05)), False, 1.0, look, 1, f"k{side}{i}"))
            gap = float(rng.uniform(0.4, 2.0)) + (float(rng.uniform(4.0, 10.0)) if rng.random() < 0.15 else 0.0)
            Z += look.length + gap
            if Z > depth_far:
                break
    return actors


def _two_link(a: np.ndarray, b: np.ndarray, l1: float, l2: float, bend: float) -> np.ndarray:
    """Knee/elbow position for a two-segment limb from ``a`` to ``b``, bending to side ``bend``."""
    v = b - a
    dist = float(np.hypot(*v))
    dist = min(max(dist, 1e-6), l1 + l2 - 1e-6)
    along = (l1 * l1 - l2 * l2 + dist * dist) / (2 * dist)
    across = math.sqrt(max(l1 * l1 - along * along, 0.0))
    u = v / max(float(np.hypot(*v)), 1e-6)
    n = np.array([-u[1], u[0]]) * bend
    return a + u * along + n * across


def _cyclist_prims(xc: float, yb: float, s: float, view: str, look: _Look, frame_col: Colour, phase: float,
                   light: float) -> list[Prim]:
    """A rider on a bicycle standing on the ground row ``yb``; ``s`` pixels per metre."""
    fc, tyre = _shade(frame_col, light), _shade((25, 25, 25), light)
    top, bottom, skin = _shade(look.top, light), _shade(look.bottom, light), _shade(look.skin, light)
    t_frame = max(1.0, 0.045 * s)
    out: list[Prim] = []
    if view in ("left", "right"):
        d = 1.0 if view == "right" else -1.0
        rw = 0.34 * s

        def Q(dx: float, up: float) -> np.ndarray:
            return np.array([xc + d * dx * s, yb - up * s])

        rear, front = Q(-0.52, 0.34), Q(0.52, 0.34)
        bb, seat, head_t = Q(-0.05, 0.3), Q(-0.2, 0.95), Q(0.38, 0.95)
        bar = Q(0.32, 1.08)
        for wc in (rear, front):
            out.append(("circle", tuple(wc), rw, tyre))
            out.append(("circle", tuple(wc), max(rw - max(1.2, 0.05 * s), 0.5), _shade((200, 200, 200), 0.55 * light)))
            out.append(("circle", tuple(wc), max(0.05 * s, 0.7), fc))
        crank = 0.17 * s
        far_p = bb + crank * np.array([math.cos(phase + math.pi), math.sin(phase + math.pi)])
        near_p = bb + crank * np.array([math.cos(phase), math.sin(phase)])
        hip = Q(-0.2, 1.0)
        shoulder = Q(0.14, 1.5)
        lt = max(2.0, 0.12 * s)
        knee = _two_link(hip, far_p, 0.47 * s, 0.45 * s, -d)
        out.append(("line", [tuple(hip), tuple(knee), tuple(far_p)], lt, _shade(look.bottom, 0.75 * light)))
        for a_, b_ in ((rear, bb), (bb, seat), (seat, rear), (seat, head_t), (bb, head_t), (head_t, front), (head_t, bar)):
            out.append(("line", [tuple(a_), tuple(b_)], t_frame, fc))
        out.append(("line", [tuple(Q(-0.27, 0.98)), tuple(Q(-0.12, 0.98))], max(1.0, 0.06 * s), tyre))  # saddle
        out.append(("line", [tuple(hip), tuple(shoulder)], max(2.0, 0.24 * s), top))
        knee = _two_link(hip, near_p, 0.47 * s, 0.45 * s, -d)
        out.append(("line", [tuple(hip), tuple(knee), tuple(near_p)], lt, bottom))
        elbow = _two_link(shoulder, bar, 0.3 * s, 0.3 * s, d)
        out.append(("line", [tuple(shoulder), tuple(elbow), tuple(bar)], max(1.5, 0.09 * s), top))
        headc = Q(0.24, 1.68)
        out.append(("line", [tuple(shoulder), tuple(headc)], max(1.0, 0.07 * s), skin))
        out.append(("circle", tuple(headc), 0.12 * s, skin))
        out.append(("ellipse", tuple(headc + np.array([-d * 0.01 * s, -0.05 * s])), (0.13 * s, 0.08 * s),
                    _shade(look.hat or look.hair, light)))
        return out
    # seen from behind or from the front: the wheels line up into one narrow dark strip
    out.append(("poly", _rect(xc - max(0.035 * s, 0.8), yb - 0.68 * s, xc + max(0.035 * s, 0.8), yb), tyre))
    crank = 0.17 * math.sin(phase)
    for sgn in (-1.0, 1.0):
        hip = np.array([xc + sgn * 0.09 * s, yb - 1.0 * s])
        pedal = np.array([xc + sgn * 0.17 * s, yb - (0.3 + sgn * crank) * s])
        knee = hip + np.array([sgn * 0.05 * s, 0.42 * s * (1 - 0.5 * max(0.0, sgn * crank))])
        out.append(("line", [tuple(hip), tuple(knee), tuple(pedal)], max(2.0, 0.11 * s), bottom))
    out.append(("poly", [(xc - 0.2 * s, yb - 1.48 * s), (xc + 0.2 * s, yb - 1.48 * s), (xc + 0.14 * s, yb - 0.96 * s),
                         (xc - 0.14 * s, yb - 0.96 * s)], top))
    out.append(("line", [(xc - 0.28 * s, yb - 1.02 * s), (xc + 0.28 * s, yb - 1.02 * s)], t_frame, fc))
    for sgn in (-1.0, 1.0):
        out.append(("line", [(xc + sgn * 0.19 * s, yb - 1.44 * s), (xc + sgn * 0.27 * s, yb - 1.22 * s),
                             (xc + sgn * 0.27 * s, yb - 1.03 * s)], max(1.5, 0.08 * s), top))
    out.append(("circle", (xc, yb - 1.62 * s), 0.12 * s, _shade(look.hair if view == "back" else look.skin, light)))
    if look.hat is not None:
        out.append(("ellipse", (xc, yb - 1.71 * s), (0.13 * s, 0.07 * s), _shade(look.hat, light)))
    return out


# ------------------------------------------------------------------------------------------
# distractors (never boxed; they occlude)
# ------------------------------------------------------------------------------------------


def _distractor(rng: np.random.Generator, kind: str, xb: float, yb: float, s: float, light: float) -> list[Prim]:
    """A non-person, non-target object standing on (xb, yb); ``s`` pixels per metre."""
    grey = _shade((1, 1, 1), rng.uniform(50, 150) * light)
    if kind == "pole":
        w, h = max(1.5, 0.12 * s), rng.uniform(3.0, 6.0) * s
        out = [("poly", _rect(xb - w / 2, yb - h, xb + w / 2, yb), grey)]
        if rng.random() < 0.5:  # street light: an arm and a lamp head
            d = 1.0 if rng.random() < 0.5 else -1.0
            out.append(("line", [(xb, yb - h), (xb + d * 0.9 * s, yb - h - 0.2 * s)], max(1.0, 0.08 * s), grey))
            out.append(("ellipse", (xb + d * 0.9 * s, yb - h - 0.15 * s), (0.3 * s, 0.09 * s), _shade((230, 230, 200), max(light, 0.5))))
        return out
    if kind == "sign":
        w, h = max(1.2, 0.08 * s), rng.uniform(2.0, 2.8) * s
        out = [("poly", _rect(xb - w / 2, yb - h, xb + w / 2, yb), grey)]
        col = _shade([(200, 30, 30), (30, 80, 190), (240, 200, 30), (30, 140, 60)][int(rng.integers(4))], light)
        r = rng.uniform(0.3, 0.45) * s
        shape = int(rng.integers(3))
        if shape == 0:
            out.append(("circle", (xb, yb - h), r, col))
            out.append(("circle", (xb, yb - h), r * 0.7, _shade((240, 240, 240), light)))
        elif shape == 1:
            out.append(("poly", [(xb - r, yb - h + 0.6 * r), (xb + r, yb - h + 0.6 * r), (xb, yb - h - 1.1 * r)], col))
        else:
            out.append(("poly", _rect(xb - 1.3 * r, yb - h - r, xb + 1.3 * r, yb - h + 0.7 * r), col))
        return out
    if kind == "bin":
        w, h = rng.uniform(0.45, 0.7) * s, rng.uniform(0.8, 1.1) * s
        col = _hsv(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.6))
        return [("poly", _rect(xb - w / 2, yb - h, xb + w / 2, yb), _shade(col, light)),
                ("poly", _rect(xb - 0.55 * w, yb - h - 0.08 * s, xb + 0.55 * w, yb - h + 0.04 * s), _shade(col, 0.7 * light))]
    if kind == "bollard":
        w, h = max(1.5, 0.2 * s), rng.uniform(0.7, 1.0) * s
        return [("poly", _rect(xb - w / 2, yb - h, xb + w / 2, yb), grey),
                ("poly", _rect(xb - w / 2, yb - 0.85 * h, xb + w / 2, yb - 0.75 * h), _shade((230, 230, 230), light))]
    if kind == "tree":
        h = rng.uniform(3.5, 7.0) * s
        tw = max(1.5, rng.uniform(0.2, 0.4) * s)
        trunk = _shade((90 + rng.uniform(-20, 20), 65, 40), light)
        out = [("poly", _rect(xb - tw / 2, yb - 0.6 * h, xb + tw / 2, yb), trunk)]
        hue = rng.uniform(0.2, 0.38)
        for _ in range(int(rng.integers(4, 8))):
            r = rng.uniform(0.18, 0.3) * h
            cx, cy = xb + rng.uniform(-0.25, 0.25) * h, yb - h + r + rng.uniform(0, 0.35) * h
            out.append(("circle", (cx, cy), r, _hsv(hue + rng.uniform(-0.03, 0.03), rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.55) * light)))
        return out
    if kind == "hydrant":
        w, h = 0.3 * s, 0.75 * s
        red = _shade((190, 30, 25), light)
        return [("poly", _rect(xb - w / 2, yb - h, xb + w / 2, yb), red), ("circle", (xb, yb - h), w / 2, red),
                ("poly", _rect(xb - 0.8 * w, yb - 0.6 * h, xb + 0.8 * w, yb - 0.45 * h), red)]
    raise ValueError(f"unknown distractor {kind!r}")  # pragma: no cover


# ------------------------------------------------------------------------------------------
# backgrounds
# ------------------------------------------------------------------------------------------


def _sky(img: np.ndarray, rng: np.random.Generator, night: bool) -> None:
    H = img.shape[0]
    if night:
        top, bottom = np.array([8, 10, 30.0]), np.array([30, 35, 60.0])
    elif rng.random() < 0.35:  # overcast
        v = rng.uniform(160, 220)
        top, bottom = np.array([v, v, v + 8]), np.array([v + 20, v + 20, v + 22])
    else:
        top = np.array([60, 110, 200.0]) + rng.uniform(-25, 25, 3)
        bottom = np.array([180, 205, 235.0]) + rng.uniform(-15, 15, 3)
    t = np.linspace(0, 1, H)[:, None, None]
    img[:] = np.clip(top * (1 - t) + bottom * t, 0, 255)


def _low_freq(rng: np.random.Generator, h: int, w: int, amp: float) -> np.ndarray:
    """Smooth multiplicative shading (1 +- amp): uneven light, dirt, weathering."""
    small = rng.normal(0.0, 1.0, (max(2, h // 24), max(2, w // 24))).astype(np.float32)
    return 1.0 + amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]


def _facade_windows(rng: np.random.Generator, quad_fn: Any, nx: int, ny: int, glass: Colour, night: bool,
                    lit: list[Prim]) -> list[Prim]:
    """Window grid on a facade; ``quad_fn(u0, v0, u1, v1)`` maps facade fractions to an image quad."""
    out: list[Prim] = []
    for i in range(nx):
        for j in range(ny):
            u0, u1 = (i + 0.25) / nx, (i + 0.75) / nx
            v0, v1 = (j + 0.3) / ny, (j + 0.75) / ny
            q = quad_fn(u0, v0, u1, v1)
            if night and rng.random() < 0.35:
                lit.append(("poly", q, _hsv(rng.uniform(0.1, 0.15), rng.uniform(0.3, 0.6), rng.uniform(0.75, 1.0))))
            else:
                out.append(("poly", q, _shade(glass, rng.uniform(0.7, 1.2))))
    return out


def _street_background(rng: np.random.Generator, cam: _Camera, night: bool) -> tuple[np.ndarray, list[Prim], float]:
    """Sky, frontal and receding facades with window grids, paved ground with perspective tiling.

    Returns:
        The RGB image (uint8), emissive primitives drawn after darkening (lit windows) and the
        depth (metres) of the facade base line.
    """
    W, H = cam.width, cam.height
    img = np.zeros((H, W, 3), dtype=np.float64)
    _sky(img, rng, night)
    lit: list[Prim] = []
    prims: list[Prim] = []
    zb = float(rng.uniform(18.0, 45.0))
    yb = cam.ground_row(zb)
    sb = cam.f / zb
    hue = rng.random()
    palette = [_hsv(hue + rng.uniform(-0.08, 0.08), rng.uniform(0.05, 0.45), rng.uniform(0.35, 0.9)) for _ in range(4)]
    glass = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.1, 0.4), rng.uniform(0.15, 0.45))
    x = -rng.uniform(0, 30) * sb
    while x < W:
        bw = rng.uniform(7.0, 20.0) * sb
        if rng.random() > 0.12:  # sometimes a gap shows the sky
            bh = rng.uniform(8.0, 35.0) * sb
            col = palette[int(rng.integers(len(palette)))]
            prims.append(("poly", _rect(x, yb - bh, x + bw, yb), col))
            floors = max(1, int(bh / (3.2 * sb)))
            cols = max(1, int(bw / (2.8 * sb)))

            def quad(u0: float, v0: float, u1: float, v1: float, x=x, bw=bw, bh=bh) -> np.ndarray:
                return _rect(x + u0 * bw, yb - bh + v0 * (bh - 3.2 * sb), x + u1 * bw, yb - bh + v1 * (bh - 3.2 * sb))

            prims += _facade_windows(rng, quad, cols, floors - 1 if floors > 1 else 1, glass, night, lit)
            prims.append(("poly", _rect(x + 0.4 * bw, yb - 2.4 * sb, x + 0.4 * bw + 1.3 * sb, yb), _shade(col, 0.45)))
        x += bw
    for side in (-1.0, 1.0):  # receding facades along the street
        if rng.random() < 0.55:
            X = side * rng.uniform(6.0, 14.0)
            Hs = rng.uniform(9.0, 25.0)
            z0 = rng.uniform(2.5, 5.0)
            col = palette[int(rng.integers(len(palette)))]

            def pq(u0: float, v0: float, u1: float, v1: float, X=X, Hs=Hs, z0=z0) -> np.ndarray:
                # u runs along the street (near -> far), v runs down the facade
                za, zc = z0 + u0 * (zb - z0), z0 + u1 * (zb - z0)
                ya, yc = Hs * (1 - v0), Hs * (1 - v1)
                return np.array([cam.project(X, ya, za), cam.project(X, ya, zc), cam.project(X, yc, zc), cam.project(X, yc, za)])

            prims.append(("poly", pq(0, 0, 1, 1), _shade(col, 0.85)))
            prims += _facade_windows(rng, pq, max(2, int((zb - z0) / 3.0)), max(1, int(Hs / 3.2) - 1), glass, night, lit)
    ground = _hsv(rng.uniform(0.0, 0.12), rng.uniform(0.0, 0.35), rng.uniform(0.35, 0.7))
    prims.append(("poly", _rect(-2, yb, W + 2, H + 2), ground))
    line = _shade(ground, 0.75)
    tile = rng.uniform(1.0, 2.5)
    # transverse joints from near to far, stopping where they would crowd closer than 3 px
    z = 0.6
    while z < zb and cam.ground_row(z) - cam.ground_row(z + tile) >= 3.0:
        if cam.ground_row(z) < H + 2:
            prims.append(("line", [(-2, cam.ground_row(z)), (W + 2, cam.ground_row(z))], 1, line))
        z += tile
    # longitudinal joints converge on the vanishing point
    half = 1.2 * W * zb / cam.f
    for k in range(-int(half / tile) - 1, int(half / tile) + 2):
        X = k * tile
        prims.append(("line", [cam.project(X, 0, zb), cam.project(X, 0, 0.6)], 1, line))
    if rng.random() < 0.5:  # kerb and a strip of road across the view
        zk = rng.uniform(6.0, 14.0)
        prims.append(("poly", _rect(-2, cam.ground_row(zk + 6.0), W + 2, cam.ground_row(zk)), _shade((70, 70, 75), rng.uniform(0.8, 1.3))))
        prims.append(("line", [(-2, cam.ground_row(zk)), (W + 2, cam.ground_row(zk))], max(1.0, 0.15 * cam.f / zk), (175, 175, 170)))
    canvas = np.clip(img, 0, 255).astype(np.uint8)
    _draw(prims, [(canvas, None)])
    return canvas, lit, zb


def _road_background(rng: np.random.Generator, cam: _Camera, night: bool, road: dict[str, float]) -> tuple[np.ndarray, list[Prim]]:
    """Sky, treeline, verges, sidewalks, roadside facades, asphalt and lane markings in perspective."""
    W, H = cam.width, cam.height
    img = np.zeros((H, W, 3), dtype=np.float64)
    _sky(img, rng, night)
    canvas = np.clip(img, 0, 255).astype(np.uint8)
    lit: list[Prim] = []
    prims: list[Prim] = []
    # distant treeline / hills along the horizon
    n = 24
    xs = np.linspace(-5, W + 5, n)
    tops = cam.horizon - rng.uniform(0.0, 0.07, n) * H - (rng.random(n) < 0.3) * rng.uniform(0, 0.06, n) * H
    prims.append(("poly", list(zip(xs, tops, strict=True)) + [(W + 5, cam.horizon + 1), (-5, cam.horizon + 1)],
                  _hsv(rng.uniform(0.22, 0.4), rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.4))))
    verge = _hsv(rng.uniform(0.15, 0.3), rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.55))
    prims.append(("poly", _rect(-2, cam.horizon, W + 2, H + 2), verge))
    left, right, walk = road["left"], road["right"], road["walk"]
    zf, zn = 300.0, 0.8

    def ground_quad(x0: float, x1: float, z0: float, z1: float) -> list[tuple[float, float]]:
        return [cam.project(x0, 0, z1), cam.project(x1, 0, z1), cam.project(x1, 0, z0), cam.project(x0, 0, z0)]

    glass = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.1, 0.4), rng.uniform(0.15, 0.45))
    for side, edge in ((-1.0, left), (1.0, right)):
        X = edge + side * (walk + rng.uniform(2.0, 8.0))
        z = rng.uniform(4.0, 10.0)
        while z < 120:
            length = rng.uniform(8.0, 25.0)
            if rng.random() < 0.7:
                Hs = rng.uniform(5.0, 18.0)
                col = _hsv(rng.random(), rng.uniform(0.05, 0.4), rng.uniform(0.35, 0.85))

                def pq(u0: float, v0: float, u1: float, v1: float, X=X, Hs=Hs, z=z, length=length) -> np.ndarray:
                    za, zc = z + u0 * length, z + u1 * length
                    ya, yc = Hs * (1 - v0), Hs * (1 - v1)
                    return np.array([cam.project(X, ya, za), cam.project(X, ya, zc), cam.project(X, yc, zc), cam.project(X, yc, za)])

                prims.append(("poly", pq(0, 0, 1, 1), col))
                prims += _facade_windows(rng, pq, max(1, int(length / 3.5)), max(1, int(Hs / 3.2) - 1), glass, night, lit)
            z += length + rng.uniform(0.0, 6.0)
    side_col = _shade((1, 1, 1), rng.uniform(120, 175))
    prims.append(("poly", ground_quad(left - walk, left, zn, zf), side_col))
    prims.append(("poly", ground_quad(right, right + walk, zn, zf), side_col))
    asphalt = _shade((1, 1, 1), rng.uniform(55, 100))
    prims.append(("poly", ground_quad(left, right, zn, zf), asphalt))
    white = (225, 225, 220)
    for X in (left + 0.15, right - 0.15):
        prims.append(("poly", ground_quad(X - 0.08, X + 0.08, zn, zf), white))
    lane = road["lane"]
    phase = rng.uniform(0, 9.0)
    k = 1
    while left + k * lane < right - 1.0:
        X = left + k * lane
        z = 1.0 + phase
        while z < 90:
            prims.append(("poly", ground_quad(X - 0.07, X + 0.07, z, z + 3.0), white))
            z += 9.0
        k += 1
    _draw(prims, [(canvas, None)])
    return canvas, lit


# ------------------------------------------------------------------------------------------
# sequences
# ------------------------------------------------------------------------------------------


def _seq_rng(seed: int, seq: int, sub: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(seq, sub)))


def _finish_background(rng: np.random.Generator, canvas: np.ndarray, lit: list[Prim], night: bool) -> np.ndarray:
    """Apply uneven lighting (and night darkening), then draw emissive things (lit windows, lamps)."""
    H, W = canvas.shape[:2]
    img = canvas.astype(np.float32) * _low_freq(rng, H, W, 0.08)
    gx = np.linspace(-1, 1, W, dtype=np.float32)[None, :, None]
    gy = np.linspace(-1, 1, H, dtype=np.float32)[:, None, None]
    img *= 1.0 + rng.uniform(-0.15, 0.15) * gx + rng.uniform(-0.1, 0.1) * gy
    if night:
        img *= rng.uniform(0.25, 0.45)
    out = np.clip(img, 0, 255).astype(np.uint8)
    _draw(lit, [(out, None)])
    if night:  # street-lamp glows
        glow = np.zeros((H, W), dtype=np.float32)
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        for _ in range(int(rng.integers(1, 4))):
            cx, cy, r = rng.uniform(0, W), rng.uniform(0, 0.5 * H), rng.uniform(0.1, 0.3) * W
            glow += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        out = np.clip(out.astype(np.float32) + 60.0 * glow[..., None] * np.array([1.0, 0.9, 0.6], dtype=np.float32), 0, 255).astype(np.uint8)
    return out


def _camera_finish(rng: np.random.Generator) -> tuple[float, float, np.ndarray]:
    """Per-sequence camera: sensor noise std, lens blur sigma, white-balance gains."""
    return float(rng.uniform(1.5, 6.0)), float(rng.uniform(0.4, 0.85)), rng.uniform(0.9, 1.1, 3)


# ------------------------------------------------------------------------------------------
# domain randomisation (spec.randomization > 0; drawn from separate generators only)
# ------------------------------------------------------------------------------------------


def _fx_rng(seed: int, seq: int, j: int) -> np.random.Generator:
    """Per-frame randomisation draws (a 3-word spawn key: never collides with ``_seq_rng``)."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(seq, 0xD0, j)))


def _widen(base: tuple[float, float], wide: tuple[float, float], r: float) -> tuple[float, float]:
    """The range ``base`` at r=0, ``wide`` at r=1, linear in between."""
    return base[0] + (wide[0] - base[0]) * r, base[1] + (wide[1] - base[1]) * r


def _texture(rng: np.random.Generator, h: int, w: int, amp: float) -> np.ndarray:
    """A multiplicative procedural texture HxWx1 (1 +- ~amp): grain, stripes and blotches mixed."""
    out = np.zeros((h, w), dtype=np.float32)
    weights = rng.dirichlet([1.0, 1.0, 1.0])
    fine = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w)).astype(np.float32), (0, 0), float(rng.uniform(0.5, 1.8)))
    out += weights[0] * fine / (float(fine.std()) + 1e-6)
    period = float(rng.uniform(3.0, max(4.0, 0.15 * max(h, w))))
    th = float(rng.uniform(0, np.pi))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    stripes = np.sin(2 * np.pi * (xx * math.cos(th) + yy * math.sin(th)) / period + float(rng.uniform(0, 2 * np.pi)))
    out += weights[1] * stripes.astype(np.float32) * 1.4
    cell = int(rng.integers(6, 48))
    small = rng.normal(0.0, 1.0, (max(2, h // cell), max(2, w // cell))).astype(np.float32)
    out += weights[2] * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return (1.0 + amp * out)[..., None]


def _random_camera(rng: np.random.Generator, r: float, W: int, H: int, street: bool,
                   person_hi: float) -> _Camera:
    """Wider camera height, pitch (horizon row) and focal length than the default data."""
    if street:
        horizon = rng.uniform(*_widen((0.28, 0.5), (0.18, 0.62), r)) * H
        lo = 0.8 - 0.25 * r
        hi = max(lo + 0.05, min(1.4 + 0.4 * r, (1.02 * H - horizon) / (0.45 * H * person_hi / 0.7)))
        return _Camera(W, H, f=float(rng.uniform(*_widen((0.7, 1.1), (0.5, 1.5), r)) * W), horizon=float(horizon),
                       vx=float(rng.uniform(*_widen((0.3, 0.7), (0.15, 0.85), r)) * W), cam_h=float(1.7 * rng.uniform(lo, hi)))
    return _Camera(W, H, f=float(rng.uniform(*_widen((0.55, 0.7), (0.42, 0.95), r)) * W),
                   horizon=float(rng.uniform(*_widen((0.36, 0.48), (0.25, 0.6), r)) * H),
                   vx=float(rng.uniform(*_widen((0.42, 0.58), (0.3, 0.7), r)) * W),
                   cam_h=float(rng.uniform(*_widen((1.5, 1.8), (1.2, 2.6), r))))


def _make_rand(rng: np.random.Generator, r: float, cam: _Camera, night: bool, person_h: tuple[float, float]) -> tuple[_Rand, float, float, np.ndarray]:
    """Lighting, haze, object textures and camera effects; also returns (noise, blur, cast)."""
    W, H = cam.width, cam.height
    dusk = (not night) and rng.random() < 0.3 * r
    exposure = float(np.exp(rng.uniform(-0.7 * r, 0.3 * r)))
    if night:  # already dark: do not push it into black
        exposure = max(exposure, 0.9)
    cast = rng.uniform(0.9 - 0.18 * r, 1.1 + 0.18 * r, 3)
    if dusk:  # low warm sun
        exposure *= float(rng.uniform(0.5, 0.85))
        cast = cast * np.array([rng.uniform(1.05, 1.25), rng.uniform(0.88, 1.0), rng.uniform(0.6, 0.85)])
    haze_w = None
    haze_col = np.array([180.0, 190.0, 200.0], dtype=np.float32)
    if rng.random() < 0.45 * r:  # haze / fog, thicker with depth (rows towards the horizon)
        v = rng.uniform(120, 220) * (0.35 if night else 1.0)
        haze_col = np.array([v, v + rng.uniform(0, 12), v + rng.uniform(5, 25)], dtype=np.float32)
        rows = np.arange(H, dtype=np.float64) + 0.5 - cam.horizon
        Z = np.where(rows > 0, cam.f * cam.cam_h / np.maximum(rows, 1e-3), 1e9)
        vis = rng.uniform(15.0, 150.0)
        w = rng.uniform(0.0, 0.25 * r) + rng.uniform(0.2, 0.75) * r * (1.0 - np.exp(-Z / vis))
        haze_w = np.clip(w, 0.0, 0.85).astype(np.float32)[:, None, None]
    obj_tex = _texture(rng, H, W, float(rng.uniform(0.0, 0.3 * r))) if rng.random() < 0.6 * r else None
    motion = (float(rng.uniform(0.004, 0.004 + 0.02 * r) * W), float(rng.uniform(0, np.pi))) if rng.random() < 0.35 * r else (0.0, 0.0)
    rand = _Rand(
        r=r, person_h=person_h, obj_tex=obj_tex, haze_w=haze_w, haze_col=haze_col, exposure=exposure,
        contrast=float(rng.uniform(1.0 - 0.45 * r, 1.0 + 0.35 * r)), gamma=float(np.exp(rng.uniform(-0.35 * r, 0.35 * r))),
        motion=motion, jpeg_p=0.6 * r, jpeg_q=(int(round(70 - 55 * r)), 95), gray=bool(rng.random() < 0.3 * r),
    )
    noise = float(rng.uniform(1.5 - 0.5 * r, 6.0 + 10.0 * r))
    blur = float(rng.uniform(0.4 - 0.4 * r, 0.85 + 1.35 * r))
    return rand, noise, blur, cast


def _textured_background(rng: np.random.Generator, r: float, background: np.ndarray) -> np.ndarray:
    """Procedural texture over the background (road, pavement, facades, sky) and a tint."""
    H, W = background.shape[:2]
    tex = _texture(rng, H, W, float(rng.uniform(0.03, 0.03 + 0.3 * r)))
    tint = rng.uniform(1.0 - 0.1 * r, 1.0 + 0.1 * r, 3).astype(np.float32)
    return np.clip(background.astype(np.float32) * tex * tint, 0, 255).astype(np.uint8)


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    n = max(3, int(math.ceil(length)) | 1)
    k = np.zeros((n, n), dtype=np.float32)
    c = (n - 1) / 2
    dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
    cv2.line(k, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1)
    return k / max(float(k.sum()), 1e-6)


def _finish_random(seq: _Sequence, img: np.ndarray, owner: np.ndarray, frame_rng: np.random.Generator,
                   fx: np.random.Generator) -> np.ndarray:
    """Camera and lighting with randomisation: pixels move, geometry (and so every box) does not."""
    R = seq.rand
    assert R is not None
    f = img.astype(np.float32)
    if R.obj_tex is not None:
        m = owner > 0
        f[m] *= R.obj_tex[m]
    if R.haze_w is not None:
        f = f * (1.0 - R.haze_w) + R.haze_w * R.haze_col
    exposure = R.exposure * float(np.exp(fx.normal(0.0, 0.08 * R.r)))
    f = np.clip(f / 255.0, 0.0, None) ** R.gamma
    f = ((f - 0.45) * R.contrast + 0.45) * exposure
    f = f * (255.0 * seq.cast.astype(np.float32))
    if seq.blur > 0.05:
        f = cv2.GaussianBlur(f, (0, 0), seq.blur)
    if R.motion[0] >= 1.5:
        length = R.motion[0] * float(fx.uniform(0.6, 1.2))
        f = cv2.filter2D(f, -1, _motion_kernel(length, R.motion[1]), borderType=cv2.BORDER_REFLECT)
    f = f + frame_rng.normal(0.0, seq.noise, f.shape).astype(np.float32)
    out = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    if fx.random() < R.jpeg_p:
        q = int(fx.integers(R.jpeg_q[0], R.jpeg_q[1] + 1))
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # channel order is kept (no BGR swap either way)
    if R.gray:
        g = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
        out = np.repeat(g[..., None], 3, axis=2)
    return out


def _extra_statics(rng: np.random.Generator, r: float, cam: _Camera, light: float, street: bool,
                   road: dict[str, float] | None, z_range: tuple[float, float]) -> list[_Item]:
    """More distractors / occluders (never boxed)."""
    kinds = ["pole", "sign", "bin", "bollard", "tree", "hydrant"] + (["car"] if street else [])
    out: list[_Item] = []
    for _ in range(int(rng.poisson(3.0 * r))):
        kind = kinds[int(rng.integers(len(kinds)))]
        Z = float(np.exp(rng.uniform(np.log(z_range[0]), np.log(z_range[1]))))
        if road is None:
            X = float(rng.uniform(-0.6, 0.6) * cam.width * Z / cam.f)
        else:
            X = float(rng.uniform(road["left"] - road["walk"] - 1.0, road["right"] + road["walk"] + 1.0))
        x, y = cam.project(X, 0, Z)
        out.append(_Item(Z, _static_prims(rng, kind, x, y, cam.f / Z, light)))
    return out


def _static_prims(rng: np.random.Generator, kind: str, x: float, y: float, s: float, light: float) -> list[Prim]:
    """A parked car (random view and look) or another distractor standing at (x, y), s px/m."""
    if kind == "car":
        return _car_prims(x, y, s, ["left", "right", "front", "back"][int(rng.integers(4))], _random_car(rng), light)
    return _distractor(rng, kind, x, y, s, light)


def _make_street_sequence(spec: SyntheticSpec, seq: int) -> _Sequence:
    rng = _seq_rng(spec.seed, seq, 0)
    r = spec.randomization
    rr = _seq_rng(spec.seed, seq, 0xD0) if r > 0 else None  # randomisation: never touches rng
    W, H = spec.frame_size
    night = bool(rng.random() < NIGHT_FRACTION)
    ph = STREET_PERSON_HEIGHT
    if rr is not None:
        night = bool(rr.random() < NIGHT_FRACTION + 0.1 * r)
        ph = _widen(STREET_PERSON_HEIGHT, (0.08, 0.85), r)
    # camera: the horizon row and camera height are chosen so the tallest people (0.7 H) still
    # stand close to the bottom edge instead of far below it
    horizon = rng.uniform(0.28, 0.5) * H
    ratio = rng.uniform(0.8, min(1.4, (1.02 * H - horizon) / (0.45 * H)))  # camera height / person height
    cam = _Camera(W, H, f=float(rng.uniform(0.7, 1.1) * W), horizon=float(horizon),
                  vx=float(rng.uniform(0.3, 0.7) * W), cam_h=float(1.7 * ratio))
    if rr is not None:
        cam = _random_camera(rr, r, W, H, True, ph[1])
    canvas, lit, zb = _street_background(rng, cam, night)
    background = _finish_background(rng, canvas, lit, night)
    if rr is not None:
        background = _textured_background(rr, r, background)
    light = float(rng.uniform(0.45, 0.65) if night else rng.uniform(0.85, 1.1))
    statics: list[_Item] = []
    z_near = cam.f * 1.7 / (ph[1] * H)  # depth of the biggest person
    z_far = cam.f * 1.7 / (ph[0] * H)
    kinds = ["pole", "pole", "sign", "bin", "bollard", "tree", "hydrant", "car"]
    for _ in range(int(rng.integers(2, 8))):
        kind = kinds[int(rng.integers(len(kinds)))]
        Z = float(np.exp(rng.uniform(np.log(max(z_near * 0.8, 0.8)), np.log(min(z_far * 1.3, zb - 1.0)))))
        X = float(rng.uniform(-0.6, 0.6) * W * Z / cam.f)
        x, y = cam.project(X, 0, Z)
        statics.append(_Item(Z, _static_prims(rng, kind, x, y, cam.f / Z, light)))
    actors = []
    for a in range(int(rng.integers(1, 7))):
        h_frac = float(np.exp(rng.uniform(*np.log(ph))))
        size = float(rng.uniform(1.55, 1.9))
        Z = cam.f * size / (h_frac * H)
        X = float(rng.uniform(-0.5, 0.5) * W * Z / cam.f)
        walking = bool(rng.random() < 0.7)
        heading = rng.integers(4)  # right, left, towards, away
        v = rng.uniform(0.4, 0.8) if walking else 0.0
        vX, vZ = [(v, 0.0), (-v, 0.0), (0.0, -v), (0.0, v)][int(heading)]
        view = ["right", "left", "front", "back"][int(heading)] if walking else ["front", "back", "left", "right", "front"][int(rng.integers(5))]
        actors.append(_Actor("person", X, Z, float(vX), float(vZ), view, float(rng.uniform(0, 2 * np.pi)), walking, size,
                             (_random_look(rng), int(rng.integers(3))), 1, f"a{a}"))
    noise, blur, cast = _camera_finish(rng)
    if rr is None:
        return _Sequence(cam, background, statics, actors, light, noise, blur, cast)
    statics += _extra_statics(rr, r, cam, light, True, None, (max(z_near * 0.7, 0.8), max(min(z_far * 1.3, zb - 1.0), 1.0)))
    rand, noise, blur, cast = _make_rand(rr, r, cam, night, ph)
    return _Sequence(cam, background, statics, actors, light, noise, blur, cast, rand)


def _road_layout(rng: np.random.Generator) -> dict[str, float]:
    lanes = int(rng.integers(2, 5))
    lane = float(rng.uniform(3.0, 3.7))
    ego = int(rng.integers(lanes // 2, lanes)) if lanes > 1 else 0  # drive in a right-hand lane
    left = -(ego + 0.5) * lane
    return {"lanes": lanes, "lane": lane, "left": left, "right": left + lanes * lane, "walk": float(rng.uniform(1.8, 3.5))}


def _road_depth(rng: np.random.Generator, rng_range: tuple[float, float], log: bool) -> float:
    """A depth in the range: uniform (default data) or, with randomisation, log-uniform (same draw)."""
    Z = float(rng.uniform(*rng_range))
    if not log:
        return Z
    lo, hi = rng_range
    return float(lo * (hi / lo) ** ((Z - lo) / (hi - lo)))


def _road_pedestrian(rng: np.random.Generator, road: dict[str, float], depth: tuple[float, float], log: bool,
                     key: str) -> _Actor:
    Z = _road_depth(rng, depth, log)
    if rng.random() < 0.3:  # crossing the road, seen from the side
        d = 1.0 if rng.random() < 0.5 else -1.0
        X = float(rng.uniform(road["left"], road["right"]))
        vX, vZ, view, walking = d * 0.7, 0.0, ("right" if d > 0 else "left"), True
    else:
        side = rng.random() < 0.5
        X = (road["left"] - rng.uniform(0.4, road["walk"])) if side else (road["right"] + rng.uniform(0.4, road["walk"]))
        walking = bool(rng.random() < 0.75)
        toward = rng.random() < 0.5
        vX, vZ = 0.0, ((-0.7 if toward else 0.7) if walking else 0.0)
        view = ("front" if toward else "back") if walking else ["front", "back", "left", "right"][int(rng.integers(4))]
    return _Actor("person", X, Z, vX, vZ, view, float(rng.uniform(0, 2 * np.pi)), walking,
                  float(rng.uniform(1.55, 1.9)), (_random_look(rng), int(rng.integers(3))), 2, key)


def _road_cyclist(rng: np.random.Generator, road: dict[str, float], depth: tuple[float, float], log: bool,
                  key: str) -> _Actor:
    Z = _road_depth(rng, depth, log)
    if rng.random() < 0.45:  # crossing
        d = 1.0 if rng.random() < 0.5 else -1.0
        X, vX, vZ, view = float(rng.uniform(road["left"], road["right"])), d * 1.5, 0.0, ("right" if d > 0 else "left")
    else:
        toward = rng.random() < 0.35
        X = (road["left"] + 0.8) if toward else (road["right"] - 0.8)
        vX, vZ, view = 0.0, (-1.5 if toward else float(rng.uniform(-0.5, 0.5))), ("front" if toward else "back")
    frame_col = _hsv(rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.9))
    return _Actor("cyclist", float(X), Z, float(vX), float(vZ), view, float(rng.uniform(0, 2 * np.pi)), True, 1.0,
                  (_random_look(rng), frame_col), 3, key)


#: Road scenes with randomisation r=1: depth ranges (metres), so that cars span ~0.04-0.5 of
#: the frame height and pedestrians ~0.06-0.6 (KITTI-like).
ROAD_DEPTH_WIDE = {"car": (4.0, 75.0), "pedestrian": (3.0, 50.0), "cyclist": (3.5, 50.0)}


def _make_road_sequence_base(spec: SyntheticSpec, seq: int) -> tuple[_Sequence, dict[str, float]]:
    rng = _seq_rng(spec.seed, seq, 0)
    r = spec.randomization
    rr = _seq_rng(spec.seed, seq, 0xD0) if r > 0 else None  # randomisation: never touches rng
    W, H = spec.frame_size
    night = bool(rng.random() < NIGHT_FRACTION)
    cam = _Camera(W, H, f=float(rng.uniform(0.55, 0.7) * W), horizon=float(rng.uniform(0.36, 0.48) * H),
                  vx=float(rng.uniform(0.42, 0.58) * W), cam_h=float(rng.uniform(1.5, 1.8)))
    depth = ROAD_DEPTH
    if rr is not None:
        night = bool(rr.random() < NIGHT_FRACTION + 0.1 * r)
        cam = _random_camera(rr, r, W, H, False, 1.0)
        depth = {k: _widen(ROAD_DEPTH[k], ROAD_DEPTH_WIDE[k], r) for k in ROAD_DEPTH}
    log = rr is not None
    road = _road_layout(rng)
    canvas, lit = _road_background(rng, cam, night, road)
    background = _finish_background(rng, canvas, lit, night)
    if rr is not None:
        background = _textured_background(rr, r, background)
    light = float(rng.uniform(0.45, 0.65) if night else rng.uniform(0.85, 1.1))
    statics: list[_Item] = []
    kinds = ["pole", "pole", "sign", "sign", "tree", "tree", "bin", "bollard"]
    for _ in range(int(rng.integers(3, 9))):
        kind = kinds[int(rng.integers(len(kinds)))]
        side = rng.random() < 0.5
        X = (road["left"] - rng.uniform(0.3, road["walk"] + 1.5)) if side else (road["right"] + rng.uniform(0.3, road["walk"] + 1.5))
        Z = float(rng.uniform(3.0, 45.0))
        x, y = cam.project(X, 0, Z)
        statics.append(_Item(Z, _distractor(rng, kind, x, y, cam.f / Z, light)))
    actors: list[_Actor] = []
    lanes = [road["left"] + (i + 0.5) * road["lane"] for i in range(int(road["lanes"]))]
    n_cars = int(rng.integers(1, 6))
    for a in range(n_cars):
        lane_x = lanes[int(rng.integers(len(lanes)))]
        Z = _road_depth(rng, depth["car"], log)
        crossing = rng.random() < 0.15
        if crossing:  # cross traffic at a junction, seen from the side
            d = 1.0 if rng.random() < 0.5 else -1.0
            actors.append(_Actor("car", float(rng.uniform(road["left"], road["right"])), Z, d * float(rng.uniform(0.8, 1.8)), 0.0,
                                 "right" if d > 0 else "left", 0.0, False, 1.0, _random_car(rng), 1, f"c{a}"))
            continue
        oncoming = lane_x < 0 and rng.random() < 0.6
        view = "front" if oncoming else "back"
        vZ = -float(rng.uniform(2.0, 4.0)) if oncoming else float(rng.uniform(-1.0, 1.0))
        if rng.random() < 0.2:  # parked along the kerb
            lane_x = road["right"] - 1.0 if rng.random() < 0.6 else road["left"] + 1.0
            vZ, view = 0.0, ("back" if rng.random() < 0.7 else "front")
        actors.append(_Actor("car", float(lane_x + rng.uniform(-0.3, 0.3)), Z, 0.0, vZ, view, 0.0, False, 1.0,
                             _random_car(rng), 1, f"c{a}"))
    for a in range(int(rng.integers(0, 4))):
        actors.append(_road_pedestrian(rng, road, depth["pedestrian"], log, f"p{a}"))
    for a in range(int(rng.integers(0, 3))):
        actors.append(_road_cyclist(rng, road, depth["cyclist"], log, f"b{a}"))
    noise, blur, cast = _camera_finish(rng)
    if rr is None:
        return _Sequence(cam, background, statics, actors, light, noise, blur, cast), road
    # class balance: fewer cars, more pedestrians and cyclists (r=1: roughly a third each)
    actors = [a for a in actors if a.kind != "car" or rr.random() >= ROAD_CAR_DROP * r]
    for a in range(int(rr.integers(0, 1 + round(ROAD_EXTRA_PEDESTRIANS * r)))):
        actors.append(_road_pedestrian(rr, road, depth["pedestrian"], log, f"p{100 + a}"))
    for a in range(int(rr.integers(0, 1 + round(ROAD_EXTRA_CYCLISTS * r)))):
        actors.append(_road_cyclist(rr, road, depth["cyclist"], log, f"b{100 + a}"))
    statics += _extra_statics(rr, r, cam, light, False, road, (2.5, 45.0))
    rand, noise, blur, cast = _make_rand(rr, r, cam, night, (0.12 - 0.07 * r, 0.9))
    return _Sequence(cam, background, statics, actors, light, noise, blur, cast, rand), road


def _make_road_sequence(spec: SyntheticSpec, seq: int) -> _Sequence:
    out, road = _make_road_sequence_base(spec, seq)
    out.perspective_cars = spec.car_model == "perspective"
    if spec.parked_rows > 0:  # its own generator: every other draw stays as without rows
        far = ROAD_DEPTH["car"][1] if out.rand is None else _widen(ROAD_DEPTH["car"], ROAD_DEPTH_WIDE["car"], spec.randomization)[1]
        out.actors += _parked_rows(_seq_rng(spec.seed, seq, 0xCA), spec.parked_rows, road, far)
    return out


# ------------------------------------------------------------------------------------------
# frames
# ------------------------------------------------------------------------------------------


def _actor_item(seq: _Sequence, a: _Actor, j: int, street: bool) -> _Item | None:
    """The actor at frame ``j`` as a drawable item, or None when it is out of the usable range."""
    cam = seq.camera
    X, Z = a.X + a.vX * j, a.Z + a.vZ * j
    if Z < 1.0:
        return None
    x, y = cam.project(X, 0, Z)
    s = cam.f / Z
    if x < -0.6 * cam.width or x > 1.6 * cam.width:
        return None
    if a.kind == "person":
        h = s * a.size
        if seq.rand is not None:
            lo, hi = (seq.rand.person_h[0] * 0.95, seq.rand.person_h[1] * 1.1) if street else seq.rand.person_h
        else:
            lo, hi = (STREET_PERSON_HEIGHT[0] * 0.95, STREET_PERSON_HEIGHT[1] * 1.1) if street else (0.12, 0.9)
        if not lo * cam.height <= h <= hi * cam.height:
            return None
        look, pose = a.look
        prims = _person_prims(x, y, h, look, a.view, a.phase + 1.6 * j, a.walking, seq.light, pose)
    elif a.kind == "car" and seq.perspective_cars:  # phase: a parked car's yaw off the kerb line
        prims = _car3d_prims(cam, X, Z, _VIEW_YAW[a.view] + a.phase, a.look, seq.light)
        if not prims:
            return None
    elif a.kind == "car":
        prims = _car_prims(x, y, s, a.view, a.look, seq.light)
    else:
        look, frame_col = a.look
        prims = _cyclist_prims(x, y, s, a.view, look, frame_col, a.phase + 2.0 * j, seq.light)
    return _Item(Z, prims, a.category, a.key)


def _fallback_actor(rng: np.random.Generator, seq: _Sequence, street: bool) -> _Actor:
    """A clearly visible object for a frame that should have objects but lost them all."""
    cam = seq.camera
    if street:
        size = float(rng.uniform(1.6, 1.85))
        Z = cam.f * size / (rng.uniform(0.3, 0.5) * cam.height)
        X = (rng.uniform(0.25, 0.75) * cam.width - cam.vx) * Z / cam.f
        view = ["front", "back", "left", "right"][int(rng.integers(4))]
        return _Actor("person", float(X), float(Z), 0.0, 0.0, view, float(rng.uniform(0, 6.28)), bool(rng.random() < 0.6),
                      size, (_random_look(rng), 0), 1, "fallback")
    Z = float(rng.uniform(7.0, 14.0))
    X = (rng.uniform(0.35, 0.65) * cam.width - cam.vx) * Z / cam.f
    return _Actor("car", float(X), Z, 0.0, 0.0, "back", 0.0, False, 1.0, _random_car(rng), 1, "fallback")


@dataclass
class FrameObject:
    """One boxed object of a rendered frame.

    Attributes:
        owner_id: Value of this object's pixels in the frame's owner map.
        category_id: COCO category id (1-based).
        bbox: ``[x, y, w, h]`` pixels, the tight extent of the visible pixels.
        area: Visible pixel count.
        full_area: Pixels the object covers unoccluded and unclipped.
        key: Which actor of the sequence it is.
    """

    owner_id: int
    category_id: int
    bbox: list[int]
    area: int
    full_area: int
    key: str = ""


def _render(seq: _Sequence, items: list[_Item], frame_rng: np.random.Generator,
            fx_rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, list[FrameObject]]:
    """Draw items far to near; return RGB image, owner map and the visible objects.

    ``fx_rng`` draws the per-frame randomisation (only used when ``seq.rand`` is set).
    """
    img, owner, found = _draw_items(seq, items, {})
    return _finish(seq, img, owner, frame_rng, fx_rng), owner, found


def _draw_items(seq: _Sequence, items: list[_Item],
                extents: dict[str, tuple[int, tuple[int, int, int, int]]]) -> tuple[np.ndarray, np.ndarray, list[FrameObject]]:
    """Draw items far to near over the background, before the camera finish: the image, the
    owner map and the objects. ``extents`` keeps each object's :func:`_full_extent` between
    attempts at one frame."""
    cam = seq.camera
    img = seq.background.copy()
    owner = np.zeros((cam.height, cam.width), dtype=np.uint16)
    order = sorted(range(len(items)), key=lambda i: (-items[i].depth, i))
    objs: list[tuple[int, _Item]] = []
    for i in order:
        it = items[i]
        oid = len(objs) + 1 if it.category else 0
        if it.category:
            objs.append((oid, it))
        _draw(it.prims, [(img, None), (owner, oid)])
    counts = np.bincount(owner.ravel(), minlength=len(objs) + 1)
    found: list[FrameObject] = []
    for oid, it in objs:
        if it.key not in extents:
            extents[it.key] = _full_extent(it.prims)
        full, extent = extents[it.key]
        vis = int(counts[oid])
        if vis == 0:
            found.append(FrameObject(oid, it.category, [0, 0, 0, 0], 0, full, it.key))
            continue
        if seq.amodal:  # the whole object, hidden parts included, cut at the frame edge
            x0, y0 = max(extent[0], 0), max(extent[1], 0)
            x1, y1 = min(extent[2], cam.width), min(extent[3], cam.height)
            found.append(FrameObject(oid, it.category, [x0, y0, x1 - x0, y1 - y0], vis, full, it.key))
            continue
        ys, xs = np.nonzero(owner == oid)
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
        found.append(FrameObject(oid, it.category, [x0, y0, x1 - x0 + 1, y1 - y0 + 1], vis, full, it.key))
    return img, owner, found


def _finish(seq: _Sequence, img: np.ndarray, owner: np.ndarray, frame_rng: np.random.Generator,
            fx_rng: np.random.Generator | None) -> np.ndarray:
    """The camera's finish of a drawn frame: randomised (``seq.rand``) or lens blur, sensor noise
    and white balance."""
    if seq.rand is not None:
        return _finish_random(seq, img, owner, frame_rng, fx_rng or np.random.default_rng(0))
    f = (cv2.GaussianBlur(img, (0, 0), seq.blur) if seq.blur > 0 else img).astype(np.float32)
    f = f * seq.cast.astype(np.float32) + frame_rng.normal(0.0, seq.noise, f.shape).astype(np.float32)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def _frame_items(seq: _Sequence, j: int, empty: bool, street: bool, extra: list[_Actor], hidden: set[str],
                 memo: dict[str, _Item | None] | None = None) -> list[_Item]:
    """What frame ``j`` draws; ``memo`` keeps each actor's item between attempts at one frame."""
    items = list(seq.statics)
    memo = {} if memo is None else memo
    if not empty:
        for a in seq.actors + extra:
            if a.key in hidden:
                continue
            if a.key not in memo:
                memo[a.key] = _actor_item(seq, a, j, street)
            it = memo[a.key]
            if it is not None:
                items.append(replace(it))
    for a in extra:  # the fallback is drawn last: nothing occludes it
        for it in items:
            if it.key == a.key:
                it.depth = -1.0
    return items


def render_frame(seq: _Sequence, seed: int, seq_index: int, j: int, empty: bool, street: bool) -> tuple[np.ndarray, np.ndarray, list[FrameObject]]:
    """Render frame ``j`` of a sequence, removing objects that are too hidden.

    Returns:
        ``(rgb uint8 HxWx3, owner map uint16 HxW, objects)``: object ``o`` owns exactly the
        pixels ``owner == o.owner_id``; every object is at least ``spec.min_visible``
        visible and has a box. Distractors and background are 0 in the owner map.
    """
    hidden: set[str] = set()
    extra: list[_Actor] = []
    memo: dict[str, _Item | None] = {}
    extents: dict[str, tuple[int, tuple[int, int, int, int]]] = {}
    for attempt in range(8):
        items = _frame_items(seq, j, empty, street, extra, hidden, memo)
        img, owner, objs = _draw_items(seq, items, extents)  # finished only when it is kept
        low = [o for o in objs if o.area < seq.min_visible * o.full_area]
        if low:
            hidden |= {o.key for o in low}
            continue
        if not empty and not objs:
            extra = [_fallback_actor(_seq_rng(seed, seq_index, 10_000 + 100 * j + attempt), seq, street)]
            if attempt:  # a fresh key: an earlier fallback may be among the hidden ones
                extra[0].key = f"fallback{attempt}"
            continue
        fx = _fx_rng(seed, seq_index, j) if seq.rand is not None else None
        return _finish(seq, img, owner, _seq_rng(seed, seq_index, 1 + j), fx), owner, objs
    # Rare, only with strong randomisation (crowded occluders, haze): nothing stays visible
    # enough. Draw the frame without its moving objects, so no drawn object lacks a box.
    items = _frame_items(seq, j, True, street, [], set())
    fx = _fx_rng(seed, seq_index, j) if seq.rand is not None else None
    return _render(seq, items, _seq_rng(seed, seq_index, 1 + j), fx)


# ------------------------------------------------------------------------------------------
# dataset
# ------------------------------------------------------------------------------------------


def empty_frames(spec: SyntheticSpec) -> set[int]:
    """Indices of the frames drawn without objects: exactly ``round(empty_fraction * n)`` (at most n-1)."""
    return set(_empty_frames(spec.seed, spec.n_images, spec.empty_fraction))


@functools.lru_cache(maxsize=16)
def _empty_frames(seed: int, n: int, empty_fraction: float) -> frozenset[int]:
    # a permutation of n: ~1 ms and ~1 MB for n = 100_000, so no need to be lazier than a cache
    k = int(min(round(empty_fraction * n), n - 1))
    perm = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(0xE3,))).permutation(n)
    return frozenset(int(i) for i in perm[:k])


def make_sequence(spec: SyntheticSpec, seq: int) -> _Sequence:
    """Build sequence ``seq`` (background, camera, distractors, moving objects)."""
    out = _make_street_sequence(spec, seq) if spec.generator == "street_scenes" else _make_road_sequence(spec, seq)
    out.amodal, out.min_visible = spec.boxes == "amodal", float(spec.min_visible)
    return out


def render_scene_frame(spec: SyntheticSpec, index: int, seq: _Sequence | None = None) -> tuple[np.ndarray, np.ndarray, list[FrameObject]]:
    """Render frame ``index`` of the dataset in memory (what the generator writes).

    Args:
        spec: Generator settings (street_scenes or road_scenes).
        index: Frame index, 0 .. spec.n_images - 1.
        seq: The frame's sequence if already built (saves rebuilding the background).

    Returns:
        ``(rgb, owner, objects)``, see :func:`render_frame`.
    """
    _check_spec(spec)
    q, j = divmod(index, spec.sequence_length)
    if seq is None:
        seq = make_sequence(spec, q)
    empty = index in _empty_frames(spec.seed, spec.n_images, spec.empty_fraction)
    return render_frame(seq, spec.seed, q, j, empty, spec.generator == "street_scenes")


def iter_scene_frames(spec: SyntheticSpec, start: int, stop: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Stream frames ``start .. stop - 1`` in memory, without writing files.

    Frame ``i`` is exactly :func:`render_scene_frame` ``(spec, i)`` (the frame the generator
    writes); a sequence is built once and reused for its consecutive frames. Setting up is
    cheap for any ``spec.n_images`` (tens of thousands of frames included), and the function
    is top level and needs no TensorFlow, so worker processes can call it.

    Args:
        spec: street_scenes or road_scenes settings (``randomization`` included).
        start: First frame index (0-based).
        stop: One past the last frame index, at most ``spec.n_images``.

    Yields:
        ``(rgb, boxes, classes)``: ``rgb`` uint8 HxWx3; ``boxes`` float32 [n, 4] as
        ``x1, y1, x2, y2`` pixels with exclusive right/bottom edges (``x2 = x + w`` as in COCO);
        ``classes`` int64 [n], 0-based index into ``CLASSES[spec.generator]``.

    Raises:
        DataError: ``spec.generator`` is not a scene generator.
        ValueError: ``start``/``stop`` outside ``0 .. spec.n_images``.
    """
    _check_spec(spec)
    if not 0 <= start <= stop <= spec.n_images:
        raise ValueError(f"frames {start}..{stop} outside 0..{spec.n_images}")
    return _iter_scene_frames(spec, start, stop)


def _iter_scene_frames(spec: SyntheticSpec, start: int, stop: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    empties = _empty_frames(spec.seed, spec.n_images, spec.empty_fraction)
    street = spec.generator == "street_scenes"
    seq: _Sequence | None = None
    seq_q = -1
    for i in range(start, stop):
        q, j = divmod(i, spec.sequence_length)
        if seq is None or q != seq_q:
            seq, seq_q = make_sequence(spec, q), q
        img, _, objs = render_frame(seq, spec.seed, q, j, i in empties, street)
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (o.bbox for o in objs)], dtype=np.float32).reshape(-1, 4)
        classes = np.array([o.category_id - 1 for o in objs], dtype=np.int64)
        yield img, boxes, classes


def _check_spec(spec: SyntheticSpec) -> None:
    if spec.generator not in CLASSES:
        raise DataError(
            f"synthetic generator '{spec.generator}' does not make detection scenes",
            problems=[Problem("synthetic.generator", f"Got '{spec.generator}'. Expected one of {sorted(CLASSES)}.")],
            hint="Use generate_ct_dataset for ct_phantom; street_scenes and road_scenes are generated here.",
        )


_README = """Synthetic {title} (lepton-vision embedded default data)

Every image was generated by lepton_vision.data.synthetic.scenes ({generator}); no real photographs.

Layout:
  images/<sequence>_<frame>.png   RGB frames, {w}x{h}
  annotations.json                COCO: images[] (id, file_name, width, height, group_id),
                                  annotations[] (bbox [x, y, w, h] pixels, area = visible pixels),
                                  categories[] {categories}
Frames of one sequence share background and camera: group folds by images[].group_id.
{boxes}; objects less than {vis:.0%} visible
are not drawn. annotations.json is written last: if it exists, the dataset is complete.

Generator settings: {settings}
"""


_BOXES_TEXT = {
    "visible": "Boxes are the tight extent of each object's visible pixels",
    "amodal": "Boxes are each object's whole extent (occluded parts included),\nclipped to the frame",
}


def settings_dump(spec: SyntheticSpec) -> dict[str, Any]:
    """The spec as written into the dataset files; ``randomization`` only when it is not 0, so
    the default data stays byte-identical to data generated before the field existed."""
    return spec.model_dump(mode="json", exclude=_settings_exclude(spec))


def _settings_exclude(spec: SyntheticSpec) -> set[str]:
    return spec.unused_later_fields() | (set() if spec.randomization else {"randomization"})


def generate_scene_dataset(out: str | Path, spec: SyntheticSpec, progress: bool = True) -> dict[str, Any]:
    """Generate a street-scene (people) or road-scene (car, pedestrian, cyclist) COCO dataset.

    Args:
        out: Output folder (created). ``images/<sequence>_<frame>.png`` are written first and
            ``annotations.json`` last and atomically, so its presence means the dataset is
            complete.
        spec: Generator settings: ``generator`` (street_scenes | road_scenes), ``n_images``,
            ``frame_size`` (width, height), ``empty_fraction``, ``sequence_length``, ``seed``.
        progress: Show a progress bar.

    Returns:
        Summary: ``n_images``, ``n_boxes``, ``per_class`` (name -> boxes), ``n_empty``
        (frames without boxes), ``n_groups`` (sequences), ``seconds``.

    Raises:
        DataError: ``spec.generator`` is not a scene generator.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    _check_spec(spec)
    started = time.perf_counter()
    out = Path(out)
    (out / IMAGES).mkdir(parents=True, exist_ok=True)
    done = out / ANNOTATIONS
    if done.exists():  # regenerating: drop the completeness marker first
        done.unlink()
    names = CLASSES[spec.generator]
    empties = _empty_frames(spec.seed, spec.n_images, spec.empty_fraction)
    street = spec.generator == "street_scenes"
    W, H = spec.frame_size
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    n_groups = -(-spec.n_images // spec.sequence_length)
    bar = Progress(
        TextColumn(f"[bold]synthetic {spec.generator.replace('_', ' ')}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress,
        transient=False,
    )
    with bar:
        task = bar.add_task("frames", total=spec.n_images)
        seq: _Sequence | None = None
        for i in range(spec.n_images):
            q, j = divmod(i, spec.sequence_length)
            if j == 0 or seq is None:
                seq = make_sequence(spec, q)
            img, _, objs = render_frame(seq, spec.seed, q, j, i in empties, street)
            name = f"{q:04d}_{j:02d}.png"
            ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            if not ok:  # pragma: no cover - encoding a uint8 array does not fail
                raise DataError(f"could not encode frame {name} as PNG", file=str(out / IMAGES / name))
            atomic_write_bytes(out / IMAGES / name, png.tobytes())
            images.append({"id": i + 1, "file_name": name, "width": W, "height": H, "group_id": f"seq{q:04d}",
                           "frame_index": j})
            for o in objs:
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": o.category_id,
                                    "bbox": o.bbox, "area": o.area, "iscrowd": 0})
            bar.advance(task)
    coco = {
        "info": {"description": f"lepton-vision synthetic {spec.generator}", "version": "1",
                 "settings": settings_dump(spec)},
        "licenses": [{"id": 1, "name": "CC0-1.0"}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "object"} for k, n in enumerate(names)],
    }
    title = "street scenes with people" if street else "road scenes with cars, pedestrians and cyclists"
    atomic_write_text(out / "README.txt", _README.format(
        title=title, generator=spec.generator, w=W, h=H, categories=", ".join(f"{k + 1}={n}" for k, n in enumerate(names)),
        boxes=_BOXES_TEXT[spec.boxes], vis=spec.min_visible, settings=spec.model_dump_json(exclude=_settings_exclude(spec))))
    atomic_write_json(done, coco)
    per_class = {n: sum(a["category_id"] == k + 1 for a in annotations) for k, n in enumerate(names)}
    with_boxes = {a["image_id"] for a in annotations}
    return {
        "n_images": spec.n_images,
        "n_boxes": len(annotations),
        "per_class": per_class,
        "n_empty": spec.n_images - len(with_boxes),
        "n_groups": n_groups,
        "seconds": round(time.perf_counter() - started, 3),
    }


__all__ = ["CLASSES", "FrameObject", "empty_frames", "generate_scene_dataset", "iter_scene_frames", "render_scene_frame"]

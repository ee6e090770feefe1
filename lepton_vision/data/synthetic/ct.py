"""Embedded default data: synthetic chest CT slices with lung nodules, written as real DICOM.

Each patient is a 3-D chest phantom in millimetres (body with a fat layer, ribs, spine, lungs
whose outline changes along the body axis, trachea and main bronchi, a 3-D pulmonary vessel tree,
heart, aorta and mediastinal fat). An axial slab of consecutive slices is cut from it; every slice
is projected with :func:`skimage.transform.radon`, photon (Poisson) noise is added to the
sinogram and the slice is reconstructed with filtered back-projection
(:func:`skimage.transform.iradon`), so the images carry CT noise texture and streaks.

Abnormal patients get 2-4 lung nodules (spheres with a lobulated outline spanning a few slices);
a slice is labelled ``abnormal`` exactly when a nodule is drawn on it. Vessels cut across are
bright round blobs too, so a model has to tell a nodule from a vessel.

The difficulty knobs are the module constants below (``NODULE_*``, ``NOISE_I0_RANGE``,
``VESSEL_*``). Everything random comes from ``spec.seed``: patient ``i`` uses its own
:class:`numpy.random.SeedSequence` child, so it is the same whatever ``n_patients`` is.

Domain randomisation (``spec.randomization`` r in 0..1, for pretraining on generated slices):
r = 0 is the default data exactly (byte-identical files). With r > 0 a separate generator per
patient (``spawn_key=(i, 0xD0)``; per slice ``(i, 0xD0, j)``) widens, linearly in r: anatomy
(body size and shape, fat, rotation, lung size and density, heart size and position, rib
thickness, spine size), patient off-centre position, field of view (zoom 0.82-1.3), slab
position along the body, dose (photons per ray 4e3-4e5), number of views, reconstruction kernel
(:data:`RECON_FILTERS`, plus softer/sharper post-filters), occasional ring and streak artefacts
and a couch under the patient. Labels stay exact: a nodule is drawn and counted only on slices
it crosses, and with zoom/off-centre only when its cross-section lies wholly inside the scanned
circle.

Streaming: :func:`iter_ct_slices` yields ``(hu, label)`` per slice index in memory, the same
HU as the DICOM files before integer rounding.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lepton_vision.config.cards import SyntheticSpec
from lepton_vision.runio import atomic_write_bytes, atomic_write_csv, atomic_write_text

# --- geometry -----------------------------------------------------------------------------
FOV_MM = 360.0  # reconstruction field of view; pixel spacing = FOV_MM / image_size
CHEST_LENGTH_MM = 300.0  # apex (z=0) to lung base (z=CHEST_LENGTH_MM)
SLICE_SPACING_MM = 5.0  # slice spacing = thickness (shrunk if the slab would not fit)

# --- acquisition / reconstruction ----------------------------------------------------------
N_ANGLES = 96  # projection angles over 180 degrees
RECON_FILTER = "shepp-logan"
MU_WATER_PER_MM = 0.0192  # linear attenuation of water at ~70 keV
NOISE_I0_RANGE = (1.5e4, 1.5e5)  # photons per ray (log-uniform per patient); lower = noisier

# --- tissues (HU) ---------------------------------------------------------------------------
AIR_HU = -1000.0
FAT_HU = -100.0
MUSCLE_HU = 45.0
BLOOD_HU = 40.0
LUNG_HU_RANGE = (-880.0, -820.0)  # per patient
LUNG_TEXTURE_HU = 18.0  # std of the smooth parenchyma texture
BONE_CORTEX_HU = 900.0
BONE_MARROW_HU = 450.0

# --- vessels (distractors) ------------------------------------------------------------------
VESSEL_GENERATIONS_RANGE = (6, 8)  # branching depth per patient: vessel density
VESSEL_ROOT_RADIUS_MM = (3.5, 5.0)
VESSEL_TAPER = 0.8  # radius ratio child / parent
VESSEL_ROOTS_PER_LUNG = (8, 14)  # lobar/segmental trunks spread along z: vessel density
VESSEL_HU = BLOOD_HU

# --- nodules (the signal) -------------------------------------------------------------------
NODULES_PER_PATIENT = (2, 4)  # inclusive
NODULE_RADIUS_MM = (2.0 * FOV_MM / 128, 8.0 * FOV_MM / 128)  # 2-8 px at 128 px, log-uniform
NODULE_HU_RANGE = (-100.0, 100.0)
NODULE_LOBULATION = 0.10  # relative radius wobble of the outline
NODULE_MIN_VISIBLE_MM = 2.5  # a cross-section smaller than this is not drawn (nor labelled)
NODULE_MIN_VISIBLE_FRACTION = 0.35  # ... nor one smaller than this fraction of the radius
NODULE_PLACEMENT = {"free": 0.45, "vessel": 0.3, "pleura": 0.25}

# --- DICOM ----------------------------------------------------------------------------------
RESCALE_INTERCEPT = -1024
WINDOW_CENTER = -600
WINDOW_WIDTH = 1500
LABEL_COLUMNS = ["path", "label", "patient_id", "slice_index", "nodule_count"]
SERIES_COLUMNS = ["series", "slice_index", "label", "patient_id", "nodule_count"]
VOLUME_COLUMNS = ["volume", "slice_index", "label", "patient_id", "nodule_count"]
#: layout -> the manifest written last (its presence means the dataset is complete).
LAYOUT_MANIFESTS = {"slices": "labels.csv", "dicom_series": "series.csv", "nifti": "volumes.csv"}

_PLACEMENT_GRID = 128  # nodule positions are chosen on this grid whatever the image size


@dataclass
class _Nodule:
    x: float
    y: float
    z: float
    r: float
    hu: float
    harmonics: np.ndarray  # (k, amplitude, phase) rows for the lobulated outline

    def section_radius(self, z: float) -> float:
        """Radius of the cross-section drawn at ``z`` (0 when too small to be drawn)."""
        dz = z - self.z
        if abs(dz) >= self.r:
            return 0.0
        rs = float(np.sqrt(self.r**2 - dz**2))
        if rs < max(NODULE_MIN_VISIBLE_MM, NODULE_MIN_VISIBLE_FRACTION * self.r):
            return 0.0
        return rs


@dataclass
class _Patient:
    index: int
    patient_id: str
    abnormal: bool
    A: float  # body half-width (lateral), mm
    B: float  # body half-depth (antero-posterior), mm
    fat: float  # subcutaneous fat thickness, mm
    angle: float  # in-plane rotation, radians
    lung_scale: float
    lung_hu: float
    lung_harmonics: np.ndarray  # (side, k, [amp, phase, dphase/dz])
    rib_phase: np.ndarray
    heart_shift: float
    i0: float
    z_slices: np.ndarray  # mm
    spacing: float
    vessels: np.ndarray  # (S, 7): x0 y0 z0 x1 y1 z1 r
    nodules: list[_Nodule] = field(default_factory=list)
    seed_seq: np.random.SeedSequence | None = None
    # domain randomisation (spec.randomization > 0); the defaults are the default data
    randomized: bool = False
    fov_scale: float = 1.0  # reconstruction field of view = FOV_MM * fov_scale (zoom)
    cx: float = 0.0  # patient off-centre position in the image, mm (x right, y down)
    cy: float = 0.0
    heart_scale: float = 1.0
    rib_half: float = 3.5  # rib half thickness, mm
    spine_scale: float = 1.0
    recon_filter: str = RECON_FILTER
    n_angles: int = N_ANGLES
    post_sigma: float = 0.0  # > 0: smoother kernel (Gaussian sigma, px); < 0: sharper (unsharp amount)
    ring: tuple[float, float] | None = None  # (detector offset from centre in px, strength) ring artefact
    streak_p: float = 0.0  # probability a slice gets streaks (bad views / photon starvation)
    table: tuple[float, float, float, float, float] | None = None  # gap, thickness, half-width (mm), skin HU, core HU


# ------------------------------------------------------------------------------------------
# shape helpers (all distances in mm; negative inside)
# ------------------------------------------------------------------------------------------


def _soft(d: np.ndarray, px: float) -> np.ndarray:
    """Partial-volume coverage of a pixel by a shape, from its signed distance."""
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _ellipse_sd(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (first-order, exact on the rim)."""
    u = (x - cx) / a
    v = (y - cy) / b
    f = u * u + v * v - 1.0
    g = 2.0 * np.sqrt((u / a) ** 2 + (v / b) ** 2) + 1e-9
    return f / g


def _paint(img: np.ndarray, cover: np.ndarray, value: float | np.ndarray) -> None:
    img *= 1.0 - cover
    img += cover * value


def _chest_profile(z: float) -> float:
    """Relative lung size along the body axis: small at the apex, largest low, cut by the diaphragm."""
    t = np.clip(z / CHEST_LENGTH_MM, 0.0, 1.0)
    grow = 0.45 + 0.55 * np.sin(0.5 * np.pi * min(t / 0.65, 1.0))
    dome = np.clip((1.0 - t) / 0.22, 0.25, 1.0)
    return float(grow * dome)


def _fov(p: _Patient) -> float:
    """The patient's reconstruction field of view (mm): FOV_MM unless randomised."""
    return FOV_MM * p.fov_scale


def _lung_sd(p: _Patient, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
    """Signed distance to the union of both lungs at height ``z`` (body coordinates)."""
    s = _chest_profile(z) * p.lung_scale
    t = z / CHEST_LENGTH_MM
    heart = _heart_size(z) * p.heart_scale
    out = None
    for side, sign in enumerate((-1.0, 1.0)):
        a = 0.36 * p.A * (0.7 + 0.3 * s)
        b = 0.80 * p.B * s
        cx = sign * (0.40 * p.A + 0.06 * p.A * (1 - s))
        cy = 0.08 * p.B + 0.12 * p.B * (1.0 - s)
        # outline wobble that drifts smoothly with z (lung shape changes from slice to slice)
        u = (x - cx) / a
        v = (y - cy) / b
        theta = np.arctan2(v, u)
        rho = np.sqrt(u * u + v * v)
        wob = np.ones_like(rho)
        for k, (amp, ph, dph) in enumerate(p.lung_harmonics[side], start=2):
            wob += amp * np.cos(k * theta + ph + dph * t)
        # the medial side is flattened by the mediastinum
        flat = 1.0 - 0.22 * np.clip(-sign * np.cos(theta), 0, None) ** 3
        d = (rho / (wob * flat) - 1.0) * min(a, b)
        # heart bed: the left lung (image right, sign +1) is indented more
        hx = 0.10 * p.A + p.heart_shift
        ha = (0.30 + 0.05 * sign) * p.A * heart + 1e-3
        hd = _ellipse_sd(x, y, hx, -0.12 * p.B, ha, 0.42 * p.B * heart + 1e-3)
        d = np.maximum(d, -hd + 4.0) if heart > 0.05 else d
        out = d if out is None else np.minimum(out, d)
    assert out is not None
    # the lungs stay inside the rib cage and off the mediastinum and the spine
    ra, rb = _rib_axes(p)
    out = np.maximum(out, _ellipse_sd(x, y, 0.0, -0.02 * p.B, ra - 6.0, rb - 6.0))
    out = np.maximum(out, -_ellipse_sd(x, y, 0.0, -0.1 * p.B, 0.09 * p.A, 0.62 * p.B))
    out = np.maximum(out, -_ellipse_sd(x, y, 0.0, 0.66 * p.B, 26.0, 30.0))
    return out


def _rib_axes(p: _Patient) -> tuple[float, float]:
    return 0.88 * (p.A - p.fat), 0.86 * (p.B - 0.7 * p.fat)


def _heart_size(z: float) -> float:
    t = z / CHEST_LENGTH_MM
    return float(np.clip((t - 0.38) / 0.3, 0.0, 1.0) ** 0.7)


# ------------------------------------------------------------------------------------------
# patient generation
# ------------------------------------------------------------------------------------------


def _patient_seed(seed: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(entropy=seed, spawn_key=(index,))


def _grow_vessels(p: _Patient, rng: np.random.Generator, generations: int) -> np.ndarray:
    """A 3-D branching pulmonary vessel tree per lung, from the hilum outwards."""
    segs: list[tuple[float, ...]] = []
    r0 = rng.uniform(*VESSEL_ROOT_RADIUS_MM)
    for sign in (-1.0, 1.0):
        hilum = np.array([sign * 0.17 * p.A, -0.02 * p.B, 0.52 * CHEST_LENGTH_MM])
        stack = []
        for _ in range(int(rng.integers(VESSEL_ROOTS_PER_LUNG[0], VESSEL_ROOTS_PER_LUNG[1] + 1))):
            # trunks leave the hilum region at different heights and fan out in all directions
            zr = rng.uniform(0.25, 0.8) * CHEST_LENGTH_MM
            root = np.array([sign * 0.2 * p.A, rng.uniform(-0.2, 0.2) * p.B, zr])
            dx = sign * rng.uniform(0.5, 1.0)
            dy = rng.normal(0, 0.6)
            d = np.array([dx, dy, (zr - hilum[2]) / 60.0 + rng.normal(0, 0.5)])
            stack.append((root, d / np.linalg.norm(d), r0 * rng.uniform(0.6, 1.0), 0, 35.0))
        while stack:
            start, direction, radius, gen, length = stack.pop()
            length *= rng.uniform(0.7, 1.2)
            end = start + direction * length
            segs.append((*start, *end, radius))
            if gen + 1 >= generations:
                continue
            inside = _lung_sd(p, np.array([end[0]]), np.array([end[1]]), float(end[2]))[0] < -radius
            if not inside:
                continue
            for _ in range(2):
                nd = direction + rng.normal(0.0, 0.55, 3)
                # keep growing away from the hilum
                out = end - hilum
                nd += 0.35 * out / (np.linalg.norm(out) + 1e-6)
                nd /= np.linalg.norm(nd)
                stack.append((end, nd, radius * VESSEL_TAPER * rng.uniform(0.9, 1.1), gen + 1, length * 0.8))
    return np.array(segs, dtype=np.float64)


def _make_patient(spec: SyntheticSpec, index: int, abnormal: bool) -> _Patient:
    ss = _patient_seed(spec.seed, index)
    rng = np.random.default_rng(ss.spawn(1)[0])
    n = spec.slices_per_patient
    spacing = min(SLICE_SPACING_MM, 0.8 * CHEST_LENGTH_MM / n)
    slab = spacing * (n - 1)
    if slab < 0.78 * CHEST_LENGTH_MM:
        z0 = rng.uniform(0.12 * CHEST_LENGTH_MM, 0.9 * CHEST_LENGTH_MM - slab)
    else:
        z0 = 0.1 * CHEST_LENGTH_MM
    A = rng.uniform(128.0, 158.0)
    p = _Patient(
        index=index,
        patient_id=f"SYN{index:04d}",
        abnormal=abnormal,
        A=A,
        B=A * rng.uniform(0.64, 0.76),
        fat=rng.uniform(5.0, 22.0),
        angle=float(np.deg2rad(rng.uniform(-7.0, 7.0))),
        lung_scale=rng.uniform(0.85, 1.05),
        lung_hu=rng.uniform(*LUNG_HU_RANGE),
        lung_harmonics=np.stack(
            [
                np.stack(
                    [rng.uniform(0.0, 0.06, 3), rng.uniform(0, 2 * np.pi, 3), rng.uniform(-3, 3, 3)], axis=1
                )
                for _ in range(2)
            ]
        ),
        rib_phase=rng.uniform(0, 2 * np.pi, 24),
        heart_shift=rng.uniform(-8.0, 8.0),
        i0=float(np.exp(rng.uniform(np.log(NOISE_I0_RANGE[0]), np.log(NOISE_I0_RANGE[1])))),
        z_slices=z0 + spacing * np.arange(n),
        spacing=spacing,
        vessels=np.zeros((0, 7)),
        seed_seq=ss,
    )
    if spec.randomization > 0:
        _randomize_patient(p, spec, np.random.default_rng(np.random.SeedSequence(entropy=spec.seed, spawn_key=(index, 0xD0))))
    generations = int(rng.integers(VESSEL_GENERATIONS_RANGE[0], VESSEL_GENERATIONS_RANGE[1] + 1))
    p.vessels = _grow_vessels(p, rng, generations)
    if abnormal:
        p.nodules = _place_nodules(p, rng)
    return p


def _widen(base: tuple[float, float], wide: tuple[float, float], r: float) -> tuple[float, float]:
    """The range ``base`` at r=0, ``wide`` at r=1, linear in between."""
    return base[0] + (wide[0] - base[0]) * r, base[1] + (wide[1] - base[1]) * r


#: Reconstruction kernels a randomised scan picks from (ramp = sharpest, hann = smoothest).
RECON_FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")


def _randomize_patient(p: _Patient, spec: SyntheticSpec, rng: np.random.Generator) -> None:
    """Anatomy and scanner variation (``spec.randomization`` r > 0), drawn from its own generator.

    Overrides what the default draws chose (the default stream is consumed unchanged) before the
    vessel tree and the nodules are grown, so they fit the randomised anatomy.
    """
    r = spec.randomization
    n = spec.slices_per_patient
    L = CHEST_LENGTH_MM
    slab = p.spacing * (n - 1)
    lo, hi = _widen((0.12 * L, 0.9 * L), (0.03 * L, 0.98 * L), r)
    if hi - slab > lo:
        p.z_slices = rng.uniform(lo, hi - slab) + p.spacing * np.arange(n)
    p.A = float(rng.uniform(*_widen((128.0, 158.0), (105.0, 185.0), r)))
    p.B = p.A * float(rng.uniform(*_widen((0.64, 0.76), (0.56, 0.85), r)))
    p.fat = float(rng.uniform(*_widen((5.0, 22.0), (2.0, 40.0), r)))
    p.angle = float(np.deg2rad(rng.uniform(*_widen((-7.0, 7.0), (-15.0, 15.0), r))))
    p.lung_scale = float(rng.uniform(*_widen((0.85, 1.05), (0.7, 1.15), r)))
    p.lung_hu = float(rng.uniform(*_widen(LUNG_HU_RANGE, (-910.0, -760.0), r)))
    p.heart_shift = float(rng.uniform(*_widen((-8.0, 8.0), (-18.0, 18.0), r)))
    p.heart_scale = float(rng.uniform(*_widen((1.0, 1.0), (0.75, 1.3), r)))
    p.rib_half = float(rng.uniform(*_widen((3.5, 3.5), (2.5, 5.0), r)))
    p.spine_scale = float(rng.uniform(*_widen((1.0, 1.0), (0.8, 1.25), r)))
    lo_i0, hi_i0 = _widen(NOISE_I0_RANGE, (4e3, 4e5), r)
    p.i0 = float(np.exp(rng.uniform(np.log(lo_i0), np.log(hi_i0))))
    p.fov_scale = float(np.exp(rng.uniform(*_widen((0.0, 0.0), (np.log(0.82), np.log(1.3)), r))))
    p.cx = float(rng.uniform(-25.0, 25.0) * r)
    p.cy = float(rng.uniform(-20.0, 30.0) * r)
    if rng.random() < r:
        p.recon_filter = RECON_FILTERS[int(rng.integers(len(RECON_FILTERS)))]
    p.n_angles = int(rng.integers(round(96 - 32 * r), round(96 + 48 * r) + 1))
    p.post_sigma = float(rng.uniform(-0.8 * r, 1.0 * r))
    p.streak_p = 0.25 * r
    if rng.random() < 0.2 * r:
        p.ring = (float(rng.uniform(2.0, 0.35 * spec.image_size)), float(rng.uniform(0.01, 0.05)))
    if rng.random() < 0.6 * r:
        p.table = (float(rng.uniform(2.0, 15.0)), float(rng.uniform(8.0, 30.0)), float(rng.uniform(120.0, 200.0)),
                   float(rng.uniform(100.0, 500.0)), float(rng.uniform(-950.0, -500.0)))
    p.randomized = True


def _vessel_cover(p: _Patient, x: np.ndarray, y: np.ndarray, z: float, thickness: float,
                  px: float | None = None) -> np.ndarray:
    """Partial-volume coverage (0..1) of each pixel by the vessel tubes near plane ``z``.

    The slice has a ``thickness``: a tube within half of it counts, so vessels running
    obliquely show as short streaks, and tubes thinner than a pixel show as faint dots with
    the right integrated density (partial-volume averaging).

    ``x`` and ``y`` are the pixel-centre grids of one image. Each tube is evaluated only on the
    pixel box around where it meets the plane, which keeps a tree of thousands of segments cheap.
    """
    size = x.shape[1]
    if px is None:
        px = FOV_MM / size
    half = 0.5 * thickness
    v = p.vessels
    zlo = np.minimum(v[:, 2], v[:, 5]) - v[:, 6] - half
    zhi = np.maximum(v[:, 2], v[:, 5]) + v[:, 6] + half
    v = v[(zlo <= z) & (zhi >= z)]
    out = np.zeros(x.shape)
    if len(v) == 0:
        return out
    # pixel grid before rotation is regular; map tube end points into pixel index space via the
    # inverse of the grid (x, y are rotated, so use a box large enough for any rotation)
    x0, y0 = x[0, 0], y[0, 0]
    ex = np.array([x[0, 1] - x0, y[0, 1] - y0]) / px  # unit step along columns
    ey = np.array([x[1, 0] - x0, y[1, 0] - y0]) / px  # unit step along rows
    for seg in v:
        a, b, r = seg[:3], seg[3:6], seg[6]
        ab = b - a
        # thin tubes are drawn at least half a pixel wide with their density scaled down
        r_draw = max(r, 0.5 * px)
        weight = min(1.0, (r / r_draw) ** 2 * 1.5)
        # part of the segment within r of the plane
        if abs(ab[2]) > 1e-9:
            t0, t1 = sorted(((z - r - half - a[2]) / ab[2], (z + r + half - a[2]) / ab[2]))
            t0, t1 = max(t0, 0.0), min(t1, 1.0)
        else:
            t0, t1 = 0.0, 1.0
        pts = np.array([a[:2] + t0 * ab[:2], a[:2] + t1 * ab[:2]])
        rel = pts - np.array([x0, y0])
        cols = (rel @ ex) / px
        rows = (rel @ ey) / px
        m = r_draw / px + 2
        c0, c1 = int(np.floor(cols.min() - m)), int(np.ceil(cols.max() + m)) + 1
        r0, r1 = int(np.floor(rows.min() - m)), int(np.ceil(rows.max() + m)) + 1
        c0, r0 = max(c0, 0), max(r0, 0)
        c1, r1 = min(c1, size), min(r1, size)
        if c0 >= c1 or r0 >= r1:
            continue
        X = x[r0:r1, c0:c1] - a[0]
        Y = y[r0:r1, c0:c1] - a[1]
        Z = z - a[2]
        L2 = float(ab @ ab) + 1e-9
        t = np.clip((X * ab[0] + Y * ab[1] + Z * ab[2]) / L2, 0.0, 1.0)
        dz = np.maximum(np.abs(Z - t * ab[2]) - half, 0.0)
        d = np.sqrt((X - t * ab[0]) ** 2 + (Y - t * ab[1]) ** 2 + dz**2) - r_draw
        np.maximum(out[r0:r1, c0:c1], _soft(d, px) * weight, out=out[r0:r1, c0:c1])
    return out


def _place_nodules(p: _Patient, rng: np.random.Generator) -> list[_Nodule]:
    from scipy import ndimage

    g = _PLACEMENT_GRID
    px = FOV_MM / g
    c = (np.arange(g) + 0.5 - g / 2) * px
    X, Y = np.meshgrid(c, c)
    count = int(rng.integers(NODULES_PER_PATIENT[0], NODULES_PER_PATIENT[1] + 1))
    lo, hi = NODULE_RADIUS_MM
    kinds = list(NODULE_PLACEMENT)
    probs = np.array([NODULE_PLACEMENT[k] for k in kinds])
    nodules = []
    for _ in range(count):
        r = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        # centre the nodule near a slice of the slab so that at least that slice shows it
        j = int(rng.integers(len(p.z_slices)))
        z = float(p.z_slices[j] + rng.uniform(-0.3, 0.3) * min(r, p.spacing))
        lung = _lung_sd(p, X, Y, z) < 0
        inside = ndimage.distance_transform_edt(lung) * px
        kind = kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]
        if kind == "pleura":
            ok = (inside > 0.7 * r) & (inside < 1.2 * r + px)
        elif kind == "vessel":
            cover = _vessel_cover(p, X, Y, z, p.spacing)
            vd = ndimage.distance_transform_edt(cover < 0.3) * px
            ok = (inside > r) & (vd < r + 2 * px) & (vd > 0.6 * r)
        else:
            ok = inside > r + px
        if not ok.any():
            ok = inside >= inside.max() * 0.8
        if not lung.any():  # lung too small at this height: put it where the lung is biggest
            z = float(p.z_slices[int(np.argmax([_chest_profile(zz) for zz in p.z_slices]))])
            lung = _lung_sd(p, X, Y, z) < 0
            ok = lung
        idx = np.flatnonzero(ok.ravel())
        k = int(idx[rng.integers(len(idx))])
        amps = rng.uniform(0, NODULE_LOBULATION, 4) / 2
        harmonics = np.stack([np.arange(2, 6), amps, rng.uniform(0, 2 * np.pi, 4)], axis=1)
        nodules.append(
            _Nodule(
                x=float(X.ravel()[k]),
                y=float(Y.ravel()[k]),
                z=z,
                r=r,
                hu=float(rng.uniform(*NODULE_HU_RANGE)),
                harmonics=harmonics,
            )
        )
    return nodules


# ------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------


def render_phantom(p: _Patient, z: float, size: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """The noise-free phantom slice at height ``z`` in HU, and how many nodules it shows."""
    from scipy import ndimage

    px = _fov(p) / size
    c = (np.arange(size) + 0.5 - size / 2) * px
    X0, Y0 = np.meshgrid(c, c)  # image x to patient's left, y posterior (radiological view)
    ca, sa = np.cos(p.angle), np.sin(p.angle)
    Xs, Ys = (X0 - p.cx, Y0 - p.cy) if p.randomized else (X0, Y0)  # off-centre patient
    X = ca * Xs + sa * Ys
    Y = -sa * Xs + ca * Ys - 0.04 * p.B  # slightly below centre, like a patient on the table
    t = z / CHEST_LENGTH_MM

    img = np.full((size, size), AIR_HU)
    body = _ellipse_sd(X, Y, 0.0, 0.0, p.A, p.B)
    body = np.maximum(body, Y - 0.93 * p.B)  # flat back on the table
    _paint(img, _soft(body, px), FAT_HU)
    muscle = _ellipse_sd(X, Y, 0.0, 0.0, p.A - p.fat, p.B - 0.7 * p.fat)
    _paint(img, _soft(np.maximum(muscle, Y - 0.93 * p.B + 0.7 * p.fat), px), MUSCLE_HU)

    # ribs: short arcs on an ellipse inside the muscle; which part of each rib the plane cuts
    # drifts with z because ribs run obliquely
    ra, rb = _rib_axes(p)
    u, v = X / ra, (Y + 0.02 * p.B) / rb
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    radial = (rho - 1.0) * min(ra, rb)
    rib_cover = np.zeros_like(img)
    marrow = np.zeros_like(img)
    n_ribs = 12
    for k in range(n_ribs):
        centre = -np.pi + (k + 0.5) * 2 * np.pi / n_ribs + 0.18 * np.sin(p.rib_phase[k] + 9.0 * t)
        # skip the sternum/spine directions: no ribs right in front or behind
        if abs(np.cos(centre)) < 0.25:
            continue
        half = 0.05 + 0.08 * (0.5 + 0.5 * np.sin(p.rib_phase[k + 12] + 14.0 * t))
        dth = np.angle(np.exp(1j * (theta - centre)))
        d = np.maximum(np.abs(radial) - p.rib_half, (np.abs(dth) - half) * ra)
        rib_cover = np.maximum(rib_cover, _soft(d, px))
        marrow = np.maximum(marrow, _soft(d + 1.5, px))
    _paint(img, rib_cover, BONE_CORTEX_HU)
    _paint(img, marrow, BONE_MARROW_HU - 150)

    # lungs with a smooth parenchyma texture
    lung_sd = _lung_sd(p, X, Y, z)
    lung = _soft(lung_sd, px)
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, img.shape), 1.2 * 128 / size)
    texture *= LUNG_TEXTURE_HU / (texture.std() + 1e-9)
    _paint(img, lung, p.lung_hu + texture)

    # vessels: tubes of the 3-D tree cut by the plane (round when cut across, long when along)
    _paint(img, _vessel_cover(p, X, Y, z, p.spacing, px) * np.clip(lung * 1.5, 0, 1), VESSEL_HU)

    # mediastinum: fat, heart, aorta, trachea / main bronchi
    heart = _heart_size(z) * p.heart_scale
    med = _ellipse_sd(X, Y, 0.0, -0.05 * p.B, 0.16 * p.A + 0.1 * p.A * heart, 0.62 * p.B)
    _paint(img, _soft(np.maximum(med, lung_sd * -1 - 2.0), px) * (1 - lung), FAT_HU + 20)
    if 0.15 < t < 0.62:  # ascending aorta / arch
        _paint(img, _soft(_ellipse_sd(X, Y, 0.03 * p.A, -0.22 * p.B, 15.0, 15.0), px), BLOOD_HU)
    if t > 0.15:  # descending aorta, left of the spine
        _paint(img, _soft(_ellipse_sd(X, Y, 0.11 * p.A, 0.38 * p.B, 12.0, 12.0), px), BLOOD_HU)
    if t < 0.45:
        tr = _ellipse_sd(X, Y, 0.0, -0.18 * p.B, 9.0, 8.0)
        _paint(img, _soft(tr - 2.0, px), MUSCLE_HU)
        _paint(img, _soft(tr, px), AIR_HU)
    elif t < 0.62:
        spread = (t - 0.45) / 0.17
        for sign in (-1.0, 1.0):
            br = _ellipse_sd(X, Y, sign * (0.06 + 0.14 * spread) * p.A, -0.12 * p.B, 6.0, 6.0)
            _paint(img, _soft(br - 1.5, px), MUSCLE_HU)
            _paint(img, _soft(br, px), AIR_HU)

    # the heart comes last so that it hides the lower ends of the airways
    if heart > 0.05:
        hx = 0.10 * p.A + p.heart_shift
        hsd = _ellipse_sd(X, Y, hx, -0.12 * p.B, 0.27 * p.A * heart + 1e-3, 0.36 * p.B * heart + 1e-3)
        _paint(img, _soft(hsd, px), BLOOD_HU)
    # spine: vertebral body with a cortical rim, canal, posterior arch
    vy = 0.60 * p.B
    k = p.spine_scale
    vb = _ellipse_sd(X, Y, 0.0, vy, 17.0 * k, 14.0 * k)
    _paint(img, _soft(vb, px), BONE_CORTEX_HU)
    _paint(img, _soft(vb + 2.5, px), BONE_MARROW_HU)
    canal = _ellipse_sd(X, Y, 0.0, vy + 22.0 * k, 8.0 * k, 7.0 * k)
    arch = _ellipse_sd(X, Y, 0.0, vy + 23.0 * k, 17.0 * k, 13.0 * k)
    _paint(img, _soft(arch, px) * (1 - _soft(canal, px)), BONE_CORTEX_HU * 0.85)
    _paint(img, _soft(canal, px), MUSCLE_HU - 15)
    spinous = _ellipse_sd(X, Y, 0.0, vy + 40.0 * k, 4.0 * k, 12.0 * k)
    _paint(img, _soft(spinous, px), BONE_CORTEX_HU * 0.85)

    # nodules
    shown = 0
    for n in p.nodules:
        rs = n.section_radius(z)
        if rs <= 0:
            continue
        if p.randomized and not _inside_fov(p, n, rs, size):
            continue  # zoomed / off-centre: a nodule not wholly in the scanned circle is left out
        shown += 1
        dx, dy = X - n.x, Y - n.y
        ang = np.arctan2(dy, dx)
        wob = np.ones_like(ang)
        for k, amp, ph in n.harmonics:
            wob += amp * np.cos(k * ang + ph + 0.05 * (z - n.z))
        d = np.sqrt(dx * dx + dy * dy) - rs * wob
        # the soft edge is wider than a pixel: real nodules fade into the parenchyma
        _paint(img, np.clip(0.5 - d / (1.6 * px), 0, 1) * np.clip(lung * 2.0, 0, 1), n.hu)
    if p.table is not None:
        _paint_table(img, p, _soft(body, px), c, px)
    return img, shown


def _inside_fov(p: _Patient, n: _Nodule, rs: float, size: int) -> bool:
    """Whether a nodule's cross-section lies wholly inside the reconstruction circle."""
    ca, sa = np.cos(p.angle), np.sin(p.angle)
    u, v = n.x, n.y + 0.04 * p.B
    x0, y0 = ca * u - sa * v + p.cx, sa * u + ca * v + p.cy  # inverse of render_phantom's mapping
    px = _fov(p) / size
    radius = (size - 1) / 2 * px
    return float(np.hypot(x0, y0)) + rs * (1.0 + NODULE_LOBULATION) + 3 * px <= radius


def _paint_table(img: np.ndarray, p: _Patient, body_cover: np.ndarray, c: np.ndarray, px: float) -> None:
    """A couch under the patient (image coordinates, outside the body): dense skins, foam core."""
    assert p.table is not None
    gap, thick, half_w, skin_hu, core_hu = p.table
    rows = np.flatnonzero(body_cover.max(axis=1) > 0.5)
    if len(rows) == 0:
        return
    top = c[rows[-1]] + px / 2 + gap
    X0, Y0 = np.meshgrid(c, c)
    curve = 0.15 * thick * (X0 / half_w) ** 2  # slightly curved up at the sides
    outer = np.maximum(np.maximum(top - curve - Y0, Y0 - (top - curve + thick)), np.abs(X0) - half_w)
    inner = outer + 1.5
    free = 1.0 - body_cover
    _paint(img, _soft(outer, px) * free, skin_hu)
    _paint(img, _soft(inner, px) * free, core_hu)


def _acquire(hu: np.ndarray, i0: float, rng: np.random.Generator, p: _Patient | None = None,
             fx: np.random.Generator | None = None) -> np.ndarray:
    """Simulate a CT scan of an HU image: radon, photon noise, filtered back-projection.

    With a randomised patient ``p`` the scanner varies too (views, kernel, post-filter, ring
    and streak artefacts; ``fx`` draws the per-slice artefacts).
    """
    if p is not None and p.randomized:
        return _acquire_random(hu, p, rng, fx if fx is not None else np.random.default_rng(0))
    from skimage.transform import iradon, radon

    size = hu.shape[0]
    px = FOV_MM / size
    mu = np.clip((hu + 1000.0) / 1000.0, 0.0, None) * MU_WATER_PER_MM * px  # per pixel
    yy, xx = np.mgrid[:size, :size]
    outside = (xx - (size - 1) / 2) ** 2 + (yy - (size - 1) / 2) ** 2 > ((size - 1) / 2) ** 2
    mu[outside] = 0.0  # radon(circle=True) needs zero outside the inscribed circle
    angles = np.linspace(0.0, 180.0, N_ANGLES, endpoint=False)
    sino = radon(mu, theta=angles, circle=True)
    counts = rng.poisson(i0 * np.exp(-sino))
    sino_noisy = -np.log(np.maximum(counts, 1) / i0)
    rec = iradon(sino_noisy, theta=angles, filter_name=RECON_FILTER, circle=True, output_size=size)
    return rec / (MU_WATER_PER_MM * px) * 1000.0 - 1000.0


def _acquire_random(hu: np.ndarray, p: _Patient, rng: np.random.Generator, fx: np.random.Generator) -> np.ndarray:
    from scipy import ndimage
    from skimage.transform import iradon, radon

    size = hu.shape[0]
    px = _fov(p) / size
    mu = np.clip((hu + 1000.0) / 1000.0, 0.0, None) * MU_WATER_PER_MM * px
    yy, xx = np.mgrid[:size, :size]
    outside = (xx - (size - 1) / 2) ** 2 + (yy - (size - 1) / 2) ** 2 > ((size - 1) / 2) ** 2
    outside |= (xx - size // 2) ** 2 + (yy - size // 2) ** 2 > (size // 2) ** 2  # skimage's circle too
    mu[outside] = 0.0
    angles = np.linspace(0.0, 180.0, p.n_angles, endpoint=False)
    sino = radon(mu, theta=angles, circle=True)
    counts = rng.poisson(p.i0 * np.exp(-sino))
    sino_noisy = -np.log(np.maximum(counts, 1) / p.i0)
    centre = sino.shape[0] // 2
    if p.ring is not None:  # a miscalibrated detector channel: a ring at that radius
        off, strength = p.ring
        k = int(np.clip(centre + round(off), 0, sino.shape[0] - 1))
        sino_noisy[k, :] += strength * float(sino.max() + 1e-6)
    if fx.random() < p.streak_p:  # a few corrupted views (photon starvation, motion): streaks
        for _ in range(int(fx.integers(1, 4))):
            a = int(fx.integers(len(angles)))
            sino_noisy[:, a] *= float(fx.uniform(0.7, 1.4))
    rec = iradon(sino_noisy, theta=angles, filter_name=p.recon_filter, circle=True, output_size=size)
    out = rec / (MU_WATER_PER_MM * px) * 1000.0 - 1000.0
    if p.post_sigma > 0.05:  # a softer kernel
        out = ndimage.gaussian_filter(out, p.post_sigma)
    elif p.post_sigma < -0.05:  # a sharper one (unsharp mask)
        out = out + (-p.post_sigma) * (out - ndimage.gaussian_filter(out, 1.0))
    return out


def _to_dicom_bytes(p: _Patient, spec: SyntheticSpec, j: int, hu: np.ndarray) -> bytes:
    from pydicom import dcmwrite
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=["lepton-vision-synthetic-ct", str(spec.seed), *map(str, parts)])

    size = hu.shape[0]
    fov = _fov(p)
    px = fov / size
    stored = np.clip(np.round(hu) - RESCALE_INTERCEPT, 0, 4095).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid(p.patient_id, "slice", j, spec.image_size)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid(p.patient_id, "study")
    ds.SeriesInstanceUID = uid(p.patient_id, "series", spec.image_size)
    ds.FrameOfReferenceUID = uid(p.patient_id, "frame")
    ds.Modality = "CT"
    ds.Manufacturer = "lepton-vision synthetic phantom"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Synthetic chest CT (not a patient)"
    ds.PatientName = f"Synthetic^{p.patient_id}"
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = j + 1
    z = -float(p.z_slices[j])  # DICOM z grows towards the head; the slab runs head to feet
    ds.ImagePositionPatient = [round(-fov / 2 + px / 2, 4), round(-fov / 2 + px / 2, 4), round(z, 4)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = round(z, 4)
    ds.SliceThickness = round(p.spacing, 4)
    ds.PixelSpacing = [round(px, 6), round(px, 6)]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = RESCALE_INTERCEPT
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = WINDOW_CENTER
    ds.WindowWidth = WINDOW_WIDTH
    ds.PixelData = stored.tobytes()
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _to_nifti_bytes(p: _Patient, slices: list[np.ndarray]) -> bytes:
    """A patient's slab as a gzipped NIfTI-1 volume: int16 HU, RAS affine in mm.

    Values are the DICOM layout's HU exactly (rounded, clipped to the 12-bit stored range).
    Voxel index i increases to the patient's right (R), j anteriorly (A) and k superiorly (S),
    so the volume is already canonical (RAS); slice k is DICOM slice n-1-k.
    """
    import gzip

    import nibabel as nib

    size = slices[0].shape[0]
    px = _fov(p) / size
    n = len(slices)
    data = np.empty((size, size, n), dtype=np.int16)
    for j, hu in enumerate(slices):
        stored = np.clip(np.round(hu) - RESCALE_INTERCEPT, 0, 4095) + RESCALE_INTERCEPT
        # DICOM display rows run anterior->posterior and columns right->left: flip both, transpose
        data[:, :, n - 1 - j] = stored[::-1, ::-1].T.astype(np.int16)
    half = _fov(p) / 2 - px / 2  # centre of the outermost pixel
    affine = np.diag([px, px, p.spacing, 1.0])
    affine[:3, 3] = [-half, -half, -float(p.z_slices[-1])]  # DICOM z = -depth; S grows to the head
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header["descrip"] = b"lepton-vision synthetic chest CT (HU)"
    return gzip.compress(img.to_bytes(), mtime=0)  # mtime 0: same seed, same bytes


def _abnormal_flags(spec: SyntheticSpec) -> list[bool]:
    """Which patients have nodules: the ones with the lowest per-patient draw (exact fraction)."""
    return list(_abnormal_flags_cached(spec.seed, spec.n_patients, spec.abnormal_patient_fraction))


@functools.lru_cache(maxsize=16)
def _abnormal_flags_cached(seed: int, n: int, fraction: float) -> tuple[bool, ...]:
    k = int(np.clip(round(fraction * n), 1, n - 1))
    draws = [np.random.default_rng(_patient_seed(seed, i).spawn(2)[1]).random() for i in range(n)]
    order = np.argsort(draws, kind="stable")
    flags = [False] * n
    for i in order[:k]:
        flags[int(i)] = True
    return tuple(flags)


def iter_ct_slices(spec: SyntheticSpec, start: int, stop: int) -> Iterator[tuple[np.ndarray, int]]:
    """Stream slices ``start .. stop - 1`` in memory, without writing files.

    Slice index ``i`` is slice ``i % spec.slices_per_patient`` of patient
    ``i // spec.slices_per_patient`` (whose abnormality follows the generator's rule); a
    patient is built once and reused for its consecutive slices. The function is top level and
    needs no TensorFlow, so worker processes can call it.

    Args:
        spec: ct_phantom settings (``randomization`` included).
        start: First slice index (0-based).
        stop: One past the last, at most ``n_patients * slices_per_patient``.

    Yields:
        ``(hu, label)``: ``hu`` float32 [S, S] in Hounsfield units, what
        :func:`generate_ct_dataset` writes for that slice before the DICOM integer rounding
        (clipped to the DICOM 12-bit stored range -1024..3071 HU, so it differs from the
        file's HU by at most 0.5); ``label`` 1 when a nodule is drawn on the slice (the
        dataset's ``abnormal``), else 0.

    Raises:
        ValueError: ``start``/``stop`` outside the dataset's slices.
    """
    n = spec.n_patients * spec.slices_per_patient
    if not 0 <= start <= stop <= n:
        raise ValueError(f"slices {start}..{stop} outside 0..{n}")
    return _iter_ct_slices(spec, start, stop)


def _iter_ct_slices(spec: SyntheticSpec, start: int, stop: int) -> Iterator[tuple[np.ndarray, int]]:
    flags = _abnormal_flags_cached(spec.seed, spec.n_patients, spec.abnormal_patient_fraction)
    lo, hi = RESCALE_INTERCEPT, RESCALE_INTERCEPT + 4095
    p: _Patient | None = None
    for i in range(start, stop):
        pi, j = divmod(i, spec.slices_per_patient)
        if p is None or p.index != pi:
            p = _make_patient(spec, pi, flags[pi])
        hu, shown = _slice(p, spec, j)
        yield np.clip(hu, lo, hi).astype(np.float32), int(shown > 0)


def simulate_patient_slices(spec: SyntheticSpec, index: int, abnormal: bool) -> list[tuple[np.ndarray, int]]:
    """Generate one patient's slab without writing files.

    Args:
        spec: Generator settings.
        index: Patient index (0-based); the patient is the same whatever ``spec.n_patients``.
        abnormal: Whether the patient has nodules.

    Returns:
        One ``(hu, nodule_count)`` per slice; ``hu`` is float64 HxW after simulated acquisition.
    """
    p = _make_patient(spec, index, abnormal)
    return [_slice(p, spec, j) for j in range(spec.slices_per_patient)]


def _slice(p: _Patient, spec: SyntheticSpec, j: int) -> tuple[np.ndarray, int]:
    assert p.seed_seq is not None
    rng = np.random.default_rng(np.random.SeedSequence(entropy=spec.seed, spawn_key=(p.index, 1000 + j)))
    phantom, shown = render_phantom(p, float(p.z_slices[j]), spec.image_size, rng)
    if p.randomized:
        fx = np.random.default_rng(np.random.SeedSequence(entropy=spec.seed, spawn_key=(p.index, 0xD0, j)))
        return _acquire(phantom, p.i0, rng, p, fx), shown
    return _acquire(phantom, p.i0, rng), shown


_README = """Synthetic chest CT (lepton-vision embedded default data)

NOT PATIENT DATA. Every image here was generated by lepton_vision.data.synthetic.ct from a mathematical
chest phantom (body, fat, ribs, spine, lungs, airways, a 3-D vessel tree, heart, aorta), projected
with a Radon transform, given photon noise and reconstructed by filtered back-projection.

Layout:
  <PatientID>/<slice:03d>.dcm   one axial slice per file (CT Image Storage, HU = stored - 1024)
  labels.csv                    path,label,patient_id,slice_index,nodule_count
                                label is 'abnormal' exactly when nodule_count > 0

Abnormal patients have 2-4 lung nodules spanning a few slices; their other slices are 'normal'.
Group cross-validation by patient_id: slices of one patient are strongly correlated.
labels.csv is written last: if it exists, the dataset is complete.

Generator settings: {settings}
"""


_README_VOLUMES = {
    "dicom_series": _README.replace(
        """  labels.csv                    path,label,patient_id,slice_index,nodule_count""",
        """  series.csv                    series,slice_index,label,patient_id,nodule_count
                                one row per slice; series is the folder, slice_index is
                                0-based inferior -> superior (file 000.dcm is the top slice)""",
    ).replace("labels.csv is written last", "series.csv is written last"),
    "nifti": _README.replace(
        """  <PatientID>/<slice:03d>.dcm   one axial slice per file (CT Image Storage, HU = stored - 1024)
  labels.csv                    path,label,patient_id,slice_index,nodule_count""",
        """  <PatientID>.nii.gz            one volume per patient (int16 HU, RAS affine in mm)
  volumes.csv                   volume,slice_index,label,patient_id,nodule_count
                                one row per slice; slice_index is 0-based inferior -> superior""",
    ).replace("labels.csv is written last", "volumes.csv is written last"),
}


def generate_ct_dataset(out_dir: str | Path, spec: SyntheticSpec, progress: bool = True) -> dict[str, Any]:
    """Generate the synthetic chest CT dataset as DICOM files plus ``labels.csv``.

    ``spec.layout`` picks the files: ``slices`` (DICOM per slice + labels.csv), ``dicom_series``
    (the same DICOM folders + series.csv) or ``nifti`` (one ``<PatientID>.nii.gz`` per patient +
    volumes.csv); the pixels are the same in all three.

    Args:
        out_dir: Output folder (created). The layout's manifest (:data:`LAYOUT_MANIFESTS`) is
            written last and atomically, so its presence means the dataset is complete.
        spec: Generator settings (patients, slices per patient, image size, abnormal fraction,
            seed).
        progress: Show a progress bar.

    Returns:
        Summary: ``n_patients``, ``n_slices``, ``n_abnormal_slices``, ``n_abnormal_patients``,
        ``seconds``.
    """
    import pandas as pd
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = out / LAYOUT_MANIFESTS[spec.layout]
    if labels.exists():  # regenerating: drop the completeness marker first
        labels.unlink()
    flags = _abnormal_flags(spec)
    rows = []
    n = spec.slices_per_patient
    total = spec.n_patients * spec.slices_per_patient
    bar = Progress(
        TextColumn("[bold]synthetic CT"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress,
        transient=False,
    )
    with bar:
        task = bar.add_task("slices", total=total)
        for i in range(spec.n_patients):
            p = _make_patient(spec, i, flags[i])
            volume = []
            for j in range(spec.slices_per_patient):
                hu, shown = _slice(p, spec, j)
                label = "abnormal" if shown else "normal"
                if spec.layout == "nifti":
                    volume.append(hu)
                    rows.append(
                        {"volume": f"{p.patient_id}.nii.gz", "slice_index": n - 1 - j, "label": label,
                         "patient_id": p.patient_id, "nodule_count": shown}
                    )
                    bar.advance(task)
                    continue
                rel = f"{p.patient_id}/{j:03d}.dcm"
                atomic_write_bytes(out / rel, _to_dicom_bytes(p, spec, j, hu))
                if spec.layout == "dicom_series":
                    # the reader orders a series inferior -> superior; the slab runs head -> feet
                    rows.append(
                        {"series": p.patient_id, "slice_index": n - 1 - j, "label": label,
                         "patient_id": p.patient_id, "nodule_count": shown}
                    )
                else:
                    rows.append(
                        {
                            "path": rel,
                            "label": label,
                            "patient_id": p.patient_id,
                            "slice_index": j,
                            "nodule_count": shown,
                        }
                    )
                bar.advance(task)
            if spec.layout == "nifti":
                atomic_write_bytes(out / f"{p.patient_id}.nii.gz", _to_nifti_bytes(p, volume))
    if spec.layout == "slices":
        frame = pd.DataFrame(rows, columns=LABEL_COLUMNS)
    else:
        columns = SERIES_COLUMNS if spec.layout == "dicom_series" else VOLUME_COLUMNS
        frame = pd.DataFrame(rows, columns=columns).sort_values([columns[0], "slice_index"], kind="stable")
    readme = _README if spec.layout == "slices" else _README_VOLUMES[spec.layout]
    # randomization only when set: the default data stays byte-identical to before the field
    exclude = None if spec.randomization else {"randomization"}
    atomic_write_text(out / "README.txt", readme.format(settings=spec.model_dump_json(exclude=exclude)))
    atomic_write_csv(labels, frame)
    return {
        "n_patients": spec.n_patients,
        "n_abnormal_patients": int(sum(flags)),
        "n_slices": len(frame),
        "n_abnormal_slices": int((frame["label"] == "abnormal").sum()),
        "seconds": round(time.perf_counter() - started, 3),
    }

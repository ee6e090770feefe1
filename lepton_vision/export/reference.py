"""What "normal input" looked like at export, and how far an input is from it (out of distribution).

An export stores a compact reference of its training images (``reference.npz``, described in
bundle.json's ``reference``):

* the model's own view: the penultimate layer's pooled features (the kind says which layer),
  summarised by their mean and a PCA basis (at most :data:`MAX_COMPONENTS` directions) with the
  variance along each direction and the mean residual outside them;
* what the camera or scanner delivered: per-image statistics of the network input
  (:data:`IMAGE_STATS`: brightness, contrast, sharpness, and the image's own size), summarised by
  their median and spread;
* what the model answered: a sample and quantiles of the out-of-fold scores, and the rate of
  positive decisions (classification) or alarms (detection) at the exported threshold.

An input's **OOD score** combines two distances: the feature distance (mean squared
Mahalanobis distance in the PCA subspace plus the scaled residual) and the image-statistics
distance (Mahalanobis distance of the robustly standardised statistics), each divided by its ``1 - rate/2`` quantile on training
images held back from the reference fit (group cross-fitting: patients, sequences; see
:func:`fit_reference`). ``ood_score =
max(feature / q_feature, stats / q_stats)``; an input is in distribution when ``ood_score <= 1``,
so at most about ``rate`` of held-back training images are flagged (``false_flag_rate`` in bundle.json,
measured, not assumed).

The same formula runs in numpy here (:func:`ood_scores`) and inside the SavedModel's
``serve_ood`` signature (:func:`ood_graph`); the export checks they agree. No TensorFlow at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lepton_vision.config.errors import ExportError

REFERENCE_FILE = "reference.npz"
#: Bumped when the reference's arrays or formula change; readers refuse versions they do not know.
REFERENCE_VERSION = 1
#: Per-image statistics of the network input (pixels 0..255 after resize or letterbox) and of
#: the original image's size.
IMAGE_STATS = ("brightness", "contrast", "sharpness", "log_height", "log_width")
#: PCA directions kept at most (enough for the variance of small-data features, and the file
#: stays well under 1 MB even for 1280-wide features).
MAX_COMPONENTS = 32
#: Share of the feature variance the kept directions explain (fewer directions when enough).
EXPLAINED = 0.98
#: Default share of held-back training images flagged out of distribution.
FALSE_FLAG_RATE = 0.02
#: Training images the reference is fitted on (and held back from it) at most.
MAX_IMAGES = 1024
#: Out-of-fold scores kept for the monitor's distribution tests.
SCORE_SAMPLE = 2000
EPS = 1e-6
#: Ridge added to the covariance of the standardised image statistics.
STATS_RIDGE = 0.1
#: Smallest variance kept (float32 squares of features stay well above it).
TINY = 1e-20
#: Fewest images the reference needs (at least MIN_FIT + MIN_HELD_BACK, in two or more groups).
MIN_FIT, MIN_HELD_BACK = 8, 4
#: Group folds the threshold is cross-fitted on (fewer when there are fewer groups).
CROSS_FIT_FOLDS = 5


class TooFewImages(ExportError):
    """The training data is too small for an OOD reference; the export goes on without one."""


# ---------------------------------------------------------------------------------------------
# Image statistics (numpy; the graph twin is in ood_graph)


def image_stats(x: np.ndarray, orig_hw: tuple[int, int]) -> np.ndarray:
    """:data:`IMAGE_STATS` of one network input.

    Args:
        x: float ``[h, w, C]`` pixels in 0..255, as the network gets them (resized or letterboxed).
        orig_hw: The original image's (height, width).

    Returns:
        float64 ``[5]``: mean and standard deviation of the grey image / 255, log(1 + variance of
        its 4-neighbour Laplacian), log height, log width.
    """
    g = np.asarray(x, np.float32).mean(axis=-1)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return np.array([g.mean() / 255.0, g.std() / 255.0, np.log1p(lap.var()),
                     np.log(float(orig_hw[0])), np.log(float(orig_hw[1]))], np.float64)


# ---------------------------------------------------------------------------------------------
# The reference


@dataclass
class Reference:
    """The arrays of ``reference.npz`` and the summary that goes into bundle.json."""

    mean: np.ndarray  # [d] feature mean
    components: np.ndarray  # [k, d] PCA directions (rows, unit length)
    variances: np.ndarray  # [k] variance along each direction (floored)
    residual: float  # mean squared residual per dimension outside the k directions
    stats_center: np.ndarray  # [s] median of each image statistic
    stats_scale: np.ndarray  # [s] robust spread (1.4826 x MAD, floored)
    stats_precision: np.ndarray  # [s, s] inverse covariance of the standardised statistics (+ ridge)
    q_feature: float  # normalisers: the 1 - rate/2 quantiles on held-back images
    q_stats: float
    scores: np.ndarray  # sample of out-of-fold scores (classification score / detection image score)
    summary: dict[str, Any] = field(default_factory=dict)

    def save(self, export_dir: Path) -> Path:
        """Write ``reference.npz`` (float32 arrays) and return its path."""
        import io

        from lepton_vision.runio import atomic_write_bytes

        buf = io.BytesIO()
        np.savez_compressed(
            buf, version=np.int32(REFERENCE_VERSION), mean=self.mean.astype(np.float32),
            components=self.components.astype(np.float32), variances=self.variances.astype(np.float32),
            residual=np.float32(self.residual), stats_center=self.stats_center.astype(np.float32),
            stats_scale=self.stats_scale.astype(np.float32),
            stats_precision=self.stats_precision.astype(np.float32), q_feature=np.float32(self.q_feature),
            q_stats=np.float32(self.q_stats), scores=self.scores.astype(np.float32),
        )
        path = Path(export_dir) / REFERENCE_FILE
        atomic_write_bytes(path, buf.getvalue())
        return path


def load_reference(export_dir: Path, bundle: dict[str, Any]) -> Reference | None:
    """The reference of an export, or None when its bundle has none (exported before references).

    Raises:
        ExportError: The bundle names a reference that is missing, unreadable or of an unknown version.
    """
    info = bundle.get("reference")
    if not info:
        return None
    path = Path(export_dir) / info.get("file", REFERENCE_FILE)
    try:
        z = np.load(path)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read the OOD reference: {exc}. Re-run the export.", file=str(path)) from exc
    with z:
        version = int(z["version"])
        if version != REFERENCE_VERSION:
            raise ExportError(f"unknown reference version {version}; this lepton-vision reads {REFERENCE_VERSION}. "
                              "Upgrade lepton-vision or re-export.", file=str(path))
        return Reference(mean=z["mean"].astype(np.float64), components=z["components"].astype(np.float64),
                         variances=z["variances"].astype(np.float64), residual=float(z["residual"]),
                         stats_center=z["stats_center"].astype(np.float64),
                         stats_scale=z["stats_scale"].astype(np.float64),
                         stats_precision=z["stats_precision"].astype(np.float64), q_feature=float(z["q_feature"]),
                         q_stats=float(z["q_stats"]), scores=z["scores"].astype(np.float64), summary=dict(info))


def raw_distances(ref: Reference, features: np.ndarray, stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(feature distance, statistics distance) per input, before normalisation.

    The feature distance is the mean of ``z_i^2 / variance_i`` over the PCA directions plus the
    residual's mean square per dimension divided by the reference residual; the statistics
    distance is the Mahalanobis distance of the robustly standardised statistics (so a blurred
    frame whose sharpness no longer fits its contrast stands out even when each is in range).
    """
    f = np.atleast_2d(np.asarray(features, np.float64)) - ref.mean
    z = f @ ref.components.T
    d = f.shape[1]
    k = len(ref.variances)
    r = f - z @ ref.components  # the part outside the kept directions (explicit: no cancellation)
    resid = (r * r).sum(axis=1) / max(d - k, 1)
    feat = (z * z / ref.variances).sum(axis=1) / max(k, 1) + resid / ref.residual
    s = (np.atleast_2d(np.asarray(stats, np.float64)) - ref.stats_center) / ref.stats_scale
    return feat, np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", s, ref.stats_precision, s), 0.0))


def ood_scores(ref: Reference, features: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """The OOD score per input (in distribution when <= 1)."""
    feat, st = raw_distances(ref, features, stats)
    return np.maximum(feat / ref.q_feature, st / ref.q_stats)


def _fit_arrays(features: np.ndarray, stats: np.ndarray) -> tuple[Reference, float]:
    """The reference's arrays fitted on ``features``/``stats`` (normalisers 1), and the share of
    feature variance its PCA directions explain."""
    mean = features.mean(axis=0)
    centred = features - mean
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    var = sv ** 2 / max(len(features) - 1, 1)
    total = float(var.sum()) or 1.0
    k = int(min(MAX_COMPONENTS, len(features) - 1, np.searchsorted(np.cumsum(var) / total, EXPLAINED) + 1))
    k = max(k, 1)
    # Floors relative to the largest variance (the distance is scale-free: a detector whose
    # pooled features barely vary still gets a working reference), never below TINY.
    floor = max(float(var[0]) * 1e-4, TINY)
    comps = vt[:k]
    d = features.shape[1]
    r = centred - (centred @ comps.T) @ comps
    residual = max(float((r * r).sum(axis=1).mean()) / max(d - k, 1), float(var[0]) * 1e-8, TINY)
    center = np.median(stats, axis=0)
    mad = np.median(np.abs(stats - center), axis=0) * 1.4826
    # A statistic that barely varies in training (the image size of a fixed-size scanner) gets a
    # floor of 5 % of its typical magnitude, so a rounding-level change does not count as drift.
    scale = np.maximum(mad, np.maximum(0.05 * np.abs(center), 0.01))
    z = (stats - center) / scale
    # The ridge keeps statistics that never vary in training (a fixed image size) usable, and was
    # the best of 0.03/0.1/0.3 on generated CT and street scenes (blur and noise flagged, 1 % of
    # new images flagged).
    precision = np.linalg.inv(np.atleast_2d(np.cov(z.T)) + STATS_RIDGE * np.eye(z.shape[1]))
    ref = Reference(mean=mean, components=comps, variances=np.maximum(var[:k], floor), residual=residual,
                    stats_center=center, stats_scale=scale, stats_precision=precision, q_feature=1.0, q_stats=1.0,
                    scores=np.zeros(0))
    return ref, float(var[:k].sum() / total)


def fit_reference(features: np.ndarray, stats: np.ndarray, groups: np.ndarray, scores: np.ndarray,
                  seed: int, false_flag_rate: float = FALSE_FLAG_RATE, score_name: str = "score") -> Reference:
    """The reference of an export from its training images.

    The arrays are fitted on all images. The normalisers (the threshold) come from images the fit
    did not see: the groups are split into :data:`CROSS_FIT_FOLDS` folds, each fold's distances are
    measured with a reference fitted on the other folds, and ``q`` is the ``1 - rate/2`` quantile
    of these held-back distances, so every training image is held back once. (One held-back
    quarter set the threshold from a handful of groups and flagged 11 % of new street scenes
    instead of 2 %.) The final reference is fitted on more images than each fold's, so new
    images like the training data score slightly lower: the stated rate is an upper estimate.

    Args:
        features: ``[N, d]`` pooled features of the final model on training images.
        stats: ``[N, 5]`` :func:`image_stats` of the same images.
        groups: ``[N]`` group ids (patients, sequences; "" for none): folds keep groups whole.
        scores: Out-of-fold scores (the score distribution a deployment should see).
        seed: Fold seed.
        false_flag_rate: Share of held-back images to flag (the union of the two distances).
        score_name: What ``scores`` are ("score", "image_score"), for bundle.json.

    Raises:
        TooFewImages: Fewer than :data:`MIN_FIT` + :data:`MIN_HELD_BACK` images or fewer than two groups.
    """
    from sklearn.model_selection import GroupKFold

    features = np.asarray(features, np.float64)
    stats = np.asarray(stats, np.float64)
    n = len(features)
    g = np.asarray(groups, dtype=object).astype(str)
    g = np.where(g == "", np.array([f"\x00{i}" for i in range(n)], dtype=object), g)
    n_groups = len(set(g.tolist()))
    folds = min(CROSS_FIT_FOLDS, n_groups)
    if n < MIN_FIT + MIN_HELD_BACK or folds < 2:
        raise TooFewImages(f"an OOD reference needs at least {MIN_FIT + MIN_HELD_BACK} training images in two or "
                           f"more groups. Got {n} images in {n_groups} group(s).")
    feat_cal, st_cal = np.empty(n), np.empty(n)
    for fit_idx, cal_idx in GroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(features, groups=g):
        part, _ = _fit_arrays(features[fit_idx], stats[fit_idx])
        feat_cal[cal_idx], st_cal[cal_idx] = raw_distances(part, features[cal_idx], stats[cal_idx])
    ref, explained = _fit_arrays(features, stats)
    q = 1.0 - false_flag_rate / 2.0
    # "higher": an observed held-back distance, so at most rate/2 of them lie beyond it (few images).
    ref.q_feature = max(float(np.quantile(feat_cal, q, method="higher")), EPS)
    ref.q_stats = max(float(np.quantile(st_cal, q, method="higher")), EPS)
    flagged = float(np.mean(np.maximum(feat_cal / ref.q_feature, st_cal / ref.q_stats) > 1.0))
    rng = np.random.default_rng(seed)
    s = np.asarray(scores, np.float64)
    s = s[np.isfinite(s)]
    ref.scores = rng.choice(s, size=SCORE_SAMPLE, replace=False) if len(s) > SCORE_SAMPLE else s
    ref.summary = {
        "file": REFERENCE_FILE,
        "version": REFERENCE_VERSION,
        "n_fit": int(n),
        "n_groups": int(n_groups),
        "held_back": f"{folds}-fold cross-fit by group: every image held back once",
        "feature_dim": int(features.shape[1]),
        "components": int(len(ref.variances)),
        "explained_variance": round(explained, 4),
        "image_stats": list(IMAGE_STATS),
        "stats_median": [round(float(v), 5) for v in ref.stats_center],
        "stats_spread": [round(float(v), 5) for v in ref.stats_scale],
        "false_flag_rate": float(false_flag_rate),
        "held_back_flagged": round(flagged, 4),
        "ood_threshold": 1.0,
        "score": score_name,
        "score_quantiles": [round(float(v), 5) for v in np.quantile(s, np.linspace(0, 1, 11))] if len(s) else [],
        "formula": "ood_score = max(feature_distance / q_feature, stats_distance / q_stats); "
                   "in_distribution = ood_score <= 1 (reference.npz holds the arrays)",
    }
    return ref


# ---------------------------------------------------------------------------------------------
# The graph twin (TensorFlow, imported lazily)


def ood_graph(ref: Reference, features: Any, x: Any, orig_hw: Any) -> dict[str, Any]:
    """The OOD outputs inside a SavedModel: the same formula as :func:`ood_scores`.

    Args:
        ref: The reference.
        features: float32 ``[d]`` pooled features of one input.
        x: float32 ``[h, w, C]`` network input, pixels 0..255.
        orig_hw: float32 ``[2]`` original (height, width).

    Returns:
        ``{"ood_score": float32 [], "in_distribution": int32 [], "image_stats": float32 [5]}``.
    """
    import tensorflow as tf

    g = tf.reduce_mean(x, axis=-1)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    lap_mean = tf.reduce_mean(lap)
    g_mean = tf.reduce_mean(g)
    stats = tf.stack([
        g_mean / 255.0,
        tf.sqrt(tf.reduce_mean(tf.square(g - g_mean))) / 255.0,
        tf.math.log1p(tf.reduce_mean(tf.square(lap - lap_mean))),
        tf.math.log(orig_hw[0]),
        tf.math.log(orig_hw[1]),
    ])
    f = tf.cast(features, tf.float32) - tf.constant(ref.mean, tf.float32)
    comps = tf.constant(ref.components, tf.float32)
    z = tf.linalg.matvec(comps, f)
    d = int(ref.mean.shape[0])
    k = int(ref.variances.shape[0])
    r = f - tf.linalg.matvec(comps, z, transpose_a=True)
    resid = tf.reduce_sum(r * r) / float(max(d - k, 1))
    feat = tf.reduce_sum(z * z / tf.constant(ref.variances, tf.float32)) / float(max(k, 1)) + resid / float(ref.residual)
    zs = (stats - tf.constant(ref.stats_center, tf.float32)) / tf.constant(ref.stats_scale, tf.float32)
    st = tf.sqrt(tf.maximum(tf.reduce_sum(zs * tf.linalg.matvec(tf.constant(ref.stats_precision, tf.float32), zs)), 0.0))
    score = tf.maximum(feat / float(ref.q_feature), st / float(ref.q_stats))
    return {"ood_score": score, "in_distribution": tf.cast(score <= 1.0, tf.int32), "image_stats": stats}


def ood_endpoint(ref: Reference, prep: Any, features: Any, channels: int) -> Any:
    """The ``serve_ood`` SavedModel signature: one uint8 image ``[H, W, C]`` (any size) ->
    ``ood_score``, ``in_distribution``, ``image_stats`` and ``features``.

    Args:
        ref: The reference.
        prep: ``image uint8 [H, W, C] -> float32 [h, w, C]`` in 0..255: the network input before
            scaling (the kind's resize or letterbox).
        features: ``float32 [1, h, w, C] 0..255 -> float32 [1, d]``: the kind's pooled features.
        channels: C.
    """
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, channels], tf.uint8, name="image")])
    def serve_ood(image: Any) -> dict[str, Any]:
        image = tf.ensure_shape(image, [None, None, channels], name="expect_HxWxC_uint8")
        x = prep(image)
        f = tf.reshape(features(tf.expand_dims(x, 0)), [-1])
        out = ood_graph(ref, f, x, tf.cast(tf.shape(image)[:2], tf.float32))
        return {**out, "features": f}

    return serve_ood


OOD_SIGNATURE = "serve_ood"
OOD_TFLITE_FILE = "model_ood.tflite"
#: Agreement required between the numpy formula, the SavedModel and LiteRT (relative + absolute).
OOD_RTOL, OOD_ATOL = 1e-3, 1e-3


def check_ood_export(export_dir: Path, sm_path: Path, ref: Reference, images: list[np.ndarray],
                     expected: np.ndarray, tflite: bool) -> dict[str, Any]:
    """After the SavedModel is written: convert ``serve_ood`` to LiteRT (``tflite``) and check
    that the SavedModel and LiteRT give the numpy formula's OOD scores on ``images``.

    Returns:
        bundle.json's ``reference`` entry: the reference summary, the files and the parity.

    Raises:
        ExportError: A backend disagrees with the formula beyond the tolerance, or the LiteRT
            conversion fails.
    """
    import tensorflow as tf

    from lepton_vision.runio import atomic_write_bytes

    from lepton_vision.export.bundle import load_saved_model

    serve = load_saved_model(sm_path).signatures[OOD_SIGNATURE]
    got = {"saved_model": np.array([float(serve(image=tf.constant(im))["ood_score"]) for im in images])}
    files = {"signature": OOD_SIGNATURE}
    out_path = Path(export_dir) / OOD_TFLITE_FILE
    out_path.unlink(missing_ok=True)
    if tflite:
        conv = tf.lite.TFLiteConverter.from_saved_model(str(sm_path), signature_keys=[OOD_SIGNATURE])
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            flat = conv.convert()
        except Exception as exc:
            raise ExportError(f"{out_path}: LiteRT conversion of {OOD_SIGNATURE} failed: {type(exc).__name__}: "
                              f"{str(exc)[:300]}") from exc
        atomic_write_bytes(out_path, flat)
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_content=flat).get_signature_runner(OOD_SIGNATURE)
        got["tflite"] = np.array([float(np.asarray(runner(image=np.ascontiguousarray(im))["ood_score"]).reshape(-1)[0])
                                  for im in images])
        files["tflite"] = {"path": OOD_TFLITE_FILE, "bytes": out_path.stat().st_size}
    worst = {k: float(np.max(np.abs(v - expected) / (OOD_ATOL + OOD_RTOL * np.abs(expected)))) for k, v in got.items()}
    parity = {"pass": all(w <= 1.0 for w in worst.values()), "n_images": len(images),
              "tolerance": {"rtol": OOD_RTOL, "atol": OOD_ATOL}, "worst_relative_error": worst,
              "numpy": expected.tolist(), **{k: v.tolist() for k, v in got.items()}}
    if not parity["pass"]:
        raise ExportError(f"{export_dir}: the exported OOD score differs from the reference formula "
                          f"(worst error in tolerance units {worst}). See bundle.json reference.parity.")
    return {**ref.summary, "files": {"reference": ref.summary["file"], **files}, "parity": parity}


def reference_or_none(fit: Any) -> Any:
    """``fit()`` (a kind's reference fit), or None, said on the console, when the training data
    is too small for a reference (:class:`TooFewImages`): the export goes on without one."""
    from lepton_vision.console import console

    try:
        return fit()
    except TooFewImages as e:
        console().print(f"[bold]no OOD reference in this export[/bold]: {e.message}")
        return None


def fit_from_images(images: list[np.ndarray], groups: Any, scores: np.ndarray, prep_np: Any, features_np: Any,
                    seed: int, score_name: str, batch: int = 32,
                    false_flag_rate: float = FALSE_FLAG_RATE) -> tuple[Reference, np.ndarray, np.ndarray]:
    """Features and statistics of training images, and the reference fitted on them.

    Args:
        images: uint8 images as the exported signatures take them.
        groups: Group per image (patients, sequences).
        scores: Out-of-fold scores.
        prep_np: ``image -> float32 [h, w, C]`` 0..255 network input (as ``prep`` in the graph).
        features_np: ``float32 [B, h, w, C] 0..255 -> [B, d]``.
        seed: Seed of the held-back split.
        score_name: What ``scores`` are.
        false_flag_rate: Share of held-back training images to flag (``export.ood_false_flag_rate``).

    Returns:
        (reference, features ``[N, d]``, stats ``[N, 5]``).
    """
    xs = [prep_np(im) for im in images]
    stats = np.stack([image_stats(x, im.shape[:2]) for x, im in zip(xs, images)])
    feats = np.concatenate([np.asarray(features_np(np.stack(xs[i:i + batch])), np.float64)
                            for i in range(0, len(xs), batch)])
    return (fit_reference(feats, stats, np.asarray(groups), scores, seed, false_flag_rate=false_flag_rate,
                          score_name=score_name), feats, stats)

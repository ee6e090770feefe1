"""Shortcut audit: can the label be predicted from what should not matter?

Before a model is trained, metadata-only models (scikit-learn gradient boosting) try to predict
the training target (classification: the label; detection: "an object is present") from the
file and acquisition properties of every image: file format, JPEG quality estimate, width,
height, aspect ratio, bit depth, channels, file size, DICOM manufacturer, reconstruction kernel
and slice thickness when present, and global intensity statistics. They are scored out of fold
on the run's own grouped folds, one model per feature and one on all of them, and every
out-of-fold ROC AUC gets a group-bootstrap CI. A feature whose CI lies above ``level`` (default
0.65) is **flagged**: the data carries a shortcut a CNN can learn instead of the anatomy or
the object (e.g. covid_ct, where every covid slice is a PNG and half the normal ones are JPEG).

No TensorFlow: the audit reads headers and pixels with OpenCV/pydicom and runs in seconds.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Default level: a flagged feature's CI lower end exceeds this out-of-fold AUC.
DEFAULT_LEVEL = 0.65

#: Metadata features: name -> (kind, what it is). "categorical" features are codes, the rest numbers.
FEATURES: dict[str, tuple[str, str]] = {
    "file_format": ("categorical", "file format / codec (from the file's magic bytes)"),
    "jpeg_quality": ("numeric", "JPEG quality estimate from the luminance quantisation table (IJG scale)"),
    "width": ("numeric", "image width in pixels"),
    "height": ("numeric", "image height in pixels"),
    "aspect_ratio": ("numeric", "width / height"),
    "bit_depth": ("numeric", "bits per sample (8, 16, DICOM BitsStored)"),
    "channels": ("numeric", "colour channels stored in the file"),
    "file_size_kb": ("numeric", "file size in KiB"),
    "dicom_manufacturer": ("categorical", "DICOM Manufacturer"),
    "dicom_kernel": ("categorical", "DICOM ConvolutionKernel"),
    "dicom_slice_thickness": ("numeric", "DICOM SliceThickness (mm)"),
    "intensity_mean": ("numeric", "mean pixel value (HU for DICOM/NIfTI)"),
    "intensity_std": ("numeric", "standard deviation of the pixel values"),
    "jpeg_blockiness": ("numeric", "pixel steps on the 8x8 JPEG block grid over those elsewhere (a JPEG "
                                   "history left in the pixels, whatever the file is stored as)"),
}

#: Features of the pixels themselves: the only ones the audit of what the model sees
#: (:func:`seen_table`, after ``input.reencode``) can score; the file-level ones do not reach the model.
PIXEL_FEATURES = ("width", "height", "aspect_ratio", "channels", "intensity_mean", "intensity_std", "jpeg_blockiness")

#: The IJG (libjpeg) standard luminance quantisation table, in zig-zag order, at quality 50.
_STD_LUMA = np.array([
    16, 11, 12, 14, 12, 10, 16, 14, 13, 14, 18, 17, 16, 19, 24, 40, 26, 24, 22, 22, 24, 49, 35, 37,
    29, 40, 58, 51, 61, 60, 57, 51, 56, 55, 64, 72, 92, 78, 64, 68, 87, 69, 55, 56, 80, 109, 81, 87,
    95, 98, 103, 104, 103, 62, 77, 113, 121, 112, 100, 120, 92, 101, 103, 99], np.float64)


def _format_of(head: bytes, path: Path) -> str:
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.startswith(b"\xff\xd8"):
        return "jpeg"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    return path.suffix.lower().lstrip(".") or "unknown"


def jpeg_quality(data: bytes) -> float | None:
    """The IJG quality (1-100) that best explains a JPEG's luminance quantisation table, or None.

    Reads the first DQT segment's table 0 and inverts libjpeg's scaling (scale = 5000 / q for
    q < 50, 200 - 2 q above) from the mean ratio to the standard table.
    """
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker == 0xDB:
            seg = data[i + 4:i + 2 + length]
            j = 0
            while j < len(seg):
                pq, tq = seg[j] >> 4, seg[j] & 0x0F
                size = 128 if pq else 64
                table = np.frombuffer(seg[j + 1:j + 1 + size], dtype=">u2" if pq else np.uint8).astype(np.float64)
                if tq == 0 and len(table) == 64:
                    scale = float(np.mean((table * 100.0) / _STD_LUMA))  # percent of the standard table
                    q = 5000.0 / scale if scale > 100 else (200.0 - scale) / 2.0
                    return float(np.clip(round(q, 1), 1, 100))
                j += 1 + size
        if marker == 0xDA:  # start of scan: no table found before the data
            return None
        i += 2 + length
    return None


def file_metadata(path: str | Path, max_pixels: int | None = None) -> dict[str, Any]:
    """The audit's features of one sample (:data:`FEATURES`); missing ones are None.

    ``path`` may name a NIfTI slice (``file.nii.gz#z=12``); unreadable pixels leave the intensity
    statistics None (the sample loader has already reported unreadable files).
    """
    from lepton_vision.data import preprocess

    file, _ = preprocess.split_slice(path)
    file = Path(file)
    out: dict[str, Any] = dict.fromkeys(FEATURES)
    try:
        raw = file.read_bytes()
    except OSError:
        return out
    out["file_size_kb"] = len(raw) / 1024.0
    fmt = _format_of(raw[:132], file)
    out["file_format"] = fmt
    if fmt == "jpeg":
        out["jpeg_quality"] = jpeg_quality(raw)
    if fmt == "dicom":
        try:
            import pydicom

            ds = pydicom.dcmread(file, stop_before_pixels=True)
            out["dicom_manufacturer"] = str(getattr(ds, "Manufacturer", "") or "") or None
            kernel = getattr(ds, "ConvolutionKernel", None)
            out["dicom_kernel"] = ("\\".join(map(str, kernel)) if isinstance(kernel, (list, tuple, pydicom.multival.MultiValue))
                                   else (str(kernel) if kernel else None))
            thick = getattr(ds, "SliceThickness", None)
            out["dicom_slice_thickness"] = float(thick) if thick not in (None, "") else None
            out["bit_depth"] = float(getattr(ds, "BitsStored", 0) or 0) or None
            out["channels"] = float(getattr(ds, "SamplesPerPixel", 1) or 1)
        except Exception:  # noqa: BLE001 - a header we cannot read leaves the DICOM fields empty
            pass
    try:
        kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
        px = preprocess.read_image(path, **kwargs)
    except Exception:  # noqa: BLE001 - DataError, or a decoder error the loader already reported
        return out
    if out["bit_depth"] is None and fmt not in ("dicom", "nifti"):
        out["bit_depth"] = float(px.dtype.itemsize * 8)
    _pixel_features(px, out)
    return out


def _pixel_features(px: np.ndarray, out: dict[str, Any]) -> None:
    """Size, channels, intensity statistics and JPEG blockiness of decoded pixels, into ``out``."""
    from lepton_vision.data.preprocess import jpeg_blockiness

    out["height"], out["width"] = float(px.shape[0]), float(px.shape[1])
    out["aspect_ratio"] = out["width"] / max(out["height"], 1.0)
    if out.get("channels") is None:
        out["channels"] = float(px.shape[2]) if px.ndim == 3 else 1.0
    grey = px.astype(np.float32).mean(axis=2) if px.ndim == 3 else px.astype(np.float32)
    out["intensity_mean"], out["intensity_std"] = float(grey.mean()), float(grey.std())
    out["jpeg_blockiness"] = round(jpeg_blockiness(grey), 4) if px.dtype == np.uint8 else None


def seen_metadata(path: str | Path, channels: int, window: Any, reencode_spec: dict | None,
                  max_pixels: int | None = None) -> dict[str, Any]:
    """:data:`PIXEL_FEATURES` of the image the model is given: decoded, CT-windowed, channel-
    converted and format-normalised (``input.reencode``); the file-level features stay None."""
    from lepton_vision.data import preprocess

    out: dict[str, Any] = dict.fromkeys(FEATURES)
    try:
        kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
        img = preprocess.reencode(preprocess.to_uint8(preprocess.read_image(path, **kwargs), channels, window),
                                  reencode_spec)
    except Exception:  # noqa: BLE001 - the sample loader has already reported unreadable files
        return out
    _pixel_features(img, out)
    return out


def metadata_table(paths: list[str], progress: bool = False, max_pixels: int | None = None,
                   seen: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row of :func:`file_metadata` per path, in order; with ``seen`` (``{"channels",
    "window", "reencode"}``), :func:`seen_metadata` of what the model is given instead."""
    from lepton_vision.data.sampleset import with_progress

    what = "files" if seen is None else "model inputs"
    paths = with_progress(list(paths), progress, f"Shortcut audit: reading {len(paths)} {what}")
    if seen is None:
        rows = [file_metadata(p, max_pixels) for p in paths]
    else:
        rows = [seen_metadata(p, seen["channels"], seen["window"], seen["reencode"], max_pixels) for p in paths]
    return pd.DataFrame(rows, columns=list(FEATURES))


# ---------------------------------------------------------------------------------------------
# Out-of-fold models and their CIs


def _design(meta: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, list[bool]]:
    """Numbers for the model: categorical columns as codes (missing: NaN), numeric as floats."""
    cols, cat = [], []
    for c in columns:
        kind = FEATURES[c][0]
        if kind == "categorical":
            codes = pd.Categorical(meta[c].astype(object).where(meta[c].notna(), None)).codes.astype(np.float64)
            codes[codes < 0] = np.nan
            cols.append(codes)
            cat.append(True)
        else:
            cols.append(pd.to_numeric(meta[c], errors="coerce").to_numpy(np.float64))
            cat.append(False)
    return np.column_stack(cols), cat


def _informative(meta: pd.DataFrame, column: str) -> bool:
    """Whether a feature varies at all (a constant or absent feature cannot carry a shortcut)."""
    values = meta[column]
    return values.notna().any() and values.astype(str).nunique(dropna=False) > 1


#: Bins of a numeric feature's one-feature model (training-fold quantiles).
NUMERIC_BINS = 10

#: Pseudo-count pulling a category's (bin's) rate towards the training fold's rate.
PRIOR = 2.0


def _rate_model(train_codes: np.ndarray, y: np.ndarray, test_codes: np.ndarray) -> np.ndarray:
    """P(target | code) from the training fold, smoothed towards its base rate; unseen codes get it."""
    base = float(np.mean(y))
    out = np.full(len(test_codes), base)
    for code in np.unique(test_codes):
        seen = train_codes == code
        out[test_codes == code] = (y[seen].sum() + PRIOR * base) / (seen.sum() + PRIOR)
    return out


def _codes(column: np.ndarray, categorical: bool, train: np.ndarray) -> np.ndarray:
    """Categories as they are (missing: -1); numbers as training-fold quantile bins (missing: -1)."""
    if categorical:
        return np.where(np.isnan(column), -1, column)
    present = ~np.isnan(column)
    edges = np.unique(np.quantile(column[train & present], np.linspace(0, 1, NUMERIC_BINS + 1)[1:-1])) \
        if (train & present).any() else np.zeros(0)
    return np.where(present, np.searchsorted(edges, np.nan_to_num(column), side="right"), -1)


def oof_scores(x: np.ndarray, categorical: list[bool], y: np.ndarray, folds: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold probabilities of a metadata model on the run's folds.

    One feature: the training fold's smoothed target rate per category, or per quantile bin of a
    number (what any model can learn from one feature, in microseconds). Several: scikit-learn's
    HistGradientBoostingClassifier (interactions, e.g. size within a format).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    out = np.full(len(y), np.nan)
    for k in np.unique(folds):
        test = folds == k
        train = ~test
        if len(np.unique(y[train])) < 2:
            out[test] = float(np.mean(y[train]))
            continue
        if x.shape[1] == 1:
            codes = _codes(x[:, 0], categorical[0], train)
            out[test] = _rate_model(codes[train], y[train], codes[test])
            continue
        model = HistGradientBoostingClassifier(max_iter=60, learning_rate=0.1, max_leaf_nodes=8,
                                               min_samples_leaf=max(5, int(0.02 * train.sum())),
                                               categorical_features=np.array(categorical) if any(categorical) else None,
                                               early_stopping=False, random_state=seed)
        model.fit(x[train], y[train])
        out[test] = model.predict_proba(x[test])[:, 1]
    return out


def within_fold_auc(y: np.ndarray, s: np.ndarray, folds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC over (positive, negative) pairs of the same fold, for each row of ``weights``.

    Each fold's scores come from its own model, so only pairs within a fold are compared (the
    pooled AUC would also rank one fold's model against another's calibration). Ties count half.

    Args:
        y: 0/1 per sample. s: score per sample. folds: fold per sample.
        weights: ``[B, n]`` sample weights (bootstrap counts; a row of ones is the plain AUC).

    Returns:
        ``[B]`` AUCs (NaN where a resample has no pair).
    """
    weights = np.atleast_2d(weights).astype(np.float64)
    num = np.zeros(len(weights))
    den = np.zeros(len(weights))
    for k in np.unique(folds):
        m = folds == k
        uniq, inv = np.unique(s[m], return_inverse=True)
        onehot = np.zeros((m.sum(), len(uniq)))
        onehot[np.arange(m.sum()), inv] = 1.0
        w = weights[:, m]
        pos = (w * y[m]) @ onehot  # [B, U] positive weight per score value
        neg = (w * (1 - y[m])) @ onehot
        below = np.cumsum(neg, axis=1) - neg  # negatives strictly below each value
        num += (pos * (below + 0.5 * neg)).sum(axis=1)
        den += pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def auc_with_ci(y: np.ndarray, s: np.ndarray, folds: np.ndarray, groups: Any, n_bootstrap: int, ci: float,
                seed: int) -> dict[str, Any]:
    """:func:`within_fold_auc` with a percentile CI over resampled groups (samples when there are none)."""
    from lepton_vision.evaluate.bootstrap import percentile_interval, resample_weights, resampling_units

    ok = np.isfinite(s)
    y, s, folds = y[ok], s[ok], np.asarray(folds)[ok]
    g = np.asarray(groups, dtype=object)[ok] if groups is not None else None
    value = float(within_fold_auc(y, s, folds, np.ones((1, len(y))))[0])
    if not np.isfinite(value):
        return {"value": None, "lo": None, "hi": None}
    gid, n_units, _ = resampling_units(g, len(y))
    rng = np.random.default_rng(seed)
    values = np.concatenate([within_fold_auc(y, s, folds, w) for w in resample_weights(rng, gid, n_units, n_bootstrap)])
    lo, hi = percentile_interval(values, ci)
    return {"value": round(value, 4), "lo": None if lo is None else round(lo, 4), "hi": None if hi is None else round(hi, 4)}


def run_audit(meta: pd.DataFrame, target: np.ndarray, folds: np.ndarray, groups: Any, *,
              level: float = DEFAULT_LEVEL, n_bootstrap: int = 300, ci: float = 0.95, seed: int = 0,
              target_name: str = "label") -> dict[str, Any]:
    """Score every informative feature (and all of them together) out of fold.

    Args:
        meta: :func:`metadata_table` of the samples.
        target: 0/1 per sample (the label, or "object present").
        folds: The run's fold per sample (the models never see their test fold).
        groups: Group per sample (the bootstrap resamples whole groups).
        level: Flag a feature when its CI's lower end exceeds this AUC.
        n_bootstrap: Resamples per CI.
        ci: CI level.
        seed: Models' and bootstrap's seed.
        target_name: What ``target`` is, for the report.

    Returns:
        data_report.json's ``shortcut_audit``: ``target``, ``level``, ``features`` (name ->
        ``auc`` {value, lo, hi}, ``flagged``, ``what``, ``values`` (a few value counts for
        categorical features, min/median/max for numeric ones)), ``combined`` (all informative
        features together), ``flagged`` (names, highest AUC first), ``skipped`` (constant or
        absent features) and ``strata`` (for each flagged feature, the groups of samples the
        stratified metrics are computed on: value -> sample indices).
    """
    y = np.asarray(target, np.int64)
    folds = np.asarray(folds)
    features: dict[str, Any] = {}
    skipped = []
    informative = []
    for name in FEATURES:
        if not _informative(meta, name):
            skipped.append(name)
            continue
        informative.append(name)
        x, cat = _design(meta, [name])
        auc = auc_with_ci(y, oof_scores(x, cat, y, folds, seed), folds, groups, n_bootstrap, ci, seed)
        flagged = auc["lo"] is not None and auc["lo"] > level
        features[name] = {"auc": auc, "flagged": bool(flagged), "what": FEATURES[name][1],
                          "values": _value_summary(meta[name], FEATURES[name][0])}
    combined = None
    if informative:
        x, cat = _design(meta, informative)
        combined = auc_with_ci(y, oof_scores(x, cat, y, folds, seed), folds, groups, n_bootstrap, ci, seed)
        combined = {"auc": combined, "flagged": bool(combined["lo"] is not None and combined["lo"] > level),
                    "features": informative}
    flagged = sorted((n for n, f in features.items() if f["flagged"]), key=lambda n: -features[n]["auc"]["value"])
    return {"target": target_name, "level": float(level), "ci": float(ci), "n_bootstrap": int(n_bootstrap),
            "n_samples": int(len(y)), "features": features, "combined": combined, "flagged": flagged,
            "skipped": skipped, "strata": {n: strata_of(meta[n], FEATURES[n][0]) for n in flagged}}


def _value_summary(values: pd.Series, kind: str) -> dict[str, Any]:
    if kind == "categorical":
        counts = values.fillna("(none)").astype(str).value_counts()
        return {str(k): int(v) for k, v in counts.head(6).items()}
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return {}
    return {"min": round(float(v.min()), 3), "median": round(float(v.median()), 3), "max": round(float(v.max()), 3)}


def strata_of(values: pd.Series, kind: str, max_strata: int = 4) -> dict[str, list[int]]:
    """Sample indices per stratum of a feature: its values (categorical; the most common
    ``max_strata``) or its quartiles (numeric; "missing" for samples without a value)."""
    if kind == "categorical":
        v = values.fillna("(none)").astype(str)
        top = v.value_counts().index[:max_strata]
        return {str(k): [int(i) for i in np.flatnonzero(v.to_numpy() == k)] for k in top}
    num = pd.to_numeric(values, errors="coerce")
    out: dict[str, list[int]] = {}
    present = num.notna().to_numpy()
    if present.any():
        edges = np.unique(np.quantile(num[present], np.linspace(0, 1, max_strata + 1)))
        bins = np.clip(np.searchsorted(edges, num.to_numpy(), side="right") - 1, 0, max(len(edges) - 2, 0))
        for b in range(max(len(edges) - 1, 1)):
            idx = np.flatnonzero(present & (bins == b))
            if len(idx):
                lo, hi = edges[b], edges[min(b + 1, len(edges) - 1)]
                out[f"{lo:.4g}–{hi:.4g}"] = [int(i) for i in idx]
    if (~present).any():
        out["missing"] = [int(i) for i in np.flatnonzero(~present)]
    return out


def summary_lines(audit: dict[str, Any]) -> list[str]:
    """The console lines: one warning per flagged feature, or the all-clear with the highest AUC.
    An audit of the model's input after ``input.reencode`` (it has ``input``) says so."""
    feats = audit["features"]
    seen = audit.get("input") is not None
    name_of = "shortcut audit of the model's input (after input.reencode)" if seen else "shortcut audit"
    if not feats:
        return [f"{name_of}: no metadata varies across the samples (nothing to check)"]
    lines = []
    for name in audit["flagged"]:
        a = feats[name]["auc"]
        lines.append(f"WARNING shortcut{' left after input.reencode' if seen else ''}: {name} alone predicts the "
                     f"{audit['target']} with out-of-fold AUC "
                     f"{a['value']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}] (> {audit['level']:g}): the model can learn "
                     f"{feats[name]['what']} instead of the image content. The model's metrics within each "
                     f"{name} stratum are in metrics.json ('strata') and report.html ('Shortcut audit').")
    c = audit.get("combined")
    if c and c["auc"]["value"] is not None:
        a = c["auc"]
        state = "FLAGGED" if c["flagged"] else "ok"
        best = max(feats, key=lambda n: feats[n]["auc"]["value"] or 0)
        lines.append(f"{name_of} ({state}): metadata alone predicts the {audit['target']} with out-of-fold AUC "
                     f"{a['value']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}] (all {len(c['features'])} varying features; "
                     f"strongest: {best} {feats[best]['auc']['value']:.3f}; flag level {audit['level']:g})")
    return lines


# ---------------------------------------------------------------------------------------------
# The run's side: audit a samples table, metrics per stratum


def audit_table(table: pd.DataFrame, *, target_name: str, level: float, n_bootstrap: int, ci: float, seed: int,
                progress: bool = False, max_pixels: int | None = None,
                seen: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`run_audit` of a run's samples table (``path``, ``label``, ``group``, ``fold``).

    Strata are stored as row positions in the table (samples.csv order). A target with one
    class only (a detection dataset whose every image has objects) cannot be predicted: the
    audit says so instead of scoring. With ``seen`` (``{"channels", "window", "reencode"}``) the
    features are those of the images the model is given after the format normalisation
    (:func:`seen_metadata`): the audit that shows whether ``input.reencode`` removed a signal.
    """
    y = table["label"].to_numpy(np.int64)
    if len(np.unique(y)) < 2:
        return {"target": target_name, "level": float(level), "features": {}, "combined": None, "flagged": [],
                "skipped": list(FEATURES), "strata": {}, "n_samples": int(len(y)),
                "not_applicable": f"every sample has the same {target_name} ({int(y[0]) if len(y) else '-'}): "
                                  "there is nothing for metadata to predict"}
    meta = metadata_table(list(table["path"]), progress=progress, max_pixels=max_pixels, seen=seen)
    groups = table["group"].to_numpy() if "group" in table.columns else None
    audit = run_audit(meta, y, table["fold"].to_numpy(), groups, level=level, n_bootstrap=n_bootstrap, ci=ci,
                      seed=seed, target_name=target_name)
    if seen is not None:
        audit["input"] = {"reencode": seen["reencode"], "features": list(PIXEL_FEATURES)}
    return audit


def rate_with_ci(hits: np.ndarray, groups: Any, n_bootstrap: int, ci: float, seed: int) -> dict[str, Any]:
    """A share (e.g. specificity on a stratum of negatives only) with a group-bootstrap CI."""
    from lepton_vision.evaluate.bootstrap import percentile_interval, resample_weights, resampling_units

    hits = np.asarray(hits, np.float64)
    if len(hits) == 0:
        return {"value": None, "lo": None, "hi": None}
    value = float(hits.mean())
    if n_bootstrap <= 0:
        return {"value": value, "lo": None, "hi": None}
    gid, n_units, _ = resampling_units(groups, len(hits))
    rng = np.random.default_rng(seed)
    values = np.concatenate([(w @ hits) / np.maximum(w.sum(axis=1), 1)
                             for w in resample_weights(rng, gid, n_units, n_bootstrap)])
    lo, hi = percentile_interval(values, ci)
    return {"value": value, "lo": lo, "hi": hi}


def stratified(audit: dict[str, Any] | None, table: pd.DataFrame, measure: Any) -> dict[str, Any]:
    """metrics.json's ``strata``: for every flagged feature, ``measure(sample_ids)`` per stratum.

    Args:
        audit: data_report.json's ``shortcut_audit`` (None or nothing flagged: ``{}``).
        table: The samples table the audit's row positions refer to.
        measure: ``sample_ids -> dict`` (the kind's :meth:`stratum_metrics`).
    """
    if not audit or not audit.get("flagged"):
        return {}
    ids = table["sample_id"].astype(str).to_numpy()
    out: dict[str, Any] = {}
    for feature in audit["flagged"]:
        out[feature] = {stratum: {"n": len(rows), **measure([ids[i] for i in rows if i < len(ids)])}
                        for stratum, rows in audit.get("strata", {}).get(feature, {}).items()}
    return out

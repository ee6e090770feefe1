"""``lepton-vision monitor``: compare a batch or stream of new inputs with an export's reference.

An export with an out-of-distribution reference (:mod:`lepton_vision.export.reference`) carries
what its training data looked like: a sample of out-of-fold scores, the median and spread of five
image statistics, and the OOD threshold. ``monitor`` runs the export on new inputs in the order
given (image files, folders in sorted order, video frames in order), records one
:class:`~lepton_vision.serve.predictor.Observation` per input and cuts the stream into
consecutive windows of ``window`` inputs. Each window is compared with the reference:

- **score shift**: the population stability index (PSI) of the window's scores over the reference
  score deciles, and the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``) against the
  reference scores;
- **image-statistics drift**: how far the window's median brightness, contrast, sharpness and size
  lie from the training median, in training spreads (robust z: 1.4826 x MAD);
- **OOD share**: the share of the window's inputs with ``ood_score > 1``;
- **positive rate**: the share of positive decisions (a detector's alarms) beside the rate the
  reference scores give at the export's threshold.

A window whose numbers cross a limit (:class:`Limits`) is a drift window; the run writes
``monitor.json``, ``observations.csv``, ``windows.csv``, ``plots/monitor.png`` and
``monitor.html`` (atomically) and the CLI exits with :data:`DRIFT_EXIT_CODE` when any window
drifted, so a cron job or CI can act on it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lepton_vision.config.errors import DataError, LeptonError

#: Exit code of ``lepton-vision monitor`` when a drift limit was crossed (errors exit 1).
DRIFT_EXIT_CODE = 3

#: Default window (inputs per comparison).
DEFAULT_WINDOW = 50

#: Image statistics whose drift is measured (the reference's ``image_stats`` order).
STAT_NAMES = ("brightness", "contrast", "sharpness", "log_height", "log_width")

#: Additive smoothing of bin shares in the PSI (an empty bin would make it infinite).
PSI_EPS = 1e-3

#: Most reference score bins (deciles, from windows of 500 inputs on).
PSI_BINS = 10

#: Inputs per bin: a window of n inputs gets n // PSI_PER_BIN bins (2 to :data:`PSI_BINS`). PSI's
#: sampling noise grows with bins / n (about (bins - 1) / n for independent inputs, more for the
#: correlated slices of one patient or frames of one sequence), so small windows get coarse bins.
PSI_PER_BIN = 50


def psi_bins(n: int) -> int:
    """The number of reference-quantile bins for a window of ``n`` inputs (2 .. :data:`PSI_BINS`)."""
    return int(np.clip(n // PSI_PER_BIN, 2, PSI_BINS))


@dataclass(frozen=True)
class Limits:
    """The drift limits a window is held to.

    Attributes:
        max_psi: PSI of the window's scores against the reference above this is drift (0.1: a
            small shift, 0.25: the usual "significant shift" level).
        max_ood_share: Share of out-of-distribution inputs in a window above this is drift (the
            reference flags about 2 % of images like its training images).
        max_stat_shift: A window median image statistic more than this many training spreads
            from the training median is drift.
        ks_alpha: The KS test rejects at this level, Bonferroni-corrected over the windows of the
            run (so a long undrifted stream does not fail by chance); None (default) reports the KS
            test without making it part of the alarm: it assumes independent inputs, and the slices
            of one patient or the frames of one sequence are not (measured: an undrifted stream
            of generated CT patients in windows of 60 slices gave p < 1e-5).
    """

    max_psi: float = 0.25
    max_ood_share: float = 0.2
    max_stat_shift: float = 3.0
    ks_alpha: float | None = None

    def check(self) -> None:
        """Raise LeptonError on a limit that cannot be used."""
        if not self.max_psi > 0:
            raise LeptonError(f"--max-psi: expected a positive number. Got {self.max_psi}.")
        if not 0 < self.max_ood_share < 1:
            raise LeptonError(f"--max-ood-share: expected a share between 0 and 1. Got {self.max_ood_share}.")
        if not self.max_stat_shift > 0:
            raise LeptonError(f"--max-stat-shift: expected a positive number of spreads. Got {self.max_stat_shift}.")
        if self.ks_alpha is not None and not 0 < self.ks_alpha < 1:
            raise LeptonError(f"--ks-alpha: expected a level between 0 and 1. Got {self.ks_alpha}.")


@dataclass
class MonitorResult:
    """What a monitor run found (also written to monitor.json).

    Attributes:
        out_dir: Where monitor.json, observations.csv, windows.csv, monitor.html and plots/ are.
        n_inputs: Inputs scored.
        n_unreadable: Inputs that could not be read (named in monitor.json, never scored).
        windows: One dict per window (:func:`window_stats` plus ``drift`` and ``reasons``).
        drift: Whether any window crossed a limit.
        first_drift_window: 0-based index of the first drift window (None: none drifted).
    """

    out_dir: Path
    n_inputs: int
    n_unreadable: int
    windows: list[dict[str, Any]] = field(default_factory=list)
    drift: bool = False
    first_drift_window: int | None = None

    @property
    def exit_code(self) -> int:
        """0 without drift, :data:`DRIFT_EXIT_CODE` with."""
        return DRIFT_EXIT_CODE if self.drift else 0

    def summary(self) -> str:
        """One line for the terminal."""
        head = f"{self.n_inputs} inputs in {len(self.windows)} window(s)"
        if self.n_unreadable:
            head += f", {self.n_unreadable} unreadable (listed in monitor.json)"
        if not self.drift:
            return f"{head}: no drift limit crossed; wrote {self.out_dir / 'monitor.html'}"
        w = self.windows[self.first_drift_window or 0]
        n_drift = sum(1 for x in self.windows if x["drift"])
        return (f"{head}: DRIFT in {n_drift} window(s), first in window {w['window']} (inputs "
                f"{w['start']}-{w['end'] - 1}): {'; '.join(w['reasons'])}; wrote {self.out_dir / 'monitor.html'}")


# ---------------------------------------------------------------------------------------------
# The statistics (numpy/scipy; no TensorFlow)


def psi(reference: np.ndarray, sample: np.ndarray, bins: int | None = None) -> float:
    """Population stability index of ``sample`` against ``reference``: sum over the reference's
    quantile bins of (p - q) * ln(p / q), bin shares smoothed by :data:`PSI_EPS`.

    Bins are (-inf, e1], (e1, e2], ..., (e_last, inf) at the reference's ``bins``-quantiles (ties
    merged, so a reference piled up at one value, e.g. detection image scores of empty frames at 0,
    gets fewer bins, the pile in a bin of its own); values outside the
    reference's range fall into the outer bins. ``bins`` None: :func:`psi_bins` of the sample size.
    """
    ref = np.asarray(reference, np.float64)
    x = np.asarray(sample, np.float64)
    ref, x = ref[np.isfinite(ref)], x[np.isfinite(x)]
    if len(ref) == 0 or len(x) == 0:
        return float("nan")
    bins = psi_bins(len(x)) if bins is None else int(bins)
    inner = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    q = np.bincount(np.searchsorted(inner, ref, side="left"), minlength=len(inner) + 1) / len(ref)
    p = np.bincount(np.searchsorted(inner, x, side="left"), minlength=len(inner) + 1) / len(x)
    q, p = (q + PSI_EPS) / (1 + PSI_EPS * len(q)), (p + PSI_EPS) / (1 + PSI_EPS * len(p))
    return float(np.sum((p - q) * np.log(p / q)))


def stat_shift(stats: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per statistic: (window median - training median) / training spread (robust z)."""
    stats = np.asarray(stats, np.float64)
    if len(stats) == 0:
        return np.full(len(center), np.nan)
    return (np.median(stats, axis=0) - center) / scale


def window_stats(scores: np.ndarray, positive: np.ndarray, in_dist: np.ndarray, stats: np.ndarray,
                 ref_scores: np.ndarray, center: np.ndarray, scale: np.ndarray) -> dict[str, Any]:
    """One window's comparison with the reference.

    Returns:
        ``n``, ``psi``, ``ks_statistic``, ``ks_pvalue``, ``ood_share``, ``positive_rate``,
        ``score_median`` and ``stat_shift`` (statistic -> robust z; :data:`STAT_NAMES`) with
        ``max_stat_shift`` (the largest absolute one) and ``max_stat`` (its name).
    """
    from scipy.stats import ks_2samp

    ks = ks_2samp(scores, ref_scores) if len(scores) and len(ref_scores) else None
    z = stat_shift(stats, center, scale)
    worst = int(np.nanargmax(np.abs(z))) if np.isfinite(z).any() else 0
    return {
        "n": int(len(scores)),
        "psi": round(psi(ref_scores, scores), 5),
        "psi_bins": psi_bins(len(scores)),
        "ks_statistic": round(float(ks.statistic), 5) if ks is not None else None,
        "ks_pvalue": float(ks.pvalue) if ks is not None else None,
        "ood_share": round(float(np.mean(~in_dist.astype(bool))), 5) if len(in_dist) else None,
        "positive_rate": round(float(np.mean(positive)), 5) if len(positive) else None,
        "score_median": round(float(np.median(scores)), 5) if len(scores) else None,
        "stat_shift": {name: round(float(v), 4) for name, v in zip(STAT_NAMES, z)},
        "max_stat_shift": round(float(abs(z[worst])), 4) if np.isfinite(z).any() else None,
        "max_stat": STAT_NAMES[worst],
    }


def window_bounds(n: int, window: int) -> list[tuple[int, int]]:
    """[start, end) of each window: consecutive windows of ``window`` inputs; a shorter tail of at
    least half a window is a window of its own, a shorter one joins the last window; fewer inputs
    than one window make one window (a batch)."""
    if n == 0:
        return []
    if n <= window:
        return [(0, n)]
    starts = list(range(0, n, window))
    bounds = [(s, min(s + window, n)) for s in starts]
    if bounds[-1][1] - bounds[-1][0] < (window + 1) // 2:
        tail = bounds.pop()
        bounds[-1] = (bounds[-1][0], tail[1])
    return bounds


def judge(w: dict[str, Any], limits: Limits, ks_level: float | None) -> list[str]:
    """The limits a window crossed, as readable reasons (empty: no drift)."""
    reasons = []
    if w["psi"] is not None and np.isfinite(w["psi"]) and w["psi"] > limits.max_psi:
        reasons.append(f"score PSI {w['psi']:.3f} > {limits.max_psi:g}")
    if ks_level is not None and w["ks_pvalue"] is not None and w["ks_pvalue"] < ks_level:
        reasons.append(f"KS p = {w['ks_pvalue']:.2g} < {ks_level:.2g} (score distribution differs, "
                       f"D = {w['ks_statistic']:.3f})")
    if w["ood_share"] is not None and w["ood_share"] > limits.max_ood_share:
        reasons.append(f"{w['ood_share']:.0%} of inputs out of distribution > {limits.max_ood_share:.0%}")
    if w["max_stat_shift"] is not None and w["max_stat_shift"] > limits.max_stat_shift:
        z = w["stat_shift"][w["max_stat"]]
        reasons.append(f"median {w['max_stat']} {abs(z):.1f} training spreads {'below' if z < 0 else 'above'} "
                       f"the training median > {limits.max_stat_shift:g}")
    return reasons


# ---------------------------------------------------------------------------------------------
# Reading the inputs


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files in the order given; folders become their images and videos (recursively, sorted).

    Raises:
        DataError: A path that does not exist, or a folder without images or videos.
    """
    from lepton_vision.serve.media import VIDEO_EXTENSIONS
    from lepton_vision.serve.predictor import PREDICT_EXTENSIONS, collect_inputs

    return collect_inputs(inputs, tuple(PREDICT_EXTENSIONS) + VIDEO_EXTENSIONS, "images or videos", check_named=False)


def observe_inputs(predictor: Any, files: list[Path], video_stride: int, progress: bool) -> tuple[list[dict], list[dict]]:
    """(one row per scored input, one row per unreadable input), in stream order."""
    from lepton_vision.data.sampleset import with_progress
    from lepton_vision.serve.media import is_video, iter_video_frames

    rows: list[dict[str, Any]] = []
    bad: list[dict[str, str]] = []

    def add(name: str, source: Any) -> None:
        obs = predictor.observe(source)
        stats = obs.image_stats if obs.image_stats is not None else np.full(len(STAT_NAMES), np.nan)
        rows.append({"index": len(rows), "input": name, "score": obs.score, "positive": int(obs.positive),
                     "ood_score": obs.ood_score, "in_distribution": int(bool(obs.in_distribution)),
                     **{s: float(v) for s, v in zip(STAT_NAMES, stats)}})

    for path in with_progress(files, progress, f"Monitoring {len(files)} inputs"):
        try:
            if is_video(path):
                for i, frame in iter_video_frames(path, stride=video_stride):
                    add(f"{path}#{i}", frame)
            else:
                add(str(path), path)
        except DataError as exc:
            bad.append({"input": str(path), "reason": str(exc)})
    return rows, bad


# ---------------------------------------------------------------------------------------------
# The run


def default_out_dir(export_dir: Path) -> Path:
    """``monitor-<export name>-<timestamp>`` in the working directory."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = Path(export_dir).resolve().parent.name if Path(export_dir).name == "export" else Path(export_dir).name
    return Path(f"monitor-{name}-{stamp}")


def monitor(export_dir: str | Path, inputs: list[str | Path], out_dir: str | Path | None = None, *,
            window: int = DEFAULT_WINDOW, limits: Limits | None = None, video_stride: int = 1,
            backend: str = "auto", progress: bool = True) -> MonitorResult:
    """Score ``inputs`` with an export, compare each window with its reference, write the results.

    Args:
        export_dir: An export with an OOD reference (bundle.json ``reference``).
        inputs: Image files, folders (their images, recursively, sorted) and videos, in stream order.
        out_dir: Where to write (default :func:`default_out_dir`).
        window: Inputs per window (>= 10).
        limits: Drift limits (default :class:`Limits`).
        video_stride: Keep every n-th video frame.
        backend: The predictor backend (see :func:`lepton_vision.serve.loader.open_predictor`).
        progress: Show a progress bar.

    Raises:
        LeptonError: No reference in the export, a bad option, a missing input, or nothing readable.
    """
    from lepton_vision.export.reference import load_reference
    from lepton_vision.serve.loader import open_predictor

    limits = limits or Limits()
    limits.check()
    if window < 10:
        raise LeptonError(f"--window: expected at least 10 inputs per window. Got {window}.",
                          hint="Score distributions of fewer inputs are too noisy to compare.")
    if video_stride < 1:
        raise LeptonError(f"--video-stride: expected a positive integer. Got {video_stride}.")
    export_dir = Path(export_dir)
    predictor = open_predictor(export_dir, backend=backend)
    ref = load_reference(export_dir, predictor.bundle)
    if ref is None or not predictor.ood:
        raise LeptonError(f"{export_dir}: {predictor.ood_note}",
                          hint="monitor compares new inputs with the export's reference; re-export the run with "
                               "'lepton-vision export RUN' to add one.")
    files = expand_inputs([Path(p) for p in inputs])
    rows, bad = observe_inputs(predictor, files, video_stride, progress)
    if not rows:
        raise LeptonError(f"none of the {len(files)} input(s) could be read; the first: {bad[0]['input']}: "
                          f"{bad[0]['reason']}")

    import pandas as pd

    obs = pd.DataFrame(rows)
    bounds = window_bounds(len(obs), window)
    ks_level = None if limits.ks_alpha is None else limits.ks_alpha / len(bounds)
    threshold = predictor.positive_threshold
    ref_rate = None if threshold is None or len(ref.scores) == 0 else float(np.mean(ref.scores >= threshold))
    windows = []
    for i, (s, e) in enumerate(bounds):
        part = obs.iloc[s:e]
        w = {"window": i, "start": s, "end": e, "first_input": part["input"].iloc[0],
             **window_stats(part["score"].to_numpy(float), part["positive"].to_numpy(bool),
                            part["in_distribution"].to_numpy(bool), part[list(STAT_NAMES)].to_numpy(float),
                            ref.scores, ref.stats_center, ref.stats_scale)}
        w["reasons"] = judge(w, limits, ks_level)
        w["drift"] = bool(w["reasons"])
        windows.append(w)
    first = next((w["window"] for w in windows if w["drift"]), None)
    out = Path(out_dir) if out_dir is not None else default_out_dir(export_dir)
    result = MonitorResult(out_dir=out, n_inputs=len(obs), n_unreadable=len(bad), windows=windows,
                           drift=first is not None, first_drift_window=first)
    report = {
        "export": str(export_dir.resolve()),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "backend": predictor.backend,
        "inputs": [str(p) for p in inputs],
        "n_inputs": len(obs),
        "unreadable": bad,
        "window": int(window),
        "video_stride": int(video_stride),
        "limits": {**asdict(limits), "ks_level_per_window": ks_level},
        "reference": {"n_scores": int(len(ref.scores)), "score": ref.summary.get("score", "score"),
                      "positive_threshold": threshold, "positive_name": predictor.positive_name,
                      "reference_positive_rate": ref_rate,
                      "stats_median": dict(zip(STAT_NAMES, map(float, ref.stats_center))),
                      "stats_spread": dict(zip(STAT_NAMES, map(float, ref.stats_scale))),
                      "false_flag_rate": ref.summary.get("false_flag_rate")},
        "overall": window_stats(obs["score"].to_numpy(float), obs["positive"].to_numpy(bool),
                                obs["in_distribution"].to_numpy(bool), obs[list(STAT_NAMES)].to_numpy(float),
                                ref.scores, ref.stats_center, ref.stats_scale),
        "windows": windows,
        "drift": result.drift,
        "first_drift_window": first,
        "first_drift_input": None if first is None else windows[first]["start"],
        "exit_code": result.exit_code,
    }
    write_outputs(out, report, obs, ref.scores)
    return result


# ---------------------------------------------------------------------------------------------
# Outputs


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_outputs(out: Path, report: dict[str, Any], obs: Any, ref_scores: np.ndarray) -> None:
    """monitor.json, observations.csv, windows.csv, plots/monitor.png and monitor.html, atomically."""
    import pandas as pd

    from lepton_vision.runio import atomic_write_csv, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out / "observations.csv", obs)
    flat = [{k: v for k, v in w.items() if k not in ("stat_shift", "reasons")}
            | {f"shift_{s}": w["stat_shift"][s] for s in STAT_NAMES} | {"reasons": "; ".join(w["reasons"])}
            for w in report["windows"]]
    atomic_write_csv(out / "windows.csv", pd.DataFrame(flat))
    png = plot_monitor(report, obs, ref_scores, out / "plots" / "monitor.png")
    atomic_write_text(out / "monitor.html", monitor_html(report, png))
    atomic_write_text(out / "monitor.json", json.dumps(_json_safe(report), indent=2))


def plot_monitor(report: dict[str, Any], obs: Any, ref_scores: np.ndarray, path: Path) -> bytes:
    """Six panels over the stream (x: input index; windows drawn at their span; drift windows
    shaded): score PSI, KS statistic, OOD share, image-statistic shift, positive rate, and the
    per-input OOD score."""
    from lepton_vision.evaluate.report import figure, save_png

    windows, limits, ref = report["windows"], report["limits"], report["reference"]
    fig = figure(12.0, 9.0)
    axes = fig.subplots(3, 2, sharex=True).ravel()
    mid = np.array([(w["start"] + w["end"] - 1) / 2 for w in windows])

    def series(ax: Any, key: str, title: str, limit: float | None, ylabel: str) -> None:
        y = np.array([np.nan if w[key] is None else w[key] for w in windows], float)
        ax.plot(mid, y, marker="o", ms=4, lw=1.5)
        if limit is not None:
            ax.axhline(limit, color="#b00020", ls="--", lw=1, label=f"limit {limit:g}")
            ax.legend(fontsize=7, loc="upper left")
        ax.set(title=title, ylabel=ylabel)

    series(axes[0], "psi", "Score PSI vs the reference", limits["max_psi"], "PSI")
    series(axes[1], "ks_statistic", "KS statistic vs the reference scores", None, "D")
    series(axes[2], "ood_share", "Share of out-of-distribution inputs", limits["max_ood_share"], "share")
    ax = axes[3]
    for name in STAT_NAMES:
        z = np.array([np.nan if w["stat_shift"][name] is None else w["stat_shift"][name] for w in windows], float)
        if np.isfinite(z).any() and np.nanmax(np.abs(z)) > 0:
            ax.plot(mid, z, marker="o", ms=3, lw=1.2, label=name)
    for sign in (1, -1):
        ax.axhline(sign * limits["max_stat_shift"], color="#b00020", ls="--", lw=1)
    ax.set(title="Median image statistics (training spreads from the training median)", ylabel="robust z")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower left")
    series(axes[4], "positive_rate", f"Rate of {ref['positive_name']}s", None, "share")
    if ref["reference_positive_rate"] is not None:
        axes[4].axhline(ref["reference_positive_rate"], color="#555", ls=":", lw=1.2, label="reference (out of fold)")
        axes[4].legend(fontsize=7, loc="upper left")
    ax = axes[5]
    ood = obs["ood_score"].to_numpy(float)
    ax.scatter(obs["index"], ood, s=6, c=np.where(obs["in_distribution"] == 1, "#1f77b4", "#d62728"))
    ax.axhline(1.0, color="#b00020", ls="--", lw=1, label="OOD threshold")
    if np.isfinite(ood).any() and np.nanmax(ood) > 20:
        ax.set_yscale("log")
    ax.set(title="OOD score per input (red: out of distribution)", ylabel="ood_score")
    ax.legend(fontsize=7, loc="upper left")
    for a in axes:
        a.grid(alpha=0.3)
        for w in windows:
            if w["drift"]:
                a.axvspan(w["start"] - 0.5, w["end"] - 0.5, color="#d62728", alpha=0.08, lw=0)
    for a in axes[4:]:
        a.set_xlabel("input (stream order)")
    return save_png(fig, path)


def monitor_html(report: dict[str, Any], png: bytes) -> str:
    """monitor.html: verdict, limits, the windows table and the plots (one self-contained file)."""
    from lepton_vision.evaluate.report import CSS, escape, html_table, img_html

    windows, limits, ref = report["windows"], report["limits"], report["reference"]
    if report["drift"]:
        w = windows[report["first_drift_window"]]
        verdict = (f"<p id='monitor-verdict' class='warn'><b>Drift</b>: "
                   f"{sum(1 for x in windows if x['drift'])} of {len(windows)} window(s) crossed a limit; "
                   f"first window {w['window']} (inputs {w['start']}-{w['end'] - 1}, starting at "
                   f"{escape(w['first_input'])}): {escape('; '.join(w['reasons']))}.</p>")
    else:
        verdict = (f"<p id='monitor-verdict'><b>No drift</b>: none of the {len(windows)} window(s) crossed "
                   "a limit.</p>")

    def fmt(v: Any, spec: str) -> str:
        return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)

    rows = []
    for w in windows:
        rows.append([w["window"], f"{w['start']}-{w['end'] - 1}", w["n"], fmt(w["psi"], ".3f"),
                     fmt(w["ks_statistic"], ".3f"), fmt(w["ks_pvalue"], ".2g"), fmt(w["ood_share"], ".1%"),
                     f"{w['max_stat']} {fmt(w['stat_shift'][w['max_stat']], '+.2f')}",
                     fmt(w["positive_rate"], ".1%"), "; ".join(w["reasons"]) or "—"])
    table = html_table(["window", "inputs", "n", "PSI", "KS D", "KS p", "OOD share", "largest stat shift",
                        f"{ref['positive_name']} rate", "limits crossed"], rows, numeric_from=2,
                       row_class={i: "highlight" for i, w in enumerate(windows) if w["drift"]})
    ks = ("" if limits["ks_alpha"] is None else
          f", the KS test rejects (p &lt; {limits['ks_alpha']:g} / {len(windows)} windows = "
          f"{limits['ks_level_per_window']:.2g})")
    rate = ("" if ref["reference_positive_rate"] is None else
            f" The reference {escape(ref['positive_name'])} rate (out-of-fold scores at threshold "
            f"{ref['positive_threshold']:.4g}) is {ref['reference_positive_rate']:.1%}.")
    limits_html = (f"<p>A window drifts when its score PSI &gt; {limits['max_psi']:g}{ks}, more than "
                   f"{limits['max_ood_share']:.0%} of its inputs are out of distribution, or a median image "
                   f"statistic lies more than {limits['max_stat_shift']:g} training spreads from the training "
                   f"median. Windows of {report['window']} inputs in stream order.{rate}"
                   + (" The KS test is reported, not alarmed on (it assumes independent inputs; slices of a "
                      "patient and frames of a sequence are not)." if not ks else "") + "</p>")
    bad = report["unreadable"]
    bad_html = ("<p class='note'>Every input was read.</p>" if not bad else
                f"<p class='warn'>{len(bad)} input(s) could not be read and were not scored:</p>"
                + html_table(["input", "reason"], [[b["input"], b["reason"]] for b in bad], numeric_from=9))
    caption = ("Per window over the stream (x: input index; drift windows shaded red). Scores are "
               f"compared with {ref['n_scores']} out-of-fold {escape(ref['score'])}s of the training data.")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>lepton-vision monitor</title>", f"<style>{CSS}</style></head><body>",
        "<h1>lepton-vision monitor</h1>",
        f"<p class='meta'>Export {escape(report['export'])} ({escape(report['backend'])}), "
        f"{report['n_inputs']} inputs, {escape(report['created'])}</p>",
        verdict, limits_html,
        f"<div class='plots'>{img_html('monitor', png, caption)}</div>",
        "<h2>Windows</h2>", table, "<h2>Unreadable inputs</h2>", bad_html,
        "<p class='note'>Numbers: monitor.json (every window), windows.csv, observations.csv (every input).</p>",
        "</body></html>",
    ]
    return "\n".join(parts)

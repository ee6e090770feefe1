"""The classification sections of report.html: ROC/PR, confusion, calibration, patients, folds.

Built on the shared page (:mod:`lepton_vision.evaluate.report`); :func:`print_summary` is the
terminal table. No TensorFlow here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lepton_vision.config.recipe import Threshold
from lepton_vision.evaluate.binary import METRIC_LABELS, SCALAR_METRICS, format_value
from lepton_vision.evaluate.report import (
    escape,
    figure,
    html_table,
    plot_training_curves,
    save_png,
    shortcut_section,
    training_cost_section,
    write_page,
)
from lepton_vision.evaluate.thresholds import policy_text
from lepton_vision.runio import RunDir

PLOT_NAMES: tuple[str, ...] = ("roc", "pr", "confusion", "training_curves", "score_hist", "calibration")

#: Written by the Grad-CAM step (another module); embedded when present at report time.
GRADCAM_PNG = "gradcam.png"
GRADCAM_CAPTION = "Grad-CAM: true positives / false positives / false negatives of the final model"

_POOLED_COLOR = "#1f3b73"
_FOLD_ALPHA = 0.55


def _ci_text(entry: dict[str, Any]) -> str:
    return format_value(entry)


# --------------------------------------------------------------------------------------------
# Plots


def plot_roc(metrics: dict[str, Any], path: Path) -> bytes:
    """Per-fold ROC curves, the pooled curve (AUC with CI in the legend) and the operating point."""
    fig = figure()
    ax = fig.add_subplot()
    for c in metrics["curves"]["roc"]["folds"]:
        ax.plot(c["fpr"], c["tpr"], lw=1, alpha=_FOLD_ALPHA, label=f"fold {c['fold']} (AUC {c['auc']:.3f})")
    pooled = metrics["curves"]["roc"]["pooled"]
    ax.plot(
        pooled["fpr"], pooled["tpr"], lw=2.5, color=_POOLED_COLOR,
        label=f"pooled OOF (AUC {_ci_text(metrics['pooled']['roc_auc'])})",
    )
    sens = metrics["pooled"]["sensitivity"]["value"]
    spec = metrics["pooled"]["specificity"]["value"]
    ax.plot([1 - spec], [sens], "o", ms=8, color="#c0392b", label=f"operating point (sens {sens:.2f}, spec {spec:.2f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="chance")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)", title="ROC, out-of-fold")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7.5)
    return save_png(fig, path)


def plot_pr(metrics: dict[str, Any], path: Path) -> bytes:
    """Per-fold and pooled precision-recall curves with the prevalence baseline."""
    fig = figure()
    ax = fig.add_subplot()
    for c in metrics["curves"]["pr"]["folds"]:
        ax.plot(c["recall"], c["precision"], lw=1, alpha=_FOLD_ALPHA, drawstyle="steps-post",
                label=f"fold {c['fold']} (AP {c['ap']:.3f})")
    pooled = metrics["curves"]["pr"]["pooled"]
    ax.plot(pooled["recall"], pooled["precision"], lw=2.5, color=_POOLED_COLOR, drawstyle="steps-post",
            label=f"pooled OOF (AP {_ci_text(metrics['pooled']['pr_auc'])})")
    prevalence = metrics["n_pos"] / metrics["n"]
    ax.axhline(prevalence, ls="--", lw=1, color="grey", label=f"prevalence {prevalence:.2f}")
    sens = metrics["pooled"]["sensitivity"]["value"]
    ppv = metrics["pooled"]["precision"]["value"]
    ax.plot([sens], [ppv], "o", ms=8, color="#c0392b", label="operating point")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="Recall (sensitivity)",
           ylabel="Precision (PPV)", title="Precision-recall, out-of-fold")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7.5)
    return save_png(fig, path)


def plot_confusion(metrics: dict[str, Any], path: Path, classes: tuple[str, str]) -> bytes:
    """Pooled confusion matrix at the per-fold thresholds: counts and row rates."""
    c = metrics["confusion"]
    counts = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]], dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = figure(5.2, 4.6)
    ax = fig.add_subplot()
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    names = [["TN", "FP"], ["FN", "TP"]]
    for i in range(2):
        for j in range(2):
            color = "white" if rates[i, j] > 0.6 else "black"
            ax.text(j, i, f"{names[i][j]}\n{int(counts[i, j])}\n{rates[i, j]:.1%}", ha="center",
                    va="center", fontsize=12, color=color)
    ax.set_xticks([0, 1], [f"pred {classes[0]}", f"pred {classes[1]}"])
    ax.set_yticks([0, 1], [f"true {classes[0]}", f"true {classes[1]}"])
    thr = metrics["thresholds"]
    thr_text = ", ".join(f"{float(v):.3g}" for v in thr.values())
    ax.set_title(f"Confusion at the operating point\n{_policy_label(metrics)}; fold thresholds {thr_text}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="rate within true class")
    return save_png(fig, path)


def plot_score_hist(metrics: dict[str, Any], oof: pd.DataFrame, path: Path, classes: tuple[str, str]) -> bytes:
    """Score distribution per true class with the fold thresholds and the final threshold."""
    fig = figure(6.5, 4.2)
    ax = fig.add_subplot()
    y = oof["label"].to_numpy().astype(int)
    s = oof["score"].to_numpy().astype(float)
    lo, hi = min(0.0, float(s.min())), max(1.0, float(s.max()))
    bins = np.linspace(lo, hi, 41)
    ax.hist(s[y == 0], bins=bins, alpha=0.6, color="#4c72b0", label=f"{classes[0]} (n={int((y == 0).sum())})")
    ax.hist(s[y == 1], bins=bins, alpha=0.6, color="#dd8452", label=f"{classes[1]} (n={int((y == 1).sum())})")
    for i, v in enumerate(metrics["thresholds"].values()):
        ax.axvline(float(v), color="grey", lw=0.8, ls=":", label="fold thresholds" if i == 0 else None)
    ax.axvline(metrics["final_threshold"], color="#c0392b", lw=2,
               label=f"final threshold {metrics['final_threshold']:.3g}")
    ax.set(xlabel="score (positive if score >= threshold)", ylabel="samples",
           title="Out-of-fold score distribution")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def _ece_text(entry: dict[str, Any]) -> str:
    return format_value(entry, digits=3)


def plot_calibration(metrics: dict[str, Any], path: Path) -> bytes:
    """Reliability diagram of the pooled OOF scores (and after temperature scaling, when fitted).

    Top: fraction positive against mean score per equal-width bin, with the diagonal of perfect
    calibration; ECE with its CI in the title. Bottom: samples per bin.
    """
    cal = metrics["calibration"]
    fig = figure(6.0, 6.2)
    ax, ax_n = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="perfect calibration")

    def draw(curve: dict[str, Any], label: str, color: str, marker: str) -> None:
        pts = [(ms, fp) for ms, fp in zip(curve["mean_score"], curve["frac_pos"]) if ms is not None and fp is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker=marker, lw=1.8, color=color, label=label)

    draw(cal["curve"], f"raw scores (ECE {_ece_text(cal['ece'])})", _POOLED_COLOR, "o")
    after = cal.get("after_scaling")
    title = f"Reliability, out-of-fold: ECE {_ece_text(cal['ece'])}"
    if after:
        draw(after["curve"], f"temperature-scaled, cross-fitted (ECE {_ece_text(after['ece'])})", "#c0392b", "s")
        title += f"\nafter temperature scaling: {_ece_text(after['ece'])}"
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), ylabel="fraction positive", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7.5)
    centers = np.asarray(cal["curve"]["bin_centers"], dtype=float)
    width = 1.0 / max(len(centers), 1)
    ax_n.bar(centers, cal["curve"]["counts"], width=width * (0.45 if after else 0.9),
             align="edge" if after else "center", color=_POOLED_COLOR, alpha=0.7, label="raw")
    if after:
        ax_n.bar(centers, after["curve"]["counts"], width=-width * 0.45, align="edge", color="#c0392b",
                 alpha=0.7, label="scaled")
        ax_n.legend(fontsize=7)
    ax_n.set(xlabel=f"mean predicted score ({cal['n_bins']} equal-width bins)", ylabel="samples")
    ax_n.grid(alpha=0.3)
    return save_png(fig, path)


# --------------------------------------------------------------------------------------------
# HTML


def _policy_label(metrics: dict[str, Any]) -> str:
    return policy_text(Threshold(**metrics["policy"]))


def _classes(info: dict[str, Any], run_dir: RunDir) -> tuple[str, str]:
    """[negative, positive] names: from info, else the task card recorded in run.json."""
    import json

    classes = info.get("classes")
    if not classes and run_dir.run_info.is_file():
        try:
            classes = json.loads(run_dir.run_info.read_text(encoding="utf-8")).get("task", {}).get("classes")
        except (ValueError, AttributeError):
            classes = None
    if not classes or len(classes) != 2:
        classes = ("negative", "positive")
    return (str(classes[0]), str(classes[1]))


def _pooled_table(metrics: dict[str, Any]) -> str:
    ci = metrics.get("ci", 0.95)
    rows = []
    for name in SCALAR_METRICS:
        ms = metrics["mean_sd"][name]
        rows.append([METRIC_LABELS[name], format_value(metrics["pooled"][name]), f"{ms['mean']:.3f} ± {ms['sd']:.3f}"])
    return html_table(["Metric", f"Pooled OOF [{ci:.0%} CI]", f"Mean ± SD over {metrics['n_folds']} folds"], rows)


def _mean_sd_text(ms: dict[str, Any]) -> str:
    if ms.get("mean") is None:
        return "-"
    return f"{ms['mean']:.3f} ± {ms['sd']:.3f}" if ms.get("sd") is not None else f"{ms['mean']:.3f} (one fold)"


def _patient_html(metrics: dict[str, Any]) -> str:
    """The patient-level table next to the slice-level one (or why there is none)."""
    p = metrics.get("patient")
    if p is None:
        return "<p class='note'>No patient ids: slice level only.</p>"
    agg = p["aggregation"]
    how = agg["method"] + (f" (k = {agg['k']})" if agg.get("k") else "")
    head = (f"<p class='note'>{escape(p['n'])} patients ({escape(p['n_pos'])} positive: a patient is positive if any "
            f"slice is), {escape(p['n_slices'])} slices; patient score = {escape(how)} of its slice scores.")
    if p.get("n_slices_without_group"):
        head += f" {escape(p['n_slices_without_group'])} slices without a patient id are left out."
    head += "</p>"
    if "error" in p:
        return head + f"<p class='note'>Patient-level metrics not available: {escape(p['error'])}</p>"
    ci = metrics.get("ci", 0.95)
    n_scored = len(p["per_fold"])
    rows = [[METRIC_LABELS[n], format_value(p["pooled"][n]), _mean_sd_text(p["mean_sd"][n])] for n in SCALAR_METRICS]
    out = head + html_table(["Metric", f"Pooled OOF, patients [{ci:.0%} CI]", f"Mean ± SD over {n_scored} folds"], rows)
    thr = ", ".join(f"fold {k}: {float(v):.4g}" for k, v in p["thresholds"].items())
    notes = (f"Patient thresholds (policy {_policy_label(metrics)}, each chosen on the other folds' patient scores): "
             f"{thr}; final patient threshold {p['final_threshold']:.4g}. CIs resample patients.")
    if p.get("skipped_folds"):
        notes += " Folds with a single class of patients are left out of mean ± SD: " + ", ".join(
            str(f["fold"]) for f in p["skipped_folds"]) + "."
    return out + f"<p class='note'>{escape(notes)}</p>"


def _calibration_html(metrics: dict[str, Any]) -> str:
    cal = metrics.get("calibration")
    if not cal:
        return "<p class='note'>No calibration data in these metrics.</p>"
    after = cal.get("after_scaling")
    headers = ["", "Raw OOF scores"] + (["Temperature-scaled (cross-fitted)"] if after else [])
    rows = [
        [f"ECE ({cal['n_bins']} bins) [{metrics.get('ci', 0.95):.0%} CI]", _ece_text(cal["ece"])]
        + ([_ece_text(after["ece"])] if after else []),
        ["Log loss", f"{cal['log_loss']:.4f}"] + ([f"{after['log_loss']:.4f}"] if after else []),
        ["Brier score", f"{cal['brier']:.4f}"] + ([f"{after['brier']:.4f}"] if after else []),
    ]
    out = html_table(headers, rows)
    if after:
        temps = ", ".join(f"fold {k}: {float(v):.3f}" for k, v in after["fold_temperatures"].items())
        out += (f"<p class='note'>Each fold's scores are scaled with a temperature fitted on the other folds ({escape(temps)}). "
                f"The exported model uses T = {metrics['temperature']:.3f} fitted on all OOF scores; its threshold "
                f"{metrics['final_threshold']:.4g} on raw scores is {metrics['final_threshold_calibrated']:.4g} on scaled "
                "scores (same decisions; AUC and ranking unchanged).</p>")
    return out


def _per_fold_table(metrics: dict[str, Any]) -> str:
    headers = ["Fold", "n", "positives", "threshold", *(METRIC_LABELS[m] for m in SCALAR_METRICS)]
    rows: list[list[Any]] = []
    for f in metrics["per_fold"]:
        rows.append([f["fold"], f["n"], f["n_pos"], f"{f['threshold']:.4g}", *(f"{f[m]:.3f}" for m in SCALAR_METRICS)])
    rows.append(["mean ± SD", "", "", "", *(f"{metrics['mean_sd'][m]['mean']:.3f} ± {metrics['mean_sd'][m]['sd']:.3f}" for m in SCALAR_METRICS)])
    return html_table(headers, rows, row_class={len(rows) - 1: "summary"})


def _folds_table(oof: pd.DataFrame) -> str:
    groups = oof["group"].fillna("").astype(str) if "group" in oof.columns else None
    rows = []
    for k, part in oof.groupby("fold", sort=True):
        n_groups = ""
        if groups is not None:
            g = groups.loc[part.index]
            n_groups = int(g[g != ""].nunique()) if (g != "").any() else "-"
        n_pos = int(part["label"].sum())
        rows.append([int(k), len(part), n_pos, len(part) - n_pos, f"{n_pos / len(part):.1%}", n_groups])
    return html_table(["Fold", "samples", "positives", "negatives", "positive rate", "groups"], rows)


def write_report(
    run_dir: RunDir,
    metrics: dict[str, Any],
    oof: pd.DataFrame,
    histories: dict[int, pd.DataFrame],
    info: dict[str, Any],
) -> Path:
    """Write the plots (``plots/*.png``) and a self-contained ``report.html``.

    Args:
        run_dir: The run directory.
        metrics: :func:`lepton_vision.kinds.classification.metrics.score_oof`'s dict.
        oof: The out-of-fold table (``label``, ``fold``, ``score``, optional ``group``).
        histories: Fold -> history with some of ``epoch`` (1-based), ``loss, val_loss, auc, val_auc, lr``.
        info: Optional keys: ``title``, ``recipe_name`` (or ``recipe``), ``run_dir``, ``date``
            (default: now), ``classes`` ([negative, positive]; default: the task card in
            run.json), ``intended_use``, ``seconds``, ``training_cost`` (run.json's; default:
            computed from ``histories``), ``data`` (data_report.json: counts, nested
            count dicts, ``excluded`` list of {sample_id, path, reason}), ``versions`` (dict),
            ``recipe_yaml`` (text; default: the run's recipe.resolved.yaml). The folds table is
            computed from ``oof`` (what was actually scored).

    Returns:
        The path of report.html.
    """
    plots = run_dir.plots_dir
    plots.mkdir(parents=True, exist_ok=True)
    classes = _classes(info, run_dir)
    images = {
        "roc": plot_roc(metrics, plots / "roc.png"),
        "pr": plot_pr(metrics, plots / "pr.png"),
        "confusion": plot_confusion(metrics, plots / "confusion.png", classes),
        "training_curves": plot_training_curves(histories, plots / "training_curves.png", ("loss", "auc")),
        "score_hist": plot_score_hist(metrics, oof, plots / "score_hist.png", classes),
    }
    captions = {
        "roc": "ROC curves per fold (thin) and pooled out-of-fold (thick); dot = operating point.",
        "pr": "Precision-recall per fold and pooled; dashed = prevalence (a random model).",
        "confusion": "Pooled confusion matrix, each fold at its own honest threshold.",
        "training_curves": "Training (dashed) and validation (solid) loss and AUC per fold.",
        "score_hist": "Out-of-fold scores per true class; red = threshold of the exported model.",
    }

    if "calibration" in metrics:
        images["calibration"] = plot_calibration(metrics, plots / "calibration.png")
    captions["calibration"] = ("Reliability diagram: fraction positive per score bin (diagonal = perfectly "
                               "calibrated) and samples per bin.")
    gradcam = plots / GRADCAM_PNG
    if gradcam.is_file():  # produced by the Grad-CAM step when it ran before the report
        images["gradcam"] = gradcam.read_bytes()
        captions["gradcam"] = GRADCAM_CAPTION

    pooled = metrics["pooled"]
    auc = pooled["roc_auc"]
    headline = f"Pooled OOF ROC AUC {format_value(auc)}"
    ci_note = (
        f"{metrics['ci']:.0%} percentile bootstrap CIs from {metrics['n_bootstrap']} resamples of "
        f"{metrics['bootstrap_unit']}s ({metrics['skipped_resamples']} single-class resamples skipped)."
        if metrics.get("n_bootstrap")
        else "No bootstrap CIs (evaluate.n_bootstrap = 0)."
    )
    thr_list = ", ".join(f"fold {k}: {float(v):.4g}" for k, v in metrics["thresholds"].items())
    op_rows = [
        ["Policy", _policy_label(metrics)],
        ["Fold thresholds (each chosen on the other folds' OOF scores)", thr_list],
        ["Final threshold (chosen on all OOF scores; shipped with the exported model)", f"{metrics['final_threshold']:.4g}"],
        ["Sensitivity at the operating point", format_value(pooled["sensitivity"])],
        ["Specificity at the operating point", format_value(pooled["specificity"])],
        ["Confusion (pooled)", ", ".join(f"{k.upper()} {v}" for k, v in metrics["confusion"].items())],
    ]
    highlight: dict[int, str] = {}
    policy = metrics["policy"]
    if policy.get("policy") == "min_sensitivity":
        # what a screening user asks first: how many normals are flagged at the sensitivity we need
        highlight[len(op_rows)] = "highlight"
        op_rows.append([f"Specificity at sensitivity ≥ {policy['value']:g} (pooled OOF, honest fold thresholds)",
                        format_value(pooled["specificity"])])
        pat = metrics.get("patient")
        if pat and "pooled" in pat:
            highlight[len(op_rows)] = "highlight"
            op_rows.append([f"Patient-level specificity at sensitivity ≥ {policy['value']:g} (pooled, patient thresholds)",
                            format_value(pat["pooled"]["specificity"])])
    if "temperature" in metrics:
        op_rows.append(["Temperature T of the exported model (score = sigmoid(logit(p) / T))", f"{metrics['temperature']:.4g}"])
        op_rows.append(["Final threshold on temperature-scaled scores", f"{metrics['final_threshold_calibrated']:.4g}"])

    summary = (f"<p><b>{escape(headline)}</b> · {escape(metrics['n'])} samples, {escape(metrics['n_pos'])} positive, "
               f"{escape(metrics['n_folds'])} folds.</p>")
    sections = [
        ("Pooled metrics", _pooled_table(metrics)
         + f"<p class='note'>{escape(ci_note)} Pooled metrics use each sample's own fold threshold.</p>"),
        ("Patient-level metrics", _patient_html(metrics)),
        ("Operating point", html_table(["", ""], op_rows, numeric_from=2, row_class=highlight)),
        ("Calibration", _calibration_html(metrics)),
        ("Per fold", _per_fold_table(metrics)),
        ("Shortcut audit", shortcut_section((info.get("data") or {}).get("shortcut_audit"), metrics.get("strata"),
                                            (info.get("data") or {}).get("shortcut_audit_seen"))),
        ("Training cost", training_cost_section(run_dir, histories, info.get("training_cost"))),
    ]
    return write_page(run_dir, info, default_title="lepton-vision run", summary_html=summary, sections=sections,
                      images=images, captions=captions, after_data=[("Folds", _folds_table(oof))])


def print_summary(metrics: dict[str, Any], console: Any = None) -> None:
    """Print the pooled metrics with CIs and mean ± SD over folds as a rich table."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(
        title=f"Out-of-fold metrics ({metrics['n']} samples, {metrics['n_pos']} positive, {metrics['n_folds']} folds)",
        caption=(
            f"policy {_policy_label(metrics)}; final threshold {metrics['final_threshold']:.4g}; "
            + (f"{metrics['ci']:.0%} CI, {metrics['n_bootstrap']} {metrics['bootstrap_unit']} resamples"
               if metrics.get("n_bootstrap") else "no bootstrap CIs")
        ),
    )
    table.add_column("Metric")
    table.add_column("Pooled [CI]", justify="right")
    table.add_column("Mean ± SD (folds)", justify="right")
    for name in SCALAR_METRICS:
        ms = metrics["mean_sd"][name]
        table.add_row(METRIC_LABELS[name], format_value(metrics["pooled"][name]), f"{ms['mean']:.3f} ± {ms['sd']:.3f}")
    console.print(table)
    pat = metrics.get("patient")
    if pat is None:
        console.print("patient level: no patient ids: slice level only")
    elif "error" in pat:
        console.print(f"patient level ({pat['n']} patients): not available: {pat['error']}")
    else:
        agg = pat["aggregation"]
        console.print(
            f"patient level ({pat['n']} patients, {pat['n_pos']} positive, {agg['method']}"
            + (f" k={agg['k']}" if agg.get("k") else "") + "): "
            + ", ".join(f"{METRIC_LABELS[n]} {format_value(pat['pooled'][n])}" for n in ("roc_auc", "sensitivity", "specificity"))
        )
    cal = metrics.get("calibration")
    if cal:
        line = f"calibration: ECE {format_value(cal['ece'])} ({cal['n_bins']} bins)"
        if cal.get("after_scaling"):
            line += (f"; after temperature scaling (cross-fitted) {format_value(cal['after_scaling']['ece'])}; "
                     f"export T = {metrics['temperature']:.3f}, threshold {metrics['final_threshold_calibrated']:.4g} on scaled scores")
        console.print(line)

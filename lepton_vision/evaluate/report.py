"""The report page every kind's report.html is built on: plots as PNG, one self-contained HTML file.

Plots are drawn with matplotlib's Agg canvas on standalone ``Figure`` objects (no pyplot, so no
global backend switch and no GUI), written atomically as PNG to ``plots/`` and embedded in
``report.html`` as base64 data URIs. The HTML has inline CSS and no external resources, so it
can be mailed or archived as one file. A kind supplies its headline and sections
(:func:`write_page`); the start point, export, data, plots, versions and recipe sections are
the same for every kind, and so is the training cost section every kind adds
(:func:`training_cost_section`). No TensorFlow here.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from lepton_vision.runio import RunDir, atomic_write_bytes, atomic_write_text


def figure(width: float = 6.0, height: float = 5.0) -> Any:
    """A Figure attached to an Agg canvas (works headless, touches no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: Path) -> bytes:
    """Write a figure as PNG (atomically) and return its bytes for embedding."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return data


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.meta{color:#555}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:.3em .7em;text-align:left}th{background:#f2f4f8}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.summary td{font-weight:bold;background:#fafafa}
tr.highlight td{font-weight:bold;background:#fff4d6}
.plots{display:flex;flex-wrap:wrap;gap:1em}.plots figure{margin:0;flex:1 1 460px}
.plots img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9em}
pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:.85em}.note{color:#555;font-size:.9em}.warn{color:#b00020}
"""


def escape(value: Any) -> str:
    """HTML-escaped text (quotes too)."""
    return html.escape(str(value), quote=True)


def number(v: Any, digits: int = 3) -> str:
    """A number for a table cell: ints as ints, floats with ``digits`` decimals."""
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}f}"
    return str(v)


def html_table(headers: list[str], rows: list[list[Any]], numeric_from: int = 1, row_class: dict[int, str] | None = None) -> str:
    """An HTML table; cells from column ``numeric_from`` on are right-aligned numbers, ``row_class`` marks rows."""
    out = ["<table><thead><tr>", *(f"<th>{escape(h)}</th>" for h in headers), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and i in row_class else ""
        out.append(f"<tr{cls}>")
        for j, cell in enumerate(row):
            td = '<td class="num">' if j >= numeric_from else "<td>"
            out.append(f"{td}{escape(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def start_section(start: dict[str, Any] | None) -> str:
    """Where the folds' weights came from (random, the pretrain stage, a weights file or export)."""
    if not start or start.get("source", "random") == "random":
        return "<p class='note'>Every fold started from random weights (no pretrain stage, model.weights: none).</p>"
    rows = [["Source", start["source"]], ["Loaded", start.get("loaded", "")],
            ["SHA-256 of the start weights", start.get("sha256", "")]]
    pre = start.get("pretrain") or {}
    if pre:
        val = pre.get("synthetic_validation") or {}
        size = pre.get("image_size")  # absent in caches written before pretrain.image_size existed
        at = f" at {size[0]} x {size[1]} input" if size else ""
        rows += [["Pretrained on", f"{pre.get('images')} generated images ({pre.get('generator')}, "
                  f"dataset {pre.get('dataset')}){at}, {pre.get('epochs')} epochs, {pre.get('seconds')} s"]]
        if val:
            rows.append([f"Pretrained model on {val.get('n_images')} unseen generated images",
                         f"{val.get('metric')} {val.get('value')}"])
        if pre.get("classes_match_task") is False:
            rows.append(["Classes", "the generator's classes differ from the task's: only the backbone was used"])
    if start.get("file"):
        rows.append(["File", start["file"]])
    ft = start.get("finetune") or {}
    if ft:
        rows.append(["Fine-tuning", f"backbone frozen for {ft.get('freeze_backbone_epochs')} epochs, then at "
                     f"{ft.get('backbone_lr_scale')}x the learning rate"])
    return html_table(["", ""], rows, numeric_from=2)


def export_section(export: dict[str, Any] | None) -> str:
    """The export's artefacts, parity and int8 metric change (with its verdict), as HTML."""
    if not export:
        return "<p class='note'>No export summary in this run.</p>"
    rows = []
    for name, f in export.get("files", {}).items():
        if name in ("parity",):
            continue
        rec = f.get("recommended")
        rows.append([name, f.get("path", ""), "" if f.get("bytes") is None else f"{f['bytes'] / 1e6:.2f} MB",
                     "" if rec is None else ("recommended" if rec else "NOT recommended")])
    parts = [html_table(["artefact", "file", "size", ""], rows, numeric_from=2)]
    parity = export.get("parity")
    ok = parity.get("pass") if isinstance(parity, dict) else parity
    parts.append(f"<p>Parity (Keras vs SavedModel vs TFLite float{' vs ONNX' if 'onnx' in export.get('files', {}) else ''} "
                 f"on real images): <b>{'pass' if ok else 'FAIL'}</b> (details in export/parity.json).</p>")
    q = export.get("quantization")
    if q:
        c, v = q["change"], q["verdict"]
        parts.append(f"<p>int8 check on {escape(q['n_images'])} images ({escape(q['evaluated_on'])}): "
                     f"<b>{escape(v['reason'])}</b>.</p>")
        if c.get("decision_agreement") is not None:
            parts.append(f"<p class='note'>Decisions at the exported threshold agree on "
                         f"{c['decision_agreement']:.1%} of images; largest score difference "
                         f"{c['max_abs_score_diff']:.3g}.</p>")
    for w in export.get("warnings", []):
        parts.append(f"<p class='warn'><b>Warning:</b> {escape(w)}</p>")
    return "".join(parts)


def render_value(value: Any) -> str:
    """Generic HTML for info values: dicts as key/value tables, lists as lists or tables."""
    if isinstance(value, dict):
        if not value:
            return "<p class='note'>(none)</p>"
        return html_table(["", ""], [[k, render_plain(v)] for k, v in value.items()], numeric_from=2)
    if isinstance(value, (list, tuple)):
        if not value:
            return "<p class='note'>(none)</p>"
        if all(isinstance(v, dict) for v in value):
            keys: list[str] = []
            for v in value:
                keys += [k for k in v if k not in keys]
            return html_table(keys, [[render_plain(v.get(k, "")) for k in keys] for v in value], numeric_from=len(keys))
        return "<ul>" + "".join(f"<li>{escape(render_plain(v))}</li>" for v in value) + "</ul>"
    return f"<p>{escape(value)}</p>"


def render_plain(v: Any, limit: int = 20) -> str:
    """A value as one line of text (lists cut after ``limit`` items)."""
    if isinstance(v, float):
        return number(v)
    if isinstance(v, (list, tuple)):
        text = ", ".join(render_plain(x) for x in v[:limit])
        return text + (f", ... ({len(v) - limit} more)" if len(v) > limit else "")
    if isinstance(v, dict):
        return ", ".join(f"{k}: {render_plain(x)}" for k, x in v.items())
    return str(v)


def data_section(data: dict[str, Any]) -> str:
    """Counts as a key/value table (nested dicts flattened) and the excluded files as a table."""
    rows: list[list[Any]] = []
    for key, value in data.items():
        if key in ("excluded", "shortcut_audit", "shortcut_audit_seen"):  # the audit has its own section
            continue
        if isinstance(value, dict):
            rows += [[f"{key}.{k}", render_plain(v)] for k, v in value.items()]
        else:
            rows.append([key, render_plain(value)])
    out = [html_table(["Item", "Value"], rows, numeric_from=2)] if rows else []
    excluded = data.get("excluded") or []
    out.append(f"<h3>Excluded files ({len(excluded)})</h3>")
    out.append(render_value(list(excluded)) if excluded else "<p class='note'>None: every listed file was used.</p>")
    return "".join(out)


def img_html(name: str, data: bytes, caption: str) -> str:
    """A PNG embedded as a base64 data URI in a captioned figure."""
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{b64}" alt="{escape(name)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


#: Panel titles of the quantities a history logs (others are shown by their own name).
QUANTITY_LABELS = {"loss": "Loss", "auc": "AUC", "ap50": "AP50"}

#: The per-epoch cost columns of history.csv (engine.callbacks.EpochLog): epoch wall time,
#: training images per second, the process's peak resident memory so far and (GPU only) the
#: epoch's peak GPU memory. Not training quantities: :func:`plot_training_curves` leaves them out.
COST_COLUMNS = ("seconds", "images_per_s", "peak_rss_mb", "peak_gpu_mb")

#: What the report says for a run whose histories have no cost columns.
COST_NOT_RECORDED = "Training cost not recorded (run made before lepton-vision recorded training cost)."


def plot_training_curves(histories: dict[int, Any], path: Path, quantities: tuple[str, ...] | None = None) -> bytes:
    """One panel per quantity and fold: validation solid, training dashed, per epoch.

    Args:
        histories: Fold -> history.csv frame (``epoch`` 1-based, ``loss``, ``val_auc``, ...).
        path: The PNG to write.
        quantities: Panels to draw (``("loss", "auc")``); default: every quantity the histories
            logged (training or ``val_`` prefixed), loss first, at most four; the learning rate
            and the cost columns (:data:`COST_COLUMNS`) are left out.
    """
    import matplotlib as mpl

    if quantities:
        names = list(quantities)
    else:
        names = []
        for h in histories.values():
            for col in ([] if h is None else h.columns):
                base = col.removeprefix("val_")
                if base not in ("epoch", "lr", "learning_rate", *COST_COLUMNS) and base not in names:
                    names.append(base)
        names = sorted(names, key=lambda n: (n != "loss", n))[:4]
    fig = figure(5.0 * max(len(names), 1), 4.2)
    axes = np.atleast_1d(fig.subplots(1, max(len(names), 1))).ravel()
    colors = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    if not names:
        axes[0].text(0.5, 0.5, "no training history recorded", ha="center", va="center",
                     transform=axes[0].transAxes, color="grey")
        axes[0].axis("off")
    for ax, name in zip(axes, names):
        drawn = False
        for i, (fold, h) in enumerate(sorted(histories.items())):
            if h is None or len(h) == 0:
                continue
            # the trainers write 1-based epochs to history.csv (the same numbers as best_epoch)
            x = h["epoch"].to_numpy() if "epoch" in h.columns else np.arange(1, len(h) + 1)
            color = colors[i % len(colors)]
            if f"val_{name}" in h.columns:
                ax.plot(x, h[f"val_{name}"], color=color, lw=1.6, label=f"fold {fold} val")
                drawn = True
            if name in h.columns:
                ax.plot(x, h[name], color=color, lw=1, ls="--", alpha=0.7, label=f"fold {fold} train")
                drawn = True
        label = QUANTITY_LABELS.get(name, name)
        ax.set(xlabel="epoch", ylabel=label, title=f"{label} per epoch")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7, ncol=2)
        else:
            ax.text(0.5, 0.5, f"no {name} recorded", ha="center", va="center", transform=ax.transAxes, color="grey")
    return save_png(fig, path)


def _cost_values(history: Any, column: str) -> np.ndarray:
    """The finite values of one cost column of a history (empty when it was not logged)."""
    if history is None or column not in getattr(history, "columns", ()):
        return np.zeros(0)
    values = np.asarray(history[column], dtype=float)
    return values[np.isfinite(values)]


def _cost_totals(seconds: np.ndarray, speed: np.ndarray, rss: np.ndarray, gpu: np.ndarray) -> dict[str, Any]:
    """Sum of seconds, median images/s, max peak RSS and (when logged) max GPU peak; None when empty."""
    out: dict[str, Any] = {
        "seconds": round(float(seconds.sum()), 1) if len(seconds) else None,
        "median_images_per_s": round(float(np.median(speed)), 1) if len(speed) else None,
        "peak_rss_mb": round(float(rss.max()), 1) if len(rss) else None,
    }
    if len(gpu):
        out["peak_gpu_mb"] = round(float(gpu.max()), 1)
    return out


def history_cost(history: Any) -> dict[str, Any]:
    """The cost of one fit (a fold or the final model) from its history.csv frame.

    Returns:
        ``epochs``, ``seconds`` (sum of the epochs' wall times), ``median_images_per_s``,
        ``peak_rss_mb`` (max over the epochs) and, when logged, ``peak_gpu_mb`` (max); the
        costs are None for a history without the cost columns (made before they existed).
    """
    epochs = 0 if history is None else len(history)
    return {"epochs": int(epochs), **_cost_totals(*(_cost_values(history, c) for c in COST_COLUMNS))}


def training_cost_summary(folds: dict[int, Any], final: Any = None) -> dict[str, Any]:
    """run.json's ``training_cost``: the cost of every fold and of the final model's refit, and
    the run's totals.

    Args:
        folds: Fold (0-based) -> its history.csv frame (empty or None when it wrote none).
        final: final/history.csv (only a refit writes one), or None.

    Returns:
        ``folds`` (one :func:`history_cost` per fold, with ``fold``), ``final_model`` (or None),
        ``total_seconds`` (every recorded epoch), ``median_images_per_s`` (over every recorded
        epoch), ``peak_rss_mb`` and, when a GPU was used, ``peak_gpu_mb`` (max over everything);
        the totals are None when nothing was recorded.
    """
    parts = [history for _, history in sorted(folds.items())] + ([final] if final is not None else [])
    totals = _cost_totals(*(np.concatenate([_cost_values(h, c) for h in parts] or [np.zeros(0)]) for c in COST_COLUMNS))
    return {
        "folds": [{"fold": int(k), **history_cost(h)} for k, h in sorted(folds.items())],
        "final_model": history_cost(final) if final is not None else None,
        "total_seconds": totals.pop("seconds"),
        **totals,
    }


def plot_training_cost(histories: dict[str, Any], path: Path) -> bytes:
    """Two panels per epoch: training images/s, and peak memory in MB (RSS solid, GPU dashed).

    Args:
        histories: Label (``"fold 0"``, ``"final model"``) -> history.csv frame with cost columns.
        path: The PNG to write.
    """
    import matplotlib as mpl

    fig = figure(10.0, 4.2)
    speed_ax, mem_ax = fig.subplots(1, 2)
    colors = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, h) in enumerate(histories.items()):
        if h is None or len(h) == 0:
            continue
        x = h["epoch"].to_numpy() if "epoch" in h.columns else np.arange(1, len(h) + 1)
        color = colors[i % len(colors)]
        if "images_per_s" in h.columns:
            speed_ax.plot(x, h["images_per_s"], color=color, lw=1.4, marker="o", ms=3, label=label)
        if "peak_rss_mb" in h.columns:
            mem_ax.plot(x, h["peak_rss_mb"], color=color, lw=1.4, marker="o", ms=3, label=f"{label} RSS")
        if "peak_gpu_mb" in h.columns:
            mem_ax.plot(x, h["peak_gpu_mb"], color=color, lw=1, ls="--", marker="s", ms=3, label=f"{label} GPU")
    speed_ax.set(xlabel="epoch", ylabel="training images / s", title="Training speed per epoch")
    mem_ax.set(xlabel="epoch", ylabel="MB", title="Peak memory per epoch")
    for ax in (speed_ax, mem_ax):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2)
    return save_png(fig, path)


def _cost_cells(c: dict[str, Any], gpu: bool) -> list[Any]:
    def show(v: Any, digits: int) -> str:
        return "not recorded" if v is None else f"{float(v):,.{digits}f}"

    cells = [c.get("epochs", ""), show(c.get("seconds"), 1), show(c.get("median_images_per_s"), 1),
             show(c.get("peak_rss_mb"), 0)]
    return cells + ([show(c.get("peak_gpu_mb"), 0)] if gpu else [])


def training_cost_section(run: RunDir, histories: dict[int, Any], cost: dict[str, Any] | None = None) -> str:
    """The report's "Training cost" section, the same for every kind: run.json's numbers as a
    line and a table, and ``plots/training_cost.png`` (images/s and peak memory per epoch, per
    fold and for the final model's refit) embedded.

    Args:
        run: The run directory (the final model's history is read from ``final/history.csv``).
        histories: Fold -> history.csv frame.
        cost: run.json's ``training_cost`` (default: computed from the histories).

    Returns:
        The section's HTML; a "not recorded" note for runs whose histories have no cost columns.
    """
    final_csv = run.final_dir / "history.csv"
    final = None
    if final_csv.is_file():
        import pandas as pd

        final = pd.read_csv(final_csv)
    if cost is None:
        cost = training_cost_summary(histories, final)
    labelled = {f"fold {k}": h for k, h in sorted(histories.items())}
    if final is not None:
        labelled["final model"] = final
    recorded = any("images_per_s" in getattr(h, "columns", ()) for h in labelled.values())
    if not recorded or cost.get("total_seconds") is None:
        return f"<p class='note'>{escape(COST_NOT_RECORDED)}</p>"
    gpu = cost.get("peak_gpu_mb") is not None
    line = (f"<p>Training took <b>{cost['total_seconds']:,.1f} s</b> (every epoch of every fold"
            + (" and of the final model" if cost.get("final_model") else "")
            + f"), median <b>{cost['median_images_per_s']:,.1f} training images/s</b>, peak resident memory "
            f"<b>{cost['peak_rss_mb']:,.0f} MB</b>"
            + (f", peak GPU memory <b>{cost['peak_gpu_mb']:,.0f} MB</b>" if gpu else "") + ".</p>")
    rows = [[f"fold {f['fold']}", *_cost_cells(f, gpu)] for f in cost.get("folds", [])]
    if cost.get("final_model"):
        rows.append(["final model", *_cost_cells(cost["final_model"], gpu)])
    headers = ["", "epochs", "seconds", "median images/s", "peak RSS (MB)", *(["peak GPU (MB)"] if gpu else [])]
    png = plot_training_cost(labelled, run.plots_dir / "training_cost.png")
    caption = ("Training images per second (validation excluded) and peak memory per epoch: the "
               "process's peak resident memory so far" + (" (solid) and the epoch's peak GPU memory (dashed)"
                                                         if gpu else "") + ".")
    note = ("<p class='note'>Seconds are epoch wall times (validation included); a fold's images/s is the "
            "median over its epochs (the first epoch also builds the graph). Numbers from run.json "
            "(training_cost) and each history.csv.</p>")
    return (line + html_table(headers, rows) + note
            + f"<div class='plots'>{img_html('training_cost', png, caption)}</div>")


def _ci_text(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "—"
    if entry.get("lo") is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} [{entry['lo']:.3f}, {entry['hi']:.3f}]"


def shortcut_section(audit: dict[str, Any] | None, strata: dict[str, Any] | None,
                     seen: dict[str, Any] | None = None) -> str:
    """The report's "Shortcut audit" section, the same for every kind: how well metadata alone
    predicts the target out of fold (per feature and combined, with CIs), the flagged features in
    red, and the model's own metrics within each stratum of a flagged feature.

    Args:
        audit: data_report.json's ``shortcut_audit`` (None: the audit was off or the run predates it).
        strata: metrics.json's ``strata``.
        seen: data_report.json's ``shortcut_audit_seen``: the same audit on the images the model is
            given after the recipe's format normalisation (``input.reencode``), or None.
    """
    html = _audit_html(audit, strata)
    if seen:
        spec = (seen.get("input") or {}).get("reencode") or {}
        how = ", ".join(f"{k} {v}" for k, v in spec.items() if v is not None)
        html += (f"<h3>What the model is given, after the format normalisation (input.reencode: {escape(how)})</h3>"
                 "<p class='note'>The same audit on the decoded, normalised pixels the network receives: the "
                 "file-level features (format, JPEG tables, file size, bit depth, DICOM tags) no longer reach it; "
                 "size, intensity statistics and the JPEG block pattern left in the pixels are scored again.</p>"
                 + _audit_html(seen, None))
    return html


def _audit_html(audit: dict[str, Any] | None, strata: dict[str, Any] | None) -> str:
    """One audit's table, warnings and strata (see :func:`shortcut_section`)."""
    if not audit:
        return "<p class='note'>No shortcut audit in this run (data.audit.enabled: false, or a run made before the audit existed).</p>"
    if audit.get("not_applicable"):
        return f"<p class='note'>Not applicable: {escape(audit['not_applicable'])}.</p>"
    feats = audit.get("features", {})
    if not feats:
        return "<p class='note'>No metadata varies across the samples: nothing to check.</p>"
    parts = []
    level = audit["level"]
    if audit.get("flagged"):
        parts.append("<p class='warn'><b>Shortcut warning:</b> " + ", ".join(
            f"<b>{escape(n)}</b> (AUC {escape(_ci_text(feats[n]['auc']))})" for n in audit["flagged"])
            + f" alone predict{'s' if len(audit['flagged']) == 1 else ''} the {escape(audit['target'])} out of fold with a CI above "
            f"{level:g}. A CNN can learn this instead of the image content; the metrics per stratum below show what the "
            "model does within one value of the feature.</p>")
    c = audit.get("combined")
    if c and c["auc"]["value"] is not None:
        parts.append(f"<p>All {len(c['features'])} varying features together predict the {escape(audit['target'])} with "
                     f"out-of-fold AUC <b>{escape(_ci_text(c['auc']))}</b>"
                     + (" <span class='warn'>(above the level)</span>" if c["flagged"] else "") + ".</p>")
    order = sorted(feats, key=lambda n: -(feats[n]["auc"]["value"] or 0))
    rows = [[n, _ci_text(feats[n]["auc"]), "FLAGGED" if feats[n]["flagged"] else "",
             ", ".join(f"{k}: {v}" for k, v in feats[n]["values"].items()), feats[n]["what"]] for n in order]
    parts.append(html_table(["feature", "out-of-fold AUC [CI]", "", "values", "what it is"], rows, numeric_from=1,
                            row_class={i: "highlight" for i, n in enumerate(order) if feats[n]["flagged"]}))
    if audit.get("skipped"):
        parts.append(f"<p class='note'>Constant or absent here (not scored): {escape(', '.join(audit['skipped']))}.</p>")
    for feature, per in (strata or {}).items():
        metric_names = sorted({k for v in per.values() for k, e in v.items() if isinstance(e, dict)})
        srows = [[stratum, v.get("n", ""), v.get("n_pos", ""), *[_ci_text(v.get(m)) for m in metric_names],
                  v.get("note", "")] for stratum, v in per.items()]
        parts.append(f"<h3>The model within each {escape(feature)} stratum (out of fold)</h3>"
                     + html_table(["stratum", "n", "positives", *metric_names, ""], srows, numeric_from=1))
    parts.append(f"<p class='note'>Metadata-only models (one per feature: its smoothed target rate per value or "
                 f"quantile bin; all together: gradient boosting) fitted on the run's own folds; AUC over pairs "
                 f"within a fold, {audit.get('ci', 0.95):.0%} CI from {audit.get('n_bootstrap')} group-bootstrap "
                 f"resamples; flagged when the CI's lower end exceeds {level:g} (data.audit.level).</p>")
    return "".join(parts)


def write_page(run: RunDir, info: dict[str, Any], *, default_title: str, summary_html: str,
               sections: list[tuple[str, str]], images: dict[str, bytes], captions: dict[str, str],
               after_data: list[tuple[str, str]] | None = None) -> Path:
    """Write ``report.html``: the kind's headline and sections, then the sections every run has.

    Args:
        run: The run directory.
        info: Optional keys: ``title``, ``recipe_name`` (or ``recipe``), ``run_dir``, ``date``
            (default: now), ``intended_use``, ``seconds``, ``training_start``, ``export``,
            ``data`` (data_report.json), ``versions``, ``recipe_yaml`` (default: the run's
            recipe.resolved.yaml), ``cv_subset`` (metrics.json's, when only some folds ran).
        default_title: The title when ``info`` has none.
        summary_html: The paragraph under the title (the headline numbers).
        sections: ``(heading, html)`` of the kind's own sections, in order.
        images: Plot name -> PNG bytes, embedded in this order.
        captions: Plot name -> caption.
        after_data: Sections shown right after the data section (e.g. the folds table).

    Returns:
        The path of report.html.
    """
    title = info.get("title") or default_title
    recipe_name = info.get("recipe_name") or info.get("recipe") or ""
    shown_dir = info.get("run_dir") or run.root
    date = info.get("date") or _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    recipe_yaml = info.get("recipe_yaml")
    if recipe_yaml is None and run.recipe.is_file():
        recipe_yaml = run.recipe.read_text(encoding="utf-8")
    common = [("Start point", start_section(info.get("training_start"))),
              ("Export", export_section(info.get("export"))),
              ("Data", data_section(info.get("data") or {})),
              *(after_data or [])]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p class='meta'>Recipe <b>{escape(recipe_name)}</b> · run <code>{escape(shown_dir)}</code> · {escape(date)}"
        + (f" · {escape(info['seconds'])} s" if info.get("seconds") is not None else "") + "</p>",
        *([f"<p class='note'>{escape(info['intended_use'])}</p>"] if info.get("intended_use") else []),
        summary_html,
        *([f"<p class='note'><b>Folds:</b> {escape(info['cv_subset']['note'])} (cv.folds)</p>"]
          if info.get("cv_subset") else []),
        *(f"<h2>{escape(heading)}</h2>\n{body}" for heading, body in [*sections, *common]),
        "<h2>Plots</h2><div class='plots'>",
        *(img_html(name, data, captions[name]) for name, data in images.items()),
        "</div>",
        "<h2>Versions</h2>",
        render_value(info.get("versions", {})),
        "<h2>Resolved recipe</h2>",
        f"<pre>{escape(recipe_yaml or '(not available)')}</pre>",
        "</body></html>",
    ]
    atomic_write_text(run.report, "\n".join(parts))
    return run.report

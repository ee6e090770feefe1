"""report.html and plots from a synthetic run."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from lepton_vision.evaluate import binary as B
from lepton_vision.evaluate import thresholds as T
from lepton_vision.kinds.classification import metrics as M
from lepton_vision.kinds.classification.report import PLOT_NAMES, print_summary, write_report
from lepton_vision.runio import RunDir, atomic_write_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PREVIEW = Path("/work/report_roc_preview.png")


def synthetic_oof(seed: int = 0) -> pd.DataFrame:
    """5 folds, 300 samples, 60 groups (patients nested in folds), scores from labels + noise."""
    rng = np.random.default_rng(seed)
    group = np.arange(300) % 60
    label = (rng.random(300) < 0.4).astype(int)
    score = 1 / (1 + np.exp(-(2.2 * label - 1.1 + rng.normal(0, 1, 300))))
    return pd.DataFrame(
        {
            "sample_id": [f"scan{i:03d}.dcm" for i in range(300)],
            "path": [f"/data/scan{i:03d}.dcm" for i in range(300)],
            "group": [f"patient<{g:02d}>" for g in group],  # '<' checks HTML escaping
            "label": label,
            "fold": group % 5,
            "score": score,
        }
    )


def histories() -> dict[int, pd.DataFrame]:
    out = {}
    for k in range(5):
        e = np.arange(6)
        # epochs are 1-based, as train.py writes history.csv
        h = pd.DataFrame({"epoch": e + 1, "loss": 0.7 - 0.05 * e, "val_loss": 0.72 - 0.04 * e + 0.01 * k,
                          "auc": 0.6 + 0.05 * e, "val_auc": 0.58 + 0.04 * e, "lr": 1e-3})
        if k == 4:  # a log with missing columns must still plot
            h = h[["epoch", "loss"]]
        out[k] = h
    return out


@pytest.fixture()
def report(tmp_path: Path) -> tuple[RunDir, dict, str]:
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    oof = synthetic_oof()
    metrics = M.score_oof(oof, T.parse_policy("min_sensitivity:0.9"), n_bootstrap=300, ci=0.95, seed=1)
    # the shape crossval passes (data = data_report.json; classes come from run.json's task card)
    atomic_write_json(run.run_info, {"task": {"classes": ["no_nodule", "nodule"]}})
    info = {
        "title": "CT screening <nodule> & co",
        "recipe_name": "baseline",
        "run_dir": str(run.root),
        "intended_use": "Research only; not a diagnostic device.",
        "seconds": 12.5,
        "folds": [{"fold": 0, "n": 60}],
        "data": {"n_samples": 300, "n_positive": int(oof.label.sum()), "n_groups": 60,
                 "counts": {"per_class": {"no_nodule": 198, "nodule": 102}, "n_excluded": 1},
                 "excluded": [{"sample_id": "bad/scan_999.dcm", "path": "/d/bad/scan_999.dcm",
                               "reason": "not a DICOM file <truncated>"}],
                 "fingerprint": "abc123"},
        "versions": {"lepton_vision": "0.1.0", "numpy": np.__version__},
        "recipe_yaml": "name: baseline\nevaluate:\n  threshold: {policy: min_sensitivity, value: 0.9}\n",
    }
    path = write_report(run, metrics, oof, histories(), info)
    assert path == run.report
    return run, metrics, path.read_text(encoding="utf-8")


def test_report_html_is_self_contained(report: tuple[RunDir, dict, str]) -> None:
    run, metrics, html_text = report
    auc = metrics["pooled"]["roc_auc"]
    assert f"{auc['value']:.3f} [{auc['lo']:.3f}, {auc['hi']:.3f}]" in html_text
    imgs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)
    assert len(imgs) == len(PLOT_NAMES)
    assert all(base64.b64decode(b).startswith(PNG_MAGIC) for b in imgs)
    # no external resources
    assert not re.search(r'(src|href)="(https?:|//|/)', html_text)
    assert "<link" not in html_text and "<script" not in html_text
    # escaped text, never raw
    assert "CT screening &lt;nodule&gt; &amp; co" in html_text and "<nodule>" not in html_text
    assert "not a DICOM file &lt;truncated&gt;" in html_text and "Excluded files (1)" in html_text
    assert "counts.per_class" in html_text and "no_nodule: 198, nodule: 102" in html_text
    assert "not a diagnostic device" in html_text
    assert "min_sensitivity:0.9" in html_text
    assert "mean ± SD" in html_text and "baseline" in html_text
    assert "<pre>name: baseline" in html_text
    assert "lepton_vision" in html_text and np.__version__ in html_text
    # operating point: pooled sensitivity at the honest thresholds
    assert B.format_value(metrics["pooled"]["sensitivity"]) in html_text


def test_plot_files_exist_and_are_pngs(report: tuple[RunDir, dict, str]) -> None:
    run, _, _ = report
    for name in PLOT_NAMES:
        p = run.plots_dir / f"{name}.png"
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 10_000, (name, len(data))  # a real plot, not an empty canvas
    try:
        shutil.copyfile(run.plots_dir / "roc.png", PREVIEW)
    except OSError:
        pass  # the preview copy is a convenience for looking at the plot, not part of the test


def test_report_without_histories_or_bootstrap(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    oof = synthetic_oof(1).drop(columns=["group"])
    metrics = M.score_oof(oof, T.parse_policy("youden"), n_bootstrap=0)
    html_text = write_report(run, metrics, oof, {}, {}).read_text(encoding="utf-8")
    assert f"{metrics['pooled']['roc_auc']['value']:.3f}" in html_text
    assert "No bootstrap CIs" in html_text
    assert "None: every listed file was used" in html_text
    assert (run.plots_dir / "training_curves.png").stat().st_size > 5_000


def test_print_summary(report: tuple[RunDir, dict, str]) -> None:
    _, metrics, _ = report
    console = Console(record=True, width=140)
    print_summary(metrics, console)
    text = console.export_text()
    assert "ROC AUC" in text and B.format_value(metrics["pooled"]["roc_auc"]) in text
    ms = metrics["mean_sd"]["f1"]
    assert f"{ms['mean']:.3f} ± {ms['sd']:.3f}" in text


def test_calibration_plot_and_patient_table(report: tuple[RunDir, dict, str]) -> None:
    run, metrics, html_text = report
    data = (run.plots_dir / "calibration.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert "calibration" in PLOT_NAMES and 'alt="calibration"' in html_text
    # patient-level table with pooled CIs next to the slice-level one
    assert "<h2>Patient-level metrics</h2>" in html_text
    p = metrics["patient"]
    assert B.format_value(p["pooled"]["roc_auc"]) in html_text
    assert f"{p['n']} patients" in html_text and "Pooled OOF, patients" in html_text
    # the screening number, labelled and highlighted
    spec = B.format_value(metrics["pooled"]["specificity"])
    assert re.search(r'<tr class="highlight"><td>Specificity at sensitivity ≥ 0\.9 \(pooled OOF[^<]*</td>'
                     rf'<td>{re.escape(spec)}</td>', html_text)
    ece = metrics["calibration"]["ece"]
    assert B.format_value(ece) in html_text and "<h2>Calibration</h2>" in html_text
    assert "gradcam" not in html_text  # not produced in this run


def test_report_without_groups_and_with_temperature_and_gradcam(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    oof = synthetic_oof(2).drop(columns=["group"])
    metrics = M.score_oof(oof, T.parse_policy("max_f1"), n_bootstrap=50, temperature_scaling=True)
    run.plots_dir.mkdir(parents=True)
    gradcam = (run.plots_dir / "gradcam.png")
    gradcam.write_bytes(PNG_MAGIC + b"grad-cam stand-in")  # written by the Grad-CAM step before the report
    html_text = write_report(run, metrics, oof, {}, {}).read_text(encoding="utf-8")
    assert "No patient ids: slice level only." in html_text
    assert "Specificity at sensitivity" not in html_text  # only for min_sensitivity
    assert B.format_value(metrics["calibration"]["after_scaling"]["ece"]) in html_text
    assert f"{metrics['final_threshold_calibrated']:.4g}" in html_text and "Temperature-scaled (cross-fitted)" in html_text
    imgs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([a-z_]+)"', html_text)
    assert [alt for _, alt in imgs] == [*PLOT_NAMES, "gradcam"]
    assert base64.b64decode(imgs[-1][0]) == gradcam.read_bytes()
    assert "Grad-CAM: true positives / false positives / false negatives of the final model" in html_text
    console = Console(record=True, width=200)
    print_summary(metrics, console)
    text = console.export_text()
    assert "no patient ids: slice level only" in text
    assert "after temperature scaling" in text and B.format_value(metrics["calibration"]["ece"]) in text


def test_print_summary_patient_and_ece(report: tuple[RunDir, dict, str]) -> None:
    _, metrics, _ = report
    console = Console(record=True, width=220)
    print_summary(metrics, console)
    text = console.export_text()
    p = metrics["patient"]
    assert f"patient level ({p['n']} patients" in text
    for name in ("roc_auc", "sensitivity", "specificity"):
        assert B.format_value(p["pooled"][name]) in text
    assert f"ECE {B.format_value(metrics['calibration']['ece'])}" in text


def _costed(histories_: dict[int, pd.DataFrame]) -> dict[int, pd.DataFrame]:
    """The histories with the cost columns engine.callbacks.EpochLog writes."""
    out = {}
    for k, h in histories_.items():
        n = len(h)
        out[k] = h.assign(seconds=np.full(n, 2.0 + k), images_per_s=np.linspace(50.0, 80.0, n) + k,
                          peak_rss_mb=np.linspace(900.0, 1000.0, n) + 10 * k)
    return out


def test_training_cost_summary_sums_epochs_and_takes_peaks() -> None:
    from lepton_vision.evaluate.report import training_cost_summary

    hist = _costed(histories())
    final = hist[0].assign(seconds=1.0, peak_rss_mb=1500.0)
    cost = training_cost_summary(hist, final)
    assert [f["fold"] for f in cost["folds"]] == [0, 1, 2, 3, 4]
    assert cost["folds"][1]["seconds"] == pytest.approx(6 * 3.0)
    assert cost["folds"][1]["median_images_per_s"] == pytest.approx(66.0)
    assert cost["folds"][4]["peak_rss_mb"] == pytest.approx(1040.0)
    assert cost["final_model"]["seconds"] == pytest.approx(6.0) and cost["final_model"]["epochs"] == 6
    assert cost["total_seconds"] == pytest.approx(6 * (2 + 3 + 4 + 5 + 6) + 6.0)
    assert cost["peak_rss_mb"] == pytest.approx(1500.0) and "peak_gpu_mb" not in cost
    # an old history (no cost columns): the costs are unknown, never zero
    old = training_cost_summary(histories())
    assert old["total_seconds"] is None and old["folds"][0]["seconds"] is None and old["folds"][0]["epochs"] == 6


def test_report_training_cost_section(tmp_path: Path) -> None:
    from lepton_vision.evaluate.report import COST_NOT_RECORDED

    oof = synthetic_oof(2)
    metrics = M.score_oof(oof, T.parse_policy("youden"), n_bootstrap=0)
    run = RunDir(tmp_path / "costed")
    hist = _costed(histories())
    hist[0] = hist[0].assign(peak_gpu_mb=np.linspace(300.0, 400.0, 6))
    html_text = write_report(run, metrics, oof, hist, {}).read_text(encoding="utf-8")
    section = html_text.split("<h2>Training cost</h2>", 1)[1]
    assert "training images/s" in section and "peak GPU memory <b>400 MB</b>" in section
    assert "peak resident memory <b>1,040 MB</b>" in section
    png = (run.plots_dir / "training_cost.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    # a run from before training cost was recorded says so instead of showing zeros
    old = RunDir(tmp_path / "old")
    old_html = write_report(old, metrics, oof, histories(), {}).read_text(encoding="utf-8")
    assert COST_NOT_RECORDED in old_html and not (old.plots_dir / "training_cost.png").exists()

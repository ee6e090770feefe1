"""``lepton-vision monitor``: drift statistics per window, and a CT export watching a stream.

The numpy tests check PSI, the windows and the limits; the tf test runs the CLI on a CT export of
generated data (tests/ood_exports.py) with two streams of the same 360 slices of 60 new
patients in patient order: unchanged (must stay quiet) and with its brightness falling linearly
from 100 % to 30 % (must alarm by window 1 of 120 slices, where brightness is 53-77 %).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lepton_vision.config.errors import LeptonError
from lepton_vision.serve import monitor as M

# ---------------------------------------------------------------------------------------------
# The statistics (numpy)


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    ref = rng.beta(2, 5, 2000)
    same = rng.beta(2, 5, 500)
    shifted = rng.beta(5, 2, 500)
    assert M.psi(ref, same) < 0.05
    assert M.psi(ref, shifted) > 1.0
    # coarse bins for small windows: PSI's noise stays below the default limit
    assert M.psi_bins(50) == 2 and M.psi_bins(120) == 2 and M.psi_bins(250) == 5 and M.psi_bins(5000) == 10
    noise = [M.psi(ref, rng.beta(2, 5, 50)) for _ in range(200)]
    assert np.quantile(noise, 0.99) < M.Limits().max_psi
    # a reference piled up at one value (empty frames scoring 0) still bins
    piled = np.r_[np.zeros(800), rng.random(200)]
    assert M.psi(piled, np.r_[np.zeros(80), rng.random(20)]) < 0.05
    assert M.psi(piled, rng.random(100)) > 1.0
    assert np.isnan(M.psi(np.zeros(0), same))


def test_windows_cover_the_stream_in_order():
    assert M.window_bounds(0, 50) == []
    assert M.window_bounds(30, 50) == [(0, 30)]  # a batch shorter than a window: one window
    assert M.window_bounds(100, 50) == [(0, 50), (50, 100)]
    assert M.window_bounds(120, 50) == [(0, 50), (50, 120)]  # a short tail joins the last window
    assert M.window_bounds(130, 50) == [(0, 50), (50, 100), (100, 130)]


def test_limits_name_what_was_crossed():
    w = {"psi": 0.4, "ks_pvalue": 1e-9, "ks_statistic": 0.5, "ood_share": 0.5, "max_stat_shift": 4.2,
         "max_stat": "brightness", "stat_shift": {"brightness": -4.2}}
    reasons = M.judge(w, M.Limits(), ks_level=None)
    assert len(reasons) == 3 and "PSI 0.400 > 0.25" in reasons[0] and "50% of inputs" in reasons[1]
    assert "median brightness 4.2 training spreads below" in reasons[2]
    assert any("KS p" in r for r in M.judge(w, M.Limits(ks_alpha=0.01), ks_level=0.01 / 3))
    quiet = {**w, "psi": 0.1, "ood_share": 0.0, "max_stat_shift": 1.0, "stat_shift": {"brightness": 1.0}}
    assert M.judge(quiet, M.Limits(), ks_level=None) == []
    for bad in (M.Limits(max_psi=0), M.Limits(max_ood_share=1.5), M.Limits(max_stat_shift=-1), M.Limits(ks_alpha=2)):
        with pytest.raises(LeptonError):
            bad.check()


def test_window_stats_measure_shift_in_training_spreads():
    rng = np.random.default_rng(1)
    center, scale = np.array([0.5, 0.2, 3.0, 4.0, 4.0]), np.array([0.05, 0.02, 0.3, 0.01, 0.01])
    stats = center + rng.normal(0, 1, (60, 5)) * scale
    stats[:, 0] -= 0.25  # brightness 5 spreads down
    w = M.window_stats(rng.random(60), rng.random(60) < 0.3, np.ones(60, bool), stats, rng.random(500), center, scale)
    assert w["max_stat"] == "brightness" and w["stat_shift"]["brightness"] == pytest.approx(-5, abs=0.6)
    assert w["ood_share"] == 0.0 and 0.1 < w["positive_rate"] < 0.5 and w["n"] == 60 and w["psi_bins"] == 2


# ---------------------------------------------------------------------------------------------
# A CT export watching a stream (the CLI)


def _write_stream(images: list[np.ndarray], folder: Path) -> Path:
    import cv2

    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        cv2.imwrite(str(folder / f"slice_{i:04d}.png"), im)
    return folder


@pytest.fixture(scope="module")
def streams(ood_ct_run, ood_data, tmp_path_factory):
    """The export, and monitor runs on the undrifted and the darkening stream (CLI, exit codes kept)."""
    from lepton_vision.cli import main

    root = tmp_path_factory.mktemp("monitor")
    slices = ood_data.monitor_ct_slices()
    flat = _write_stream(slices, root / "flat")
    dark = _write_stream(ood_data.darkening(slices), root / "dark")
    (dark / "slice_9999.png").write_bytes(b"not a png")  # an unreadable input at the end
    export = ood_ct_run / "export"
    window = str(ood_data.MONITOR_WINDOW)
    rc_flat = main(["monitor", str(export), str(flat), "--window", window, "--out", str(root / "out_flat"), "--quiet"])
    rc_dark = main(["monitor", str(ood_ct_run), str(dark), "--window", window, "--out", str(root / "out_dark"),
                    "--quiet"])
    return {"export": export, "n": len(slices), "root": root, "rc": {"flat": rc_flat, "dark": rc_dark},
            "out": {"flat": root / "out_flat", "dark": root / "out_dark"}}


@pytest.mark.tf
def test_undrifted_stream_stays_quiet(streams):
    assert streams["rc"]["flat"] == 0
    out = streams["out"]["flat"]
    m = json.loads((out / "monitor.json").read_text())
    assert m["drift"] is False and m["exit_code"] == 0 and m["n_inputs"] == streams["n"]
    assert len(m["windows"]) == streams["n"] // 120
    for w in m["windows"]:
        assert w["reasons"] == [] and w["psi"] < 0.25 and w["ood_share"] <= 0.2 and w["max_stat_shift"] < 3
    # the reference's stated rates hold on new patients of the training kind
    assert m["overall"]["ood_share"] <= 0.05
    assert m["overall"]["psi"] < M.Limits().max_psi
    obs = pd.read_csv(out / "observations.csv")
    assert len(obs) == streams["n"] and obs["index"].tolist() == list(range(streams["n"]))
    assert obs["input"].iloc[0].endswith("slice_0000.png")  # stream order: sorted file names
    html = (out / "monitor.html").read_text()
    assert "No drift" in html and "data:image/png;base64," in html


@pytest.mark.tf
def test_darkening_stream_alarms_within_the_second_window(streams, capsys):
    assert streams["rc"]["dark"] == M.DRIFT_EXIT_CODE
    out = streams["out"]["dark"]
    m = json.loads((out / "monitor.json").read_text())
    assert m["drift"] is True and m["first_drift_window"] is not None and m["first_drift_window"] <= 1
    first = m["windows"][m["first_drift_window"]]
    assert any("brightness" in r or "contrast" in r or "out of distribution" in r for r in first["reasons"])
    # once dark, it stays in alarm, and the brightness shift grows over the stream
    assert all(w["drift"] for w in m["windows"][m["first_drift_window"]:])
    shifts = [w["stat_shift"]["brightness"] for w in m["windows"]]
    assert shifts == sorted(shifts, reverse=True) and shifts[-1] < -3
    # the unreadable file is named, not dropped silently, and the rest was scored
    assert [b["input"].endswith("slice_9999.png") for b in m["unreadable"]] == [True]
    assert m["n_inputs"] == streams["n"]
    windows = pd.read_csv(out / "windows.csv")
    assert len(windows) == len(m["windows"]) and windows["drift"].tolist() == [w["drift"] for w in m["windows"]]
    html = (out / "monitor.html").read_text()
    assert "id='monitor-verdict' class='warn'" in html and "slice_9999.png" in html
    assert (out / "plots/monitor.png").stat().st_size > 20_000


@pytest.mark.tf
def test_monitor_refuses_bad_options_in_one_line(streams, capsys, tmp_path):
    from lepton_vision.cli import main

    export = str(streams["export"])
    flat = str(streams["root"] / "flat")
    for args, expected in ((["--window", "3"], "--window"), (["--max-psi", "-1"], "--max-psi"),
                           (["--video-stride", "0"], "--video-stride")):
        assert main(["monitor", export, flat, "--out", str(tmp_path / "x"), *args]) == 1
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err
    assert main(["monitor", export, str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.tf
def test_detector_monitor_reads_video_frames_in_order_and_reports_the_alarm_rate(det_demo_export, tmp_path):
    export = det_demo_export["dir"]
    video = det_demo_export["video"]
    result = M.monitor(export, [*det_demo_export["frames"], video], tmp_path / "mon", window=10,
                       video_stride=2, progress=False)
    m = json.loads((tmp_path / "mon" / "monitor.json").read_text())
    obs = pd.read_csv(tmp_path / "mon" / "observations.csv")
    frames = obs["input"][obs["input"].str.contains("#")].tolist()
    assert frames and [int(f.rsplit("#", 1)[1]) for f in frames] == list(range(0, 2 * len(frames), 2))
    assert obs["input"].iloc[0].endswith("f0.png") and len(obs) == result.n_inputs == m["n_inputs"]
    assert m["reference"]["positive_name"] == "alarm" and set(obs["positive"]) <= {0, 1}
    rate = m["reference"]["reference_positive_rate"]
    assert rate is None or 0.0 <= rate <= 1.0
    assert all(0.0 <= w["positive_rate"] <= 1.0 for w in m["windows"])
    assert "alarm rate" in (tmp_path / "mon" / "monitor.html").read_text()

"""A training run killed with SIGKILL in the middle of fold 2 resumes without redoing fold 1 and
ends with exactly the result of an uninterrupted run; two runs with the same seed agree.

Both runs are separate processes through the real CLI (3 folds, tiny generated CT data), so
this also proves cross-process determinism on CPU: same folds.csv, OOF scores within 1e-6.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.tf, pytest.mark.slow]

SETTINGS = ["train.epochs=4", "cv.n_splits=3", "input.image_size=[32, 32]", "evaluate.n_bootstrap=50",
            "export.parity_samples=4", "export.formats=[saved_model]", "train.verbose=false"]


def _cmd(recipe: Path, *extra: str) -> list[str]:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    return [sys.executable, "-m", "lepton_vision", "train", str(recipe), *sets, *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_ct_project):
    root = tmp_path_factory.mktemp("kill")
    recipe = tiny_ct_project(root)
    env = {**os.environ, "LEPTON_GENERATED_ROOT": str(root / "generated"), "LEPTON_HOME": str(root),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    # Run A: uninterrupted.
    a = subprocess.run(_cmd(recipe, "--out", str(root / "A")), env=env, capture_output=True, text=True,
                       timeout=600)
    assert a.returncode == 0, a.stderr[-3000:]
    # Run B: SIGKILL as soon as fold 2 is under way (fold 1 finished, fold 2 writing its files).
    b_dir = root / "B"
    proc = subprocess.Popen(_cmd(recipe, "--out", str(b_dir)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if (b_dir / "folds/0/result.json").is_file() and (b_dir / "folds/1/history.csv").is_file():
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run B ended before fold 2 started: " + (proc.stderr.read()[-2000:] if proc.stderr else "")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    killed = {
        "fold1_done": (b_dir / "folds/0/result.json").is_file(),
        "fold2_done": (b_dir / "folds/1/result.json").is_file(),
        "metrics": (b_dir / "metrics.json").is_file(),
        "fold1_mtimes": {p.name: p.stat().st_mtime_ns for p in (b_dir / "folds/0").iterdir()},
    }
    resumed = subprocess.run(_cmd(recipe, "--resume", str(b_dir)), env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"A": root / "A", "B": b_dir, "killed": killed, "resume_out": resumed.stdout + resumed.stderr}


def test_killed_in_fold_2_and_fold_1_is_not_recomputed(runs):
    k = runs["killed"]
    assert k["fold1_done"] and not k["fold2_done"] and not k["metrics"], k
    after = {p.name: p.stat().st_mtime_ns for p in (runs["B"] / "folds/0").iterdir()}
    assert after == k["fold1_mtimes"], "fold 1's files were rewritten on resume"
    assert "finished earlier" in runs["resume_out"] or "skipping" in runs["resume_out"].lower()


def test_resumed_run_equals_the_uninterrupted_run(runs):
    a, b = runs["A"], runs["B"]
    assert (a / "folds.csv").read_text() == (b / "folds.csv").read_text()
    oa, ob = (pd.read_csv(d / "oof_predictions.csv", keep_default_na=False) for d in (a, b))
    assert list(oa["sample_id"]) == list(ob["sample_id"]) and list(oa["fold"]) == list(ob["fold"])
    np.testing.assert_allclose(ob["score"], oa["score"], atol=1e-6)
    ma, mb = (json.loads((d / "metrics.json").read_text())["pooled"] for d in (a, b))
    for name, v in ma.items():
        if isinstance(v, dict) and v.get("value") is not None:
            assert mb[name]["value"] == pytest.approx(v["value"], abs=1e-6), name


def test_no_half_written_results(runs):
    """Every result file parses and no temp file survived the kill (all writes are atomic)."""
    b = runs["B"]
    leftovers = [p for p in b.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers
    for p in b.rglob("*.json"):
        json.loads(p.read_text())
    for p in b.rglob("*.csv"):
        pd.read_csv(p)

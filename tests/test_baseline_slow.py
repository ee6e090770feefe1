"""The README's first command, for real: the default CT recipe on the embedded synthetic data (slow tier).

Generates the synthetic CT set into a temporary folder (so the developer's cached copy is neither
used nor touched) and trains the unmodified ``recipes/ct_screening/baseline.yaml``: 5 grouped
folds, refit, bootstrap CIs and both exports. Takes a few minutes on a 2-core CPU.

The pooled out-of-fold ROC-AUC must be clearly better than chance but not trivially perfect: the
synthetic data is meant to be learnable yet hard (nodules next to look-alike vessels), and a
pooled AUC far below the per-fold ones means the folds' scores are on different scales.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lepton_vision.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

RUN_FILES = (
    "recipe.resolved.yaml",
    "folds.csv",
    "oof_predictions.csv",
    "metrics.json",
    "report.html",
    "export/saved_model",
    "export/model.tflite",
    "export/bundle.json",
    "export/parity.json",
)


def test_default_ct_recipe_learns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEPTON_GENERATED_ROOT", str(tmp_path / "generated"))
    # relative recipe path, as in the README: run from the repository root
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"

    code = main(["train", "recipes/ct_screening/baseline.yaml", "--out", str(run)])

    assert code == 0
    missing = [f for f in RUN_FILES if not (run / f).exists()]
    assert not missing, f"run directory lacks {missing}"
    assert (tmp_path / "generated").is_dir(), "synthetic data was not generated under LEPTON_GENERATED_ROOT"
    pooled = json.loads((run / "metrics.json").read_text())["pooled"]["roc_auc"]
    auc, lo, hi = pooled["value"], pooled["lo"], pooled["hi"]
    assert 0.80 <= auc <= 0.97, f"pooled out-of-fold ROC AUC {auc:.3f} outside [0.80, 0.97]"
    assert lo <= auc <= hi, f"CI [{lo:.3f}, {hi:.3f}] does not bracket {auc:.3f}"
    assert lo < hi

"""Paired comparison of two runs on the same folds (lepton_vision.evaluate.compare; no TensorFlow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lepton_vision.evaluate.compare import compare_runs
from lepton_vision.config.errors import DataError


def _run(root: Path, name: str, scores: np.ndarray, labels: np.ndarray, groups: list[str],
         folds: np.ndarray) -> Path:
    run = root / name
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"task": {"kind": "binary_classification"}}))
    ids = [f"s{i:03d}" for i in range(len(labels))]
    pd.DataFrame({"sample_id": ids, "fold": folds}).to_csv(run / "folds.csv", index=False)
    pd.DataFrame({"sample_id": ids, "path": ids, "group": groups, "label": labels, "fold": folds,
                  "score": scores}).to_csv(run / "oof_predictions.csv", index=False)
    return run


def _data(seed: int = 0, n: int = 120):
    rng = np.random.default_rng(seed)
    labels = np.array([0, 1] * (n // 2))
    groups = [f"p{i // 3}" for i in range(n)]  # 3 slices per patient
    folds = np.array([(i // 3) % 5 for i in range(n)])
    weak = labels * 0.3 + rng.normal(0, 0.5, n)
    strong = labels * 1.5 + rng.normal(0, 0.5, n)
    return labels, groups, folds, weak, strong


def test_paired_difference_of_a_clearly_better_run(tmp_path):
    labels, groups, folds, weak, strong = _data()
    a = _run(tmp_path, "scratch", weak, labels, groups, folds)
    b = _run(tmp_path, "pretrained", strong, labels, groups, folds)
    c = compare_runs(a, b, n_bootstrap=300, seed=1)
    assert c["metric"] == "roc_auc" and c["bootstrap_unit"] == "group" and c["n_units"] == 40
    assert c["a"]["value"] == pytest.approx(roc_auc_score(labels, weak))
    assert c["b"]["value"] == pytest.approx(roc_auc_score(labels, strong))
    lo, hi = c["difference"]["ci"]
    assert c["difference"]["value"] == pytest.approx(c["b"]["value"] - c["a"]["value"])
    assert 0 < lo <= c["difference"]["value"] <= hi
    assert c["difference"]["p_b_better"] > 0.97
    for arm in ("a", "b"):
        lo, hi = c[arm]["ci"]
        assert lo <= c[arm]["value"] <= hi
    # The same run against itself: no difference on any resample.
    same = compare_runs(a, a, n_bootstrap=100, seed=1)
    assert same["difference"]["value"] == 0 and same["difference"]["ci"] == [0.0, 0.0]
    assert same["difference"]["p_b_better"] == 0.0


def test_runs_with_other_folds_are_refused(tmp_path):
    labels, groups, folds, weak, strong = _data()
    a = _run(tmp_path, "a", weak, labels, groups, folds)
    b = _run(tmp_path, "b", strong, labels, groups, (folds + 1) % 5)
    with pytest.raises(DataError, match="do not share their samples and folds"):
        compare_runs(a, b)
    with pytest.raises(DataError, match="merge_classes applies to detection runs only"):
        compare_runs(a, a, merge_classes=True)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "folds.csv").write_text((a / "folds.csv").read_text())
    with pytest.raises(DataError, match="missing; the run has not finished"):
        compare_runs(a, tmp_path / "c")

"""Metrics, threshold policies, honest fold thresholds, bootstrap CIs and run re-scoring."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from lepton_vision.evaluate import binary as B
from lepton_vision.evaluate import thresholds as T
from lepton_vision.kinds.classification import metrics as M
from lepton_vision.config.errors import DataError, RecipeError
from lepton_vision.config.recipe import PatientAggregation, Threshold
from lepton_vision.runio import RunDir, atomic_write_csv, atomic_write_json


def make_oof(n: int = 300, n_folds: int = 5, n_groups: int = 60, seed: int = 0, sep: float = 1.5) -> pd.DataFrame:
    """Synthetic OOF table: groups nested in folds, scores = sigmoid(label * sep + noise)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, n_groups, n)
    label = (rng.random(n) < 0.35).astype(int)
    score = 1 / (1 + np.exp(-(label * sep - sep / 2 + rng.normal(0, 1, n))))
    return pd.DataFrame(
        {
            "sample_id": [f"img{i:04d}.png" for i in range(n)],
            "path": [f"/data/img{i:04d}.png" for i in range(n)],
            "group": [f"p{g:03d}" for g in group],
            "label": label,
            "fold": group % n_folds,
            "score": score,
        }
    )


# ---------------------------------------------------------------------------------- metrics


def test_binary_metrics_match_sklearn() -> None:
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1, 0])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9, 0.2, 0.5, 0.5, 0.5])
    thr = 0.5
    pred = (s >= thr).astype(int)
    m = B.binary_metrics(y, s, thr)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    # hand count: predicted positive = scores >= 0.5 -> indices 3,4,5,7,8,9
    assert m["confusion"] == {"tn": 3, "fp": 2, "fn": 1, "tp": 4}
    assert m["specificity"] == pytest.approx(3 / 5)
    assert (m["n"], m["n_pos"]) == (10, 5)


def test_score_equal_to_threshold_is_positive() -> None:
    m = B.binary_metrics([0, 1], [0.3, 0.6], 0.6)
    assert m["confusion"] == {"tn": 1, "fp": 0, "fn": 0, "tp": 1}
    m = B.binary_metrics([0, 1], [0.3, 0.6], 0.6000001)
    assert m["confusion"]["tp"] == 0 and m["precision"] == 0.0 and m["f1"] == 0.0


def test_per_sample_thresholds() -> None:
    y = np.array([0, 1, 0, 1])
    s = np.array([0.5, 0.5, 0.5, 0.5])
    m = B.binary_metrics(y, s, np.array([0.6, 0.6, 0.4, 0.4]))
    assert m["confusion"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 1}


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_one_class_raises(labels: list[int]) -> None:
    with pytest.raises(DataError, match=r"fold 2: only one class.*n=3"):
        B.binary_metrics(labels, [0.1, 0.5, 0.9], 0.5, where="fold 2")


def test_bad_labels_and_nan_scores_raise() -> None:
    with pytest.raises(DataError, match="labels must be 0"):
        B.binary_metrics([0, 2], [0.1, 0.2], 0.5)
    with pytest.raises(DataError, match="NaN"):
        B.binary_metrics([0, 1], [0.1, float("nan")], 0.5)


# ---------------------------------------------------------------------------------- policies


Y = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
S = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9])


def test_min_sensitivity_one_gives_lowest_positive_score() -> None:
    assert T.choose_threshold(Y, S, Threshold(policy="min_sensitivity", value=1.0)) == 0.35


def test_min_sensitivity_is_highest_threshold_meeting_target() -> None:
    # sensitivity 0.8 needs 4 of 5 positives: highest such threshold = 0.6 (0.6, 0.7, 0.8, 0.9)
    assert T.choose_threshold(Y, S, Threshold(policy="min_sensitivity", value=0.8)) == 0.6
    assert T.choose_threshold(Y, S, Threshold(policy="min_sensitivity", value=0.7)) == 0.6


def test_min_specificity_is_lowest_threshold_meeting_target() -> None:
    # specificity 1.0: all negatives (max 0.4) below the threshold -> lowest is 0.6
    assert T.choose_threshold(Y, S, Threshold(policy="min_specificity", value=1.0)) == 0.6
    # specificity 0.8: 4 of 5 negatives below -> threshold 0.35 (negatives 0.05..0.3 below)
    assert T.choose_threshold(Y, S, Threshold(policy="min_specificity", value=0.8)) == 0.35


def test_min_specificity_can_mean_nothing_positive() -> None:
    y = np.array([0, 1, 0])
    s = np.array([0.2, 0.5, 0.9])
    t = T.choose_threshold(y, s, Threshold(policy="min_specificity", value=1.0))
    assert t > 0.9 and np.isfinite(t)
    assert B.binary_metrics(y, s, t)["specificity"] == 1.0


def test_max_f1_and_youden_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    s = np.round(y * 0.5 + rng.random(80), 2)
    cands = np.unique(s)

    def f1_at(t: float) -> float:
        return f1_score(y, (s >= t).astype(int), zero_division=0)

    def j_at(t: float) -> float:
        p = (s >= t).astype(int)
        return recall_score(y, p) + recall_score(1 - y, 1 - p) - 1

    t = T.choose_threshold(y, s, Threshold(policy="max_f1"))
    assert f1_at(t) == pytest.approx(max(f1_at(c) for c in cands))
    t = T.choose_threshold(y, s, Threshold(policy="youden"))
    assert j_at(t) == pytest.approx(max(j_at(c) for c in cands))


def test_fixed_policy_returns_value() -> None:
    assert T.choose_threshold(Y, S, Threshold(policy="fixed", value=0.42)) == 0.42


def test_parse_policy() -> None:
    assert T.parse_policy("max_f1") == Threshold(policy="max_f1")
    assert T.parse_policy(" min_sensitivity:0.9 ") == Threshold(policy="min_sensitivity", value=0.9)
    assert T.policy_text(T.parse_policy("fixed:0.5")) == "fixed:0.5"
    with pytest.raises(RecipeError, match="Did you mean 'max_f1'"):
        T.parse_policy("max_f")
    with pytest.raises(RecipeError, match="must be a number"):
        T.parse_policy("min_sensitivity:high")
    with pytest.raises(RecipeError, match="needs a value"):
        T.parse_policy("min_specificity")
    with pytest.raises(RecipeError, match="takes no value"):
        T.parse_policy("youden:0.3")
    with pytest.raises(RecipeError, match="invalid threshold policy"):
        T.parse_policy("fixed:1.5")


# ---------------------------------------------------------------------------------- honesty


@pytest.mark.parametrize("policy", ["max_f1", "youden", "min_sensitivity:0.9", "min_specificity:0.8"])
def test_fold_threshold_never_depends_on_its_own_fold(policy: str) -> None:
    oof = make_oof()
    pol = T.parse_policy(policy)
    before = T.fold_thresholds(oof, pol)
    changed = oof.copy()
    rng = np.random.default_rng(7)
    in_k = changed["fold"] == 2
    changed.loc[in_k, "score"] = rng.random(int(in_k.sum()))
    changed.loc[in_k, "label"] = 1 - changed.loc[in_k, "label"]
    after = T.fold_thresholds(changed, pol)
    assert after[2] == before[2]
    # ...while the other folds' thresholds do see fold 2 (they are chosen on it)
    assert any(after[k] != before[k] for k in before if k != 2)


def test_fold_threshold_equals_choice_on_other_folds() -> None:
    oof = make_oof()
    pol = Threshold(policy="youden")
    th = T.fold_thresholds(oof, pol)
    rest = oof[oof.fold != 4]
    assert th[4] == T.choose_threshold(rest.label, rest.score, pol)


def test_single_fold_refused() -> None:
    oof = make_oof()
    oof["fold"] = 0
    with pytest.raises(DataError, match="at least 2 folds"):
        T.fold_thresholds(oof, Threshold(policy="max_f1"))


def test_one_class_fold_raises_in_score_oof() -> None:
    oof = make_oof()
    oof.loc[oof.fold == 3, "label"] = 0
    n3 = int((oof.fold == 3).sum())
    with pytest.raises(DataError, match=rf"fold 3: only one class.*n={n3}, positives=0"):
        M.score_oof(oof, Threshold(policy="max_f1"), n_bootstrap=10)


# ---------------------------------------------------------------------------------- bootstrap


def test_weighted_metrics_equal_sklearn_on_a_resample() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = np.round(y * 0.6 + rng.random(200), 1)  # many ties
    idx = rng.integers(0, 200, 200)
    w = np.bincount(idx, minlength=200)[None, :]
    got = B._weighted_metrics(y, s, s >= 0.55, w)
    want = B.binary_metrics(y[idx], s[idx], 0.55)
    for name in B.SCALAR_METRICS:
        assert got[name][0] == pytest.approx(want[name], abs=1e-12), name


def test_bootstrap_ci_contains_estimate_and_is_reproducible() -> None:
    oof = make_oof(n=500)
    y, s = oof.label.to_numpy(), oof.score.to_numpy()
    a = B.bootstrap_ci(y, s, 0.5, None, 500, 0.95, seed=11)
    b = B.bootstrap_ci(y, s, 0.5, None, 500, 0.95, seed=11)
    c = B.bootstrap_ci(y, s, 0.5, None, 500, 0.95, seed=12)
    assert a == b
    assert a["intervals"] != c["intervals"]
    assert a["unit"] == "sample" and a["skipped_resamples"] == 0
    point = B.binary_metrics(y, s, 0.5)
    for name in B.SCALAR_METRICS:
        lo, hi = a["intervals"][name]
        assert lo <= point[name] <= hi, name
        assert lo < hi, name


def test_group_bootstrap_resamples_groups() -> None:
    # 10 groups of 50 identical samples: the information is in 10 units, not 500
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array([0, 1] * 5), 50)
    scores = np.repeat(np.clip(np.array([0, 1] * 5) * 0.3 + rng.random(10) * 0.7, 0, 1), 50)
    groups = np.repeat([f"patient{i}" for i in range(10)], 50)
    by_group = B.bootstrap_ci(labels, scores, 0.5, groups, 1000, 0.95, seed=0)
    by_sample = B.bootstrap_ci(labels, scores, 0.5, None, 1000, 0.95, seed=0)
    assert by_group["unit"] == "group" and by_group["n_units"] == 10
    assert by_sample["unit"] == "sample"
    for name in ("roc_auc", "sensitivity", "accuracy"):
        wg = np.diff(by_group["intervals"][name])[0]
        ws = np.diff(by_sample["intervals"][name])[0]
        assert wg > 3 * ws, (name, wg, ws)
    assert by_sample["skipped_resamples"] == 0


def test_single_class_resamples_are_skipped_and_counted() -> None:
    # 4 groups, 2 per class: a resample holds one class with probability 2 * 0.5**4 = 1/8
    labels = np.repeat([0, 0, 1, 1], 5)
    scores = np.repeat([0.1, 0.6, 0.4, 0.9], 5)
    groups = np.repeat(["a", "b", "c", "d"], 5)
    r = B.bootstrap_ci(labels, scores, 0.5, groups, 2000, 0.95, seed=0)
    assert 150 < r["skipped_resamples"] < 350
    # two groups, one per class: each resample is one-class with probability 1/2; with seed 15
    # all 4 are, and that is an error rather than an interval from nothing
    with pytest.raises(DataError, match="all 4 resamples of 2 groups had a single class"):
        B.bootstrap_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 0.5, ["a", "a", "b", "b"], 4, 0.95, 15)


def test_empty_groups_mean_sample_bootstrap() -> None:
    oof = make_oof()
    r = B.bootstrap_ci(oof.label, oof.score, 0.5, [""] * len(oof), 50, 0.9, 0)
    assert r["unit"] == "sample" and r["n_units"] == len(oof)


def test_bootstrap_is_fast() -> None:
    oof = make_oof(n=500, n_groups=100)
    t0 = time.perf_counter()
    B.bootstrap_ci(oof.label, oof.score, 0.5, oof.group, 1000, 0.95, 0)
    B.bootstrap_ci(oof.label, oof.score, 0.5, None, 1000, 0.95, 0)
    assert time.perf_counter() - t0 < 5.0


# ---------------------------------------------------------------------------------- score_oof


def test_score_oof_structure_and_json() -> None:
    oof = make_oof()
    m = M.score_oof(oof, T.parse_policy("min_sensitivity:0.9"), n_bootstrap=300, ci=0.9, seed=0)
    text = json.dumps(m, allow_nan=False)
    assert json.loads(text) == m
    assert set(m) == {
        "policy", "thresholds", "final_threshold", "n_folds", "per_fold", "mean_sd", "pooled",
        "confusion", "n", "n_pos", "ci", "n_bootstrap", "bootstrap_unit", "skipped_resamples", "curves",
        "calibration", "patient",  # patient: make_oof has groups; no temperature keys unless asked
    }
    assert m["policy"] == {"policy": "min_sensitivity", "value": 0.9}
    assert m["bootstrap_unit"] == "group" and m["ci"] == 0.9 and m["n_folds"] == 5
    assert [f["fold"] for f in m["per_fold"]] == [0, 1, 2, 3, 4]
    assert sum(f["n"] for f in m["per_fold"]) == m["n"] == 300
    th = T.fold_thresholds(oof, T.parse_policy("min_sensitivity:0.9"))
    assert m["thresholds"] == {str(k): v for k, v in th.items()}
    for f in m["per_fold"]:
        part = oof[oof.fold == f["fold"]]
        assert f["roc_auc"] == pytest.approx(roc_auc_score(part.label, part.score))
        assert f["threshold"] == th[f["fold"]]
    # pooled uses each sample's own fold threshold
    per_sample = oof.fold.map(th).to_numpy()
    pooled = B.binary_metrics(oof.label, oof.score, per_sample)
    for name in B.SCALAR_METRICS:
        entry = m["pooled"][name]
        assert entry["value"] == pytest.approx(pooled[name])
        assert entry["lo"] <= entry["value"] <= entry["hi"]
        vals = [f[name] for f in m["per_fold"]]
        assert m["mean_sd"][name]["mean"] == pytest.approx(np.mean(vals))
        assert m["mean_sd"][name]["sd"] == pytest.approx(np.std(vals, ddof=1))
    assert m["final_threshold"] == T.choose_threshold(oof.label, oof.score, T.parse_policy("min_sensitivity:0.9"))
    for kind, (xk, yk) in (("roc", ("fpr", "tpr")), ("pr", ("recall", "precision"))):
        curves = m["curves"][kind]
        assert len(curves["folds"]) == 5
        for c in [*curves["folds"], curves["pooled"]]:
            assert 2 <= len(c[xk]) == len(c[yk]) <= B.MAX_CURVE_POINTS


def test_score_oof_without_bootstrap_and_groups() -> None:
    oof = make_oof().drop(columns=["group"])
    m = M.score_oof(oof, Threshold(policy="max_f1"), n_bootstrap=0)
    assert m["bootstrap_unit"] == "sample" and m["n_bootstrap"] == 0
    assert m["pooled"]["roc_auc"]["lo"] is None
    json.dumps(m, allow_nan=False)
    rows = dict(M.summary_rows(m))
    assert rows["roc_auc"] == f"{m['pooled']['roc_auc']['value']:.3f}"


def test_summary_rows_format() -> None:
    m = {"pooled": {"roc_auc": {"value": 0.91234, "lo": 0.8712, "hi": 0.9481}}}
    assert M.summary_rows(m) == [("roc_auc", "0.912 [0.871, 0.948]")]


def test_missing_columns_named() -> None:
    with pytest.raises(DataError, match=r"missing column\(s\) \['score'\]"):
        M.score_oof(make_oof().drop(columns=["score"]), Threshold(policy="max_f1"))


# ---------------------------------------------------------------------------------- rescore


RECIPE = """\
schema_version: 1
name: tiny
task: ct_screening
dataset: ct_synthetic
seed: 3
evaluate:
  threshold: {policy: min_specificity, value: 0.8}
  n_bootstrap: 200
  ci: 0.9
"""


def _write_run(tmp_path, recipe_text: str) -> RunDir:  # type: ignore[no-untyped-def]
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.recipe.write_text(recipe_text)
    atomic_write_csv(run.oof, make_oof())
    return run


def _recipe_or_skip(text: str) -> None:
    from lepton_vision.config.recipe import recipe_from_text

    try:
        recipe_from_text(text)
    except RecipeError as e:  # the minimal recipe must stay valid; show why if it does not
        pytest.fail(f"test recipe no longer validates:\n{e}")


def test_rescore_uses_recipe_policy_and_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _recipe_or_skip(RECIPE)
    run = _write_run(tmp_path, RECIPE)
    m = M.rescore(run.root)
    assert m["policy"] == {"policy": "min_specificity", "value": 0.8}
    assert m["n_bootstrap"] == 200 and m["ci"] == 0.9
    assert m == M.score_oof(M.read_oof(run.oof), Threshold(policy="min_specificity", value=0.8), 200, 0.9, 3)
    m2 = M.rescore(run.root, "youden")
    assert m2["policy"] == {"policy": "youden", "value": None}


def test_rescore_policy_from_run_json_or_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = RECIPE.replace("  threshold: {policy: min_specificity, value: 0.8}\n", "")
    _recipe_or_skip(text)
    run = _write_run(tmp_path, text)
    with pytest.raises(RecipeError, match="--policy"):
        M.rescore(run.root)
    # run.json as crossval writes it: the task card under "task"
    atomic_write_json(run.run_info, {"task": {"name": "t", "threshold": {"policy": "fixed", "value": 0.5}}})
    m = M.rescore(run)  # a RunDir works as well as a path
    assert m["final_threshold"] == 0.5 and set(m["thresholds"].values()) == {0.5}
    atomic_write_json(run.run_info, {"threshold": {"policy": "fixed", "value": 0.25}})
    assert M.rescore(str(run.root))["final_threshold"] == 0.25


def test_rescore_without_oof(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match="oof_predictions.csv"):
        M.rescore(tmp_path)


def test_metrics_module_does_not_import_tensorflow() -> None:
    import subprocess
    import sys

    code = "import sys, lepton_vision.kinds.classification.metrics, lepton_vision.kinds.classification.report; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


# ---------------------------------------------------------------------------------- patient level


def _hand_oof() -> pd.DataFrame:
    """Patient A (fold 0): 4 slices, one positive; patient B (fold 1): 2 normal slices; one
    slice without a patient id (left out of patient level)."""
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(7)],
            "path": [f"/d/s{i}" for i in range(7)],
            "group": ["A", "A", "A", "A", "B", "B", ""],
            "label": [0, 1, 0, 0, 0, 0, 1],
            "fold": [0, 0, 0, 0, 1, 1, 0],
            "score": [0.1, 0.9, 0.5, 0.3, 0.2, 0.4, 0.99],
        }
    )


@pytest.mark.parametrize(
    ("method", "k", "a", "b"),
    [
        ("max", None, 0.9, 0.4),
        ("mean", None, 0.45, 0.3),
        ("top_k_mean", 2, 0.7, 0.3),
        ("top_k_mean", 3, (0.9 + 0.5 + 0.3) / 3, 0.3),  # B has fewer than k slices: all of them
        ("top_k_mean", None, (0.9 + 0.5 + 0.3) / 3, 0.3),  # k defaults to 3
    ],
)
def test_aggregate_by_group_methods(method: str, k: int | None, a: float, b: float) -> None:
    agg = M.aggregate_by_group(_hand_oof(), method, k)
    assert list(agg.columns) == ["group", "label", "fold", "score", "n_slices"]
    assert agg["group"].tolist() == ["A", "B"]  # the slice without a group is not a patient
    assert agg["label"].tolist() == [1, 0]  # a patient is positive if any slice is
    assert agg["fold"].tolist() == [0, 1]
    assert agg["n_slices"].tolist() == [4, 2]
    assert agg["score"].tolist() == pytest.approx([a, b])


def test_aggregate_rejects_bad_method_and_spanning_group() -> None:
    with pytest.raises(RecipeError, match="unknown method"):
        M.aggregate_by_group(_hand_oof(), "median")
    oof = _hand_oof()
    oof.loc[3, "fold"] = 1  # patient A now has slices in folds 0 and 1
    with pytest.raises(DataError, match=r"group 'A' has slices in folds \[0, 1\]"):
        M.aggregate_by_group(oof, "max")
    with pytest.raises(DataError, match="group 'A'"):
        M.score_oof(pd.concat([make_oof(), oof]), Threshold(policy="max_f1"), n_bootstrap=0)


def test_no_groups_means_no_patient_section() -> None:
    oof = make_oof()
    assert len(M.aggregate_by_group(oof.drop(columns=["group"]))) == 0
    for table in (oof.drop(columns=["group"]), oof.assign(group="")):
        m = M.score_oof(table, Threshold(policy="max_f1"), n_bootstrap=50)
        assert "patient" not in m
        json.dumps(m, allow_nan=False)


def test_patient_section_is_cross_fitted_and_bootstraps_patients() -> None:
    oof = make_oof(n=600, n_groups=120, seed=3, sep=2.0)
    policy = T.parse_policy("youden")
    m = M.score_oof(oof, policy, n_bootstrap=200, ci=0.9, seed=5, aggregation=PatientAggregation(method="mean"))
    p = m["patient"]
    agg = M.aggregate_by_group(oof, "mean")
    assert p["aggregation"] == {"method": "mean", "k": None}
    assert p["n"] == len(agg) and p["n_pos"] == int(agg.label.sum()) and p["n_slices"] == 600
    th = T.fold_thresholds(agg, policy)
    assert p["thresholds"] == {str(k): v for k, v in th.items()}
    assert p["final_threshold"] == T.choose_threshold(agg.label, agg.score, policy)
    assert p["pooled"]["roc_auc"]["value"] == pytest.approx(roc_auc_score(agg.label, agg.score))
    # the patient CI resamples patients (one row each), with each patient's fold threshold
    thr = agg.fold.map(th).to_numpy()
    boot = B.bootstrap_ci(agg.label, agg.score, thr, None, 200, 0.9, 5)
    assert boot["n_units"] == len(agg)
    for name in B.SCALAR_METRICS:
        e = p["pooled"][name]
        assert (e["lo"], e["hi"]) == pytest.approx(boot["intervals"][name])
        assert e["lo"] <= e["value"] <= e["hi"]
    # changing fold 0's patient labels never moves fold 0's patient threshold
    flipped = oof.copy()
    in0 = flipped.fold == 0
    flipped.loc[in0, "label"] = 1 - flipped.loc[in0, "label"]
    m2 = M.score_oof(flipped, policy, n_bootstrap=0, aggregation=PatientAggregation(method="mean"))
    assert m2["patient"]["thresholds"]["0"] == p["thresholds"]["0"]
    assert m2["patient"]["thresholds"]["1"] != p["thresholds"]["1"] or m2["patient"]["thresholds"]["2"] != p["thresholds"]["2"]


def test_patient_section_reports_why_it_cannot_score() -> None:
    oof = make_oof(n=300, n_groups=20, seed=1)  # 15 slices per patient: every patient has a positive slice
    agg = M.aggregate_by_group(oof)
    assert agg.label.all()
    m = M.score_oof(oof, Threshold(policy="max_f1"), n_bootstrap=20)
    assert "only one class" in m["patient"]["error"] and m["patient"]["n"] == 20
    json.dumps(m, allow_nan=False)


# ---------------------------------------------------------------------------------- calibration


def test_ece_and_reliability_curve_by_hand() -> None:
    # 10 bins: each sample alone in its bin, |score - label| = .05, .85, .05, .85
    assert M.expected_calibration_error([0, 1, 1, 0], [0.05, 0.15, 0.95, 0.85], 10) == pytest.approx(0.45)
    # 2 bins: [.1, .3] mean .2 vs 1/2 positive; [.6, .8] mean .7 vs all positive -> .3 each
    assert M.expected_calibration_error([0, 1, 1, 1], [0.1, 0.3, 0.6, 0.8], 2) == pytest.approx(0.3)
    assert M.expected_calibration_error([1, 0], [1.0, 0.0], 5) == 0.0  # 1.0 falls in the last bin
    c = M.reliability_curve([0, 1, 1, 1], [0.1, 0.3, 0.6, 0.8], 4)
    assert c["bin_centers"] == pytest.approx([0.125, 0.375, 0.625, 0.875])
    assert c["counts"] == [1, 1, 1, 1]
    c = M.reliability_curve([0, 1, 1, 1], [0.1, 0.3, 0.6, 0.8], 2)
    assert c["counts"] == [2, 2] and c["mean_score"] == pytest.approx([0.2, 0.7]) and c["frac_pos"] == [0.5, 1.0]
    c = M.reliability_curve([0, 1], [0.1, 0.2], 5)
    assert c["counts"] == [1, 1, 0, 0, 0] and c["mean_score"][2:] == [None, None, None]


def _calibration_data(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p_true = 1 / (1 + np.exp(-rng.normal(0, 1.5, n)))
    y = (rng.random(n) < p_true).astype(int)
    return y, p_true


def _overconfident(p: np.ndarray, factor: float = 2.0) -> np.ndarray:
    z = np.log(p) - np.log1p(-p)
    return 1 / (1 + np.exp(-factor * z))


def test_ece_small_when_calibrated_large_when_overconfident() -> None:
    y, p = _calibration_data()
    assert M.expected_calibration_error(y, p, 10) < 0.03
    assert M.expected_calibration_error(y, _overconfident(p), 10) > 0.07


def test_fit_temperature_recovers_overconfidence() -> None:
    y, p = _calibration_data(seed=1)
    t = M.fit_temperature(y, _overconfident(p, 2.0))
    assert t == pytest.approx(2.0, rel=0.15)
    assert M.fit_temperature(y, p) == pytest.approx(1.0, rel=0.15)
    # scaling with the fitted T removes most of the miscalibration, and keeps the ranking
    scaled = M.apply_temperature(_overconfident(p), t)
    assert M.expected_calibration_error(y, scaled) < 0.03
    assert roc_auc_score(y, scaled) == pytest.approx(roc_auc_score(y, _overconfident(p)))
    with pytest.raises(DataError, match="only one class"):
        M.fit_temperature([1, 1, 1], [0.2, 0.5, 0.9])


def test_apply_temperature_and_calibrated_threshold() -> None:
    assert M.apply_temperature(0.5, 3.0) == pytest.approx(0.5)
    assert isinstance(M.apply_temperature(0.8, 2.0), float)
    assert M.apply_temperature(0.8, 2.0) == pytest.approx(1 / (1 + np.sqrt(0.2 / 0.8)))  # sigmoid(logit(.8)/2)
    rng = np.random.default_rng(0)
    s = rng.random(2000)
    for t in (0.3, 0.5, 2.5):
        for thr in (0.05, 0.37, float(s[7]), 0.93):
            assert np.array_equal(s >= thr, M.apply_temperature(s, t) >= M.calibrated_threshold(thr, t))
    assert M.calibrated_threshold(1.0000001, 2.0) == 1.0000001  # "nothing positive" stays so
    assert M.calibrated_threshold(0.0, 2.0) == 0.0
    with pytest.raises(DataError, match="temperature"):
        M.apply_temperature(0.5, 0.0)


def _overconfident_oof(seed: int = 0) -> pd.DataFrame:
    y, p = _calibration_data(n=1500, seed=seed)
    oof = make_oof(n=1500, n_groups=150, seed=seed)
    return oof.assign(label=y, score=_overconfident(p, 2.0))


def test_fold_temperatures_never_use_the_scored_fold() -> None:
    oof = _overconfident_oof()
    temps = M.fold_temperatures(oof)
    assert sorted(temps) == [0, 1, 2, 3, 4]
    rest = oof.fold != 2
    assert temps[2] == M.fit_temperature(oof.label[rest], oof.score[rest])
    changed = oof.copy()
    in2 = changed.fold == 2
    changed.loc[in2, "label"] = 1 - changed.loc[in2, "label"]
    t2 = M.fold_temperatures(changed)
    assert t2[2] == temps[2]
    assert all(t2[k] != temps[k] for k in (0, 1, 3, 4))


def test_score_oof_temperature_mode() -> None:
    oof = _overconfident_oof(1)
    policy = T.parse_policy("min_sensitivity:0.9")
    plain = M.score_oof(oof, policy, n_bootstrap=100, seed=2)
    assert "temperature" not in plain and "after_scaling" not in plain["calibration"]
    m = M.score_oof(oof, policy, n_bootstrap=100, seed=2, calibration_bins=15, temperature_scaling=True)
    json.dumps(m, allow_nan=False)
    cal = m["calibration"]
    assert cal["n_bins"] == 15 and len(cal["curve"]["counts"]) == 15 and sum(cal["curve"]["counts"]) == 1500
    assert cal["ece"]["value"] == pytest.approx(M.expected_calibration_error(oof.label, oof.score, 15))
    assert cal["ece"]["lo"] <= cal["ece"]["value"] <= cal["ece"]["hi"]
    after = cal["after_scaling"]
    temps = M.fold_temperatures(oof)
    assert after["fold_temperatures"] == {str(k): v for k, v in temps.items()}
    scaled = oof.score.to_numpy().copy()
    for k, t in temps.items():
        scaled[oof.fold == k] = M.apply_temperature(scaled[oof.fold == k], t)
    assert after["ece"]["value"] == pytest.approx(M.expected_calibration_error(oof.label, scaled, 15))
    assert after["ece"]["value"] < cal["ece"]["value"] / 2 and after["log_loss"] < cal["log_loss"]
    assert m["temperature"] == M.fit_temperature(oof.label, oof.score)
    assert m["temperature"] == pytest.approx(2.0, rel=0.15)
    assert m["final_threshold_calibrated"] == M.calibrated_threshold(m["final_threshold"], m["temperature"])
    assert "final_threshold_calibrated" in m["temperature_note"]
    # the slice-level numbers do not change with temperature scaling
    for key in ("pooled", "per_fold", "thresholds", "final_threshold", "patient", "curves"):
        assert m[key] == plain[key], key


@pytest.mark.parametrize("n_bootstrap", [0, 30])
@pytest.mark.parametrize("groups", ["none", "empty", "patients"])
@pytest.mark.parametrize("temperature", [False, True])
def test_score_oof_json_in_all_modes(n_bootstrap: int, groups: str, temperature: bool) -> None:
    oof = _overconfident_oof(2)
    if groups == "none":
        oof = oof.drop(columns=["group"])
    elif groups == "empty":
        oof = oof.assign(group="")
    m = M.score_oof(oof, T.parse_policy("min_specificity:0.8"), n_bootstrap=n_bootstrap, temperature_scaling=temperature,
                    aggregation=PatientAggregation(method="top_k_mean", k=2))
    assert json.loads(json.dumps(m, allow_nan=False)) == m
    assert ("patient" in m) == (groups == "patients")
    assert ("temperature" in m) == temperature
    if groups == "patients":
        assert m["patient"]["aggregation"] == {"method": "top_k_mean", "k": 2}


def test_rescore_passes_evaluate_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = RECIPE + "  patient_aggregation: {method: top_k_mean, k: 2}\n  calibration_bins: 5\n  temperature_scaling: true\n"
    _recipe_or_skip(text)
    run = _write_run(tmp_path, text)
    m = M.rescore(run.root)
    assert m["patient"]["aggregation"] == {"method": "top_k_mean", "k": 2}
    assert m["calibration"]["n_bins"] == 5 and "after_scaling" in m["calibration"] and "temperature" in m
    expected = M.score_oof(M.read_oof(run.oof), Threshold(policy="min_specificity", value=0.8), 200, 0.9, 3,
                           aggregation=PatientAggregation(method="top_k_mean", k=2), calibration_bins=5,
                           temperature_scaling=True)
    assert m == expected

"""folds: reproducible stratified/grouped folds and the honesty checks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from lepton_vision.config.errors import DataError
from lepton_vision.data.folds import (
    FOLD_COLUMNS,
    _check_folds,
    fold_summary,
    make_folds,
    read_folds,
    write_folds,
)


def table(n_pos: int, n_neg: int, groups: list[str] | None = None, paths: list[str] | None = None) -> pd.DataFrame:
    labels = [1] * n_pos + [0] * n_neg
    n = len(labels)
    return pd.DataFrame(
        {
            "sample_id": [f"s{i:04d}.png" for i in range(n)],
            "path": paths if paths is not None else [f"/nonexistent/s{i}.png" for i in range(n)],
            "label": labels,
            "label_name": ["abnormal" if v else "normal" for v in labels],
            "group": groups if groups is not None else [""] * n,
        }
    )


def test_stratified_reproducible_and_seeded():
    t = table(20, 30)
    a = make_folds(t, 5, "auto", seed=1, check_duplicates=False)
    b = make_folds(t, 5, "auto", seed=1, check_duplicates=False)
    c = make_folds(t, 5, "auto", seed=2, check_duplicates=False)
    assert list(a.columns) == list(FOLD_COLUMNS)
    pd.testing.assert_frame_equal(a, b)
    assert not a["fold"].equals(c["fold"])
    assert a["sample_id"].tolist() == t["sample_id"].tolist()
    s = fold_summary(a)
    assert s["n"].tolist() == [10] * 5 and s["n_pos"].tolist() == [4] * 5
    assert s["n_groups"].tolist() == [0] * 5


def test_no_group_leakage_with_150_groups():
    rng = np.random.default_rng(0)
    groups, labels = [], []
    for g in range(150):
        pos = g % 3 == 0  # a third of the patients are abnormal
        for _ in range(int(rng.integers(1, 6))):
            groups.append(f"patient{g:03d}")
            labels.append(int(pos))
    t = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(len(labels))],
            "label": labels,
            "group": groups,
            "label_name": ["abnormal" if v else "normal" for v in labels],
        }
    )
    f = make_folds(t, 5, "auto", seed=42, progress=False)
    assert (f.groupby("group")["fold"].nunique() == 1).all()
    s = fold_summary(f)
    assert (s["n_pos"] > 0).all() and (s["n_neg"] > 0).all()
    assert s["n_groups"].sum() == 150
    # plain stratified folds on the same table split patients, and that is refused
    with pytest.raises(DataError) as err:
        make_folds(t, 5, "stratified", seed=42)
    assert "group 'patient" in str(err.value) and "both trained on and validated" in str(err.value)


def test_too_few_patients_per_class():
    groups = [f"p{i}" for i in range(3)] + [f"q{i}" for i in range(10)]
    t = table(3, 10, groups=groups)
    with pytest.raises(DataError) as err:
        make_folds(t, 5, "auto", seed=0, group_noun="patients")
    assert "class 'abnormal' has 3 patients, fewer than cv.n_splits=5; lower cv.n_splits or add data" in str(
        err.value
    )
    with pytest.raises(DataError, match="class 'normal' has 2 images"):
        make_folds(table(10, 2), 3, "stratified", seed=0)


def test_single_class_fold_is_named():
    folds = pd.DataFrame(
        {"sample_id": list("abcd"), "group": [""] * 4, "label": [1, 0, 0, 0], "fold": [0, 0, 1, 1]}
    )
    with pytest.raises(DataError) as err:
        _check_folds(folds, folds, 2, "groups")
    assert "fold 1: validation fold has 2 '0' and 0 '1' samples" in str(err.value)


def test_grouped_strategy_needs_groups():
    with pytest.raises(DataError, match="have no group"):
        make_folds(table(10, 10), 2, "stratified_group", seed=0)


def test_identical_images_in_two_folds(tmp_path):
    paths = []
    for i in range(20):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), np.full((4, 4), i, np.uint8))
        paths.append(str(p))
    Path(paths[1]).write_bytes(Path(paths[0]).read_bytes())  # s0000 and s0001 are the same image
    t = table(10, 10, paths=paths)
    seed = next(
        s for s in range(50) if len(set(make_folds(t, 5, seed=s, check_duplicates=False)["fold"][:2])) == 2
    )
    with pytest.raises(DataError) as err:
        make_folds(t, 5, seed=seed)
    assert "s0000.png: has the same bytes as s0001.png" in str(err.value)
    same = next(
        s for s in range(50) if len(set(make_folds(t, 5, seed=s, check_duplicates=False)["fold"][:2])) == 1
    )
    make_folds(t, 5, seed=same)  # duplicates within one fold do not leak


def test_write_read_roundtrip(tmp_path):
    t = table(6, 6, groups=[f"g{i}" for i in range(12)])
    f = make_folds(t, 3, "auto", seed=3, check_duplicates=False)
    write_folds(tmp_path / "folds.csv", f)
    back = read_folds(tmp_path / "folds.csv")
    pd.testing.assert_frame_equal(back, f, check_dtype=False)
    ungrouped = make_folds(table(6, 6), 3, seed=3, check_duplicates=False)
    write_folds(tmp_path / "u.csv", ungrouped)
    assert read_folds(tmp_path / "u.csv")["group"].tolist() == [""] * 12
    (tmp_path / "bad.csv").write_text("sample_id,fold\na,0\n")
    with pytest.raises(DataError, match="missing column"):
        read_folds(tmp_path / "bad.csv")

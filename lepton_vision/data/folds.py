"""Cross-validation folds, checked for honesty before any training starts.

:func:`make_folds` splits with scikit-learn (``StratifiedKFold`` or ``StratifiedGroupKFold``,
shuffled with the recipe seed) and refuses folds that would give a dishonest estimate: a class
with fewer samples/groups than folds, a validation fold without both classes, a group in two
folds, or the same image bytes in two folds.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from lepton_vision.config.errors import DataError, Problem
from lepton_vision.runio import atomic_write_csv

if TYPE_CHECKING:
    import pandas as pd

#: Columns of folds.csv (contract 4).
FOLD_COLUMNS = ("sample_id", "group", "label", "fold")
MAX_LISTED = 50
PROGRESS_MIN_FILES = 200

# (path, size, mtime_ns) -> sha1; hashing is the slow part of the duplicate check, and the same
# files are checked again by every command of a session (train, evaluate, export).
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def _class_name(table: pd.DataFrame, label: int) -> str:
    if "label_name" in table.columns:
        names = table.loc[table["label"] == label, "label_name"]
        if len(names):
            return str(names.iloc[0])
    return str(label)


def _hashes(paths: list[str], progress: bool) -> list[str]:
    from lepton_vision.data.preprocess import content_hash
    from lepton_vision.data.readers.volumes import split_slice

    items = paths
    if progress and len(paths) > PROGRESS_MIN_FILES:
        from rich.console import Console
        from rich.progress import track

        items = track(paths, description="Hashing images", console=Console(stderr=True), transient=True)
    out = []
    for p in items:
        st = os.stat(split_slice(p)[0])  # a volume slice path names its file plus #z=<i>
        key = (str(p), st.st_size, st.st_mtime_ns)
        h = _HASH_CACHE.get(key)
        if h is None:
            h = _HASH_CACHE[key] = content_hash(p)
        out.append(h)
    return out


def make_folds(
    table: pd.DataFrame,
    n_splits: int,
    strategy: str = "auto",
    seed: int = 42,
    *,
    check_duplicates: bool = True,
    group_noun: str = "groups",
    progress: bool = True,
    require_both_classes: bool = True,
) -> pd.DataFrame:
    """Assign every sample a validation fold.

    Args:
        table: Sample table (contract 1): needs sample_id, label, group (and path for the
            duplicate check; label_name is used in messages when present).
        n_splits: Number of folds (cv.n_splits).
        strategy: "auto" (stratified_group when any group is non-empty, else stratified),
            "stratified" or "stratified_group".
        seed: Shuffle seed; the same seed gives the same folds.
        check_duplicates: Hash file bytes and refuse identical images in different folds.
        group_noun: What a group is, for messages (e.g. "patients").
        progress: Show a progress bar while hashing many files.
        require_both_classes: Refuse folds without both labels (classification). Object
            detection passes False: its label is only "has objects" (used to stratify), and a
            dataset where every image has objects is legitimate.

    Returns:
        DataFrame with columns sample_id, group, label, fold (contract 4), in table order.

    Raises:
        DataError: The folds could not be honest (each reason names the class, fold, group or
            files concerned).
    """
    import numpy as np
    import pandas as pd
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if strategy not in ("auto", "stratified", "stratified_group"):
        raise ValueError(f"unknown fold strategy {strategy!r}")
    if n_splits < 2:
        raise DataError(f"cv.n_splits must be at least 2. Got {n_splits}")
    labels = table["label"].astype(int).to_numpy()
    groups = table["group"].astype(str).to_numpy()
    has_groups = bool((groups != "").any())
    grouped = strategy == "stratified_group" or (strategy == "auto" and has_groups)
    if grouped and not (groups != "").all():
        missing = table.loc[groups == "", "sample_id"].astype(str).tolist()
        raise DataError(
            f"cv.strategy={strategy} groups samples, but {len(missing)} sample(s) have no group, "
            f"e.g. {missing[:3]}",
            hint="Give every sample a group (patient/sequence id), or use cv.strategy: stratified.",
        )

    problems = []
    wanted = set(labels.tolist()) | ({0, 1} if require_both_classes else set())
    for lab in sorted(wanted):
        mask = labels == lab
        n = int(len(np.unique(groups[mask]))) if grouped else int(mask.sum())
        unit = group_noun if grouped else "images"
        if n < n_splits:
            problems.append(
                Problem(
                    "cv.n_splits",
                    f"class '{_class_name(table, lab)}' has {n} {unit}, fewer than "
                    f"cv.n_splits={n_splits}; lower cv.n_splits or add data",
                )
            )
    if problems:
        raise DataError("too few samples for the requested folds", problems=problems)

    x = np.zeros((len(table), 1))
    if grouped:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = splitter.split(x, labels, groups)
    else:
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = splitter.split(x, labels)
    fold = np.full(len(table), -1, dtype=int)
    for k, (_, val_idx) in enumerate(splits):
        fold[val_idx] = k
    assert (fold >= 0).all()  # every sample is in exactly one validation fold

    folds = pd.DataFrame(
        {
            "sample_id": table["sample_id"].astype(str).to_numpy(),
            "group": groups,
            "label": labels,
            "fold": fold,
        }
    )
    _check_folds(folds, table, n_splits, group_noun, require_both_classes)
    if check_duplicates and "path" in table.columns:
        _check_duplicates(folds, table["path"].astype(str).tolist(), progress)
    return folds


def _check_folds(folds: pd.DataFrame, table: pd.DataFrame, n_splits: int, group_noun: str,
                 require_both_classes: bool = True) -> None:
    problems = []
    for k in range(n_splits if require_both_classes else 0):
        val = folds[folds["fold"] == k]
        n_pos = int((val["label"] == 1).sum())
        n_neg = len(val) - n_pos
        if n_pos == 0 or n_neg == 0:
            problems.append(
                Problem(
                    f"fold {k}",
                    f"validation fold has {n_neg} '{_class_name(table, 0)}' and {n_pos} "
                    f"'{_class_name(table, 1)}' samples; every fold needs both classes to be scored",
                )
            )
    grouped = folds[folds["group"] != ""]
    spread = grouped.groupby("group")["fold"].nunique()
    for g in spread[spread > 1].index[:MAX_LISTED]:
        fs = sorted(grouped.loc[grouped["group"] == g, "fold"].unique().tolist())
        problems.append(
            Problem(f"group '{g}'", f"is in folds {fs}; its images would be both trained on and validated")
        )
    if problems:
        raise DataError(
            "the folds would not give an honest evaluation",
            problems=problems,
            hint=f"Lower cv.n_splits, add data, or use cv.strategy: auto so {group_noun} stay in one fold.",
        )


def _check_duplicates(folds: pd.DataFrame, paths: list[str], progress: bool) -> None:
    hashes = _hashes(paths, progress)
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        by_hash[h].append(i)
    problems = []
    fold = folds["fold"].to_numpy()
    sid = folds["sample_id"].tolist()
    for idx in by_hash.values():
        if len({int(fold[i]) for i in idx}) > 1:
            a = idx[0]
            for b in idx[1:]:
                if fold[b] != fold[a]:
                    problems.append(
                        Problem(
                            sid[a],
                            f"has the same bytes as {sid[b]} (folds {fold[a]} and {fold[b]}); "
                            "one would be validated on a copy of a training image",
                        )
                    )
    if problems:
        more = f"... and {len(problems) - MAX_LISTED} more. " if len(problems) > MAX_LISTED else ""
        raise DataError(
            f"{len(problems)} identical image(s) fall in different folds",
            problems=problems[:MAX_LISTED],
            hint=more + "Remove the duplicates, or give copies of the same image the same group.",
        )


def write_folds(path: str | Path, folds: pd.DataFrame) -> None:
    """Write folds.csv atomically (columns sample_id, group, label, fold)."""
    atomic_write_csv(path, folds[list(FOLD_COLUMNS)])


def read_folds(path: str | Path) -> pd.DataFrame:
    """Read folds.csv written by :func:`write_folds`.

    Raises:
        DataError: The file is missing or lacks a column.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"folds file not found: {path}")
    df = pd.read_csv(
        path, dtype={"sample_id": str, "group": str}, keep_default_na=False, na_filter=False
    )
    missing = [c for c in FOLD_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"missing column(s) {missing}. Got {list(df.columns)}", file=str(path)
        )
    df["label"] = df["label"].astype(int)
    df["fold"] = df["fold"].astype(int)
    return df[list(FOLD_COLUMNS)]


def fold_summary(folds: pd.DataFrame) -> pd.DataFrame:
    """Per validation fold: n, n_pos, n_neg, n_groups (distinct non-empty groups)."""
    import pandas as pd

    rows = []
    for k, val in folds.groupby("fold", sort=True):
        n_pos = int((val["label"] == 1).sum())
        rows.append(
            {
                "fold": int(k),
                "n": len(val),
                "n_pos": n_pos,
                "n_neg": len(val) - n_pos,
                "n_groups": int(val.loc[val["group"] != "", "group"].nunique()),
            }
        )
    return pd.DataFrame(rows, columns=["fold", "n", "n_pos", "n_neg", "n_groups"])


def attach_folds(table: pd.DataFrame, folds_csv: str | Path) -> pd.DataFrame:
    """``table`` with its ``fold`` column, from ``folds_csv`` when it lacks one (unchanged when
    it has one or the file does not exist)."""
    if "fold" not in table.columns and Path(folds_csv).is_file():
        table = table.merge(read_folds(folds_csv)[["sample_id", "fold"]], on="sample_id", how="left")
    return table

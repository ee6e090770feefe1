"""List images from a CSV manifest (path, label, optional group, any extra columns).

Line numbers in messages are spreadsheet lines: the header is line 1, the first data row line 2.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from lepton_vision.config.errors import DataError, Problem, did_you_mean, format_choices
from lepton_vision.data.readers.image_folder import Listing

#: Table columns a manifest's extra column must not shadow (renamed to ``csv_<name>``).
RESERVED = ("sample_id", "path", "label", "label_name", "group")
MAX_LISTED = 50


def _sample_id(value: str, ds_dir: Path) -> tuple[str, Path]:
    p = Path(value)
    if p.is_absolute():
        try:
            return p.relative_to(ds_dir).as_posix(), p
        except ValueError:
            return p.as_posix(), p
    return p.as_posix(), ds_dir / p


def _capped(problems: list[Problem]) -> tuple[list[Problem], str]:
    if len(problems) <= MAX_LISTED:
        return problems, ""
    return problems[:MAX_LISTED], f"... and {len(problems) - MAX_LISTED} more. "


def unknown_label(column: str, label: str, classes: list[str], line: int) -> Problem:
    """The problem for a manifest row whose label is not one of the card's classes."""
    return Problem(
        column,
        f"label '{label}' is not one of the dataset card's classes "
        f"({format_choices(classes)}).{did_you_mean(label, classes)}",
        line=line,
    )


def read_manifest_csv(csv_path: Path, row_noun: str):
    """Read a manifest CSV as strings (empty cells stay ""), with clear errors.

    Args:
        csv_path: The manifest file.
        row_noun: What one row describes ("image", "slice or volume"), for the empty-file message.

    Raises:
        DataError: Missing, empty or unparsable file (naming it).
    """
    import pandas as pd

    if not csv_path.is_file():
        raise DataError(
            f"manifest not found: {csv_path}",
            hint="Check manifest: in the dataset card (it is relative to the dataset folder).",
        )
    try:
        return pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"the manifest is empty; expected a header line and one row per {row_noun}",
                        file=str(csv_path)) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"cannot parse the manifest as CSV ({e})", file=str(csv_path)) from None


def list_csv(
    ds_dir: Path,
    manifest: str,
    path_col: str,
    label_col: str,
    group_col: str | None,
    classes: list[str],
) -> Listing:
    """Read a CSV manifest into a :class:`Listing`.

    Args:
        ds_dir: Dataset folder; relative paths in the manifest are relative to it.
        manifest: The CSV file name, relative to ``ds_dir`` (or absolute).
        path_col: Column holding image paths.
        label_col: Column holding the class label (one of ``classes``).
        group_col: Column holding the group (patient id), or None. An empty group value gives
            that row a group of its own, ``row-<sample_id>``, and is counted.
        classes: The dataset card's label values.

    Raises:
        DataError: The manifest is missing or unparsable, a column is missing, a label is
            unknown, a path is empty or listed twice. Every bad row is named by its line.
    """

    csv_path = Path(manifest) if Path(manifest).is_absolute() else ds_dir / manifest
    df = read_manifest_csv(csv_path, "image")
    have = [str(c) for c in df.columns]
    needed = {"columns.path": path_col, "columns.label": label_col}
    if group_col:
        needed["columns.group"] = group_col
    missing = [
        Problem(key, f"column '{col}' is missing.{did_you_mean(col, have)}")
        for key, col in needed.items()
        if col not in have
    ]
    if missing:
        raise DataError(
            f"the manifest lacks {len(missing)} column(s) the dataset card names. "
            f"Got columns: {format_choices(have, limit=30)}",
            file=str(csv_path),
            problems=missing,
            hint="Rename the CSV columns or set columns: {path: ..., label: ..., group: ...} "
            "in the dataset card.",
        )

    problems: list[Problem] = []
    seen: dict[str, list[int]] = defaultdict(list)
    records: list[dict[str, Any]] = []
    extras = [c for c in have if c not in needed.values()]
    renamed = {c: (f"csv_{c}" if c in RESERVED else c) for c in extras}
    own_group = 0
    for i, row in enumerate(df.itertuples(index=False)):
        values = dict(zip(have, row))
        line = i + 2
        raw_path = values[path_col]
        label = values[label_col]
        if not raw_path.strip():
            problems.append(Problem(path_col, "the path is empty", line=line))
            continue
        if "\x00" in raw_path:
            problems.append(Problem(path_col, "the path contains a NUL character (binary data in the CSV?)", line=line))
            continue
        if label not in classes:
            problems.append(unknown_label(label_col, label, classes, line))
        sid, p = _sample_id(raw_path, ds_dir)
        seen[sid].append(line)
        group = values[group_col] if group_col else ""
        if group_col and not group.strip():
            group = f"row-{sid}"
            own_group += 1
        rec: dict[str, Any] = {
            "sample_id": sid,
            "path": str(p.resolve()),
            "data_label": label,
            "group": group,
            "line": line,
        }
        rec.update({renamed[c]: values[c] for c in extras})
        records.append(rec)
    for sid, lines in seen.items():
        if len(lines) > 1:
            problems.append(
                Problem(
                    path_col,
                    f"'{sid}' is listed {len(lines)} times, on lines {', '.join(map(str, lines))}; "
                    "each image must appear once",
                    line=lines[0],
                )
            )
    if problems:
        shown, more = _capped(sorted(problems, key=lambda p: p.line or 0))
        raise DataError(
            f"{len(problems)} problem(s) in the manifest",
            file=str(csv_path),
            problems=shown,
            hint=f"{more}Fix these rows (line 1 is the header), or the classes: list in the dataset card.",
        )
    return Listing(records, str(csv_path), [], own_group, [renamed[c] for c in extras])

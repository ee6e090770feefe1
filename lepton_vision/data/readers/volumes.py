"""Slice-level or volume-level labels from a manifest of volumes (NIfTI files or DICOM series).

A manifest row names a volume (a ``.nii.gz`` file or a series folder), an optional
``slice_index`` and a label. With a slice index the row labels that one slice (a patient's
slices may then carry different labels, which is normal); with the index empty every slice of
the volume gets the row's label. The format readers (:mod:`~lepton_vision.data.readers.nifti`,
:mod:`~lepton_vision.data.readers.dicom_series`) say how many slices a volume has and which sample
path each slice gets; this module checks the rows and expands them into a
:class:`~lepton_vision.data.readers.image_folder.Listing`.

Line numbers in messages are spreadsheet lines: the header is line 1.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton_vision.config.errors import DataError, Problem, did_you_mean, format_choices
from lepton_vision.data.readers.image_folder import Listing

SLICE_COLUMN = "slice_index"
MAX_LISTED = 50
#: Table columns a manifest's extra column must not shadow (renamed to ``csv_<name>``).
RESERVED = ("sample_id", "path", "label", "label_name", "group")


@dataclass
class Volume:
    """What a format reader knows about one volume before any pixel is decoded.

    Attributes:
        n_slices: Number of axial slices (0 when ``bad``).
        slice_paths: Absolute sample path of each slice, in slice-index order.
        slice_ids: Sample id (relative POSIX) of each slice, same order.
        group: Group id of the volume's samples when the manifest gives none ("" if unknown).
        bad: Why the volume is unusable (missing, unreadable header), or None.
    """

    n_slices: int
    slice_paths: list[str] = field(default_factory=list)
    slice_ids: list[str] = field(default_factory=list)
    group: str = ""
    bad: str | None = None


@dataclass
class ManifestRow:
    """One manifest row: the volume as written, its slice (None = volume-level) and label."""

    line: int
    volume: str
    slice_index: int | None
    label: str
    group: str
    extras: dict[str, str]


def read_volume_manifest(
    csv_path: Path,
    volume_col: str,
    label_col: str,
    group_col: str | None,
    classes: list[str],
) -> tuple[list[ManifestRow], list[str]]:
    """Parse and check a volume manifest.

    Args:
        csv_path: The manifest file.
        volume_col: Column naming the volume (``volume`` or ``series``).
        label_col: Label column.
        group_col: Group column, or None when the manifest has none.
        classes: The dataset card's label values.

    Returns:
        ``(rows, extra column names as carried into the sample table)``.

    Raises:
        DataError: The manifest is missing or unparsable, a column is missing, a label is
            unknown, a slice index is not a non-negative integer, or a volume is empty.
    """
    from lepton_vision.data.readers.csv_manifest import read_manifest_csv, unknown_label

    df = read_manifest_csv(csv_path, "slice or volume")
    have = [str(c) for c in df.columns]
    needed = [volume_col, SLICE_COLUMN, label_col] + ([group_col] if group_col else [])
    missing = [Problem(c, f"column '{c}' is missing.{did_you_mean(c, have)}") for c in needed if c not in have]
    if missing:
        raise DataError(
            f"the manifest lacks {len(missing)} column(s). Got columns: {format_choices(have, limit=30)}",
            file=str(csv_path),
            problems=missing,
            hint=f"A volume manifest has columns {volume_col}, {SLICE_COLUMN} (empty = every slice), "
            f"{label_col}{', ' + group_col if group_col else ''}.",
        )
    extras = [c for c in have if c not in needed]
    renamed = {c: (f"csv_{c}" if c in RESERVED or c == volume_col else c) for c in extras}
    rows: list[ManifestRow] = []
    problems: list[Problem] = []
    for i, rec in enumerate(df.itertuples(index=False)):
        values = dict(zip(have, rec))
        line = i + 2
        vol = values[volume_col].strip()
        label = values[label_col]
        raw_index = values[SLICE_COLUMN].strip()
        if not vol:
            problems.append(Problem(volume_col, f"the {volume_col} is empty", line=line))
            continue
        if label not in classes:
            problems.append(unknown_label(label_col, label, classes, line))
        index: int | None = None
        if raw_index:
            if not raw_index.isdigit():
                problems.append(
                    Problem(SLICE_COLUMN, f"slice_index must be a 0-based integer or empty. Got '{raw_index}'", line=line)
                )
                continue
            index = int(raw_index)
        group = values[group_col].strip() if group_col else ""
        rows.append(ManifestRow(line, vol, index, label, group, {renamed[c]: values[c] for c in extras}))
    if problems:
        raise DataError(
            f"{len(problems)} problem(s) in the manifest",
            file=str(csv_path),
            problems=problems[:MAX_LISTED],
            hint="Fix these rows (line 1 is the header), or the classes: list in the dataset card.",
        )
    return rows, [renamed[c] for c in extras]


def expand_rows(
    rows: list[ManifestRow],
    extra_columns: list[str],
    csv_path: Path,
    volume_col: str,
    noun: str,
    describe: Callable[[str], Volume],
    group_of: Callable[[ManifestRow, Volume], str],
) -> Listing:
    """Turn checked manifest rows into one record per labelled slice.

    Args:
        rows: From :func:`read_volume_manifest`.
        extra_columns: Extra column names (carried into the sample table).
        csv_path: The manifest (named in messages).
        volume_col: The volume column's name (``volume`` or ``series``; also a table column).
        noun: "volume" or "series", for messages.
        describe: Volume as written in the manifest -> :class:`Volume` (called once per volume).
        group_of: (row, volume) -> the samples' group.

    Returns:
        A Listing whose counts hold ``label_level`` ("slice", "volume" or "mixed"),
        ``n_volumes``, ``n_slice_rows`` and ``n_volume_rows``.

    Raises:
        DataError: A slice index is out of range (naming the row and the slice count), a slice
            is listed twice, a volume-level row repeats a volume with a different label, or a
            volume has both slice rows and a volume-level row.
    """
    by_volume: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in rows:
        by_volume[r.volume].append(r)
    problems: list[Problem] = []
    records: list[dict[str, Any]] = []
    n_slice_rows = sum(r.slice_index is not None for r in rows)
    for name, vrows in by_volume.items():
        vol = describe(name)
        slice_rows = [r for r in vrows if r.slice_index is not None]
        whole_rows = [r for r in vrows if r.slice_index is None]
        lines = lambda rs: ", ".join(str(r.line) for r in rs)  # noqa: E731 - local formatter
        if slice_rows and whole_rows:
            problems.append(
                Problem(
                    volume_col,
                    f"{noun} '{name}' has slice rows (lines {lines(slice_rows)}) and a {noun}-level row "
                    f"(lines {lines(whole_rows)}); label it one way",
                    line=whole_rows[0].line,
                )
            )
            continue
        if len({r.label for r in whole_rows}) > 1:
            problems.append(
                Problem(
                    volume_col,
                    f"{noun} '{name}' is listed {len(whole_rows)} times with different labels "
                    f"({', '.join(sorted({r.label for r in whole_rows}))}) on lines {lines(whole_rows)}",
                    line=whole_rows[0].line,
                )
            )
            continue
        seen: dict[int, list[ManifestRow]] = defaultdict(list)
        for r in slice_rows:
            assert r.slice_index is not None
            seen[r.slice_index].append(r)
        for z, rs in seen.items():
            if len(rs) > 1:
                problems.append(
                    Problem(
                        SLICE_COLUMN,
                        f"slice {z} of {noun} '{name}' is listed {len(rs)} times, on lines {lines(rs)}",
                        line=rs[0].line,
                    )
                )
        if vol.bad is not None:
            bad_rows = slice_rows or whole_rows[:1]
            for r in bad_rows:
                sid = name if r.slice_index is None else f"{name}#slice={r.slice_index}"
                records.append(
                    {"sample_id": sid, "path": name, "data_label": r.label, "group": "", "line": r.line,
                     "bad": vol.bad, volume_col: name, SLICE_COLUMN: r.slice_index, **r.extras}
                )
            continue
        for r in slice_rows:
            assert r.slice_index is not None
            if r.slice_index >= vol.n_slices:
                problems.append(
                    Problem(
                        SLICE_COLUMN,
                        f"slice_index {r.slice_index} is out of range: {noun} '{name}' has "
                        f"{vol.n_slices} slices (0..{vol.n_slices - 1})",
                        line=r.line,
                    )
                )
        targets = [(r, r.slice_index) for r in slice_rows] + [
            (r, z) for r in whole_rows[:1] for z in range(vol.n_slices)
        ]
        for r, z in targets:
            assert z is not None
            if z >= vol.n_slices:
                continue
            records.append(
                {
                    "sample_id": vol.slice_ids[z],
                    "path": vol.slice_paths[z],
                    "data_label": r.label,
                    "group": group_of(r, vol),
                    "line": r.line,
                    volume_col: name,
                    SLICE_COLUMN: z,
                    **r.extras,
                }
            )
    if problems:
        shown = sorted(problems, key=lambda p: p.line or 0)
        raise DataError(
            f"{len(problems)} problem(s) in the manifest",
            file=str(csv_path),
            problems=shown[:MAX_LISTED],
            hint=f"Fix these rows (line 1 is the header); slice_index is 0-based along the {noun}'s "
            "slice order (inferior to superior for axial CT).",
        )
    level = "slice" if n_slice_rows == len(rows) else "volume" if n_slice_rows == 0 else "mixed"
    counts = {
        "label_level": level,
        "n_volumes": len(by_volume),
        "n_slice_rows": n_slice_rows,
        "n_volume_rows": len(rows) - n_slice_rows,
    }
    return Listing(records, str(csv_path), [], 0, [volume_col, SLICE_COLUMN, *extra_columns], counts)


#: Separator between a volume file and a slice index in a sample path: ``/abs/vol.nii.gz#z=12``.
SLICE_SEP = "#z="


#: Volume file extensions whose slices are addressed with :data:`SLICE_SEP`.
VOLUME_EXTENSIONS = (".nii", ".nii.gz")


def is_volume_file(path: str | Path) -> bool:
    """Whether ``path`` names a NIfTI volume (``.nii`` or ``.nii.gz``, any case)."""
    return str(path).lower().endswith(VOLUME_EXTENSIONS)


def slice_path(volume: str | Path, z: int) -> str:
    """The sample path of axial slice ``z`` of a volume file: ``<volume>#z=<z>``."""
    return f"{volume}{SLICE_SEP}{int(z)}"


def split_slice(path: str | Path) -> tuple[Path, int | None]:
    """Split a sample path into ``(file, slice index)``; the index is None for ordinary files.

    Only a volume file (``.nii``/``.nii.gz``) followed by ``#z=<int>`` is split, so an image
    file whose name happens to contain ``#z=`` is left alone.
    """
    text = str(path)
    head, sep, tail = text.rpartition(SLICE_SEP)
    if sep and is_volume_file(head) and tail.isdigit():
        return Path(head), int(tail)
    return Path(text), None

"""Dataset card -> sample table, with every file checked up front.

:func:`read_samples` lists the dataset with the reader its card names (``READERS``), maps labels
to the task's classes, then decodes every file once so that a corrupt or missing image stops the
run before training (``data.on_bad_file: error``) or is left out and reported
(``data.on_bad_file: skip``) -- never silently.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lepton_vision.config.errors import DataError, Problem
from lepton_vision.data.preprocess import DEFAULT_MAX_PIXELS, read_image
from lepton_vision.data.readers.csv_manifest import list_csv
from lepton_vision.data.readers.dicom_series import list_dicom_series
from lepton_vision.data.readers.image_folder import Listing, list_dicom_folder, list_image_folder
from lepton_vision.data.readers.nifti import list_nifti
from lepton_vision.data.readers.volumes import split_slice
from lepton_vision.data.sampleset import BAD_FILE_HINT, MAX_LISTED, SampleSet, with_progress

if TYPE_CHECKING:
    import pandas as pd

    from lepton_vision.config.cards import DatasetCard, Resolved, TaskCard

#: Columns every sample table starts with (contract 1); extra manifest columns follow.
TABLE_COLUMNS = ("sample_id", "path", "label", "label_name", "group")


def _list_csv(card: DatasetCard, ds_dir: Path) -> Listing:
    assert card.manifest is not None  # the card validator requires it for format csv
    cols = card.columns
    return list_csv(ds_dir, card.manifest, cols.path, cols.label, cols.group, list(card.classes))


#: format name -> function(card, dataset folder) -> Listing.
READERS: dict[str, Callable[[DatasetCard, Path], Listing]] = {
    "image_folder": lambda card, d: list_image_folder(d, list(card.classes)),
    "csv": _list_csv,
    "dicom": lambda card, d: list_dicom_folder(d, list(card.classes), salt=card.name),
    "dicom_series": lambda card, d: list_dicom_series(card, d),
    "nifti": lambda card, d: list_nifti(card, d),
}


def _check_file(rec: dict[str, Any], max_pixels: int) -> str | None:
    """Why the file is unusable, or None when it decodes."""
    if rec.get("bad"):
        return str(rec["bad"])
    path = rec["path"]
    if not split_slice(path)[0].is_file():
        return "file not found"
    try:
        read_image(path, max_pixels)
    except DataError as e:
        return e.message
    except Exception as e:  # noqa: BLE001 - a decoder crash is a bad file, not a program error
        return f"cannot decode ({type(e).__name__}: {e})"
    return None


def read_samples(
    card: DatasetCard,
    ds_dir: Path,
    task: TaskCard,
    card_path: Path,
    *,
    on_bad_file: Literal["error", "skip"] = "error",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> SampleSet:
    """List, label and check every sample of a dataset.

    Args:
        card: The dataset card.
        ds_dir: The dataset folder (``cards.dataset_dir(card, card_path)``).
        task: The task card; its positive class becomes label 1.
        card_path: The dataset card file (named in messages).
        on_bad_file: "error": raise listing every missing/unreadable file; "skip": leave them
            out and return them in ``excluded``.
        max_pixels: Refuse images with more pixels than this.
        progress: Show a progress bar while checking more than 50 files.

    Returns:
        A :class:`SampleSet`.

    Raises:
        DataError: The folder or manifest is missing or wrong, a label does not map to a task
            class, files are bad (with ``on_bad_file="error"``), or no usable sample is left.
    """
    import pandas as pd

    ds_dir = Path(ds_dir)
    if on_bad_file not in ("error", "skip"):
        raise ValueError(f"on_bad_file must be 'error' or 'skip', got {on_bad_file!r}")
    if not ds_dir.is_dir():
        hint = (
            "Generate it with `lepton-vision data synth` (or set $LEPTON_GENERATED_ROOT)."
            if card.root == "generated"
            else "Set $LEPTON_DATA_ROOT to the folder that holds "
            f"'{card.path}', or fix path: in the dataset card."
        )
        raise DataError(
            f"dataset folder not found: {ds_dir} (dataset '{card.name}')", file=str(card_path), hint=hint
        )
    from lepton_vision.config.cards import DETECTION_FORMATS

    if card.format in DETECTION_FORMATS:
        # Imported here: readers.detection imports SampleSet from this module.
        from lepton_vision.data.readers.detection import read_detection_samples

        return read_detection_samples(
            card, ds_dir, task, card_path, on_bad_file=on_bad_file, max_pixels=max_pixels, progress=progress
        )
    listing = READERS[card.format](card, ds_dir)
    if not listing.records:
        raise DataError(
            f"dataset '{card.name}' has no images in {listing.source}",
            file=str(card_path),
            hint="Check path: and format: in the dataset card; image_folder/dicom expect "
            "<path>/<class>/<files>.",
        )

    problems = []
    for rec in listing.records:
        name = card.task_label(rec["data_label"])
        if name not in task.classes:
            problems.append(
                Problem(rec["sample_id"], f"label '{rec['data_label']}' maps to '{name}', not a task class")
            )
        rec["label_name"] = name
        rec["label"] = int(name == task.positive_class)
    if problems:
        raise DataError(
            f"labels do not map to task '{task.name}' classes {list(task.classes)}",
            file=str(card_path),
            problems=problems[:MAX_LISTED],
            hint="Add class_map: {<data label>: <task class>} to the dataset card.",
        )

    good: list[dict[str, Any]] = []
    bad: list[tuple[dict[str, Any], str]] = []
    for rec in with_progress(listing.records, progress, f"Checking {len(listing.records)} images"):
        reason = _check_file(rec, max_pixels)
        if reason is None:
            good.append(rec)
        else:
            bad.append((rec, reason))
    if bad and on_bad_file == "error":
        shown = [
            Problem(rec["sample_id"], reason, line=rec.get("line")) for rec, reason in bad[:MAX_LISTED]
        ]
        more = f"... and {len(bad) - MAX_LISTED} more. " if len(bad) > MAX_LISTED else ""
        raise DataError(
            f"{len(bad)} of {len(listing.records)} files are missing or unreadable "
            f"(dataset '{card.name}', {listing.source})",
            file=str(card_path),
            problems=shown,
            hint=more + BAD_FILE_HINT,
        )
    excluded = [{"sample_id": r["sample_id"], "path": r["path"], "reason": why} for r, why in bad]
    if not good:
        raise DataError(
            f"no usable images left in dataset '{card.name}': all {len(bad)} files were bad",
            file=str(card_path),
            problems=[Problem(r["sample_id"], why) for r, why in bad[:MAX_LISTED]],
        )

    columns = list(TABLE_COLUMNS) + listing.extra_columns
    table = pd.DataFrame([{c: rec.get(c, "") for c in columns} for rec in good], columns=columns)
    table["label"] = table["label"].astype(int)
    for c in ("sample_id", "path", "label_name", "group"):
        table[c] = table[c].astype(str)
    groups = table["group"][table["group"] != ""]
    counts: dict[str, Any] = {
        "n_listed": len(listing.records),
        "n_samples": len(table),
        "n_excluded": len(excluded),
        "per_class": {c: int((table["label_name"] == c).sum()) for c in task.classes},
        "n_groups": int(groups.nunique()),
        "own_group": listing.own_group,
        "n_ignored": len(listing.ignored),
        "ignored": listing.ignored[:20],
        **listing.counts,
    }
    return SampleSet(table=table, excluded=excluded, counts=counts)


def load_samples(resolved: Resolved, progress: bool = True) -> SampleSet:
    """Read the dataset of a resolved recipe into a SampleSet (generating embedded data first)."""
    if resolved.dataset.root == "generated":
        from lepton_vision.data.generate import ensure_generated

        ensure_generated(resolved.dataset, resolved.dataset_path, progress=progress)
    return read_samples(
        resolved.dataset,
        resolved.dataset_dir,
        resolved.task,
        resolved.dataset_path,
        on_bad_file=resolved.recipe.data.on_bad_file,
        max_pixels=resolved.recipe.data.max_image_pixels,
        progress=progress,
    )


def data_fingerprint(table: pd.DataFrame) -> str:
    """SHA-256 over (sample id, label, group, file content hash) of every sample, in id order."""
    import hashlib

    from lepton_vision.data.preprocess import content_hash

    h = hashlib.sha256()
    boxes = "boxes" in table.columns  # detection: the boxes are part of the labels
    for row in table.sort_values("sample_id").itertuples(index=False):
        h.update(f"{row.sample_id}\t{row.label}\t{row.group}\t{content_hash(row.path)}\n".encode())
        if boxes:
            h.update(f"{row.boxes}\t{row.classes}\t{row.ignore}\n".encode())
    return h.hexdigest()

"""List images laid out as ``<dataset>/<class>/**/<image>`` (also DICOM series laid out the same way).

A reader only lists files and their labels/groups; decoding and checking every file is done
once, for all readers, by :func:`lepton_vision.data.samples.read_samples`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton_vision.config.errors import DataError, Problem, did_you_mean, format_choices
from lepton_vision.data.readers.dicom import pseudonym

#: Extensions an image_folder dataset may hold (DICOM included: a folder can mix them).
IMAGE_FOLDER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
DICOM_FOLDER_EXTENSIONS = (".dcm", ".dicom")


@dataclass
class Listing:
    """What a reader found, before any file is decoded.

    Attributes:
        records: One dict per sample: ``sample_id`` (POSIX path relative to the dataset folder),
            ``path`` (absolute str), ``data_label`` (as in the data), ``group`` (str, "" if none),
            optional ``line`` (1-based manifest line), optional ``bad`` (why the file is already
            known to be unusable), plus extra manifest columns.
        source: The folder or manifest file that errors should name.
        ignored: Files found but not read (not an image extension), relative POSIX paths.
        own_group: How many samples got a group of their own because theirs was empty.
        extra_columns: Names of extra manifest columns carried into the sample table.
        counts: Reader-specific counts merged into ``SampleSet.counts`` (e.g. the volume
            readers' ``label_level``, ``skipped_non_image``, ``no_rescale_tags``).
    """

    records: list[dict[str, Any]]
    source: str
    ignored: list[str] = field(default_factory=list)
    own_group: int = 0
    extra_columns: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)


def class_dirs(ds_dir: Path, classes: list[str]) -> list[Path]:
    """The class folders ``<ds_dir>/<class>`` of a folder dataset, in class order, or a DataError naming the missing ones."""
    found = sorted(p.name for p in ds_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    problems = [
        Problem(
            f"{ds_dir / name}/",
            f"folder '{name}' is not a class of the dataset card.{did_you_mean(name, classes)}",
        )
        for name in found
        if name not in classes
    ]
    problems += [
        Problem(f"{ds_dir / name}/", f"class '{name}' has no folder")
        for name in classes
        if name not in found
    ]
    if problems:
        raise DataError(
            f"the class folders do not match the dataset card's classes ({format_choices(classes)})",
            file=str(ds_dir),
            problems=problems,
            hint="Rename the folders, or list their names under classes: in the dataset card "
            "(and map them with class_map: if they differ from the task's class names).",
        )
    return [ds_dir / c for c in classes]


def _walk(class_dir: Path, ds_dir: Path, extensions: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    files, ignored = [], []
    for p in sorted(class_dir.rglob("*")):
        rel = p.relative_to(ds_dir)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue  # hidden files (.DS_Store, editor swap files) are not data
        if p.suffix.lower() in extensions:
            files.append(p)
        else:
            ignored.append(rel.as_posix())
    return files, ignored


def list_image_folder(ds_dir: Path, classes: list[str]) -> Listing:
    """List ``ds_dir/<class>/**/<image>``; no groups.

    Raises:
        DataError: A folder is not a declared class, or a declared class has no folder.
    """
    records: list[dict[str, Any]] = []
    ignored: list[str] = []
    for class_dir in class_dirs(ds_dir, classes):
        files, skipped = _walk(class_dir, ds_dir, IMAGE_FOLDER_EXTENSIONS)
        ignored += skipped
        for p in files:
            records.append(
                {
                    "sample_id": p.relative_to(ds_dir).as_posix(),
                    "path": str(p.resolve()),
                    "data_label": class_dir.name,
                    "group": "",
                }
            )
    return Listing(records, str(ds_dir), ignored)


def _patient_id(path: Path) -> str:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    return str(ds.get("PatientID", "") or "").strip()


def list_dicom_folder(ds_dir: Path, classes: list[str], salt: str = "") -> Listing:
    """List ``ds_dir/<class>/**/*.dcm`` with the group taken from each file's PatientID.

    The group is the pseudonym of the PatientID (:func:`~lepton_vision.data.readers.dicom.pseudonym`
    salted with ``salt``, the dataset card's name), never the raw id.
    A file whose header cannot be read is kept with a ``bad`` reason (reported with the other
    unreadable files); a file with an empty PatientID becomes its own group and is counted.

    Raises:
        DataError: A folder is not a declared class, or a declared class has no folder.
    """
    records: list[dict[str, Any]] = []
    ignored: list[str] = []
    own_group = 0
    for class_dir in class_dirs(ds_dir, classes):
        files, skipped = _walk(class_dir, ds_dir, DICOM_FOLDER_EXTENSIONS)
        ignored += skipped
        for p in files:
            sid = p.relative_to(ds_dir).as_posix()
            rec: dict[str, Any] = {
                "sample_id": sid,
                "path": str(p.resolve()),
                "data_label": class_dir.name,
                "group": "",
            }
            try:
                pid = _patient_id(p)
            except Exception as e:  # noqa: BLE001 - any header failure makes the file unusable
                rec["bad"] = f"cannot read the DICOM header ({type(e).__name__}: {e})"
                pid = ""
            if pid:
                pid = pseudonym(pid, salt)
            else:
                pid = f"file-{sid}"
                own_group += "bad" not in rec
            rec["group"] = pid
            records.append(rec)
    return Listing(records, str(ds_dir), ignored, own_group)

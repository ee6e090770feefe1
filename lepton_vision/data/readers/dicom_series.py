"""The ``dicom_series`` dataset format: one folder per DICOM series, slices ordered in space.

A series folder holds the slice files of one series. They are ordered by ImagePositionPatient
projected on the slice normal (row direction x column direction of ImageOrientationPatient;
inferior to superior for axial CT), or by InstanceNumber when a file lacks position or
orientation. Non-image objects (no PixelData, or an SOP class that is not an image storage
class: presentation states, structured reports, raw data) are skipped and counted in
``skipped_non_image``. A slice without RescaleSlope/RescaleIntercept is read with slope 1 and
intercept 0 (:func:`~lepton_vision.data.readers.dicom.read_dicom_hu`) and counted in
``no_rescale_tags``, since its values may then not be Hounsfield units.

Labels come from the class folder (``<path>/<class>/<series>/``: every slice gets the class) or
from a manifest (columns series, slice_index, label, optional group; see
:mod:`~lepton_vision.data.readers.volumes`). The group is the pseudonym of the series' PatientID
(or of the manifest's group value), never the raw id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton_vision.config.errors import DataError
from lepton_vision.data.readers.dicom import is_dicom, pseudonym
from lepton_vision.data.readers.image_folder import Listing, class_dirs
from lepton_vision.data.readers.volumes import ManifestRow, Volume, expand_rows, read_volume_manifest

if TYPE_CHECKING:
    from lepton_vision.config.cards import DatasetCard

SERIES_COLUMN = "series"


@dataclass
class SeriesScan:
    """The ordered slice files of one series folder and what was noticed on the way."""

    files: list[Path]
    patient_id: str
    skipped_non_image: int
    no_rescale_tags: int
    ordered_by: str  # "position" or "instance_number"
    bad: str | None = None


def _is_image(ds: Any) -> bool:
    if "PixelData" not in ds:
        return False
    from pydicom.uid import UID

    sop = str(ds.get("SOPClassUID", "") or "")
    if not sop:
        return True
    name = UID(sop).name
    # an unknown (private) class with pixel data is read; a known one must be an image class
    return name == sop or "Image" in name


def _candidates(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and (p.suffix.lower() in (".dcm", ".dicom") or is_dicom(p))
    )


def scan_series(folder: Path) -> SeriesScan:
    """Read the headers of a series folder and order its image slices in space.

    Raises:
        DataError: The folder mixes several series (more than one SeriesInstanceUID).
    """
    import pydicom

    images: list[tuple[Path, Any]] = []
    skipped = 0
    for p in _candidates(folder):
        try:
            # large values (the pixel data) are deferred: only the header is parsed here
            ds = pydicom.dcmread(p, defer_size="2 KB")
        except Exception as e:  # noqa: BLE001 - any header failure makes the series unorderable
            return SeriesScan([], "", skipped, 0, "", bad=f"cannot read the DICOM header of {p.name} "
                              f"({type(e).__name__}: {e}), so the series cannot be ordered")
        if _is_image(ds):
            images.append((p, ds))
        else:
            skipped += 1
    uids = {str(ds.get("SeriesInstanceUID", "") or "") for _, ds in images}
    if len(uids) > 1:
        raise DataError(
            f"the folder mixes {len(uids)} series (SeriesInstanceUIDs); a series folder must hold "
            "one series. Split it into one folder per series",
            file=str(folder),
        )
    if not images:
        return SeriesScan([], "", skipped, 0, "", bad="no image slices in the series folder")
    no_rescale = sum(1 for _, ds in images if "RescaleSlope" not in ds or "RescaleIntercept" not in ds)
    try:
        keys = []
        for _, ds in images:
            iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
            ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
            keys.append(float(ipp @ np.cross(iop[:3], iop[3:])))
        ordered_by = "position"
    except (AttributeError, ValueError, TypeError, IndexError):
        keys = [float(ds.get("InstanceNumber", 0) or 0) for _, ds in images]
        ordered_by = "instance_number"
    order = sorted(range(len(images)), key=lambda i: (keys[i], images[i][0].name))
    pids = {str(ds.get("PatientID", "") or "").strip() for _, ds in images}
    return SeriesScan(
        [images[i][0] for i in order], sorted(pids)[0] if pids else "", skipped, no_rescale, ordered_by
    )


def _series_folders(class_dir: Path) -> list[Path]:
    """Folders under ``class_dir`` (itself included) that directly hold files."""
    dirs = [class_dir, *sorted(p for p in class_dir.rglob("*") if p.is_dir())]
    return [
        d
        for d in dirs
        if not any(part.startswith(".") for part in d.relative_to(class_dir).parts)
        and any(f.is_file() and not f.name.startswith(".") for f in d.iterdir())
    ]


def list_dicom_series(card: DatasetCard, ds_dir: Path) -> Listing:
    """List the slices of a ``dicom_series`` dataset (class folders or a manifest).

    Raises:
        DataError: Class folders do not match the card, a folder mixes series, or the manifest
            is wrong (see :mod:`~lepton_vision.data.readers.volumes`).
    """
    scans: dict[str, SeriesScan] = {}

    def describe(name: str) -> Volume:
        folder = Path(name) if Path(name).is_absolute() else ds_dir / name
        if not folder.is_dir():
            return Volume(0, bad=f"series folder not found: {folder}")
        scan = scans[name] = scan_series(folder)
        if scan.bad is not None:
            return Volume(0, bad=scan.bad)
        group = pseudonym(scan.patient_id, card.name) if scan.patient_id else f"series-{Path(name).as_posix()}"
        ids = []
        for f in scan.files:
            try:
                ids.append(f.resolve().relative_to(ds_dir.resolve()).as_posix())
            except ValueError:
                ids.append(f.as_posix())
        return Volume(len(scan.files), [str(f.resolve()) for f in scan.files], ids, group=group)

    def group_of(row: ManifestRow, vol: Volume) -> str:
        return pseudonym(row.group, card.name) if row.group else vol.group

    if card.manifest:
        import pandas as pd

        csv_path = Path(card.manifest) if Path(card.manifest).is_absolute() else ds_dir / card.manifest
        group_col = card.columns.group
        if group_col is None and csv_path.is_file():
            group_col = "group" if "group" in pd.read_csv(csv_path, nrows=0).columns else None
        rows, extras = read_volume_manifest(csv_path, SERIES_COLUMN, card.columns.label, group_col, list(card.classes))
        listing = expand_rows(rows, extras, csv_path, SERIES_COLUMN, "series", describe, group_of)
    else:
        rows = []
        for class_dir in class_dirs(ds_dir, list(card.classes)):
            for k, folder in enumerate(_series_folders(class_dir)):
                rel = folder.relative_to(ds_dir).as_posix()
                rows.append(ManifestRow(k + 1, rel, None, class_dir.name, "", {}))
        listing = expand_rows(rows, [], ds_dir, SERIES_COLUMN, "series", describe, group_of)
        listing.source = str(ds_dir)
        for rec in listing.records:
            rec.pop("line", None)  # folder listings have no manifest lines
    listing.own_group = sum(1 for r in listing.records if str(r["group"]).startswith("series-"))
    listing.counts.update(
        {
            "skipped_non_image": sum(s.skipped_non_image for s in scans.values()),
            "no_rescale_tags": sum(s.no_rescale_tags for s in scans.values()),
            "ordered_by_instance_number": sum(1 for s in scans.values() if s.ordered_by == "instance_number"),
        }
    )
    return listing

"""NIfTI volumes: one axial slice as float32 HU, and the ``nifti`` dataset format.

nibabel does the parsing, the ``scl_slope``/``scl_inter`` scaling and the reorientation
(:func:`nibabel.as_closest_canonical`, to RAS). A slice index counts along the superior axis
(inferior to superior), and a slice is returned the way DICOM displays an axial image: rows
run anterior to posterior, columns from the patient's right to left. That makes a slice equal
to the DICOM slice of the same scan.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton_vision.config.errors import DataError
from lepton_vision.data.readers.dicom import pseudonym
from lepton_vision.data.readers.image_folder import Listing
from lepton_vision.data.readers.volumes import ManifestRow, Volume, expand_rows, read_volume_manifest, slice_path

if TYPE_CHECKING:
    from lepton_vision.config.cards import DatasetCard

VOLUME_COLUMN = "volume"
#: Volumes kept decoded: training reads a volume's slices one by one, often in a row.
CACHE_VOLUMES = 2
_FIX = "Re-export the volume (e.g. with dcm2niix), or remove its rows from the manifest."


def _load(path: Path) -> Any:
    import nibabel as nib

    if not path.is_file():
        raise DataError("NIfTI file not found. Check the manifest's volume column.", file=str(path))
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises many types for damaged files; all mean "unreadable"
        raise DataError(f"not a readable NIfTI file ({type(e).__name__}: {e}). {_FIX}", file=str(path)) from e
    if len(img.shape) != 3:
        raise DataError(
            f"expected a 3-D volume, got shape {tuple(int(s) for s in img.shape)}. Split a 4-D series "
            "(time points, echoes) into 3-D volumes first, e.g. with nibabel.funcs.four_to_three",
            file=str(path),
        )
    return img


def n_axial_slices(path: str | Path) -> int:
    """Number of slices along the superior axis, from the header only.

    Raises:
        DataError: The file is missing, unreadable or not 3-D.
    """
    import nibabel as nib

    img = _load(Path(path))
    ornt = nib.io_orientation(img.affine)
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])  # the voxel axis closest to superior
    return int(img.shape[axis])


@lru_cache(maxsize=CACHE_VOLUMES)
def _canonical(path: str, _mtime_ns: int, _size: int) -> np.ndarray:
    import nibabel as nib

    img = nib.as_closest_canonical(_load(Path(path)))
    try:
        return np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # truncated data, bad compression
        raise DataError(f"voxel data cannot be decoded ({type(e).__name__}: {e}). {_FIX}", file=path) from e


def read_nifti_slice(path: str | Path, z: int) -> np.ndarray:
    """Axial slice ``z`` of a NIfTI volume as float32 HU, oriented like a DICOM display.

    Args:
        path: The ``.nii``/``.nii.gz`` file.
        z: 0-based slice index along the superior axis after reorienting to RAS.

    Returns:
        HxW float32 (rows anterior -> posterior, columns patient right -> left).

    Raises:
        DataError: The file is missing, unreadable, not 3-D, or ``z`` is out of range.
    """
    path = Path(path)
    st = path.stat() if path.is_file() else None
    if st is None:
        raise DataError("NIfTI file not found. Check the manifest's volume column.", file=str(path))
    vol = _canonical(str(path), st.st_mtime_ns, st.st_size)
    if not 0 <= z < vol.shape[2]:
        raise DataError(f"slice {z} is out of range: the volume has {vol.shape[2]} slices", file=str(path))
    # canonical axes are (R, A, S) increasing; the display wants rows A->P and columns R->L
    return np.ascontiguousarray(vol[::-1, ::-1, z].T)


def list_nifti(card: DatasetCard, ds_dir: Path) -> Listing:
    """List the slices a ``nifti`` dataset's manifest labels.

    The group is the manifest's group column (``columns.group``, else a column named ``group``)
    pseudonymised with the card's name, else the volume itself (every volume its own group).

    Raises:
        DataError: See :func:`~lepton_vision.data.readers.volumes.read_volume_manifest` and
            :func:`~lepton_vision.data.readers.volumes.expand_rows`; a 4-D volume.
    """
    import pandas as pd

    assert card.manifest is not None  # the card validator requires it for format nifti
    csv_path = Path(card.manifest) if Path(card.manifest).is_absolute() else ds_dir / card.manifest
    group_col = card.columns.group
    if group_col is None and csv_path.is_file():
        header = pd.read_csv(csv_path, nrows=0).columns
        group_col = "group" if "group" in header else None
    rows, extras = read_volume_manifest(csv_path, VOLUME_COLUMN, card.columns.label, group_col, list(card.classes))

    def describe(name: str) -> Volume:
        p = Path(name) if Path(name).is_absolute() else ds_dir / name
        try:
            n = n_axial_slices(p)
        except DataError as e:
            if p.is_file() and "expected a 3-D volume" in e.message:
                raise
            return Volume(0, bad=e.message)
        rel = Path(name).as_posix()
        return Volume(
            n,
            [slice_path(p.resolve(), z) for z in range(n)],
            [slice_path(rel, z) for z in range(n)],
            group=f"vol-{rel}",
        )

    def group_of(row: ManifestRow, vol: Volume) -> str:
        return pseudonym(row.group, card.name) if row.group else vol.group

    listing = expand_rows(rows, extras, csv_path, VOLUME_COLUMN, "volume", describe, group_of)
    listing.own_group = sum(1 for r in listing.records if r["group"].startswith("vol-"))
    listing.counts["group_from"] = group_col or "volume"
    return listing

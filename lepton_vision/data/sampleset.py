"""What every reader returns: the usable samples of a dataset and what was left out, counted.

Shared by the classification readers (:mod:`lepton_vision.data.samples`) and the detection reader
(:mod:`lepton_vision.data.readers.detection`), so both report excluded files the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import pandas as pd


#: At most this many problems are listed in an error (the rest are counted).
MAX_LISTED = 50


#: A progress bar is shown while checking more files than this.
PROGRESS_MIN_FILES = 50


#: What to do about missing or unreadable files (said after listing them).
BAD_FILE_HINT = (
    "Fix or remove them, or set data.on_bad_file: skip to leave them out "
    "(they are then counted and listed in data_report.json)."
)


@dataclass(frozen=True, eq=False)
class SampleSet:
    """The usable samples of a dataset and what was left out.

    Attributes:
        table: Sample table (contract 1): sample_id, path, label (1 = task positive class),
            label_name (task class), group ("" when the dataset has no groups), extra columns.
        excluded: One dict per file left out (``on_bad_file: skip``): sample_id, path, reason.
        counts: n_listed, n_samples, n_excluded, per_class {task class: n}, n_groups,
            own_group (samples whose empty group became their own), n_ignored and ignored
            (up to 20 non-image files found in class folders and not read). The volume formats
            add label_level (slice|volume|mixed: how the manifest labels), n_volumes,
            n_slice_rows, n_volume_rows; dicom_series adds skipped_non_image (DICOM objects
            without pixel data or of a non-image SOP class), no_rescale_tags (slices read with
            slope 1 / intercept 0 because the tags are missing) and ordered_by_instance_number
            (series lacking positions); nifti adds group_from (the group column, or "volume").
    """

    table: pd.DataFrame
    excluded: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)


T = TypeVar("T")


def with_progress(items: list[T], show: bool, description: str) -> Iterator[T] | Iterable[T]:
    """``items``, with a transient progress bar on stderr when ``show`` and there are many."""
    if not show or len(items) <= PROGRESS_MIN_FILES:
        return items
    from rich.console import Console
    from rich.progress import track

    return track(items, description=description, console=Console(stderr=True), transient=True)

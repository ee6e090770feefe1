"""Task cards and dataset cards, and resolving a recipe against them.

A task card (``tasks/<task>/task.yaml``) says what problem is solved: kind, classes, the
positive class, the threshold policy. A dataset card (``datasets/<name>/dataset.yaml``) says
where data lives and how to read it: format, columns, class names and their mapping to the
task's classes, licence. Cross-file checks name both files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, StrictStr, model_validator

from lepton_vision.errors import CardError, Problem, did_you_mean, format_choices
from lepton_vision.recipe import Recipe, Threshold, _Model, validate_doc
from lepton_vision.yamlfile import load_yaml

KIND_NAMES = ("binary_classification",)
#: Dataset formats whose samples always carry a group (patient), whatever columns.group says.
GROUPED_FORMATS = ("dicom", "dicom_series", "nifti")


class TaskCard(_Model):
    """What problem a task solves and how it is judged."""

    schema_version: Literal[1] = Field(description="Task card schema version; currently 1.")
    name: StrictStr = Field(description="Task name; equals the folder name under tasks/.")
    kind: Literal["binary_classification"] = Field(description="Kind of model and output.")
    title: StrictStr = Field(description="Human title for reports and demos.")
    description: StrictStr = Field("", description="One paragraph: what the model is for.")
    modality: Literal["ct", "rgb", "grayscale"] = Field(description="Input modality.")
    classes: tuple[StrictStr, StrictStr] = Field(description="[negative, positive] class names.")
    positive_class: StrictStr = Field(description="The class whose score is reported; one of classes.")
    primary_metric: Literal["roc_auc", "pr_auc", "f1", "balanced_accuracy"] = Field(
        "roc_auc", description="Headline metric (sweeps optimise it, reports lead with it)."
    )
    threshold: Threshold = Field(description="Default operating-point policy.")
    intended_use: StrictStr = Field("", description="Intended use and misuse (model card text).")

    @model_validator(mode="after")
    def _check(self) -> TaskCard:
        if self.positive_class not in self.classes:
            raise ValueError(
                f"positive_class '{self.positive_class}' is not one of classes {list(self.classes)}"
            )
        if self.classes[1] != self.positive_class:
            raise ValueError("list classes as [negative, positive]: positive_class must be second")
        return self


class ColumnMap(_Model):
    """Column names in a CSV manifest."""

    path: StrictStr = Field("path", description="Column with the image path, relative to the dataset folder.")
    label: StrictStr = Field("label", description="Column with the class label.")
    group: StrictStr | None = Field(
        None, description="Column with the group (patient/sequence id) for grouped folds; null if none."
    )


class SyntheticSpec(_Model):
    """How `lepton-vision data synth` generates this dataset (embedded default data)."""

    generator: Literal["ct_phantom"] = Field(description="Generator name.")
    n_patients: int = Field(48, ge=2, description="Number of patients.")
    slices_per_patient: int = Field(10, ge=1, description="Axial slices per patient.")
    image_size: int = Field(128, ge=32, le=1024, description="Slice size in pixels (square).")
    abnormal_patient_fraction: float = Field(
        0.5, gt=0, lt=1, description="Fraction of patients who have nodules."
    )
    seed: int = Field(7, ge=0, description="Generator seed; same seed, same files.")
    layout: Literal["slices", "dicom_series", "nifti"] = Field(
        "slices",
        description="slices: <PatientID>/<slice>.dcm + labels.csv (one row per slice file); "
        "dicom_series: the same DICOM folders + series.csv (series, slice_index, label, patient_id; "
        "slice_index in the reader's order, inferior to superior); nifti: <PatientID>.nii.gz "
        "(int16 HU, RAS affine with the pixel and slice spacing) + volumes.csv (volume, "
        "slice_index, label, patient_id). The manifest is written last.",
    )


class DatasetCard(_Model):
    """Where a dataset lives and how to read it."""

    schema_version: Literal[1] = Field(description="Dataset card schema version; currently 1.")
    name: StrictStr = Field(description="Dataset name; equals the folder name under datasets/.")
    description: StrictStr = Field("", description="What the data is.")
    format: Literal["image_folder", "csv", "dicom", "dicom_series", "nifti"] = Field(
        description="image_folder: <path>/<class>/<images>; csv: a manifest (see manifest, columns); "
        "dicom: <path>/<class>/**/*.dcm with the group from the DICOM PatientID; "
        "dicom_series: one folder per series, either <path>/<class>/<series>/*.dcm or a manifest "
        "with columns series (folder), slice_index (0-based in the series' order along the slice "
        "normal, inferior to superior for axial CT; empty = every slice gets the row's label), "
        "label and optional group (default: the hashed PatientID); nifti: a manifest with columns "
        "volume (.nii/.nii.gz file), slice_index (0-based along the superior axis after "
        "reorienting to RAS; empty = volume-level label), label and group (columns.group). "
        "For dicom and dicom_series the group is 'pt-' + sha256(<card name> + PatientID)[:12], "
        "so no raw patient id reaches sample tables, logs or bundles."
    )
    root: Literal["data", "generated"] = Field(
        "data",
        description="data: path is relative to $LEPTON_DATA_ROOT; generated: relative to "
        "$LEPTON_GENERATED_ROOT (default ./data/generated), made by `lepton-vision data synth`.",
    )
    path: StrictStr = Field(description="Dataset folder, relative to the root (or absolute).")
    manifest: StrictStr | None = Field(
        None,
        description="CSV manifest file inside the folder (format csv and nifti; optional for dicom_series).",
    )
    columns: ColumnMap = Field(
        default_factory=ColumnMap,
        description="Manifest columns (format csv; for dicom_series/nifti only label and group are used).",
    )
    classes: list[StrictStr] = Field(min_length=2, description="Label values as they appear in the data.")
    class_map: dict[StrictStr, StrictStr] = Field(
        default_factory=dict,
        description="Data label -> task class. Empty when the data uses the task's class names.",
    )
    group_by: StrictStr | None = Field(
        None,
        description="What the group means (e.g. 'patient'); folds are grouped whenever a group column exists.",
    )
    licence: StrictStr = Field(description="Licence / terms of use of the data.")
    source: StrictStr = Field("", description="Provenance.")
    synthetic: SyntheticSpec | None = Field(None, description="Generator settings for generated data.")

    @model_validator(mode="after")
    def _check(self) -> DatasetCard:
        if self.format in ("csv", "nifti") and not self.manifest:
            raise ValueError(f"format '{self.format}' needs manifest: <file.csv> (relative to path)")
        unknown = [k for k in self.class_map if k not in self.classes]
        if unknown:
            raise ValueError(f"class_map keys {unknown} are not in classes {self.classes}")
        if self.root == "generated" and self.synthetic is None:
            raise ValueError("root 'generated' needs a synthetic: section saying how to generate it")
        return self

    def task_label(self, data_label: str) -> str:
        """Map a label value from the data to the task's class name."""
        return self.class_map.get(data_label, data_label)


def project_root(start: Path | None = None) -> Path:
    """The folder holding tasks/ and datasets/ ($LEPTON_HOME, else walk up from start or cwd)."""
    env = os.environ.get("LEPTON_HOME")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for p in [here, *here.parents]:
        if (p / "tasks").is_dir() and (p / "datasets").is_dir():
            return p
    return Path.cwd().resolve()


def data_root() -> Path | None:
    """$LEPTON_DATA_ROOT as a path, or None when unset."""
    env = os.environ.get("LEPTON_DATA_ROOT")
    return Path(env).expanduser().resolve() if env else None


def generated_root() -> Path:
    """Where generated (embedded default) datasets are written."""
    env = os.environ.get("LEPTON_GENERATED_ROOT")
    return Path(env).expanduser().resolve() if env else (Path.cwd() / "data" / "generated").resolve()


def _find_card(ref: str, folder: str, filename: str, root: Path, referrer: str) -> Path:
    p = Path(ref)
    if p.suffix in (".yaml", ".yml"):
        if p.is_file():
            return p
        raise CardError(f"{folder[:-1]} card not found: {ref}", file=referrer)
    candidate = root / folder / ref / filename
    if candidate.is_file():
        return candidate
    known = sorted(d.name for d in (root / folder).glob("*") if (d / filename).is_file())
    raise CardError(
        f"no {folder[:-1]} card '{ref}' (looked for {candidate}).{did_you_mean(ref, known)}",
        file=referrer,
        hint=f"Known {folder}: {format_choices(known) or 'none'}.",
    )


def load_task_card(path: Path) -> TaskCard:
    """Load and validate a task card."""
    card = validate_doc(load_yaml(path), TaskCard, "task card")
    assert isinstance(card, TaskCard)
    return card


def load_dataset_card(path: Path) -> DatasetCard:
    """Load and validate a dataset card."""
    card = validate_doc(load_yaml(path), DatasetCard, "dataset card")
    assert isinstance(card, DatasetCard)
    return card


@dataclass(frozen=True)
class Resolved:
    """A recipe with its task and dataset cards, cross-checked."""

    recipe: Recipe
    task: TaskCard
    dataset: DatasetCard
    recipe_path: Path
    task_path: Path
    dataset_path: Path

    @property
    def dataset_dir(self) -> Path:
        """Absolute folder of the dataset (may not exist yet for generated data)."""
        return dataset_dir(self.dataset, self.dataset_path)

    @property
    def threshold(self) -> Threshold:
        """The operating-point policy: the recipe's, else the task card's."""
        return self.recipe.evaluate.threshold or self.task.threshold


def dataset_dir(card: DatasetCard, card_path: Path) -> Path:
    """Resolve a dataset card's folder against its root.

    Raises:
        CardError: When the card needs $LEPTON_DATA_ROOT and it is not set.
    """
    p = Path(card.path).expanduser()
    if p.is_absolute():
        return p
    if card.root == "generated":
        return generated_root() / p
    root = data_root()
    if root is None:
        raise CardError(
            f"dataset '{card.name}' lives under $LEPTON_DATA_ROOT, which is not set",
            file=str(card_path),
            hint=f"Set it to the folder that holds '{card.path}', e.g. "
            f"LEPTON_DATA_ROOT=../shared/data lepton-vision train ...",
        )
    return root / p


def resolve(recipe: Recipe, recipe_path: str | Path) -> Resolved:
    """Find and validate the recipe's task and dataset cards and check they fit together.

    Raises:
        CardError: A card is missing or invalid, or the cards disagree with each other or the recipe.
    """
    recipe_path = Path(recipe_path)
    root = project_root(recipe_path.parent)
    task_path = _find_card(recipe.task, "tasks", "task.yaml", root, str(recipe_path))
    ds_path = _find_card(recipe.dataset, "datasets", "dataset.yaml", root, str(recipe_path))
    task = load_task_card(task_path)
    ds = load_dataset_card(ds_path)
    problems: list[Problem] = []
    mapped = {ds.task_label(c) for c in ds.classes}
    for c in sorted(mapped - set(task.classes)):
        problems.append(
            Problem(
                "classes",
                f"data class '{c}' is not a class of task '{task.name}' ({list(task.classes)}).{did_you_mean(c, task.classes)} "
                f"Map it with class_map: {{{c}: <task class>}} in {ds_path}",
            )
        )
    for c in sorted(set(task.classes) - mapped):
        problems.append(
            Problem("classes", f"task class '{c}' has no data class mapped to it in {ds_path}")
        )
    if recipe.cv.strategy == "stratified_group" and not ds.columns.group and ds.format not in GROUPED_FORMATS:
        problems.append(
            Problem(
                "cv.strategy",
                f"stratified_group needs a group column, but {ds_path} declares none (columns.group)",
            )
        )
    if recipe.cv.strategy == "stratified" and (ds.columns.group or ds.format in GROUPED_FORMATS):
        problems.append(
            Problem(
                "cv.strategy",
                f"{ds_path} declares groups ({ds.group_by or 'group column'}); ungrouped folds would put "
                "one group's images in train and validation. Use strategy: auto or stratified_group",
            )
        )
    if problems:
        raise CardError(
            f"recipe does not fit task '{task.name}' ({task_path}) and dataset '{ds.name}' ({ds_path})",
            file=str(recipe_path),
            problems=problems,
        )
    return Resolved(recipe, task, ds, recipe_path, task_path, ds_path)


def load_resolved(recipe_path: str | Path, overrides: list[str] | None = None) -> Resolved:
    """Load a recipe with overrides and resolve its cards (the start of every command)."""
    from lepton_vision.recipe import load_recipe

    return resolve(load_recipe(recipe_path, overrides), recipe_path)


def card_dict(card: Any) -> dict[str, Any]:
    """A card as a plain JSON-able dict (for bundle.json and reports)."""
    return card.model_dump(mode="json")

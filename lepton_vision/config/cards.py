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
from typing import Annotated, Any, Literal

from pydantic import Field, StrictStr, model_validator

from lepton_vision.config.errors import CardError, Problem, did_you_mean, format_choices
from lepton_vision.config.recipe import Recipe, Threshold, StrictModel, validate_doc
from lepton_vision.config.yamlfile import load_yaml

KIND_NAMES = ("binary_classification", "object_detection")
#: Dataset formats whose samples always carry a group (patient), whatever columns.group says.
GROUPED_FORMATS = ("dicom", "dicom_series", "nifti")
#: Dataset formats with boxes (object detection).
DETECTION_FORMATS = ("coco", "voc", "yolo", "kitti")
#: class_map targets that are not task classes: boxes that neither count as objects nor as
#: false positives (ignore regions, like KITTI DontCare), and boxes removed from the data.
IGNORE, DROP = "ignore", "drop"


class DetectionPolicy(StrictModel):
    """Box post-processing and matching for object-detection tasks."""

    nms_iou: float = Field(0.5, gt=0, lt=1, description="IoU above which NMS suppresses the lower-scored box.")
    max_detections: int = Field(100, ge=1, le=1000, description="Most boxes kept per image after NMS.")
    min_score: float = Field(
        0.01, ge=0, lt=1,
        description="Boxes below this confidence are dropped in the exported graph and in saved "
        "predictions (AP is computed over everything above it).",
    )
    match_iou: float = Field(0.5, gt=0, lt=1, description="IoU for a detection to match a ground-truth box (precision/recall/F1).")
    score_threshold: float | None = Field(
        None, gt=0, lt=1,
        description="Box confidence threshold for precision/recall/F1 and the app; null = the "
        "max-F1 threshold chosen on the other folds (cross-fitted) and on all folds for export.",
    )


class TaskCard(StrictModel):
    """What problem a task solves and how it is judged."""

    schema_version: Literal[1] = Field(description="Task card schema version; currently 1.")
    name: StrictStr = Field(description="Task name; equals the folder name under tasks/.")
    kind: Literal["binary_classification", "object_detection"] = Field(description="Kind of model and output.")
    title: StrictStr = Field(description="Human title for reports and demos.")
    description: StrictStr = Field("", description="One paragraph: what the model is for.")
    modality: Literal["ct", "rgb", "grayscale"] = Field(description="Input modality.")
    classes: list[StrictStr] = Field(
        min_length=1,
        description="binary_classification: [negative, positive]; object_detection: the object "
        "classes, in the order of the model's class ids.",
    )
    positive_class: StrictStr | None = Field(
        None, description="The class whose score is reported (binary_classification; one of classes)."
    )
    primary_metric: Literal["roc_auc", "pr_auc", "f1", "balanced_accuracy", "ap50", "ap50_95"] = Field(
        "roc_auc", description="Headline metric (sweeps optimise it, reports lead with it)."
    )
    threshold: Threshold = Field(
        description="Default operating-point policy (object_detection: for the image-level "
        "'object present' score, the max box confidence)."
    )
    detection: DetectionPolicy | None = Field(
        None, description="Box post-processing and matching (object_detection only; defaults apply when omitted)."
    )
    intended_use: StrictStr = Field("", description="Intended use and misuse (model card text).")

    @model_validator(mode="after")
    def _check(self) -> TaskCard:
        if self.kind == "object_detection":
            if len(set(self.classes)) != len(self.classes):
                raise ValueError(f"classes must be distinct. Got {self.classes}")
            if self.detection is None:
                object.__setattr__(self, "detection", DetectionPolicy())
            return self
        if self.detection is not None:
            raise ValueError("detection: is only for kind object_detection")
        if len(self.classes) != 2:
            raise ValueError(f"binary_classification needs classes: [negative, positive]. Got {self.classes}")
        if self.positive_class is None:
            raise ValueError("binary_classification needs positive_class (one of classes)")
        if self.positive_class not in self.classes:
            raise ValueError(
                f"positive_class '{self.positive_class}' is not one of classes {list(self.classes)}"
            )
        if self.classes[1] != self.positive_class:
            raise ValueError("list classes as [negative, positive]: positive_class must be second")
        return self


class ColumnMap(StrictModel):
    """Column names in a CSV manifest."""

    path: StrictStr = Field("path", description="Column with the image path, relative to the dataset folder.")
    label: StrictStr = Field("label", description="Column with the class label.")
    group: StrictStr | None = Field(
        None,
        description="Column with the group (patient/sequence id) for grouped folds; null if none. "
        "For format coco it is a field of each images[] entry (e.g. group_id).",
    )


class SyntheticSpec(StrictModel):
    """How `lepton-vision data synth` generates this dataset (embedded default data)."""

    generator: Literal["ct_phantom", "street_scenes", "road_scenes"] = Field(
        description="ct_phantom: chest CT DICOM; street_scenes: people in street scenes (person "
        "detection); road_scenes: cars, pedestrians and cyclists on a road (obstacle detection)."
    )
    n_images: int = Field(300, ge=4, description="Frames to generate (street_scenes, road_scenes).")
    frame_size: tuple[Annotated[int, Field(ge=32, le=4096)], Annotated[int, Field(ge=32, le=4096)]] = Field(
        (320, 240), description="Frame [width, height] in pixels (street_scenes, road_scenes)."
    )
    empty_fraction: float = Field(
        0.2, ge=0, lt=1, description="Fraction of frames with no object (street_scenes, road_scenes)."
    )
    sequence_length: int = Field(
        5, ge=1, description="Frames per sequence sharing a background (the group for folds; scenes)."
    )
    n_patients: int = Field(48, ge=2, description="Number of patients.")
    slices_per_patient: int = Field(10, ge=1, description="Axial slices per patient.")
    image_size: int = Field(128, ge=32, le=1024, description="Slice size in pixels (square).")
    abnormal_patient_fraction: float = Field(
        0.5, gt=0, lt=1, description="Fraction of patients who have nodules."
    )
    seed: int = Field(7, ge=0, description="Generator seed; same seed, same files.")
    randomization: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Domain randomisation strength for pretraining on generated data: 0 = the "
        "default data exactly (byte-identical files); 1 = the strongest (scenes: wider camera "
        "height, pitch and focal length, dusk/night/fog/colour casts, procedural textures, "
        "motion blur, heavy noise, JPEG artefacts, some grayscale frames, more occluders, "
        "class-balanced road objects over a wider size range; ct_phantom: varied body, lung, "
        "heart, rib and spine anatomy, off-centre patients, zoom, dose, reconstruction kernel, "
        "streak/ring artefacts, a couch). Values in between scale the ranges.",
    )
    layout: Literal["slices", "dicom_series", "nifti"] = Field(
        "slices",
        description="slices: <PatientID>/<slice>.dcm + labels.csv (one row per slice file); "
        "dicom_series: the same DICOM folders + series.csv (series, slice_index, label, patient_id; "
        "slice_index in the reader's order, inferior to superior); nifti: <PatientID>.nii.gz "
        "(int16 HU, RAS affine with the pixel and slice spacing) + volumes.csv (volume, "
        "slice_index, label, patient_id). The manifest is written last.",
    )
    boxes: Literal["visible", "amodal"] = Field(
        "visible",
        description="Scenes: visible = the tight extent of an object's visible pixels (COCO's "
        "convention); amodal = the object's whole extent, occluded parts included, clipped to "
        "the frame (KITTI's convention: a car behind another is boxed to its full size).",
    )
    min_visible: float = Field(
        0.4, gt=0, le=1,
        description="Scenes: an object with fewer visible pixels than this fraction of its whole "
        "(unoccluded, unclipped) area is not drawn, so nothing drawn lacks a box.",
    )
    car_model: Literal["flat", "perspective"] = Field(
        "flat",
        description="road_scenes: flat = cars drawn as a rear, front or side view; perspective = "
        "cars as 3-D bodies seen through the scene's camera (a car beside the lane shows its "
        "rear and its side, as on a real road).",
    )
    parked_rows: float = Field(
        0.0, ge=0, le=1,
        description="road_scenes: chance that a scene has a row of cars parked along its right "
        "kerb (the left kerb: 0.7 times that): nose to tail, so they hide each other as in "
        "city streets.",
    )

    def unused_later_fields(self) -> set[str]:
        """Fields added later that hold the value which draws what was drawn before they existed:
        left out of dumps, so generated data and pretraining cache keys from before stay the same."""
        return {name for name, unused in _LATER_SYNTHETIC_FIELDS.items() if getattr(self, name) == unused}

    @model_validator(mode="after")
    def _check_scene_fields(self) -> SyntheticSpec:
        if self.generator != "road_scenes":
            for name in ("car_model", "parked_rows"):
                if getattr(self, name) != _LATER_SYNTHETIC_FIELDS[name]:
                    raise ValueError(f"{name} is for generator road_scenes, not '{self.generator}'")
        return self


#: SyntheticSpec fields added after data and caches were made, with the value that draws exactly
#: what was drawn before they existed.
_LATER_SYNTHETIC_FIELDS: dict[str, Any] = {"boxes": "visible", "min_visible": 0.4, "car_model": "flat",
                                           "parked_rows": 0.0}


class DatasetCard(StrictModel):
    """Where a dataset lives and how to read it."""

    schema_version: Literal[1] = Field(description="Dataset card schema version; currently 1.")
    name: StrictStr = Field(description="Dataset name; equals the folder name under datasets/.")
    description: StrictStr = Field("", description="What the data is.")
    format: Literal["image_folder", "csv", "dicom", "dicom_series", "nifti", "coco", "voc", "yolo", "kitti"] = Field(
        description="Detection formats (boxes): coco: annotations is a COCO JSON (bbox [x,y,w,h] "
        "px; file_name relative to images); voc: annotations is a folder of Pascal VOC .xml; "
        "yolo: annotations is a folder of <image stem>.txt (class x_c y_c w h, normalised; class "
        "index into classes); kitti: annotations is a label_2 folder of <image stem>.txt. "
        "Classification formats: image_folder: <path>/<class>/<images>; csv: a manifest (see manifest, columns); "
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
    annotations: StrictStr | None = Field(
        None,
        description="Detection formats: the COCO JSON file (coco) or the folder of label files "
        "(voc, yolo, kitti), relative to path.",
    )
    images: StrictStr = Field(
        "images", description="Detection formats: the folder holding the images, relative to path."
    )
    columns: ColumnMap = Field(
        default_factory=ColumnMap,
        description="Manifest columns (format csv; for dicom_series/nifti only label and group are used).",
    )
    classes: list[StrictStr] = Field(
        min_length=1,
        description="Label values as they appear in the data (classification: at least 2; "
        "detection: the box class names).",
    )
    class_map: dict[StrictStr, StrictStr] = Field(
        default_factory=dict,
        description="Data label -> task class (keep or merge, e.g. Van: car). For detection the "
        "target may also be 'ignore' (an ignore region: neither an object to find nor a false "
        "positive, e.g. DontCare) or 'drop' (the boxes are removed, counted in the data report). "
        "Empty when the data uses the task's class names.",
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
        if self.format not in DETECTION_FORMATS and len(self.classes) < 2:
            raise ValueError(f"format '{self.format}' classifies images: classes needs at least 2 values. Got {self.classes}")
        if self.format in DETECTION_FORMATS and not self.annotations:
            raise ValueError(
                f"format '{self.format}' needs annotations: <{'file.json' if self.format == 'coco' else 'folder'}> "
                "(relative to path)"
            )
        if self.synthetic is not None:
            det = self.synthetic.generator != "ct_phantom"
            if det != (self.format in DETECTION_FORMATS):
                raise ValueError(
                    f"generator '{self.synthetic.generator}' writes "
                    f"{'COCO boxes (format: coco)' if det else 'CT slices (format: csv, dicom_series or nifti)'}, "
                    f"not format '{self.format}'"
                )
        unknown = [k for k in self.class_map if k not in self.classes]
        if unknown:
            raise ValueError(f"class_map keys {unknown} are not in classes {self.classes}")
        if self.root == "generated" and self.synthetic is None:
            raise ValueError("root 'generated' needs a synthetic: section saying how to generate it")
        return self

    def task_label(self, data_label: str) -> str:
        """Map a label value from the data to the task's class name (or 'ignore' / 'drop')."""
        return self.class_map.get(data_label, data_label)

    @property
    def is_detection(self) -> bool:
        """Whether the dataset holds boxes."""
        return self.format in DETECTION_FORMATS


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


def find_card(ref: str, folder: str, filename: str, root: Path, referrer: str) -> Path:
    """A card file by name (``<root>/<folder>/<ref>/<filename>``) or path, or a CardError naming the referrer and listing the known cards."""
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
    pretrain_dataset: DatasetCard | None = None
    pretrain_dataset_path: Path | None = None
    #: Every fold's start weights (pretrain stage or model.weights), set by the run before the folds.
    start_weights: str | None = None

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
    task_path = find_card(recipe.task, "tasks", "task.yaml", root, str(recipe_path))
    ds_path = find_card(recipe.dataset, "datasets", "dataset.yaml", root, str(recipe_path))
    task = load_task_card(task_path)
    ds = load_dataset_card(ds_path)
    problems: list[Problem] = []
    det_task = task.kind == "object_detection"
    if det_task != ds.is_detection:
        problems.append(
            Problem(
                "format",
                f"task '{task.name}' is {task.kind}, but {ds_path} has format '{ds.format}' "
                f"({'boxes' if ds.is_detection else 'image labels'}); pair detection tasks with "
                f"coco/voc/yolo/kitti datasets and classification tasks with the others",
            )
        )
    if det_task and recipe.model.detector is None:
        problems.append(
            Problem("model.detector", f"task '{task.name}' is object_detection: set model.detector "
                    "(e.g. {architecture: yolov8, size: tiny})")
        )
    if not det_task and recipe.model.detector is not None:
        problems.append(
            Problem("model.detector", f"task '{task.name}' is {task.kind}: remove model.detector")
        )
    if det_task and recipe.final.mode == "average":
        problems.append(
            Problem("final.mode", f"task '{task.name}' is object_detection: 'average' (the mean of the fold "
                    "models' scores) is for classification; use refit or best_fold")
        )
    if not det_task and recipe.export.int8_float_layers:
        problems.append(
            Problem("export.int8_float_layers", f"task '{task.name}' is {task.kind}: keeping layers float in "
                    "the int8 file is for detectors so far; remove it")
        )
    if det_task and recipe.input.reencode is not None:
        problems.append(
            Problem("input.reencode", f"task '{task.name}' is object_detection: format normalisation is "
                    "for classification (a resample would move the boxes); remove input.reencode")
        )
    special = {IGNORE, DROP} if ds.is_detection else set()
    mapped = {ds.task_label(c) for c in ds.classes} - special
    for c in sorted(mapped - set(task.classes)):
        problems.append(
            Problem(
                "classes",
                f"data class '{c}' is not a class of task '{task.name}' ({list(task.classes)}).{did_you_mean(c, task.classes)} "
                f"Map it with class_map: {{{c}: <task class>}} in {ds_path}",
            )
        )
    for c in sorted(set(task.classes) - mapped):
        if det_task:
            continue  # a detection dataset may lack a task class (then its AP is reported as absent)
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
    pre_card, pre_path = None, None
    if recipe.pretrain is not None:
        pre_path = find_card(recipe.pretrain.dataset, "datasets", "dataset.yaml", root, str(recipe_path))
        pre_card = load_dataset_card(pre_path)
        problems += check_pretrain_card(Resolved(recipe, task, ds, recipe_path, task_path, ds_path, pre_card, pre_path))
    if problems:
        raise CardError(
            f"recipe does not fit task '{task.name}' ({task_path}) and dataset '{ds.name}' ({ds_path})",
            file=str(recipe_path),
            problems=problems,
        )
    return Resolved(recipe, task, ds, recipe_path, task_path, ds_path, pre_card, pre_path)


def load_resolved(recipe_path: str | Path, overrides: list[str] | None = None) -> Resolved:
    """Load a recipe with overrides and resolve its cards (the start of every command)."""
    from lepton_vision.config.recipe import load_recipe

    return resolve(load_recipe(recipe_path, overrides), recipe_path)


def card_dict(card: Any) -> dict[str, Any]:
    """A card as a plain JSON-able dict (for bundle.json and reports)."""
    return card.model_dump(mode="json")


def check_pretrain_card(resolved: Any) -> list[Problem]:
    """Problems with ``pretrain.dataset`` for this task (empty when it fits)."""
    card = resolved.pretrain_dataset
    if card is None:
        return []
    if card.synthetic is None:
        return [Problem("pretrain.dataset", f"dataset '{card.name}' is not generated (its card has no "
                        "synthetic: section); pretraining streams generated images. Use synthetic_street, "
                        "synthetic_road or synthetic_ct")]
    gen = card.synthetic.generator
    det = resolved.task.kind == "object_detection"
    if det != (gen != "ct_phantom"):
        want = "street_scenes or road_scenes (boxes)" if det else "ct_phantom (slice labels)"
        return [Problem("pretrain.dataset", f"generator '{gen}' of '{card.name}' does not fit task "
                        f"'{resolved.task.name}' ({resolved.task.kind}); it needs {want}")]
    return []


def recipe_anchor(run_root: Path) -> Path:
    """Where card names in a run's recipe are resolved from: the recipe file that started the
    run (run.json), so a run re-resolves against the project that made it."""
    import json

    info_path = Path(run_root) / "run.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return Path(info.get("recipe_path", Path(run_root) / "recipe.resolved.yaml"))


def resolve_run(run: Any) -> Resolved:
    """The resolved recipe of a finished (or interrupted) run directory (a :class:`RunDir`)."""
    from lepton_vision.config.recipe import recipe_from_text

    recipe = recipe_from_text(run.recipe.read_text(), file=str(run.recipe))
    return resolve(recipe, recipe_anchor(run.root))

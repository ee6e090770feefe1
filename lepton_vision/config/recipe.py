"""Recipe schema (pydantic v2), YAML loading with line numbers, and ``--set`` overrides.

A recipe is one experiment: which task and dataset, the input, augmentation, model, training
schedule, cross-validation, evaluation policy, final model and export. Every field is described
(``lepton-vision recipe schema`` prints the JSON Schema). Unknown keys are refused with a
"did you mean" suggestion; the whole recipe is re-validated after overrides.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from lepton_vision.config.errors import Problem, RecipeError, did_you_mean, format_choices
from lepton_vision.config.yamlfile import YamlDoc, load_yaml, load_yaml_text, render_path

SCHEMA_VERSION = 1

#: Every backbone a recipe may name (``model.backbone``); the factories are in
#: :mod:`lepton_vision.models.backbones`, which checks it builds exactly these.
BACKBONE_NAMES: tuple[str, ...] = (
    "small_cnn",
    "cnn6",
    "mobilenet_v3_small",
    "mobilenet_v2",
    "efficientnet_b0",
)

#: HU windows (level, width) for CT. Lung is the default for chest screening.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "soft_tissue": (50.0, 350.0),
}


class StrictModel(BaseModel):
    """Base of every recipe and card section: unknown keys are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Window(StrictModel):
    """A CT intensity window: Hounsfield units from level - width/2 to level + width/2 map to 0..255."""

    preset: Literal["lung", "mediastinum", "bone", "soft_tissue", "custom"] = Field(
        "lung", description="Named window; 'custom' uses level and width."
    )
    level: float | None = Field(None, description="Window centre in HU (only with preset: custom).")
    width: float | None = Field(
        None, gt=0, description="Window width in HU, > 0 (only with preset: custom)."
    )

    @model_validator(mode="after")
    def _check(self) -> Window:
        if self.preset == "custom":
            if self.level is None or self.width is None:
                raise ValueError("preset 'custom' needs both level and width (in HU)")
        elif self.level is not None or self.width is not None:
            raise ValueError(
                f"level/width are only used with preset: custom (preset is '{self.preset}'); "
                "remove them or set preset: custom"
            )
        return self

    def level_width(self) -> tuple[float, float]:
        """Return (level, width) in HU."""
        if self.preset == "custom":
            assert self.level is not None and self.width is not None  # checked above
            return float(self.level), float(self.width)
        return WINDOW_PRESETS[self.preset]


class ReencodeSpec(StrictModel):
    """Remove a file-format signal (e.g. one class stored as JPEG, the other as PNG).

    After decoding (and the CT window), every image is resampled to one size and/or encoded and
    decoded again through one codec at one quality, before the network's own resize. Applied
    identically in training, evaluation, the export's checks and the Predictor (the exported
    SavedModel takes the re-encoded image: the documented pre-step,
    ``lepton_vision.data.preprocess.reencode``; bundle.json ``input.reencode``).
    """

    codec: Literal["jpeg", "png", "none"] = Field(
        "jpeg", description="jpeg: every image gets the same JPEG history (the same quantisation); "
        "png: lossless (only the size is made equal); none: no encoding, only the resampling.")
    quality: int = Field(90, ge=1, le=100, description="JPEG quality (libjpeg scale) of the re-encoding.")
    size: tuple[Annotated[int, Field(ge=16, le=4096)], Annotated[int, Field(ge=16, le=4096)]] | None = Field(
        None, description="[height, width] every image is resampled to first (area interpolation), so "
        "that the stored resolution carries no signal; null: keep each image's size.")


class InputSpec(StrictModel):
    """What the network sees."""

    image_size: tuple[Annotated[int, Field(ge=16, le=2048)], Annotated[int, Field(ge=16, le=2048)]] = (
        Field((128, 128), description="Network input [height, width] in pixels; images are resized to it (bilinear).")
    )
    channels: Literal[1, 3] = Field(
        3, description="1 = grayscale input, 3 = RGB. Grayscale is tiled to 3 channels for ImageNet weights."
    )
    letterbox: bool = Field(
        True,
        description="Object detection: resize keeping the aspect ratio and pad (grey 114) to "
        "image_size; boxes are mapped back to original pixels outside the model. Classification "
        "always resizes to image_size.",
    )
    window: Window | list[Window] = Field(
        default_factory=Window,
        description="CT window applied to Hounsfield-unit pixels (DICOM, NIfTI) before the network "
        "(ignored for 8-bit images). A list of exactly 3 windows (e.g. lung, mediastinum, bone) "
        "gives three channels, one window each (needs channels: 3).",
    )

    @model_validator(mode="after")
    def _check_windows(self) -> InputSpec:
        if isinstance(self.window, list):
            if len(self.window) != 3:
                raise ValueError(
                    f"window: a list must hold exactly 3 windows (one per channel). Got {len(self.window)}"
                )
            if self.channels != 3:
                raise ValueError("window: three windows make three channels; set channels: 3")
        return self

    reencode: ReencodeSpec | None = Field(
        None, description="Format normalisation (classification): resample every image to one size "
        "and/or re-encode it through one codec and quality before the network, in training, "
        "evaluation and the Predictor. null: images as stored.")

    def reencode_spec(self) -> dict[str, Any] | None:
        """``input.reencode`` as the plain dict bundle.json and :func:`preprocess.reencode` take."""
        return None if self.reencode is None else self.reencode.model_dump(mode="json")

    def window_spec(self) -> tuple[float, float] | tuple[tuple[float, float], ...]:
        """(level, width) in HU, or one (level, width) per channel for multi-window input."""
        if isinstance(self.window, list):
            return tuple(w.level_width() for w in self.window)
        return self.window.level_width()


class AugmentOp(StrictModel):
    """One albumentations transform, validated by building it."""

    name: StrictStr = Field(description="albumentations transform class name, e.g. HorizontalFlip.")
    p: float = Field(0.5, ge=0.0, le=1.0, description="Probability of applying the transform.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the transform (see albumentations docs)."
    )


#: Detector sizes: YOLOv8 backbone channels per stage, blocks per stage, and FPN depth. "tiny"
#: and "xs" train on a 2-core CPU; n/s/m/l are the usual YOLOv8 scales for a GPU.
#: Largest stride of the YOLOv8 heads: a detector's input height and width must be multiples of it.
DETECTOR_STRIDE = 32

DETECTOR_SIZES: dict[str, tuple[tuple[int, int, int, int], tuple[int, int, int, int], int]] = {
    "tiny": ((16, 32, 64, 128), (1, 1, 1, 1), 1),
    "xs": ((32, 64, 128, 256), (1, 2, 2, 1), 1),
    "n": ((32, 64, 128, 256), (1, 2, 2, 1), 1),
    "s": ((64, 128, 256, 512), (1, 2, 2, 1), 1),
    "m": ((96, 192, 384, 576), (2, 4, 4, 2), 2),
    "l": ((128, 256, 512, 512), (3, 6, 6, 3), 3),
}


class DetectorSpec(StrictModel):
    """The object detector (object_detection tasks only)."""

    architecture: Literal["yolov8"] = Field(
        "yolov8",
        description="yolov8: keras-cv YOLOv8 (anchor-free; CIoU box loss, BCE class loss, optional "
        "DFL). The only detector so far: a keras-hub RetinaNet would be one more adapter "
        "(lepton_vision/models/detectors.py).",
    )
    size: Literal["tiny", "xs", "n", "s", "m", "l"] = Field(
        "tiny",
        description="Model scale: tiny (~1 M parameters, CPU), xs/n, s (GPU), m, l (large GPU).",
    )
    max_boxes: int = Field(
        64, ge=1, le=1000,
        description="Ground-truth boxes per training image (padding length); images with more "
        "keep the largest ones and the number cut is reported.",
    )
    box_loss_weight: float = Field(7.5, gt=0, description="Weight of the CIoU box loss (YOLOv8).")
    class_loss_weight: float = Field(0.5, gt=0, description="Weight of the classification loss (YOLOv8).")
    dfl_loss_weight: float = Field(
        0.0, ge=0,
        description="Weight of YOLOv8's distribution focal loss on the box-edge distance bins "
        "(Ultralytics uses 1.5; keras-cv trains without it). 0: off.",
    )
    head_bias_init: Literal["zeros", "prior"] = Field(
        "zeros",
        description="Initial biases of the head's last convolutions. zeros: keras-cv's (every anchor "
        "starts at class score 0.5); prior: Ultralytics' (class logits at log(5 / classes / (640 / "
        "stride)^2), about 5 objects per 640-pixel image, box logits 1.0), so the first steps are not "
        "spent pushing thousands of background anchors down.",
    )
    min_box_size: float = Field(
        2.0, ge=0,
        description="Boxes narrower or shorter than this many pixels after augmentation and "
        "letterboxing are dropped from the training target (counted).",
    )


class ModelSpec(StrictModel):
    """The network."""

    detector: DetectorSpec | None = Field(
        None, description="Object detector settings; required for object_detection tasks (backbone/dropout/width are then unused)."
    )

    backbone: StrictStr = Field(
        "small_cnn",
        description="Backbone name: small_cnn, cnn6, mobilenet_v3_small, mobilenet_v2, efficientnet_b0.",
    )
    weights: StrictStr = Field(
        "none",
        description="Start point of every fold: 'none' (random init, or the pretrain stage's weights "
        "when the recipe has one), 'imagenet' (classifiers; Keras download/cache), a Keras "
        ".weights.h5 file, a legacy keras.applications ImageNet *_no_top.h5 file already on disk "
        "(classifiers; loaded by layer name), or a previous run's export/ (or run) directory, whose model.keras is "
        "used. The whole model is loaded when it fits, else its backbone (what was loaded is "
        "recorded in start_weights.json and bundle.json).",
    )
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout before the classification head.")
    width: float = Field(
        1.0, gt=0, le=4.0, description="Width multiplier (small_cnn/cnn6 filters, MobileNet alpha)."
    )

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        if v not in BACKBONE_NAMES:
            raise ValueError(
                f"unknown backbone '{v}'.{did_you_mean(v, BACKBONE_NAMES)} "
                f"Valid: {format_choices(BACKBONE_NAMES)}"
            )
        return v


class Optimizer(StrictModel):
    """Optimizer and gradient clipping."""

    name: Literal["adam", "adamw", "sgd"] = Field("adam", description="Optimizer.")
    learning_rate: float = Field(1.0e-3, gt=0, le=10.0, description="Peak learning rate (after warm-up).")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay (adamw, sgd).")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum (sgd only).")
    clipnorm: float | None = Field(
        1.0, gt=0, description="Clip each gradient to this L2 norm; null disables clipping."
    )
    global_clipnorm: float | None = Field(
        None, gt=0,
        description="Clip all gradients together to this L2 norm (null: off). Detectors need it: "
        "their first losses are in the hundreds, and without it Adam's second-moment estimate is "
        "inflated for ~1000 steps (measured on USC pedestrians: val AP50 0.16 vs 0.68 after 30 "
        "epochs). Use it instead of clipnorm, not with it.",
    )
    ema_momentum: float | None = Field(
        None, gt=0, lt=1,
        description="Keep an exponential moving average of the weights with this momentum (e.g. "
        "0.99; null: off). Each epoch's validation, the best-epoch choice, the refit and the "
        "export use the averaged weights. Folds only: pretraining keeps its last weights.",
    )

    @model_validator(mode="after")
    def _one_clip(self) -> Optimizer:
        if self.global_clipnorm is not None and self.clipnorm is not None:
            raise ValueError("set either clipnorm or global_clipnorm (the other to null), not both")
        return self


class Schedule(StrictModel):
    """Learning-rate schedule."""

    name: Literal["constant", "cosine", "reduce_on_plateau"] = Field(
        "cosine", description="cosine: linear warm-up then cosine decay to 0; reduce_on_plateau on val AUC."
    )
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warm-up length in epochs (cosine).")
    factor: float = Field(0.5, gt=0, lt=1, description="LR multiplier on plateau (reduce_on_plateau).")
    patience: int = Field(2, ge=1, description="Epochs without improvement before reducing the LR.")


class EarlyStopping(StrictModel):
    """Early stopping on validation AUC; the best epoch's weights are restored."""

    enabled: bool = Field(True, description="Stop when validation AUC stops improving.")
    patience: int = Field(5, ge=1, description="Epochs without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest AUC change that counts as improvement.")


class Resources(StrictModel):
    """What one fold (``executor: ray``) or one sweep trial asks the Ray cluster for."""

    cpus: float = Field(
        1.0, gt=0, le=1024,
        description="CPU cores reserved per fold task (executor: ray) and per sweep trial; Ray "
        "starts no more tasks on a node than its cores allow.",
    )
    gpus: float = Field(
        0.0, ge=0, le=64,
        description="GPUs per fold task / sweep trial (Ray sets CUDA_VISIBLE_DEVICES); with more "
        "than one the fold trains under MirroredStrategy (train.strategy: auto). Fractions share a GPU.",
    )


class RaySpec(StrictModel):
    """The Ray cluster of ``train.executor: ray`` (and of ``lepton-vision tune``)."""

    address: StrictStr | None = Field(
        None,
        description="Cluster to join: null = $RAY_ADDRESS if set, else a private Ray started on "
        "this machine (loopback only, stopped at the end); 'auto' = the cluster started here with "
        "`ray start`; or the head node's host:port (ray://host:10001 for Ray Client).",
    )
    retries: int = Field(
        1, ge=0, le=10,
        description="A failed fold task is submitted again this many times; every failure is "
        "reported. Data errors (the same on every try) are not retried.",
    )
    artifacts: Literal["auto", "shared", "return"] = Field(
        "auto",
        description="How fold files reach the run directory: shared = workers write into it "
        "(storage mounted at the same path on every node); return = workers send them back to the "
        "driver; auto = shared when the worker sees the run directory, else return.",
    )


class Finetune(StrictModel):
    """How a fold adapts a start point (``pretrain:`` or ``model.weights``) to the real data."""

    freeze_backbone_epochs: float = Field(
        0.0, ge=0,
        description="The backbone's weights stay fixed for this many epochs at the start of each "
        "fold (the head, and a detector's neck, adapt first); then everything trains. BatchNorm "
        "statistics keep adapting.",
    )
    backbone_lr_scale: float = Field(
        1.0, ge=0, le=10,
        description="Layer-wise learning rate: the backbone learns at this multiple of "
        "train.optimizer.learning_rate (the head at 1x). 0 keeps the backbone frozen throughout.",
    )

    def active(self) -> bool:
        """True when anything differs from plain training."""
        return self.freeze_backbone_epochs > 0 or self.backbone_lr_scale != 1.0


class TrainSpec(StrictModel):
    """How each fold is fitted."""

    epochs: int = Field(20, ge=1, le=10000, description="Maximum epochs per fold.")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per step.")
    optimizer: Optimizer = Field(default_factory=Optimizer, description="Optimizer settings.")
    schedule: Schedule = Field(default_factory=Schedule, description="Learning-rate schedule.")
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping, description="Early stopping.")
    class_weight: Literal["balanced", "none"] = Field(
        "balanced", description="'balanced' weights classes by inverse frequency in the training folds."
    )
    cache: bool = Field(True, description="Keep decoded, resized images in memory across epochs.")
    verbose: bool = Field(True, description="Show a progress bar per epoch.")
    executor: Literal["local", "ray"] = Field(
        "local",
        description="local: the folds run one after the other in this process; ray: each fold is a "
        "Ray task with train.resources on the cluster of train.ray (pip install "
        "'lepton-vision[ray]'). Same seed: same folds and, on CPU, the same metrics.",
    )
    resources: Resources = Field(default_factory=Resources, description="Per fold task / trial (Ray).")
    ray: RaySpec = Field(default_factory=RaySpec, description="Ray cluster and retries (executor: ray, tune).")
    strategy: Literal["auto", "one_device", "mirrored"] = Field(
        "auto",
        description="Within a fold: auto = MirroredStrategy when more than one GPU is visible, else "
        "one device; one_device; mirrored = MirroredStrategy over every visible GPU (or the CPU).",
    )
    batch_scaling: Literal["per_replica", "global"] = Field(
        "per_replica",
        description="With several replicas (mirrored): per_replica = batch_size images per GPU, "
        "global batch = batch_size x replicas; global = batch_size split across the replicas. The "
        "learning rate is not changed; folds/<k>/result.json records the global batch.",
    )
    mixed_precision: Literal["auto", "off"] = Field(
        "auto", description="auto: float16 compute (mixed_float16) on GPU, float32 on CPU; off: float32 everywhere."
    )
    finetune: Finetune = Field(
        default_factory=Finetune,
        description="Freezing and layer-wise learning rates when folds start from pretrained "
        "weights (warm-up: train.schedule.warmup_epochs).",
    )
    threads: int = Field(
        0, ge=0, le=1024,
        description="TensorFlow intra-op threads of each training process (0 = TensorFlow's default: "
        "every core). CPU scores differ in the 7th digit between thread counts, so local and Ray "
        "folds use this same value; with several fold tasks per machine set it to train.resources.cpus.",
    )


class PretrainSpec(StrictModel):
    """Pretraining on generated data before the folds (once; cached by content hash)."""

    dataset: StrictStr = Field(
        description="A dataset card with a synthetic: section (synthetic_street, synthetic_road, "
        "synthetic_ct, or a path to such a dataset.yaml); its frames are generated on the fly, "
        "never written to disk."
    )
    images: int = Field(
        20000, ge=8, le=10_000_000,
        description="Size knob: how many generated images the model trains on, each one new "
        "(rendered in worker processes while the model trains).",
    )
    images_per_epoch: int = Field(
        2000, ge=8,
        description="Images per pretraining epoch (progress line, history row, learning-rate "
        "bookkeeping). Memory holds about two epochs of images.",
    )
    randomization: float = Field(
        1.0, ge=0, le=1,
        description="Domain randomisation strength of the generator (0 = the embedded default "
        "data's look; 1 = widest camera, lighting, texture, blur/noise, occlusion, class balance; "
        "CT: anatomy and scanner variation).",
    )
    frame_size: tuple[Annotated[int, Field(ge=32, le=4096)], Annotated[int, Field(ge=32, le=4096)]] | None = Field(
        None,
        description="Scenes: rendered frame [width, height] before letterboxing into the "
        "pretraining input (pretrain.image_size, else input.image_size; null: the card's "
        "frame_size). CT: ignored (the card's image_size).",
    )
    image_size: tuple[Annotated[int, Field(ge=16, le=2048)], Annotated[int, Field(ge=16, le=2048)]] | None = Field(
        None,
        description="Network input [height, width] while pretraining (null: input.image_size). "
        "A smaller size pretrains faster; the folds then fine-tune at input.image_size (a "
        "convolutional network's weights fit any input size). Part of the cache key.",
    )
    sequence_length: int | None = Field(
        None, ge=1,
        description="Scenes: frames sharing one background (null: 1, every frame a new scene).",
    )
    epochs_per_image: int = Field(
        1, ge=1, le=100,
        description="Times each generated image is trained on (with the recipe's augmentation); "
        "1 = every step sees new images.",
    )
    batch_size: int | None = Field(None, ge=1, le=4096, description="Pretraining batch (null: train.batch_size).")
    learning_rate: float | None = Field(
        None, gt=0, le=10, description="Peak learning rate (null: train.optimizer.learning_rate)."
    )
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warm-up (pretraining epochs), then cosine decay to 0.")
    validation_images: int = Field(
        256, ge=0, le=100000,
        description="Generated images (disjoint from the training stream) scored after "
        "pretraining: AUC or AP50 on synthetic data, recorded in pretrain.json.",
    )
    workers: int | None = Field(
        None, ge=0, le=256,
        description="Processes rendering images while the model trains (null: one per core beyond "
        "the first, at least 1; 0: render in the training process, one epoch after another).",
    )
    seed: int | None = Field(None, ge=0, description="Generator and weight seed (null: the recipe's seed).")
    cache_dir: StrictStr | None = Field(
        None,
        description="Where pretrained weights are kept, one folder per content hash (null: "
        "$LEPTON_CACHE_DIR/pretrain, else ~/.cache/lepton-vision/pretrain).",
    )


class CVSpec(StrictModel):
    """Cross-validation."""

    n_splits: int = Field(5, ge=2, le=50, description="Number of folds.")
    strategy: Literal["auto", "stratified", "stratified_group"] = Field(
        "auto",
        description="auto = stratified_group when the dataset card declares a group column, else stratified.",
    )
    folds: list[int] | None = Field(
        None,
        description="Train and score only these folds (numbers as printed, 1..n_splits; at least two, so "
        "thresholds stay cross-fitted); null = all. The splits are the same as with every fold, the "
        "metrics are out of fold on those folds' images only (metrics.json cv_subset says which), and "
        "the final model still uses every image. For a CPU budget: e.g. n_splits 5, folds [1, 2] and "
        "final refit trains 2 x 80 % + 100 % of the data instead of 5 x 80 % + 100 %.",
    )

    @model_validator(mode="after")
    def _check_folds(self) -> CVSpec:
        if self.folds is not None:
            bad = [k for k in self.folds if not 1 <= k <= self.n_splits]
            if bad:
                raise ValueError(f"folds: {bad} not between 1 and n_splits ({self.n_splits})")
            if len(set(self.folds)) != len(self.folds):
                raise ValueError(f"folds: {self.folds} names a fold twice")
            if len(self.folds) < 2:
                raise ValueError(f"folds: {self.folds}: name at least two folds (thresholds are chosen on "
                                 "the other folds' out-of-fold scores), or null for all")
        return self

    def fold_indices(self) -> list[int]:
        """The folds to train and score, 0-based, in order."""
        return sorted(k - 1 for k in self.folds) if self.folds is not None else list(range(self.n_splits))


class Threshold(StrictModel):
    """How the operating threshold is chosen (never on the fold it is scored on)."""

    policy: Literal["max_f1", "youden", "min_sensitivity", "min_specificity", "fixed"] = Field(
        description="max_f1, youden (max sens+spec-1), min_sensitivity/min_specificity (value = target), fixed (value = threshold)."
    )
    value: float | None = Field(
        None, ge=0, le=1, description="Target for min_sensitivity/min_specificity, or the threshold for fixed."
    )

    @model_validator(mode="after")
    def _check(self) -> Threshold:
        needs = self.policy in ("min_sensitivity", "min_specificity", "fixed")
        if needs and self.value is None:
            raise ValueError(f"policy '{self.policy}' needs a value between 0 and 1")
        if not needs and self.value is not None:
            raise ValueError(f"policy '{self.policy}' takes no value; remove it")
        return self


class PatientAggregation(StrictModel):
    """How slice scores of one group (patient) become one patient score."""

    method: Literal["max", "mean", "top_k_mean"] = Field(
        "max",
        description="max (a patient is as suspicious as its worst slice), mean, or top_k_mean (mean of the k highest slice scores).",
    )
    k: int | None = Field(
        None, ge=1, description="Slices averaged by top_k_mean (default 3; fewer when a patient has fewer slices); only with top_k_mean."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_k(cls, data: Any) -> Any:
        # k defaults to 3 only for top_k_mean, so a dumped recipe (k: null for max/mean) reloads.
        if isinstance(data, dict) and data.get("method") == "top_k_mean" and data.get("k") is None:
            return {**data, "k": 3}
        return data

    @model_validator(mode="after")
    def _check(self) -> PatientAggregation:
        if self.method != "top_k_mean" and self.k is not None:
            raise ValueError(f"k is only used with method top_k_mean (method is '{self.method}'); remove it")
        return self


class EvaluateSpec(StrictModel):
    """Metrics and confidence intervals."""

    threshold: Threshold | None = Field(
        None, description="Operating-point policy; null uses the task card's policy."
    )
    n_bootstrap: int = Field(1000, ge=0, le=100000, description="Bootstrap resamples for CIs (0 = no CIs).")
    ci: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence level of the intervals.")
    patient_aggregation: PatientAggregation = Field(
        default_factory=PatientAggregation,
        description="Patient-level metrics: how a group's slice scores are combined (used when the dataset has groups).",
    )
    calibration_bins: int = Field(
        10, ge=2, le=50, description="Equal-width score bins for the reliability diagram and the expected calibration error."
    )
    temperature_scaling: bool = Field(
        False,
        description="Fit a temperature T (score = sigmoid(logit(p) / T)); reported cross-fitted over folds and applied in the export.",
    )


class FinalSpec(StrictModel):
    """The model that gets exported."""

    mode: Literal["refit", "best_fold", "average"] = Field(
        "refit", description="refit: train on all data for the median best epoch; best_fold: the fold model with "
        "the best val AUC; average (classification): one model whose score is the mean of the k fold models' "
        "scores (k times the compute per image, no refit)."
    )


class ExportSpec(StrictModel):
    """Export formats and the parity check."""

    formats: list[Literal["saved_model", "tflite", "tflite_int8", "onnx"]] = Field(
        default_factory=lambda: ["saved_model", "tflite", "tflite_int8"],
        description="Artefacts to write under export/: saved_model (required), tflite (float32), "
        "tflite_int8 (int8, calibrated on training images, its metric change measured), onnx "
        "(needs the [onnx] extra; kept only when onnxruntime loads it and it matches).",
    )
    parity_atol: float = Field(
        1.0e-4, gt=0, description="Largest allowed score difference Keras vs SavedModel vs TFLite float vs ONNX."
    )
    parity_samples: int = Field(32, ge=1, description="Real samples used for the parity check.")
    int8_calibration_samples: int = Field(
        64, ge=1, description="Training images (frames) in the int8 representative dataset."
    )
    int8_eval_samples: int = Field(
        512, ge=1, description="Labelled images (detection: frames) re-scored through the int8 model to measure its metric change."
    )
    int8_max_drop: float = Field(
        0.02, ge=0, le=1,
        description="Largest acceptable drop of ROC AUC (classification) or AP50 (detection) from float32 to int8; "
        "beyond it the run warns and bundle.json marks model_int8.tflite recommended: false.",
    )
    int8_float_layers: list[StrictStr] = Field(
        default_factory=list,
        description="Detection: layers of the network kept float32 in model_int8.tflite, by part of "
        "their name (e.g. yolo_v8_head: the whole head; _3_conv: the last box and class convolutions). "
        "Letterbox, box decoding and NMS are always float32. Empty: the whole network in int8.",
    )
    ood_false_flag_rate: float = Field(
        0.02, gt=0.0, lt=0.5,
        description="Share of held-back training images the out-of-distribution threshold flags (cross-fitted by "
        "group); higher catches more foreign inputs at the cost of more false flags (docs/results.md).",
    )

    @field_validator("formats")
    @classmethod
    def _saved_model_first(cls, v: list[str]) -> list[str]:
        if "saved_model" not in v:
            raise ValueError("formats must include saved_model (TFLite is converted from it)")
        return v


class TrackingSpec(StrictModel):
    """Where a run is recorded besides its run directory."""

    backend: Literal["none", "mlflow"] = Field(
        "none",
        description="none, or mlflow: params (the resolved recipe), per-fold and pooled metrics with "
        "CIs, report and export as artefacts, tags for task/dataset/git commit (pip install "
        "'lepton-vision[mlflow]').",
    )
    uri: StrictStr | None = Field(
        None,
        description="MLflow tracking URI, e.g. sqlite:////shared/mlflow.db or http://mlflow:5000; "
        "null = sqlite:///<run dir>/mlflow.db (artefacts in <run dir>/mlartifacts).",
    )
    experiment: StrictStr | None = Field(None, description="MLflow experiment name; null = the task name.")


#: Recipe fields that say where and how a run executes, not what it computes: ``--resume`` may
#: change them (a run interrupted on a workstation can be finished on a Ray cluster).
EXECUTION_FIELDS: tuple[str, ...] = (
    "train.executor", "train.resources", "train.ray", "tracking", "pretrain.workers", "pretrain.cache_dir",
)

#: Fields added after runs already existed, with the value that means "not used": a run directory
#: written before they existed resumes, because at these values they are left out of the hash.
_LATER_FIELDS: dict[str, Any] = {
    "pretrain": None,
    "pretrain.image_size": None,
    "input.reencode": None,
    "train.optimizer.ema_momentum": None,
    "model.detector.dfl_loss_weight": 0.0,
    "model.detector.head_bias_init": "zeros",
    "cv.folds": None,
    "export.int8_float_layers": [],
    "train.finetune": {"freeze_backbone_epochs": 0.0, "backbone_lr_scale": 1.0},
}


def result_sha256(recipe: Recipe) -> str:
    """Hash of the recipe without :data:`EXECUTION_FIELDS` (equal when the results must be equal)."""
    data = recipe.model_dump(mode="json")
    for dotted in EXECUTION_FIELDS:
        node = data
        *head, last = dotted.split(".")
        for part in head:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    drop_unused_later_fields(data)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def drop_unused_later_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Remove, in place, each :data:`_LATER_FIELDS` entry of a recipe dump (or of a part of one
    with the same nesting, e.g. ``{"model": ...}``) that holds its "unused" value, so hashes of
    recipes written before the field existed stay the same. Returns ``data``."""
    for dotted, unused in _LATER_FIELDS.items():
        node: Any = data
        *head, last = dotted.split(".")
        for part in head:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(last, unused) == unused:
            node.pop(last, None)
    return data


class AuditSpec(StrictModel):
    """The shortcut audit run before training (lepton_vision.evaluate.shortcuts)."""

    enabled: bool = Field(True, description="Fit metadata-only models (file format, JPEG quality, size, bit depth, "
                          "DICOM tags, intensity statistics, JPEG block pattern) on the run's folds and report how "
                          "well they predict the label; with input.reencode, again on what the model is given.")
    level: float = Field(0.65, gt=0.5, lt=1.0, description="Warn about a feature whose out-of-fold AUC CI lies "
                         "above this (its lower end exceeds it); its strata get their own metrics.")
    n_bootstrap: int = Field(300, ge=0, le=100000, description="Group-bootstrap resamples for the audit's CIs.")


class DataSpec(StrictModel):
    """How bad files in the dataset are handled, and the shortcut audit."""

    on_bad_file: Literal["error", "skip"] = Field(
        "error",
        description="error: stop and list every missing/unreadable file; skip: leave them out, "
        "counted and named in data_report.json and the report.",
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="Refuse images with more pixels than this (decompression bombs)."
    )
    audit: AuditSpec = Field(default_factory=AuditSpec, description="Shortcut audit: can metadata alone predict the label?")


class Recipe(StrictModel):
    """One experiment: task + dataset + how to train, validate and export."""

    schema_version: Literal[1] = Field(description="Recipe schema version; currently 1.")
    name: StrictStr = Field(description="Experiment name; the default run directory starts with it.")
    task: StrictStr = Field(description="Task card name (tasks/<task>/task.yaml) or a path to a task.yaml.")
    dataset: StrictStr = Field(
        description="Dataset card name (datasets/<name>/dataset.yaml) or a path to a dataset.yaml."
    )
    seed: int = Field(42, ge=0, description="One seed for folds, weights, augmentation and bootstrap.")
    data: DataSpec = Field(default_factory=DataSpec, description="Bad-file policy and shortcut audit.")
    input: InputSpec = Field(default_factory=InputSpec, description="Network input.")
    augment: list[AugmentOp] = Field(
        default_factory=list, description="albumentations transforms for training folds only, in order."
    )
    model: ModelSpec = Field(default_factory=ModelSpec, description="The network.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Fitting each fold.")
    pretrain: PretrainSpec | None = Field(
        None,
        description="Pretrain on generated data before the folds (run once, cached by content "
        "hash, reused by every fold and run); the folds start from its weights.",
    )
    cv: CVSpec = Field(default_factory=CVSpec, description="Cross-validation.")
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec, description="Metrics and CIs.")
    final: FinalSpec = Field(default_factory=FinalSpec, description="Final model.")
    export: ExportSpec = Field(default_factory=ExportSpec, description="Export.")
    tracking: TrackingSpec = Field(
        default_factory=TrackingSpec,
        description="Experiment tracker (TensorBoard logs are always in folds/<k>/tb); "
        "'tracking: mlflow' is short for {backend: mlflow}.",
    )

    @model_validator(mode="after")
    def _start_point(self) -> Recipe:
        if self.pretrain is not None and self.model.weights != "none":
            raise ValueError(
                f"pretrain and model.weights ({self.model.weights!r}) are two start points; "
                "keep one (model.weights: none with pretrain)"
            )
        if self.train.finetune.active() and self.pretrain is None and self.model.weights == "none":
            raise ValueError(
                "train.finetune freezes or slows the backbone, but the folds start from random "
                "weights; add a pretrain: stage or model.weights, or remove train.finetune"
            )
        return self

    @model_validator(mode="after")
    def _detector_input(self) -> Recipe:
        if self.model.detector is None:
            return self
        sizes = [("input.image_size", self.input.image_size)]
        if self.pretrain is not None and self.pretrain.image_size is not None:
            sizes.append(("pretrain.image_size", self.pretrain.image_size))
        for where, (h, w) in sizes:
            if h % DETECTOR_STRIDE or w % DETECTOR_STRIDE:
                def up(v: int) -> int:
                    return -(-v // DETECTOR_STRIDE) * DETECTOR_STRIDE

                raise ValueError(
                    f"{where}: a detector's input height and width must be multiples of "
                    f"{DETECTOR_STRIDE} (its largest stride). Got [{h}, {w}]; e.g. [{up(h)}, {up(w)}]"
                )
        return self

    @field_validator("tracking", mode="before")
    @classmethod
    def _tracking_shorthand(cls, v: Any) -> Any:
        return {"backend": v} if isinstance(v, str) else v

    def sha256(self) -> str:
        """Content hash of the validated recipe (order-independent)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------------------------
# Validation with file/line/path messages


def problems_from_validation(err: ValidationError, doc: YamlDoc, model: type[BaseModel]) -> list[Problem]:
    """Turn a pydantic ValidationError into line-numbered problems with suggestions."""
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = render_path(loc)
        kind = e["type"]
        if kind == "extra_forbidden":
            parent_fields = _fields_at(model, loc[:-1])
            key = str(loc[-1])
            msg = f"unknown key '{key}'.{did_you_mean(key, parent_fields)}"
            if parent_fields:
                msg += f" Valid keys here: {format_choices(parent_fields)}."
        elif kind == "missing":
            msg = "required field is missing."
            desc = _description_at(model, loc)
            if desc:
                msg += f" ({desc})"
        else:
            text = e["msg"]
            if text.startswith("Value error, "):
                text = text[len("Value error, ") :]
            msg = f"{text}."
            if "input" in e and kind not in ("model_type",) and not isinstance(e["input"], dict):
                msg += f" Got {e['input']!r}."
        if doc.from_override(loc):
            where += " (from --set)"
        problems.append(Problem(where, msg, line=doc.line_of(loc)))
    return problems


def _sub_model(annotation: Any) -> type[BaseModel] | None:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        m = _sub_model(arg)
        if m is not None:
            return m
    return None


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return None
        if isinstance(part, int):
            continue
        f = current.model_fields.get(str(part))
        if f is None:
            return None
        current = _sub_model(f.annotation)
    return current


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    m = _walk(model, loc)
    return list(m.model_fields) if m is not None else []


def _description_at(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    m = _walk(model, loc[:-1])
    if m is None:
        return None
    f = m.model_fields.get(str(loc[-1]))
    return f.description if f is not None else None


def validate_doc(doc: YamlDoc, model: type[BaseModel], what: str = "recipe") -> BaseModel:
    """Validate a parsed YAML document against ``model``, collecting all problems.

    Raises:
        RecipeError: With one line per problem (line number, YAML path, message).
    """
    if not isinstance(doc.data, dict):
        raise RecipeError(
            f"a {what} must be a YAML mapping (key: value lines), got {type(doc.data).__name__}",
            file=doc.file,
        )
    try:
        obj = model.model_validate(doc.data)
    except ValidationError as e:
        problems = problems_from_validation(e, doc, model)
        raise RecipeError(
            f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in this {what}",
            file=doc.file,
            problems=problems,
            hint=f"Fix the {what}, or try one value with --set, e.g. --set train.epochs=1. "
            "`lepton-vision recipe schema` lists every field.",
        ) from None
    return obj


def _augment_problems(recipe: Recipe, doc: YamlDoc) -> list[Problem]:
    if not recipe.augment:
        return []
    from lepton_vision.data.augment import MULTI_IMAGE, augment_problems

    ops = [op.model_dump() for op in recipe.augment]
    found = augment_problems(ops, channels=recipe.input.channels, image_size=recipe.input.image_size)
    if recipe.model.detector is None:
        found += [(("augment", i, "name"),
                   f"{op['name']} combines several training images and their boxes: only detection "
                   "recipes (model.detector) can use it")
                  for i, op in enumerate(ops) if op["name"] in MULTI_IMAGE]
    pre_size = recipe.pretrain.image_size if recipe.pretrain is not None else None
    if pre_size is not None and tuple(pre_size) != tuple(recipe.input.image_size):
        # Pretraining augments at its own input size: the transforms must keep that one too.
        seen = {loc for loc, _ in found}
        found += [(loc, f"{msg} (while pretraining at pretrain.image_size {list(pre_size)})")
                  for loc, msg in augment_problems(ops, channels=recipe.input.channels, image_size=pre_size)
                  if loc not in seen]
    return [
        Problem(render_path(loc) + (" (from --set)" if doc.from_override(loc) else ""), msg,
                line=doc.line_of(loc))
        for loc, msg in found
    ]


# --------------------------------------------------------------------------------------------
# Overrides


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """Parse ``a.b[2].c=value`` into a path and a YAML-typed value.

    Raises:
        RecipeError: When there is no ``=`` or the path is empty.
    """
    if "=" not in text:
        raise RecipeError(
            f"--set {text}: expected key=value, e.g. --set train.epochs=1",
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise RecipeError(f"--set {text}: the key before '=' is empty")
    path: list[str | int] = []
    for part in key.split("."):
        while "[" in part:
            head, rest = part.split("[", 1)
            if head:
                path.append(head)
            idx, part = rest.split("]", 1)
            try:
                path.append(int(idx))
            except ValueError:
                raise RecipeError(f"--set {text}: index [{idx}] is not an integer") from None
        if part:
            path.append(part)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise RecipeError(f"--set {text}: value is not valid YAML ({e})") from None
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str], doc: YamlDoc) -> None:
    """Apply ``--set`` overrides in place; unknown paths are reported by validation later."""
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise RecipeError(
                        f"--set {text}: {render_path(path[: i + 1])} does not exist "
                        f"(the list has {len(node) if isinstance(node, list) else 0} items)"
                    )
                node = node[part]
            else:
                if not isinstance(node, dict):
                    raise RecipeError(f"--set {text}: {render_path(path[:i])} is not a mapping")
                if part not in node or node[part] is None:
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise RecipeError(f"--set {text}: {render_path(path)} does not exist")
            node[last] = value
        else:
            if not isinstance(node, dict):
                raise RecipeError(f"--set {text}: {render_path(path[:-1])} is not a mapping")
            node[last] = value
        doc.overridden.add(render_path(path))


# --------------------------------------------------------------------------------------------
# Public API


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe file.

    Args:
        path: The recipe YAML file.
        overrides: ``key=value`` strings, applied in order before validation.

    Returns:
        The validated, frozen :class:`Recipe`.

    Raises:
        RecipeError: With file, line, YAML path, bad value and a fix for every problem found.

    Example:
        >>> r = load_recipe("recipes/ct_screening/baseline.yaml", ["train.epochs=1"])
    """
    doc = load_yaml(path)
    return recipe_from_doc(doc, overrides or [])


def recipe_from_text(text: str, overrides: list[str] | None = None, file: str = "<string>") -> Recipe:
    """Like :func:`load_recipe` for YAML text (used by tests and the resolved-recipe reader)."""
    return recipe_from_doc(load_yaml_text(text, file=file), overrides or [])


def recipe_from_doc(doc: YamlDoc, overrides: list[str]) -> Recipe:
    """Validate a parsed document (after overrides) into a :class:`Recipe`."""
    if overrides and isinstance(doc.data, dict):
        apply_overrides(doc.data, overrides, doc)
    recipe = validate_doc(doc, Recipe, "recipe")
    assert isinstance(recipe, Recipe)
    problems = _augment_problems(recipe, doc)
    if problems:
        raise RecipeError(
            f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in augment",
            file=doc.file,
            problems=problems,
            hint="See https://albumentations.ai/docs for each transform's parameters.",
        )
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (all defaults filled in)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def recipe_schema() -> dict[str, Any]:
    """JSON Schema of the recipe (for editors and ``lepton-vision recipe schema``)."""
    return Recipe.model_json_schema()

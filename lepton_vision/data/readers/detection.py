"""Detection datasets (COCO, Pascal VOC, YOLO, KITTI) -> the box sample table (contract D1).

Every format is parsed by one small function into :class:`Frame` records (one per image, with
its boxes as written in the file). :func:`read_detection_samples` then maps class names through
the dataset card, decodes every image once (to check it and to learn its true size), converts
boxes to ``[x1, y1, x2, y2]`` in original pixels, clips boxes that stick out of the image and
drops (and counts) boxes that cannot be used -- never silently.

Box conventions (continuous pixel coordinates, origin at the top-left corner of the image):

* COCO: ``bbox = [x, y, w, h]`` -> ``[x, y, x + w, y + h]``; ``iscrowd: 1`` is an ignore region.
  A per-image ``dontcare_boxes`` list of ``[x, y, w, h]`` (how the KITTI subset stores DontCare)
  gives ignore regions too.
* Pascal VOC: ``xmin..ymax`` are 1-based inclusive pixel indices, so
  ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` (a box covering only the first pixel,
  ``xmin = xmax = 1``, becomes ``[0, 0, 1, 1]``). ``<difficult>1`` is an ignore region.
* YOLO: ``class x_c y_c w h`` normalised by the decoded image size; the class is an index into
  the card's ``classes``.
* KITTI ``label_2``: ``left top right bottom`` are used as they are (float pixel coordinates).
  ``DontCare`` lines are ignore regions by default -- KITTI defines them as areas whose objects
  were deliberately not labelled, so a detection there is neither right nor wrong. List
  ``DontCare`` under ``classes`` to map it otherwise (e.g. ``drop``); the same default applies
  to COCO ``dontcare_boxes``.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lepton_vision.config.cards import DROP, IGNORE
from lepton_vision.config.errors import DataError, Problem, did_you_mean, format_choices
from lepton_vision.data.preprocess import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, read_image
from lepton_vision.data.readers.csv_manifest import read_manifest_csv
from lepton_vision.data.sampleset import BAD_FILE_HINT, MAX_LISTED, SampleSet, with_progress

if TYPE_CHECKING:
    import pandas as pd

    from lepton_vision.config.cards import DatasetCard, TaskCard

#: Columns of the detection sample table (contract D1), in this order.
DETECTION_COLUMNS = (
    "sample_id", "path", "label", "label_name", "group", "width", "height",
    "n_boxes", "boxes", "classes", "ignore",
)
#: KITTI's "not labelled on purpose" type; an ignore region unless the card maps it otherwise.
DONTCARE = "DontCare"
#: Why a box can be dropped (keys of counts["boxes_dropped"]).
DROP_REASONS = ("negative_size", "zero_size", "outside_image", "zero_area_after_clip", "class_drop")
MAX_EXAMPLES = 20
#: Decimal places kept in the table's box coordinates (1e-4 px; hides float noise from YOLO).
BOX_DECIMALS = 4
#: Files in a label folder that are not label files (LabelImg writes classes.txt next to YOLO labels).
NOT_LABEL_FILES = ("classes.txt",)


@dataclass
class RawBox:
    """One box as written in the annotation file, before class mapping and clipping.

    Attributes:
        coords: ``(x1, y1, x2, y2)`` in pixels, or ``(x_c, y_c, w, h)`` normalised when the
            frame is ``normalized`` (YOLO).
        name: The data class name.
        where: The annotation in words, e.g. ``annotation id 12`` or ``object 2``.
        line: 1-based line in the label file when known.
        ignore: An ignore region by the file's own flag (COCO iscrowd, VOC difficult).
        dontcare: A KITTI DontCare region (ignore by default when the card does not list it).
    """

    coords: tuple[float, float, float, float]
    name: str
    where: str
    line: int | None = None
    ignore: bool = False
    dontcare: bool = False


@dataclass
class Frame:
    """One image with its annotations, as a format reader found it.

    Attributes:
        sample_id: Image path relative to the images folder, POSIX.
        path: Absolute image path (may not exist: then ``bad`` says why).
        source: The annotation file that describes it (relative to the dataset folder), for messages.
        boxes: Boxes as written.
        width: Width declared by the annotation, or None when the format has none.
        height: Height declared by the annotation, or None.
        group: Group (sequence) id, "" when the dataset has no groups.
        has_entry: False for an image with no label file (voc/yolo/kitti): an empty frame.
        normalized: Boxes are YOLO ``(x_c, y_c, w, h)`` fractions of the image size.
        bad: Why the image is already known to be unusable (e.g. not found).
    """

    sample_id: str
    path: Path
    source: str
    boxes: list[RawBox] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    group: str = ""
    has_entry: bool = True
    normalized: bool = False
    bad: str | None = None


@dataclass
class Parsed:
    """What a format reader returns: frames, the source to name in messages, extra counts."""

    frames: list[Frame]
    source: str
    counts: dict[str, Any] = field(default_factory=dict)


class _Problems:
    """Collects problems so one error lists all of them (capped at MAX_LISTED)."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, where: str, message: str, line: int | None = None) -> None:
        self.items.append(Problem(where, message, line=line))

    def raise_if_any(self, message: str, file: str, hint: str) -> None:
        if not self.items:
            return
        more = f"... and {len(self.items) - MAX_LISTED} more. " if len(self.items) > MAX_LISTED else ""
        raise DataError(
            f"{message} ({len(self.items)} problem{'s' if len(self.items) != 1 else ''})",
            file=file,
            problems=self.items[:MAX_LISTED],
            hint=more + hint,
        )


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _number(value: Any) -> float | None:
    """A finite float, or None (bools and non-numbers are not coordinates)."""
    if isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def list_images(images_dir: Path) -> list[Path]:
    """Every image file under ``images_dir`` (recursive, sorted; hidden files skipped)."""
    out = []
    for p in sorted(images_dir.rglob("*")):
        rel = p.relative_to(images_dir)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            out.append(p)
    return out


def _label_files(ann_dir: Path, suffix: str) -> list[Path]:
    return [
        p for p in sorted(ann_dir.rglob(f"*{suffix}"))
        if p.is_file() and p.name not in NOT_LABEL_FILES
        and not any(part.startswith(".") for part in p.relative_to(ann_dir).parts)
    ]


# ---------------------------------------------------------------------------------------------
# COCO


def _coco_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(
            f"malformed JSON: {e.msg} (column {e.colno})",
            file=str(path),
            problems=[Problem("", f"the JSON syntax breaks here: {e.msg}", line=e.lineno)],
            hint="Fix the file (e.g. `python -m json.tool` shows the spot) or re-export it.",
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"the file is not UTF-8 text ({e})", file=str(path)) from None
    if not isinstance(doc, dict):
        raise DataError(
            f"expected a COCO object with images, annotations and categories. Got a {type(doc).__name__}",
            file=str(path),
        )
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(doc.get(k), list)]
    if missing:
        raise DataError(
            f"not a COCO detection file: {', '.join(missing)} missing or not a list",
            file=str(path),
            hint="A COCO file needs \"images\": [...], \"annotations\": [...] and \"categories\": [...].",
        )
    return doc


def _is_id(value: Any) -> bool:
    """COCO ids are integers (some exporters write strings); anything else cannot be an id."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def read_coco(card: DatasetCard, ds_dir: Path) -> Parsed:
    """Parse a COCO JSON (``card.annotations``) into frames.

    ``images[].file_name`` is relative to ``card.images``; ``columns.group`` names a field of
    each ``images[]`` entry (an entry without it becomes its own group, counted as own_group).
    Images in the folder that the JSON does not list are counted as
    ``unannotated_images_in_folder`` and not used; listed images with no annotation are empty frames.

    Raises:
        DataError: Malformed JSON (with its line), a missing field, a duplicate image id or
            file name, an annotation whose image_id or category_id is unknown, a bad bbox.
    """
    assert card.annotations is not None  # the card validator requires it for detection formats
    ann_path = ds_dir / card.annotations
    images_dir = ds_dir / card.images
    source = _rel(ann_path, ds_dir)
    doc = _coco_json(ann_path)
    probs = _Problems()

    categories: dict[Any, str] = {}
    for i, cat in enumerate(doc["categories"]):
        if not isinstance(cat, dict) or not _is_id(cat.get("id")) or not isinstance(cat.get("name"), str):
            probs.add(f"categories[{i}]", f"needs an id (integer) and a name. Got {str(cat)[:120]}")
        elif cat["id"] in categories:
            probs.add(f"categories[{i}]", f"category id {cat['id']} is listed twice")
        else:
            categories[cat["id"]] = cat["name"]

    group_field = card.columns.group
    frames: dict[Any, Frame] = {}
    by_name: dict[str, Any] = {}
    own_group = 0
    for i, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or not _is_id(im.get("id")) or not isinstance(im.get("file_name"), str) or not im["file_name"]:
            probs.add(f"images[{i}]", f"needs an id (integer) and a file_name. Got {str(im)[:120]}")
            continue
        iid, name = im["id"], Path(im["file_name"]).as_posix()
        if iid in frames:
            probs.add(f"images[{i}]", f"image id {iid} is listed twice")
            continue
        if name in by_name:
            probs.add(f"images[{i}]", f"file_name '{name}' is listed twice (image ids {by_name[name]} and {iid})")
            continue
        size = [_number(im.get(k)) for k in ("width", "height")]
        declared = [int(v) if v is not None and v > 0 else None for v in size]
        group = ""
        if group_field:
            value = im.get(group_field)
            group = "" if value is None else str(value).strip()
            if not group:
                group = f"image-{name}"
                own_group += 1
        frame = Frame(name, images_dir / name, source, width=declared[0], height=declared[1], group=group)
        if not frame.path.is_file():
            frame.bad = f"file not found: {frame.path} (listed in {source} as image id {iid})"
        dontcare = im.get("dontcare_boxes") or []
        if not isinstance(dontcare, list):
            probs.add(f"images[{i}] (id {iid}) dontcare_boxes", f"expected a list of [x, y, w, h]. Got {str(dontcare)[:60]}")
            dontcare = []
        for k, b in enumerate(dontcare):
            nums = [_number(v) for v in b] if isinstance(b, list) else []
            if len(nums) != 4 or any(v is None for v in nums):
                probs.add(f"images[{i}] (id {iid}) dontcare_boxes[{k}]", f"expected [x, y, w, h] numbers. Got {b!r}")
                continue
            x, y, w, h = (float(v) for v in nums)  # type: ignore[arg-type]
            frame.boxes.append(RawBox((x, y, x + w, y + h), DONTCARE, f"image id {iid} dontcare_boxes[{k}]", dontcare=True))
        frames[iid] = frame
        by_name[name] = iid

    for i, ann in enumerate(doc["annotations"]):
        aid = ann.get("id", f"#{i}") if isinstance(ann, dict) else f"#{i}"
        where = f"annotation id {aid}"
        if not isinstance(ann, dict):
            probs.add(f"annotations[{i}]", f"expected an object. Got {ann!r}")
            continue
        if not _is_id(ann.get("image_id")) or ann.get("image_id") not in frames:
            probs.add(
                where,
                f"image_id {ann.get('image_id')!r} is not in images[]; add the image entry or remove the annotation",
            )
            continue
        if not _is_id(ann.get("category_id")) or ann.get("category_id") not in categories:
            probs.add(
                where,
                f"category_id {ann.get('category_id')!r} is not in categories[] "
                f"(ids: {format_choices(str(c) for c in categories)})",
            )
            continue
        b = ann.get("bbox")
        nums = [_number(v) for v in b] if isinstance(b, list) else []
        if len(nums) != 4 or any(v is None for v in nums):
            probs.add(where, f"bbox must be [x, y, w, h] (4 finite numbers). Got {b!r}")
            continue
        x, y, w, h = (float(v) for v in nums)  # type: ignore[arg-type]
        frames[ann["image_id"]].boxes.append(
            RawBox((x, y, x + w, y + h), categories[ann["category_id"]], where,
                   ignore=bool(ann.get("iscrowd", 0)))
        )
    probs.raise_if_any(
        "the COCO annotations are inconsistent", str(ann_path),
        "Fix the entries named above (ids refer to images[].id and categories[].id).",
    )

    listed = set(by_name)
    unlisted = [
        _rel(p, images_dir) for p in (list_images(images_dir) if images_dir.is_dir() else [])
        if _rel(p, images_dir) not in listed
    ]
    counts = {
        "own_group": own_group,
        "unannotated_images_in_folder": len(unlisted),
        "unannotated_images_in_folder_list": unlisted[:MAX_EXAMPLES],
    }
    return Parsed(list(frames.values()), str(ann_path), counts)


# ---------------------------------------------------------------------------------------------
# Folder formats: one label file per image (voc, yolo, kitti)


def _match_folder(card: DatasetCard, ds_dir: Path, suffix: str, parse: Callable[[Path, Frame], Frame]) -> Parsed:
    """Pair label files with images by relative stem; parse each label file.

    ``parse(label_file, frame)`` fills in the boxes of ``frame`` (the image with the label
    file's relative stem) and returns it, or returns the frame of another image (VOC: the one
    its ``<filename>`` names). Images without a label file become empty frames, counted as
    ``images_without_annotation_entry``.
    """
    assert card.annotations is not None
    ann_dir = ds_dir / card.annotations
    images_dir = ds_dir / card.images
    if not ann_dir.is_dir():
        raise DataError(
            f"annotations folder not found: {ann_dir}",
            file=str(ds_dir),
            hint=f"Format '{card.format}' reads one label file per image from annotations: <folder> "
            "(relative to the dataset folder); check annotations: in the dataset card.",
        )
    images = list_images(images_dir) if images_dir.is_dir() else []
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for p in images:
        by_stem[_rel(p.with_suffix(""), images_dir)].append(p)

    frames: list[Frame] = []
    used: set[Path] = set()
    seen: dict[str, str] = {}
    probs = _Problems()
    for lf in _label_files(ann_dir, suffix):
        stem, source = _rel(lf.with_suffix(""), ann_dir), _rel(lf, ds_dir)
        match = by_stem.get(stem, [])
        if match:
            default = Frame(_rel(match[0], images_dir), match[0], source)
        else:
            exts = "|".join(e[1:] for e in IMAGE_EXTENSIONS)
            default = Frame(stem, images_dir / stem, source,
                            bad=f"no image '{stem}.<{exts}>' in {images_dir} for label file {source}")
        frame = parse(lf, default)
        if frame is default and len(match) > 1:
            probs.add(source, f"several images share its stem: {', '.join(_rel(p, images_dir) for p in match)}; "
                      "rename or remove the duplicates so each stem names one image")
            continue
        if frame.sample_id in seen:
            probs.add(source, f"describes image '{frame.sample_id}', which {seen[frame.sample_id]} describes too; "
                      "keep one label file per image")
            continue
        seen[frame.sample_id] = source
        used.add(frame.path.resolve())
        frames.append(frame)
    probs.raise_if_any("label files cannot be paired with images", str(ann_dir),
                       f"Format '{card.format}' pairs annotations/<sub>/<stem>{suffix} with images/<sub>/<stem>.<image>.")

    missing = [p for p in images if p.resolve() not in used]
    for p in missing:
        frames.append(Frame(_rel(p, images_dir), p, "(no label file)", has_entry=False))
    counts = {
        "images_without_annotation_entry": len(missing),
        "images_without_annotation_entry_list": [_rel(p, images_dir) for p in missing[:MAX_EXAMPLES]],
    }
    return Parsed(frames, str(ann_dir), counts)


def _text_lines(path: Path, probs: _Problems, where: str) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        probs.add(where, f"is not UTF-8 text ({e})")
        return []
    out = []
    for n, raw in enumerate(text.splitlines(), start=1):
        s = raw.strip()
        if s and not s.startswith("#"):
            out.append((n, s.split()))
    return out


def parse_yolo_file(path: Path, classes: list[str], probs: _Problems, where: str) -> list[RawBox]:
    """Parse one YOLO label file: ``class x_c y_c w h`` per line (normalised, class = index into classes)."""
    boxes = []
    for n, parts in _text_lines(path, probs, where):
        if len(parts) != 5:
            probs.add(where, f"expected 5 fields 'class x_center y_center width height'. Got {len(parts)}: {' '.join(parts)[:80]!r}", n)
            continue
        try:
            idx = int(parts[0])
        except ValueError:
            probs.add(where, f"the class must be an integer index into classes. Got {parts[0]!r}", n)
            continue
        if not 0 <= idx < len(classes):
            probs.add(where, f"class index {idx} is out of range: the dataset card lists {len(classes)} classes "
                      f"(0..{len(classes) - 1}: {', '.join(classes)}); add the missing class names to classes:", n)
            continue
        nums = [_number(v) for v in parts[1:]]
        if any(v is None for v in nums):
            probs.add(where, f"coordinates must be finite numbers. Got {' '.join(parts[1:])!r}", n)
            continue
        xc, yc, w, h = (float(v) for v in nums)  # type: ignore[arg-type]
        boxes.append(RawBox((xc, yc, w, h), classes[idx], f"line {n}", line=n))
    return boxes


def parse_kitti_file(path: Path, probs: _Problems, where: str) -> list[RawBox]:
    """Parse one KITTI label_2 file: ``type trunc occ alpha left top right bottom h w l x y z ry [score]``."""
    boxes = []
    for n, parts in _text_lines(path, probs, where):
        if len(parts) not in (15, 16):
            probs.add(where, f"expected 15 KITTI fields (type truncated occluded alpha left top right bottom "
                      f"h w l x y z rotation_y). Got {len(parts)}", n)
            continue
        nums = [_number(v) for v in parts[4:8]]
        if any(v is None for v in nums):
            probs.add(where, f"left/top/right/bottom must be numbers. Got {' '.join(parts[4:8])!r}", n)
            continue
        x1, y1, x2, y2 = (float(v) for v in nums)  # type: ignore[arg-type]
        boxes.append(RawBox((x1, y1, x2, y2), parts[0], f"line {n}", line=n, dontcare=parts[0] == DONTCARE))
    return boxes


def _xml_text(node: ET.Element | None, tag: str) -> str | None:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text is not None else None


def parse_voc_file(path: Path, probs: _Problems, where: str) -> tuple[str | None, int | None, int | None, list[RawBox]]:
    """Parse one Pascal VOC XML: (filename, width, height, boxes), boxes converted from 1-based.

    ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``: VOC's xmin..xmax are inclusive
    1-based pixel indices, and the pixel with 1-based index i spans [i - 1, i) continuously.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        probs.add(where, f"malformed XML: {e}", e.position[0] if e.position else None)
        return None, None, None, []
    size = root.find("size")
    dims = []
    for tag in ("width", "height"):
        v = _number(_xml_text(size, tag))
        dims.append(int(v) if v is not None and v > 0 else None)  # VOC exports often write 0 = unknown
    boxes = []
    for k, obj in enumerate(root.findall("object"), start=1):
        name = _xml_text(obj, "name")
        bb = obj.find("bndbox")
        vals = [_number(_xml_text(bb, t)) for t in ("xmin", "ymin", "xmax", "ymax")]
        if not name:
            probs.add(where, f"object {k} has no <name>")
            continue
        if bb is None or any(v is None for v in vals):
            probs.add(where, f"object {k} ('{name}') needs <bndbox> with numeric xmin, ymin, xmax, ymax")
            continue
        xmin, ymin, xmax, ymax = (float(v) for v in vals)  # type: ignore[arg-type]
        difficult = _xml_text(obj, "difficult") in ("1", "true", "True")
        boxes.append(RawBox((xmin - 1, ymin - 1, xmax, ymax), name, f"object {k}", ignore=difficult))
    return _xml_text(root, "filename"), dims[0], dims[1], boxes


def read_voc(card: DatasetCard, ds_dir: Path) -> Parsed:
    """Parse a folder of Pascal VOC XML files (``annotations/<sub>/<stem>.xml``).

    The image is ``images/<sub>/<filename>`` (``<filename>`` from the XML; the image with the
    XML's stem when it has none or names no extension). ``<size>`` is checked against the decoded image.

    Raises:
        DataError: Malformed XML (with its line), an object without name or numeric bndbox.
    """
    images_dir = ds_dir / card.images
    probs = _Problems()

    def parse(lf: Path, frame: Frame) -> Frame:
        filename, w, h, boxes = parse_voc_file(lf, probs, frame.source)
        if filename and Path(filename).suffix:  # some exports write the stem only: pair by stem then
            sub = Path(_rel(lf, ds_dir / (card.annotations or ""))).parent
            sid = (sub / filename).as_posix()
            frame = Frame(sid, images_dir / sid, frame.source)
            if not frame.path.is_file():
                frame.bad = f"file not found: {frame.path} (named by <filename> in {frame.source})"
        frame.boxes, frame.width, frame.height = boxes, w, h
        return frame

    parsed = _match_folder(card, ds_dir, ".xml", parse)
    probs.raise_if_any("Pascal VOC files cannot be read", str(ds_dir / (card.annotations or "")),
                       "Fix the XML files named above (lines are 1-based) or re-export them.")
    return parsed


def _read_text_format(card: DatasetCard, ds_dir: Path, kind: Literal["yolo", "kitti"]) -> Parsed:
    probs = _Problems()
    classes = list(card.classes)

    def parse(lf: Path, frame: Frame) -> Frame:
        if kind == "yolo":
            frame.boxes, frame.normalized = parse_yolo_file(lf, classes, probs, frame.source), True
        else:
            frame.boxes = parse_kitti_file(lf, probs, frame.source)
        return frame

    parsed = _match_folder(card, ds_dir, ".txt", parse)
    fields = "class x_center y_center width height" if kind == "yolo" else "KITTI label_2"
    probs.raise_if_any(f"{kind.upper()} label files cannot be read", str(ds_dir / (card.annotations or "")),
                       f"Fix the lines named above ({fields}; line numbers are 1-based).")
    return parsed


def read_yolo(card: DatasetCard, ds_dir: Path) -> Parsed:
    """Parse a folder of YOLO ``<stem>.txt`` files (``class x_c y_c w h``, normalised).

    Raises:
        DataError: A line without 5 fields, a non-integer or out-of-range class index, a
            non-numeric coordinate (file and line named).
    """
    return _read_text_format(card, ds_dir, "yolo")


def read_kitti(card: DatasetCard, ds_dir: Path) -> Parsed:
    """Parse a KITTI ``label_2`` folder of ``<stem>.txt`` files (15 fields per line).

    Raises:
        DataError: A line without 15 (or 16, with score) fields or with non-numeric box fields.
    """
    return _read_text_format(card, ds_dir, "kitti")


#: format -> function(card, dataset folder) -> Parsed.
FORMAT_READERS: dict[str, Callable[[DatasetCard, Path], Parsed]] = {
    "coco": read_coco,
    "voc": read_voc,
    "yolo": read_yolo,
    "kitti": read_kitti,
}


# ---------------------------------------------------------------------------------------------
# Groups, classes, geometry


def _manifest_groups(card: DatasetCard, ds_dir: Path, frames: list[Frame]) -> int:
    """Set frame groups from card.manifest (columns.path, columns.group); return own_group count."""
    if not card.manifest or not card.columns.group:
        return 0
    csv_path = ds_dir / card.manifest
    df = read_manifest_csv(csv_path, "image")
    cols = {"columns.path": card.columns.path, "columns.group": card.columns.group}
    missing = [Problem(k, f"column '{c}' is missing.{did_you_mean(c, list(df.columns))}") for k, c in cols.items()
               if c not in df.columns]
    if missing:
        raise DataError(f"the group manifest lacks column(s). Got columns: {format_choices(df.columns)}",
                        file=str(csv_path), problems=missing,
                        hint="Rename the CSV columns or set columns: {path: ..., group: ...} in the dataset card.")
    groups = {Path(p).as_posix(): g.strip() for p, g in zip(df[card.columns.path], df[card.columns.group])}
    own = 0
    for f in frames:
        f.group = groups.get(f.sample_id, "")
        if not f.group:
            f.group = f"image-{f.sample_id}"  # unknown group: alone, so it cannot leak across folds
            own += 1
    return own


def _targets(frames: list[Frame], card: DatasetCard, task: TaskCard, card_path: Path) -> dict[int, tuple[str, int]]:
    """Map every box's class name to ("object", task index) | ("ignore", -1) | ("drop", -1).

    Raises:
        DataError: A class name the card does not list, or one that maps outside the task.
    """
    out: dict[int, tuple[str, int]] = {}
    unknown = _Problems()
    outside = _Problems()
    classes = list(card.classes)
    for f in frames:
        for b in f.boxes:
            if b.name not in classes:
                if b.dontcare:
                    out[id(b)] = (IGNORE, -1)  # KITTI default: DontCare is an ignore region
                    continue
                unknown.add(f"{f.source} {b.where}",
                            f"class '{b.name}' is not in the dataset card's classes.{did_you_mean(b.name, classes)}", b.line)
                continue
            target = card.task_label(b.name)
            if target == DROP:
                out[id(b)] = (DROP, -1)
            elif target == IGNORE:
                out[id(b)] = (IGNORE, -1)
            elif target in task.classes:
                # iscrowd / difficult: the object's class is known but it is not a box to find
                out[id(b)] = (IGNORE, -1) if b.ignore else ("object", task.classes.index(target))
            else:
                outside.add(f"{f.source} {b.where}",
                            f"class '{b.name}' maps to '{target}', which is not a class of task '{task.name}' "
                            f"({', '.join(task.classes)}).{did_you_mean(target, task.classes)}", b.line)
    unknown.raise_if_any(
        f"annotations use class names the dataset card does not list ({format_choices(classes)})",
        str(card_path),
        f"Add the names to classes: in {card_path} and map them with class_map: "
        "{<name>: <task class> | ignore | drop}, or fix the annotations.",
    )
    outside.raise_if_any(
        f"class_map sends classes outside task '{task.name}'", str(card_path),
        "Map them with class_map: {<name>: <task class> | ignore | drop} in the dataset card.",
    )
    return out


def _geometry(b: RawBox, normalized: bool, w: int, h: int) -> tuple[list[float] | None, str | None, bool]:
    """(clipped xyxy box or None, drop reason or None, whether it was clipped)."""
    if normalized:
        xc, yc, bw, bh = b.coords
        x1, y1, x2, y2 = (xc - bw / 2) * w, (yc - bh / 2) * h, (xc + bw / 2) * w, (yc + bh / 2) * h
    else:
        x1, y1, x2, y2 = b.coords
    if x2 < x1 or y2 < y1:
        return None, "negative_size", False
    if x2 == x1 or y2 == y1:
        return None, "zero_size", False
    if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
        return None, "outside_image", False
    c = [min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h)]
    c = [round(float(v), BOX_DECIMALS) for v in c]
    if c[2] <= c[0] or c[3] <= c[1]:
        return None, "zero_area_after_clip", True
    return c, None, c != [round(float(v), BOX_DECIMALS) for v in (x1, y1, x2, y2)]


def _decode(frame: Frame, max_pixels: int) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height), None) when the image decodes, else (None, why)."""
    if frame.bad:
        return None, frame.bad
    if not frame.path.is_file():
        return None, f"file not found: {frame.path}"
    try:
        img = read_image(frame.path, max_pixels)
    except DataError as e:
        return None, e.message
    except Exception as e:  # noqa: BLE001 - a decoder crash is a bad file, not a program error
        return None, f"cannot decode ({type(e).__name__}: {e})"
    return (int(img.shape[1]), int(img.shape[0])), None


def boxes_of(row: Mapping[str, Any] | pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode a D1 row's JSON columns.

    Returns:
        ``(boxes float32 [N, 4] xyxy original pixels, classes int32 [N], ignore float32 [M, 4])``.
    """
    boxes = np.asarray(json.loads(row["boxes"]), dtype=np.float32).reshape(-1, 4)
    classes = np.asarray(json.loads(row["classes"]), dtype=np.int32).reshape(-1)
    ignore = np.asarray(json.loads(row["ignore"]), dtype=np.float32).reshape(-1, 4)
    return boxes, classes, ignore


# ---------------------------------------------------------------------------------------------
# The reader


def read_detection_samples(
    card: DatasetCard,
    ds_dir: Path,
    task: TaskCard,
    card_path: Path,
    *,
    on_bad_file: Literal["error", "skip"] = "error",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> SampleSet:
    """Read a detection dataset into the D1 sample table, checking every image and box.

    Args:
        card: The dataset card (format coco, voc, yolo or kitti).
        ds_dir: The dataset folder (``cards.dataset_dir(card, card_path)``).
        task: The task card; box classes are indices into ``task.classes``.
        card_path: The dataset card file (named in messages).
        on_bad_file: "error": raise listing every missing/unreadable image; "skip": leave them
            out and list them in ``excluded``.
        max_pixels: Refuse images with more pixels than this.
        progress: Show a progress bar while decoding more than 50 images.

    Returns:
        A :class:`~lepton_vision.data.samples.SampleSet` whose table follows contract D1 and whose
        counts hold n_listed, n_samples, n_excluded, n_boxes, per_class {task class: boxes},
        n_empty_images, n_groups, own_group, n_ignore_regions, boxes_clipped, boxes_dropped
        {reason: n}, dropped_examples (up to 20), images_without_annotation_entry (+ _list),
        unannotated_images_in_folder (+ _list), format and annotations.

    Raises:
        DataError: Annotations are missing, malformed or inconsistent; a class name is unknown;
            an image's size differs from its annotation; images are bad (with
            ``on_bad_file="error"``); or no usable image is left.
    """
    import pandas as pd

    if on_bad_file not in ("error", "skip"):
        raise ValueError(f"on_bad_file must be 'error' or 'skip', got {on_bad_file!r}")
    if card.format not in FORMAT_READERS:
        raise ValueError(f"format '{card.format}' is not a detection format ({', '.join(FORMAT_READERS)})")
    ds_dir = Path(ds_dir)
    images_dir = ds_dir / card.images
    assert card.annotations is not None
    ann = ds_dir / card.annotations
    for what, p, key in (("images folder", images_dir, "images"), ("annotations", ann, "annotations")):
        if not p.exists():
            raise DataError(
                f"{what} not found: {p} (dataset '{card.name}')", file=str(card_path),
                hint=f"Check path: and {key}: in the dataset card ({key} is relative to the dataset folder "
                f"{ds_dir}).",
            )

    parsed = FORMAT_READERS[card.format](card, ds_dir)
    frames = parsed.frames
    own_group = parsed.counts.pop("own_group", 0) + _manifest_groups(card, ds_dir, frames)
    if not frames:
        raise DataError(f"dataset '{card.name}' has no images in {parsed.source}", file=str(card_path),
                        hint="Check images: and annotations: in the dataset card.")
    targets = _targets(frames, card, task, card_path)

    sized: list[tuple[Frame, int, int]] = []
    bad: list[tuple[Frame, str]] = []
    mismatch = _Problems()
    for f in with_progress(frames, progress, f"Checking {len(frames)} images"):
        size, why = _decode(f, max_pixels)
        if size is None:
            bad.append((f, why or "unreadable"))
            continue
        w, h = size
        if (f.width is not None and f.width != w) or (f.height is not None and f.height != h):
            mismatch.add(f.sample_id, f"{f.source} says {f.width}x{f.height} (width x height), the image "
                         f"decodes as {w}x{h}")
            continue
        sized.append((f, w, h))
    mismatch.raise_if_any(
        "image sizes differ from the annotations, so the boxes would be misplaced", parsed.source,
        "Re-export the annotations for the images as they are now (were the images resized or "
        "rotated after labelling?), or fix width/height in the annotations.",
    )
    if bad and on_bad_file == "error":
        probs = _Problems()
        for f, why in bad:
            probs.add(f.sample_id, why)
        probs.raise_if_any(
            f"{len(bad)} of {len(frames)} images are missing or unreadable (dataset '{card.name}', {parsed.source})",
            str(card_path), BAD_FILE_HINT,
        )
    if not sized:
        raise DataError(
            f"no usable images left in dataset '{card.name}': all {len(bad)} were bad", file=str(card_path),
            problems=[Problem(f.sample_id, why) for f, why in bad[:MAX_LISTED]],
        )

    dropped: Counter[str] = Counter({r: 0 for r in DROP_REASONS})
    examples: list[dict[str, Any]] = []
    per_class = Counter({c: 0 for c in task.classes})
    clipped = ignore_clipped = 0
    rows = []
    for f, w, h in sized:
        boxes, classes, ignore = [], [], []
        for b in f.boxes:
            kind, idx = targets[id(b)]
            box, reason, was_clipped = (None, "class_drop", False) if kind == DROP else _geometry(b, f.normalized, w, h)
            if box is None:
                dropped[reason or "unknown"] += 1
                if len(examples) < MAX_EXAMPLES:
                    examples.append({"file": f.source, "sample_id": f.sample_id, "annotation": b.where,
                                     "class": b.name, "reason": reason, "box": [round(float(v), BOX_DECIMALS) for v in b.coords]})
                continue
            if kind == IGNORE:
                ignore.append(box)
                ignore_clipped += was_clipped
            else:
                boxes.append(box)
                classes.append(idx)
                per_class[task.classes[idx]] += 1
                clipped += was_clipped
        rows.append({
            "sample_id": f.sample_id, "path": str(f.path.resolve()), "label": int(bool(boxes)),
            "label_name": "objects" if boxes else "empty", "group": f.group, "width": w, "height": h,
            "n_boxes": len(boxes), "boxes": json.dumps(boxes), "classes": json.dumps(classes),
            "ignore": json.dumps(ignore),
        })
    table = pd.DataFrame(rows, columns=list(DETECTION_COLUMNS))
    for c in ("label", "width", "height", "n_boxes"):
        table[c] = table[c].astype(int)
    excluded = [{"sample_id": f.sample_id, "path": str(f.path), "reason": why} for f, why in bad]
    groups = table["group"][table["group"] != ""]
    counts: dict[str, Any] = {
        "format": card.format,
        "annotations": parsed.source,
        "n_listed": len(frames),
        "n_samples": len(table),
        "n_excluded": len(excluded),
        "n_boxes": int(table["n_boxes"].sum()),
        "per_class": dict(per_class),
        "n_empty_images": int((table["label"] == 0).sum()),
        "n_groups": int(groups.nunique()),
        "own_group": own_group,
        "n_ignore_regions": int(sum(len(json.loads(s)) for s in table["ignore"])),
        "boxes_clipped": clipped,
        "ignore_regions_clipped": ignore_clipped,
        "boxes_dropped": dict(dropped),
        "dropped_examples": examples,
        "images_without_annotation_entry": 0,
        "images_without_annotation_entry_list": [],
        "unannotated_images_in_folder": 0,
        "unannotated_images_in_folder_list": [],
        **parsed.counts,
    }
    return SampleSet(table=table, excluded=excluded, counts=counts)

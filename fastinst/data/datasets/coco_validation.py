"""One validation pass over a COCO instance-segmentation json and its image files: repaired or refused.

`check_coco_json` reads every field an exporter writes (ids, categories, image entries, segmentation polygons and
RLEs, bbox, area, iscrowd) and, optionally, every image file's header (opens, decodable mode, size after EXIF
orientation, pixel count). Each problem is either

- repaired, when the intent is unambiguous, with one warning per kind that says what changed, how many times and
  the first few ids (the repaired json is returned; `register_coco_json_dataset` registers a copy of it), or
- refused: one `DatasetError` whose one-line message names the json, every problem kind found at that stage, and
  for each kind the count and the first few ids.

datasets/README.md has the table of problems and outcomes.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..image_io import UnreadableImageError, read_image_header
from .coco_annotations import AnnotationPass, is_int

__all__ = ["CocoCheck", "DatasetError", "check_coco_json", "load_coco_file"]

SHOW = 5  # how many offending ids a message lists
CROWD_WARN_SHARE = (
    0.10  # COCO train2017 has ~1% crowd annotations; a share over 10% is worth a word
)


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message (one line) names the file and says what to do."""


def listing(items: Iterable[Any], count: int | None = None) -> str:
    """'a, b, c, ... (N in total)' with the first SHOW items (strings are shown as they are)."""
    items = list(items)
    count = len(items) if count is None else count
    shown = ", ".join(
        x.replace("\n", "\\n").replace("\r", "\\r") if isinstance(x, str) else repr(x)
        for x in items[:SHOW]
    )  # one line whatever the ids hold
    return f"{shown}{', ...' if count > SHOW else ''} ({count} in total)"


@dataclass
class CocoCheck:
    """Result of `check_coco_json`.

    data: the json content with every repair applied. changed: data differs from the file (repairs made).
    warnings: one line per repaired / warned kind. summary: see `check_coco_json`. stored_orientation_files:
    file_names whose json size is the stored size of an EXIF-rotated image (read them without EXIF orientation).
    """

    data: dict[str, Any]
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    changed: bool = False
    stored_orientation_files: list[str] = field(default_factory=list)


class _Report:
    def __init__(self, json_file: str) -> None:
        self.json_file = json_file
        self.refusals: list[str] = []
        self.warnings: list[str] = []
        self.changed = False

    def refuse(self, problem: str, items: list[Any]) -> None:
        if items:
            self.refusals.append(f"{problem}: {listing(items)}")

    def warn(self, text: str) -> None:
        self.warnings.append(f"{self.json_file}: {text}")

    def repair(self, what: str, items: list[Any]) -> None:
        if items:
            self.warn(f"repaired: {what}: {listing(items)}")
            self.changed = True

    def stop_if_refused(self, fix: str) -> None:
        if self.refusals:
            raise DatasetError(
                f"Invalid COCO dataset '{self.json_file}': {'; '.join(self.refusals)}. {fix}"
            )


def _is_id(x: Any) -> bool:
    return is_int(x) or isinstance(x, str)


def load_coco_file(json_file: str) -> dict[str, Any]:
    """Parse the json; refuse a missing / unparseable file or one without the three COCO lists."""
    if not os.path.isfile(json_file):
        raise DatasetError(
            f"COCO annotation file '{json_file}' does not exist (relative paths are resolved from "
            f"'{os.getcwd()}'). Check the json_file path."
        )
    bad = f"Invalid COCO dataset '{json_file}'"
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{bad}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}). Fix or regenerate the file."
        ) from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"{bad}: not UTF-8 text. Is it really a json file?") from e
    if not isinstance(data, dict):
        raise DatasetError(
            f"{bad}: the top level is a {type(data).__name__}, not an object. A COCO file is an object with "
            "'images', 'annotations' and 'categories' lists."
        )
    missing = [
        k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)
    ]
    if missing:
        raise DatasetError(
            f"{bad}: missing or non-list top-level field(s) {missing}. A COCO instances file needs 'images', "
            "'annotations' and 'categories' lists."
        )
    return data


def _entries(r: _Report, entries: list[Any], kind: str, keys: tuple[str, ...]) -> None:
    """Refuse non-object entries and entries lacking `keys` (all of them listed)."""
    r.refuse(
        f"{kind} entries that are not objects (by index)",
        [i for i, e in enumerate(entries) if not isinstance(e, dict)],
    )
    lacking = [
        (i, e)
        for i, e in enumerate(entries)
        if isinstance(e, dict) and any(k not in e for k in keys)
    ]
    if lacking:
        i, e = lacking[0]
        r.refusals.append(
            f"{len(lacking)} of {len(entries)} {kind} lack required fields; the first, {kind}[{i}], lacks "
            f"{[k for k in keys if k not in e]} (every entry of '{kind}' needs {list(keys)})"
        )


def _unique_ids(r: _Report, entries: list[dict], kind: str, valid: Any, expect: str) -> None:
    ids = [e["id"] for e in entries if isinstance(e, dict) and "id" in e]
    singular = {"categories": "category", "images": "image"}.get(kind, kind)
    r.refuse(f"{singular} ids that are not {expect}", [i for i in ids if not valid(i)])
    counts = Counter(i for i in ids if valid(i))
    r.refuse(f"duplicate {singular} ids", sorted((i for i, n in counts.items() if n > 1), key=str))


def _check_structure(r: _Report, data: dict[str, Any]) -> None:
    cats, images, annos = data["categories"], data["images"], data["annotations"]
    if not cats:
        r.refusals.append("'categories' is empty (list every category as {'id', 'name'})")
    _entries(r, cats, "categories", ("id", "name"))
    _entries(r, images, "images", ("id", "file_name"))
    _entries(r, annos, "annotations", ("image_id", "category_id", "segmentation"))
    _unique_ids(r, cats, "categories", is_int, "integers")
    _unique_ids(r, images, "images", _is_id, "integers or strings")
    image_ids = [e["id"] for e in images if isinstance(e, dict) and _is_id(e.get("id"))]
    if len({isinstance(i, str) for i in image_ids}) > 1:
        r.refusals.append("image ids mix integers and strings (use one kind)")
    r.refuse(
        "category names that are not non-empty strings (by category id)",
        [
            c.get("id")
            for c in cats
            if isinstance(c, dict) and not (isinstance(c.get("name"), str) and c.get("name"))
        ],
    )
    r.refuse(
        "image file_names that are not non-empty strings (by image id)",
        [
            e.get("id")
            for e in images
            if isinstance(e, dict)
            and not (isinstance(e.get("file_name"), str) and e.get("file_name"))
        ],
    )
    r.stop_if_refused(
        "Fix these entries; COCO's format is described at https://cocodataset.org/#format-data."
    )


def _size_ok(image: dict) -> bool:
    h, w = image.get("height"), image.get("width")
    return is_int(h) and is_int(w) and h > 0 and w > 0


def _check_images(r: _Report, images: list[dict], image_root: str, check_files: bool) -> list[str]:
    """Sizes and (check_files) every file's header; returns the file_names to read as stored (see CocoCheck)."""
    if not check_files:
        r.refuse(
            "images without a positive integer height and width (by id)",
            [e["id"] for e in images if not _size_ok(e)],
        )
        return []
    if not os.path.isdir(image_root):
        r.refusals.append(
            f"image folder '{image_root}' does not exist (pass the folder that the images' file_name entries "
            "are relative to as image_root)"
        )
        return []
    missing, unreadable, mismatched, filled, stored, big = [], [], [], [], [], []
    for e in images:
        name = e["file_name"]
        path = os.path.join(image_root, name)
        if not os.path.isfile(path):
            missing.append(repr(name))
            continue
        try:
            head = read_image_header(path)
        except UnreadableImageError as err:
            unreadable.append(f"{name!r} ({err.reason})")
            continue
        if head.num_pixels > Image.MAX_IMAGE_PIXELS:
            big.append(f"{name!r} ({head.width} x {head.height})")
        if not _size_ok(e):
            e["height"], e["width"] = head.height, head.width
            filled.append(e["id"])
        elif (e["width"], e["height"]) == (head.width, head.height):
            continue
        elif (e["width"], e["height"]) == (head.stored_width, head.stored_height):
            stored.append(
                f"{name!r} (EXIF orientation {head.orientation} turns the stored "
                f"{head.stored_width}x{head.stored_height} into {head.width}x{head.height})"
            )
            e["_stored_orientation"] = True
        else:
            turned = " after EXIF orientation" if head.orientation != 1 else ""
            mismatched.append(
                f"{name!r} (json {e['width']}x{e['height']}, file {head.width}x{head.height}{turned})"
            )
    if missing:
        r.refusals.append(
            f"{len(missing)} of {len(images)} image files are missing under '{image_root}': {listing(missing)}"
        )
    r.refuse("image files that cannot be read", unreadable)
    r.refuse("images whose json width x height differs from the file's", mismatched)
    r.repair("filled in the missing height/width of images from their files (by image id)", filled)
    if stored:
        r.warn(
            "images whose json width x height is their stored size, while their EXIF orientation turns them: "
            "they are read as stored (no EXIF rotation), as the json and its annotations describe them: "
            + listing(stored)
        )
    if big:
        r.warn(
            f"images with more than Pillow's {Image.MAX_IMAGE_PIXELS:,} pixels (each takes over "
            f"{Image.MAX_IMAGE_PIXELS * 3 // 2**20} MB to decode): {listing(big)}"
        )
    return [e["file_name"] for e in images if e.pop("_stored_orientation", False)]


def _check_references(r: _Report, data: dict[str, Any], image_by_id: dict) -> list[dict]:
    """Refuse unknown category / image ids; returns the annotations whose references are valid."""
    annos = data["annotations"]
    cat_ids = {c["id"] for c in data["categories"]}
    unknown = [a for a in annos if not (_is_id(a["category_id"]) and a["category_id"] in cat_ids)]
    if unknown:
        bad = sorted({repr(a["category_id"]) for a in unknown})
        r.refusals.append(
            f"{len(unknown)} annotation{'s use' if len(unknown) > 1 else ' uses'} category ids that are not "
            f"in 'categories': {listing(bad)}; known "
            f"ids are {sorted(cat_ids)}"
        )
    orphans = [a for a in annos if not (_is_id(a["image_id"]) and a["image_id"] in image_by_id)]
    if orphans:
        bad = sorted({repr(a["image_id"]) for a in orphans})
        r.refusals.append(
            f"{len(orphans)} annotations refer to image ids with no entry in 'images': {listing(bad)}"
        )
    return [a for a in annos if _is_id(a["image_id"]) and a["image_id"] in image_by_id]


def _report_annotations(r: _Report, p: AnnotationPass) -> None:
    r.refuse("annotations whose segmentation is neither polygons (list) nor RLE (dict)", p.bad_type)
    for kind, items in p.rle_problems.items():
        r.refuse(kind, items)
    r.refuse("annotations whose iscrowd is not 0 or 1", p.crowd_bad)
    r.repair(
        "dropped polygon parts with fewer than 3 points, an odd number of coordinates or non-numbers, kept "
        "the other parts (annotation ids)",
        p.parts_dropped,
    )
    r.repair(
        "dropped annotations with no valid polygon part (fewer than 3 points, odd length or non-numbers, as "
        "detectron2's loader does)",
        p.no_valid_part,
    )
    r.repair("dropped annotations whose mask is empty (0 pixels inside the image)", p.empty_mask)
    r.repair(
        "bbox missing or not [x, y, width, height] numbers; set to the mask's box", p.box_missing
    )
    r.repair(
        "bbox written as [x0, y0, x1, y1] (COCO's bbox is [x, y, width, height]); set to the mask's box",
        p.box_xyxy,
    )
    r.repair(
        "bbox does not fit the mask (edges off by > 2 px); set to the mask's box", p.box_misfit
    )
    r.repair(
        "area missing, not positive or off by more than 2x from the mask's pixel count (COCOeval's small/"
        "medium/large buckets use it); set to the mask's pixel count",
        p.area_fixed,
    )
    r.repair("iscrowd missing; set to 0", p.crowd_filled)


def _renumber(r: _Report, annos: list[dict]) -> None:
    """pycocotools records a match by the ground truth's id, with 0 meaning none: ids must be unique and >= 1."""
    ids = [a.get("id") for a in annos]
    if set(map(type, ids)) <= {int} and (not ids or min(ids) > 0) and len(set(ids)) == len(ids):
        return  # the usual case, checked at C speed
    counts = Counter(i for i in ids if is_int(i))
    bad = [
        i if "id" in a else f"annotations[{n}] (no id)"
        for n, (a, i) in enumerate(zip(annos, ids, strict=True))
        if not (is_int(i) and i > 0 and counts[i] == 1)
    ]
    if bad:
        for n, a in enumerate(annos):
            annos[n] = dict(a, id=n + 1)
        r.repair(
            f"annotation ids renumbered 1..{len(annos)} in file order, because pycocotools needs unique ids "
            ">= 1 (it records a match by the ground truth's id, and id 0 reads as no match); ids that were 0, "
            "missing, not positive integers or duplicated",
            bad,
        )


def check_coco_json(
    json_file: str | os.PathLike, image_root: str | os.PathLike, *, check_files: bool = True
) -> CocoCheck:
    """Validate a COCO instance json (and with `check_files` every image's header); repair or refuse.

    Returns:
        `CocoCheck` whose `summary` has `thing_classes` (names sorted by category id), `num_classes`,
        `thing_dataset_id_to_contiguous_id`, `num_images`, `num_usable_images` (images with at least one
        non-crowd annotation), `num_annotations`, `num_crowd_annotations` (after repairs) and `warnings`.

    Raises:
        DatasetError: one line naming the json and, for each problem kind found, the count and the first ids.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    data = load_coco_file(json_file)
    r = _Report(json_file)
    _check_structure(r, data)
    images = data["images"]
    stored = _check_images(r, images, image_root, check_files)
    image_by_id = {e["id"]: e for e in images}
    annos = _check_references(r, data, image_by_id)

    p, kept = AnnotationPass(), []
    sizes = {
        e["id"]: (e["height"], e["width"]) for e in images if _size_ok(e)
    }  # others refused above
    for i, a in enumerate(annos):
        size = sizes.get(a["image_id"])
        if size is None:
            continue
        checked = p(a, a.get("id", f"annotations[{i}]"), *size)
        if checked is not None:
            kept.append(checked)
    _report_annotations(r, p)
    r.stop_if_refused(
        "Fix or remove them (datasets/README.md lists what is repaired and what is refused)."
    )
    _renumber(r, kept)
    data["annotations"] = kept

    crowd = sum(1 for a in kept if a["iscrowd"])
    if kept and crowd / len(kept) > CROWD_WARN_SHARE:
        r.warn(
            f"{crowd} of the {len(kept)} annotations ({100 * crowd / len(kept):.0f}%) are crowd regions "
            "(iscrowd 1): training skips them and evaluation ignores them; a share this high usually means an "
            "export setting marked ordinary objects as crowd"
        )
    usable = {a["image_id"] for a in kept if not a["iscrowd"]}
    if not usable:
        raise DatasetError(
            f"Invalid COCO dataset '{json_file}': no usable images: none of its {len(images)} images has a "
            "(non-crowd) annotation. Training needs annotated images; check that annotations were exported."
        )
    cats = sorted(data["categories"], key=lambda c: c["id"])
    summary = {
        "thing_classes": [c["name"] for c in cats],
        "num_classes": len(cats),
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
        "num_images": len(images),
        "num_usable_images": len(usable),
        "num_annotations": len(kept),
        "num_crowd_annotations": crowd,
        "warnings": list(r.warnings),
    }
    return CocoCheck(data, summary, r.warnings, r.changed, stored)

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
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from ..image_io import UnreadableImageError, read_image_header

__all__ = ["CocoCheck", "DatasetError", "check_coco_json", "load_coco_file"]

SHOW = 5  # how many offending ids a message lists
CROWD_WARN_SHARE = (
    0.10  # COCO train2017 has ~1% crowd annotations; a share over 10% is worth a word
)
BOX_TOLERANCE_PX = 2.0  # a json bbox "fits" its mask when every edge is within this ...
BOX_TOLERANCE_IOU = 0.9  # ... or their IoU is at least this
AREA_FACTOR, AREA_SLACK_PX = 2.0, 4.0  # area fits when within [mask / 2 - 4, 2 * mask + 4] pixels


_PLAIN_NUMBERS = {int, float}


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message (one line) names the file and says what to do."""


def listing(items: Iterable[Any], count: int | None = None) -> str:
    """'a, b, c, ... (N in total)' with the first SHOW items (strings are shown as they are)."""
    items = list(items)
    count = len(items) if count is None else count
    shown = ", ".join(x if isinstance(x, str) else repr(x) for x in items[:SHOW])
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


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _is_id(x: Any) -> bool:
    return _is_int(x) or isinstance(x, str)


def _number(x: Any) -> bool:
    return (_is_int(x) or isinstance(x, float)) and math.isfinite(x)


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
    r.refuse(f"{kind} ids that are not {expect}", [i for i in ids if not valid(i)])
    counts = Counter(i for i in ids if valid(i))
    r.refuse(f"duplicate {kind} ids", sorted((i for i, n in counts.items() if n > 1), key=str))


def _check_structure(r: _Report, data: dict[str, Any]) -> None:
    cats, images, annos = data["categories"], data["images"], data["annotations"]
    if not cats:
        r.refusals.append("'categories' is empty (list every category as {'id', 'name'})")
    _entries(r, cats, "categories", ("id", "name"))
    _entries(r, images, "images", ("id", "file_name"))
    _entries(r, annos, "annotations", ("image_id", "category_id", "segmentation"))
    _unique_ids(r, cats, "categories", _is_int, "integers")
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


def _decode_rle_string(s: str) -> list[int] | None:
    """Counts of a compressed COCO RLE string (pycocotools' rleFrString, maskApi.c); None if malformed."""
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _rle_of(segm: dict, height: int, width: int) -> tuple[Any, str]:
    """(pycocotools RLE, "") for a valid RLE segmentation, else (None, "problem kind|detail")."""
    size, counts = segm.get("size"), segm.get("counts")
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(_is_int(v) for v in size)):
        return None, f"annotations whose RLE 'size' is not [height, width]| ({size!r})"
    if [int(size[0]), int(size[1])] != [height, width]:
        return None, (
            "annotations whose RLE size differs from their image's [height, width]"
            f"| (RLE {list(size)}, image [{height}, {width}])"
        )
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts):
            return None, "annotations whose RLE counts are not non-negative integers|"
        values = counts
    elif isinstance(counts, str | bytes):
        text = counts.decode("ascii", "replace") if isinstance(counts, bytes) else counts
        values = _decode_rle_string(text)
        if values is None or any(v < 0 for v in values):
            return (
                None,
                "annotations whose compressed RLE counts are not a valid pycocotools string|",
            )
        counts = text.encode("ascii")
    else:
        return None, "annotations with an RLE that lacks 'counts' (a list or a string)|"
    total = int(sum(values))
    if total != height * width:
        return None, (
            "annotations whose RLE counts do not add up to their image's pixel count"
            f"| ({total} pixels; image {height} x {width} = {height * width})"
        )
    if isinstance(counts, list):
        return mask_util.frPyObjects({"size": [height, width], "counts": counts}, height, width), ""
    return {"size": [height, width], "counts": counts}, ""


def _polygon_parts(segm: list) -> tuple[list[list[float]], int]:
    """The valid parts of a polygon list (>= 3 finite points, even length) and how many were dropped."""
    good = []
    for part in segm:
        if (
            isinstance(part, list)
            and len(part) >= 6
            and len(part) % 2 == 0
            and set(map(type, part)) <= _PLAIN_NUMBERS
            and math.isfinite(sum(part))  # NaN or inf anywhere makes the sum NaN or inf
        ):
            good.append(part)
    return good, len(segm) - len(good)


def _size_ok(image: dict) -> bool:
    h, w = image.get("height"), image.get("width")
    return _is_int(h) and _is_int(w) and h > 0 and w > 0


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


def _box_fits(box: list[float], ref: list[float]) -> bool:
    """Does an XYWH box fit the reference XYWH box (all edges within 2 px, or IoU >= 0.9)?"""
    x0, y0, x1, y1 = box[0], box[1], box[0] + box[2], box[1] + box[3]
    r0, s0, r1, s1 = ref[0], ref[1], ref[0] + ref[2], ref[1] + ref[3]
    if max(abs(x0 - r0), abs(y0 - s0), abs(x1 - r1), abs(y1 - s1)) <= BOX_TOLERANCE_PX:
        return True
    inter = max(0.0, min(x1, r1) - max(x0, r0)) * max(0.0, min(y1, s1) - max(y0, s0))
    union = box[2] * box[3] + ref[2] * ref[3] - inter
    return union > 0 and inter / union >= BOX_TOLERANCE_IOU


class _AnnotationPass:
    """Per-annotation checks and repairs; each list collects the ids (or 'annotations[i]') of one kind."""

    def __init__(self) -> None:
        self.parts_dropped: list[Any] = []
        self.no_valid_part: list[Any] = []
        self.empty_mask: list[Any] = []
        self.box_missing: list[Any] = []
        self.box_xyxy: list[Any] = []
        self.box_misfit: list[Any] = []
        self.area_fixed: list[Any] = []
        self.crowd_filled: list[Any] = []
        self.crowd_bad: list[Any] = []
        self.bad_type: list[Any] = []
        self.rle_problems: dict[str, list[str]] = {}

    def mask(self, a: dict, label: Any, height: int, width: int) -> tuple[dict, Any] | None:
        """(annotation with valid polygon parts, RLE) or None (dropped or refused)."""
        segm = a["segmentation"]
        if isinstance(segm, list):
            parts, dropped = _polygon_parts(segm)
            if not parts:
                self.no_valid_part.append(label)
                return None
            if dropped:
                self.parts_dropped.append(label)
                a = dict(a, segmentation=parts)
            rles = mask_util.frPyObjects(parts, height, width)
            return a, rles[0] if len(rles) == 1 else mask_util.merge(rles)
        if isinstance(segm, dict):
            rle, problem = _rle_of(segm, height, width)
            if rle is None:
                kind, _, detail = problem.partition("|")
                self.rle_problems.setdefault(kind, []).append(f"{label}{detail}")
                return None
            return a, rle
        self.bad_type.append(label)
        return None

    def fields(self, a: dict, label: Any, rle: Any) -> dict | None:
        """bbox, area and iscrowd checked against the mask; None when the mask is empty (dropped)."""
        area = float(mask_util.area(rle))
        if area == 0:
            self.empty_mask.append(label)
            return None
        box = [float(v) for v in mask_util.toBbox(rle)]  # XYWH, the mask's tight box
        given = a.get("bbox")
        if not (
            isinstance(given, list)
            and len(given) == 4
            and all(map(_number, given))
            and given[2] >= 0
            and given[3] >= 0
        ):
            self.box_missing.append(label)
            a = dict(a, bbox=box)
        elif not _box_fits(given, box):
            as_xyxy = [given[0], given[1], given[2] - given[0], given[3] - given[1]]
            (self.box_xyxy if _box_fits(as_xyxy, box) else self.box_misfit).append(label)
            a = dict(a, bbox=box)
        given_area = a.get("area")
        low, high = area / AREA_FACTOR - AREA_SLACK_PX, area * AREA_FACTOR + AREA_SLACK_PX
        if not (_number(given_area) and given_area > 0 and low <= given_area <= high):
            self.area_fixed.append(label)
            a = dict(a, area=area)
        crowd = a.get("iscrowd")
        if crowd is None:
            self.crowd_filled.append(label)
            a = dict(a, iscrowd=0)
        elif not ((_is_int(crowd) or isinstance(crowd, bool)) and crowd in (0, 1)):
            self.crowd_bad.append(label)
            return None
        return a


def _check_references(r: _Report, data: dict[str, Any], image_by_id: dict) -> list[dict]:
    """Refuse unknown category / image ids; returns the annotations whose references are valid."""
    annos = data["annotations"]
    cat_ids = {c["id"] for c in data["categories"]}
    unknown = [a for a in annos if not (_is_id(a["category_id"]) and a["category_id"] in cat_ids)]
    if unknown:
        bad = sorted({repr(a["category_id"]) for a in unknown})
        r.refusals.append(
            f"{len(unknown)} annotations use category ids that are not in 'categories': {listing(bad)}; known "
            f"ids are {sorted(cat_ids)}"
        )
    orphans = [a for a in annos if not (_is_id(a["image_id"]) and a["image_id"] in image_by_id)]
    if orphans:
        bad = sorted({repr(a["image_id"]) for a in orphans})
        r.refusals.append(
            f"{len(orphans)} annotations refer to image ids with no entry in 'images': {listing(bad)}"
        )
    return [a for a in annos if _is_id(a["image_id"]) and a["image_id"] in image_by_id]


def _report_annotations(r: _Report, p: _AnnotationPass) -> None:
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
    counts = Counter(i for i in ids if _is_int(i))
    bad = [
        i if "id" in a else f"annotations[{n}] (no id)"
        for n, (a, i) in enumerate(zip(annos, ids, strict=True))
        if not (_is_int(i) and i > 0 and counts[i] == 1)
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

    p, kept = _AnnotationPass(), []
    for i, a in enumerate(annos):
        image = image_by_id[a["image_id"]]
        if not _size_ok(image):
            continue  # refused above
        label = a.get("id", f"annotations[{i}]")
        masked = p.mask(a, label, image["height"], image["width"])
        if masked is not None:
            checked = p.fields(masked[0], label, masked[1])
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

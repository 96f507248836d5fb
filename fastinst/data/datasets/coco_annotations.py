"""Per-annotation checks of the COCO validation pass (coco_validation.py): segmentation, bbox, area, iscrowd.

Each annotation is compared with its own mask:

- polygons: parts with fewer than 3 points, an odd number of coordinates or non-numbers are dropped (the rest is
  kept); the reference box is the parts' coordinate extent clipped to the image (COCO's own convention) and the
  reference area the polygons' (shoelace) area or, when that does not fit, pycocotools' pixel count;
- RLE (compressed string or uncompressed list): size must be the image's [height, width] and the counts must
  add up to height x width; the reference box and area are pycocotools' `toBbox` / `area`.

A mask is rasterised only when it is needed (a polygon with (almost) no area, an area that fits no cheap
reference), which keeps the pass at a few microseconds per typical annotation.
"""

from __future__ import annotations

import math
from operator import mul
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

__all__ = ["AnnotationPass", "is_int", "is_number"]

# A json bbox fits its mask when every edge is within this (rounding of the coordinates). Anything looser is
# replaced by the mask's box, with a warning: predicted boxes are the tight boxes of the predicted masks, so a
# ground-truth box even 1 px off costs AP at COCO's high IoU thresholds (a 16 px square 1 px wider: IoU 0.94).
BOX_TOLERANCE_PX = 0.5
AREA_FACTOR, AREA_SLACK_PX = 2.0, 4.0  # an area fits within [ref / 2 - 4, 2 * ref + 4] pixels
_PLAIN_NUMBERS = {int, float}


def is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    return type(x) in _PLAIN_NUMBERS and math.isfinite(x)


def rle_string_total(s: str | bytes) -> int | None:
    """Sum of the counts of a compressed COCO RLE string; None if malformed or a count is negative.

    The format is pycocotools' rleToString / rleFrString (maskApi.c): each count is a little-endian run of 5-bit
    chunks stored as chr(48 + chunk), bit 0x20 = another chunk follows, bit 0x10 of the last chunk = negative;
    from the fourth count on, each is stored as the difference to the count two places before. Vectorised with
    numpy (a per-character Python loop costs ~300 us per COCO-sized mask).
    """
    c = np.frombuffer(s.encode("ascii", "replace") if isinstance(s, str) else s, np.uint8)
    c = c.astype(np.int64) - 48
    if c.size == 0:
        return 0
    if c.min() < 0 or c.max() >= 64 or c[-1] & 0x20:
        return None  # a character outside the alphabet, or the string ends inside a count
    ends = np.flatnonzero((c & 0x20) == 0)  # (M,) the last chunk of each count
    starts = np.concatenate(([0], ends[:-1] + 1))
    k = np.arange(c.size) - np.repeat(starts, ends - starts + 1)  # chunk index within its count
    if k.max() > 11:
        return None  # more than 60 bits: not a count of a real mask
    raw = np.add.reduceat((c & 0x1F) << (5 * k), starts)  # (M,) the unsigned values
    negative = (c[ends] & 0x10) != 0
    raw = raw - (negative.astype(np.int64) << (5 * (k[ends] + 1)))
    counts = raw.copy()
    counts[3::2] = np.cumsum(raw[1::2])[1:]  # counts[m] = raw[m] + counts[m - 2] for m > 2
    counts[4::2] = np.cumsum(raw[2::2])[1:]
    if counts.min() < 0:
        return None
    return int(counts.sum())


def rle_of(segm: dict, height: int, width: int) -> tuple[Any, str]:
    """(pycocotools RLE, "") for a valid RLE segmentation, else (None, "problem kind|detail")."""
    size, counts = segm.get("size"), segm.get("counts")
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(is_int(v) for v in size)):
        return None, f"annotations whose RLE 'size' is not [height, width]| ({size!r})"
    if [int(size[0]), int(size[1])] != [height, width]:
        return None, (
            "annotations whose RLE size differs from their image's [height, width]"
            f"| (RLE {list(size)}, image [{height}, {width}])"
        )
    if isinstance(counts, list):
        if not (set(map(type, counts)) <= {int} and (not counts or min(counts) >= 0)):
            return None, "annotations whose RLE counts are not non-negative integers|"
        total = sum(counts)
    elif isinstance(counts, str | bytes):
        total = rle_string_total(counts)
        if total is None:
            return (
                None,
                "annotations whose compressed RLE counts are not a valid pycocotools string|",
            )
        counts = counts.encode("ascii") if isinstance(counts, str) else counts
    else:
        return None, "annotations with an RLE that lacks 'counts' (a list or a string)|"
    if total != height * width:
        return None, (
            "annotations whose RLE counts do not add up to their image's pixel count"
            f"| ({total} pixels; image {height} x {width} = {height * width})"
        )
    if isinstance(counts, list):
        return mask_util.frPyObjects({"size": [height, width], "counts": counts}, height, width), ""
    return {"size": [height, width], "counts": counts}, ""


def polygon_parts(segm: list) -> tuple[list[list[float]], int]:
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


def polygon_geometry(
    parts: list[list[float]], height: int, width: int
) -> tuple[list[float], float]:
    """(XYWH coordinate extent clipped to the image, summed shoelace area of the parts)."""
    x0 = y0 = math.inf
    x1 = y1 = -math.inf
    twice_area = 0.0
    for part in parts:
        xs, ys = part[0::2], part[1::2]
        x0, y0, x1, y1 = min(x0, *xs), min(y0, *ys), max(x1, *xs), max(y1, *ys)
        # shoelace: sum of x_i * y_(i+1) - y_i * x_(i+1), cyclic
        cross = sum(map(mul, xs, ys[1:] + ys[:1])) - sum(map(mul, ys, xs[1:] + xs[:1]))
        twice_area += abs(cross)
    x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], 0.5 * twice_area


def box_fits(box: list[float], ref: list[float]) -> bool:
    """Does an XYWH box fit the reference XYWH box (every edge within BOX_TOLERANCE_PX)?"""
    x0, y0, x1, y1 = box[0], box[1], box[0] + box[2], box[1] + box[3]
    r0, s0, r1, s1 = ref[0], ref[1], ref[0] + ref[2], ref[1] + ref[3]
    return max(abs(x0 - r0), abs(y0 - s0), abs(x1 - r1), abs(y1 - s1)) <= BOX_TOLERANCE_PX


def _area_fits(area: Any, ref: float) -> bool:
    return (
        is_number(area)
        and area > 0
        and ref / AREA_FACTOR - AREA_SLACK_PX <= area <= ref * AREA_FACTOR + AREA_SLACK_PX
    )


class AnnotationPass:
    """Checks and repairs one annotation at a time; each list collects the ids (or 'annotations[i]') of a kind."""

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

    def __call__(self, a: dict, label: Any, height: int, width: int) -> dict | None:
        """The annotation, repaired where needed; None when it is dropped or refused (recorded here)."""
        segm = a["segmentation"]
        if isinstance(segm, list):
            parts, dropped = polygon_parts(segm)
            if not parts:
                self.no_valid_part.append(label)
                return None
            if dropped:
                self.parts_dropped.append(label)
                a = dict(a, segmentation=parts)
            box, area = polygon_geometry(parts, height, width)

            def raster() -> Any:
                rles = mask_util.frPyObjects(parts, height, width)
                return rles[0] if len(rles) == 1 else mask_util.merge(rles)

            rle = raster() if area < 1.0 or box[2] == 0 or box[3] == 0 else None
        elif isinstance(segm, dict):
            rle, problem = rle_of(segm, height, width)
            if rle is None:
                kind, _, detail = problem.partition("|")
                self.rle_problems.setdefault(kind, []).append(f"{label}{detail}")
                return None
            box, area = [float(v) for v in mask_util.toBbox(rle)], float(mask_util.area(rle))
        else:
            self.bad_type.append(label)
            return None
        if rle is not None and isinstance(segm, list):
            area = float(mask_util.area(rle))  # an (almost) degenerate polygon: count its pixels
        if area == 0:
            self.empty_mask.append(label)
            return None
        a = self._box(a, label, box)
        given_area = a.get("area")
        if not _area_fits(given_area, area):
            pixels = float(mask_util.area(rle if rle is not None else raster()))
            if not _area_fits(given_area, pixels):
                self.area_fixed.append(label)
                a = dict(a, area=pixels)
        return self._crowd(a, label)

    def _box(self, a: dict, label: Any, box: list[float]) -> dict:
        given = a.get("bbox")
        if not (
            isinstance(given, list)
            and len(given) == 4
            and all(map(is_number, given))
            and given[2] >= 0
            and given[3] >= 0
        ):
            self.box_missing.append(label)
            return dict(a, bbox=box)
        if box_fits(given, box):
            return a
        as_xyxy = [given[0], given[1], given[2] - given[0], given[3] - given[1]]
        (self.box_xyxy if box_fits(as_xyxy, box) else self.box_misfit).append(label)
        return dict(a, bbox=box)

    def _crowd(self, a: dict, label: Any) -> dict | None:
        crowd = a.get("iscrowd")
        if crowd is None:
            self.crowd_filled.append(label)
            return dict(a, iscrowd=0)
        if not ((is_int(crowd) or isinstance(crowd, bool)) and crowd in (0, 1)):
            self.crowd_bad.append(label)
            return None
        return a

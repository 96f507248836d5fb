"""Image and object sizes of a COCO instance json, read from the annotations alone (no image is decoded).

The input-size rule (`fastinst.engine.input_size`) reads these numbers to choose the training and test sizes
of the custom-data recipe (configs/custom/fastinst_R18_custom.yaml).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["DatasetStats", "coco_dataset_stats", "dataset_stats_from_dicts", "has_thin_part"]

# An object whose extent (the long side of its box) exceeds this many times sqrt(area) has a thin part (a bar, a
# long tip): a 40 x 10 px bar has 40 / 20 = 2. Used to split the box figures of tools/mask_map_bound.py and
# tools/box_diagnostics.py (docs/training.md, "Boxes").
THIN_PART_RATIO = 2.0


def has_thin_part(box_width: float, box_height: float, area: float) -> bool:
    """True when max(box_width, box_height) > THIN_PART_RATIO x sqrt(area) (pixels, pixels, pixels^2)."""
    return max(box_width, box_height) > THIN_PART_RATIO * math.sqrt(max(area, 1e-6))


@dataclass(frozen=True)
class DatasetStats:
    """Sizes of a dataset, all in pixels of the original images.

    Attributes:
        num_images: images in the json.
        num_objects: non-crowd annotations with a positive area.
        image_short: median short side of the images.
        image_long: median long side of the images.
        aspect: median long / short side ratio (>= 1).
        aspect_max: 95th percentile of the long / short ratio (>= 1).
        object_size: median object size, sqrt(mask area) (for a 40 x 10 px bar: 20).
        object_rel: median of sqrt(area) / short side of the object's own image (0..1): the object size
            relative to the image, which stays the same when the image is resized.
        object_rel_p25: 25th percentile of the same ratio (the smaller objects).
    """

    num_images: int
    num_objects: int
    image_short: float
    image_long: float
    aspect: float
    aspect_max: float
    object_size: float
    object_rel: float
    object_rel_p25: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dataset_stats_from_dicts(images: list[dict], annotations: list[dict]) -> DatasetStats:
    """Statistics of COCO `images` ({"id", "height", "width"}) and `annotations` ({"image_id", "area",
    optional "bbox", "iscrowd"}).

    An annotation's size is sqrt(area), from its "area" field, or from its bbox (w * h) when the area is missing
    or <= 0. Crowd annotations and annotations of unknown images are left out.

    Raises:
        ValueError: no image with a positive size, or no usable annotation.
    """
    shorts, longs = [], []
    short_by_id = {}
    for img in images:
        h, w = float(img["height"]), float(img["width"])
        if h > 0 and w > 0:
            shorts.append(min(h, w))
            longs.append(max(h, w))
            short_by_id[img["id"]] = min(h, w)
    if not shorts:
        raise ValueError("no image with a positive height and width")
    sizes, rel = [], []
    for a in annotations:
        if a.get("iscrowd", 0) or a.get("image_id") not in short_by_id:
            continue
        area = float(a.get("area") or 0.0)
        if area <= 0 and len(a.get("bbox") or ()) == 4:
            area = float(a["bbox"][2]) * float(a["bbox"][3])
        if area <= 0:
            continue
        sizes.append(math.sqrt(area))
        rel.append(math.sqrt(area) / short_by_id[a["image_id"]])
    if not sizes:
        raise ValueError("no non-crowd annotation with a positive area")
    ratios = np.asarray(longs) / np.asarray(shorts)
    return DatasetStats(
        num_images=len(images),
        num_objects=len(sizes),
        image_short=float(np.median(shorts)),
        image_long=float(np.median(longs)),
        aspect=float(np.median(ratios)),
        aspect_max=float(np.percentile(ratios, 95)),
        object_size=float(np.median(sizes)),
        object_rel=float(np.median(rel)),
        object_rel_p25=float(np.percentile(rel, 25)),
    )


def coco_dataset_stats(json_file: str | os.PathLike) -> DatasetStats:
    """`dataset_stats_from_dicts` of a COCO json file (its "images" and "annotations").

    Raises:
        OSError: the file cannot be read. ValueError: it is not JSON, or has no usable image or annotation
            (the message names the file).
    """
    json_file = os.fspath(json_file)
    with open(json_file, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_file}: not valid JSON ({e.msg})") from e
    try:
        return dataset_stats_from_dicts(data.get("images", []), data.get("annotations", []))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{json_file}: cannot measure image and object sizes: {e}") from e

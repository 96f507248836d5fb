#!/usr/bin/env python
"""Convert ADE20K instance annotations to COCO json (for `ade20k_instance_{train,val}`).

Reads, under `$DETECTRON2_DATASETS` (default `datasets`)::

    ADEChallengeData2016/images/{training,validation}/*.jpg
    ADEChallengeData2016/annotations_instance/{training,validation}/*.png   (R: category, G: instance id)

and writes `ADEChallengeData2016/ade20k_instance_{train,val}.json`. Images get id = file stem (a string, as in
the official files); each nonzero instance id becomes one annotation with an RLE mask, bbox [x, y, w, h] with
inclusive extents, area from the RLE and iscrowd 0; annotation ids count from 1.

Two small metadata files from the official FastInst / Mask2Former repositories are needed (not shipped here):
`datasets/ade20k_instance_imgCatIds.json` (its "categories": the 100 instance classes, ids 1..100) and
`datasets/ade20k_instance_catid_mapping.txt` (rows "instance-id  SceneParsing150-id  full-ADE-id", one header
line). Category ids in the output are SceneParsing150 id - 1, as in the official conversion.

Usage: python datasets/prepare_ade20k_ins_seg.py [--root DIR] [--img-cat-ids FILE] [--catid-mapping FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

HERE = os.path.dirname(os.path.abspath(__file__))
SPLITS = {"training": "train", "validation": "val"}
WHERE_TO_GET = (
    "It ships with the official FastInst (and Mask2Former) repository under datasets/; copy it there or "
    "pass its path with {flag}."
)


def _require(path: str, flag: str) -> None:
    if not os.path.isfile(path):
        raise SystemExit(f"error: '{path}' not found. " + WHERE_TO_GET.format(flag=flag))


def load_categories(
    img_cat_ids: str, catid_mapping: str
) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Read the 100 instance categories and map their ids to SceneParsing150 id - 1.

    Returns:
        categories: COCO category entries with remapped ids.
        id_map: instance-challenge id (the R value in the pngs) -> output category id.
    """
    _require(img_cat_ids, "--img-cat-ids")
    _require(catid_mapping, "--catid-mapping")
    with open(img_cat_ids) as f:
        meta = json.load(f)
    if not isinstance(meta, dict) or not isinstance(meta.get("categories"), list):
        raise SystemExit(f"error: '{img_cat_ids}' has no 'categories' list.")
    id_map: dict[int, int] = {}
    with open(catid_mapping) as f:
        for line in f:
            cols = line.split()
            if len(cols) >= 2 and cols[0].isdigit() and cols[1].isdigit():  # skips the header
                id_map[int(cols[0])] = int(cols[1]) - 1
    categories = []
    for cat in meta["categories"]:
        if cat["id"] not in id_map:
            raise SystemExit(
                f"error: category {cat['id']} ({cat.get('name')}) of '{img_cat_ids}' has no row in "
                f"'{catid_mapping}'."
            )
        categories.append({**cat, "id": id_map[cat["id"]]})
    return categories, id_map


def _annotations(
    png: np.ndarray, id_map: dict[int, int], image_id: str, next_id: int
) -> list[dict[str, Any]]:
    """One annotation per nonzero instance id (G channel); the category is the majority R value under it."""
    cat_map, ins_map = png[..., 0], png[..., 1]
    annotations = []
    for ins in np.unique(ins_map):
        if ins == 0:
            continue
        mask = ins_map == ins
        cat = int(np.bincount(cat_map[mask]).argmax())
        if cat not in id_map:
            continue  # background or a category outside the 100 instance classes
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        annotations.append(
            {
                "id": next_id + len(annotations),
                "image_id": image_id,
                "category_id": id_map[cat],
                "segmentation": rle,
                "area": float(mask_util.area(rle)),
                "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                "iscrowd": 0,
            }
        )
    return annotations


def convert_split(
    ade_root: str, split: str, categories: list[dict[str, Any]], id_map: dict[int, int]
) -> str:
    """Write `ade20k_instance_{train,val}.json` for `split` ("training" or "validation"); return its path."""
    image_dir = os.path.join(ade_root, "images", split)
    ann_dir = os.path.join(ade_root, "annotations_instance", split)
    for d in (image_dir, ann_dir):
        if not os.path.isdir(d):
            raise SystemExit(
                f"error: '{d}' not found; see datasets/README.md for the ADE20K layout."
            )
    images, annotations, missing = [], [], []
    for file_name in sorted(f for f in os.listdir(image_dir) if f.lower().endswith(".jpg")):
        stem = os.path.splitext(file_name)[0]
        png_path = os.path.join(ann_dir, stem + ".png")
        if not os.path.isfile(png_path):
            missing.append(stem)
            continue
        with Image.open(os.path.join(image_dir, file_name)) as img:
            width, height = img.size
        png = np.asarray(Image.open(png_path).convert("RGB"))
        if png.shape[:2] != (height, width):
            raise SystemExit(
                f"error: '{png_path}' is {png.shape[:2]}, its image {(height, width)}."
            )
        images.append({"id": stem, "file_name": file_name, "width": width, "height": height})
        annotations += _annotations(png, id_map, stem, len(annotations) + 1)
    if missing:
        print(
            f"warning: {len(missing)} images in {image_dir} have no instance png, e.g. {missing[:3]}"
        )
    out = os.path.join(ade_root, f"ade20k_instance_{SPLITS[split]}.json")
    with open(out, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    print(f"{out}: {len(images)} images, {len(annotations)} instances")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        default=os.getenv("DETECTRON2_DATASETS", "datasets"),
        help="folder that contains ADEChallengeData2016 (default: $DETECTRON2_DATASETS or datasets)",
    )
    parser.add_argument(
        "--img-cat-ids", default=os.path.join(HERE, "ade20k_instance_imgCatIds.json")
    )
    parser.add_argument(
        "--catid-mapping", default=os.path.join(HERE, "ade20k_instance_catid_mapping.txt")
    )
    args = parser.parse_args(argv)
    categories, id_map = load_categories(args.img_cat_ids, args.catid_mapping)
    ade_root = os.path.join(os.path.expanduser(args.root), "ADEChallengeData2016")
    for split in SPLITS:
        convert_split(ade_root, split, categories, id_map)


if __name__ == "__main__":
    main(sys.argv[1:])

#!/usr/bin/env python
"""Cost of the COCO validation pass (fastinst/data/datasets/coco_validation.py), with printed figures.

1. A generated json of COCO train2017's size (default 118,287 images, 860,001 annotations: 640x480 images, one
   polygon of 12-40 points per object, 1% crowd regions as uncompressed RLE): `check_coco_json` without header
   checks (no image files), timed against `json.load` of the same file alone.
2. The header checks (open, EXIF orientation, size) of a folder's real files, e.g. the synthetic set written by
   `python -m fastinst.data.synthetic`:

    python tools/benchmark_coco_validation.py --images 118287 --annotations 860001
    python tools/benchmark_coco_validation.py --images 0 --coco-json datasets/synthetic/annotations/instances_train.json \\
        --image-root datasets/synthetic/train
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time

import numpy as np

from fastinst.data.datasets.coco_validation import check_coco_json
from fastinst.data.image_io import read_image_header


def generate(path: str, num_images: int, num_annotations: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    h, w = 480, 640
    images = [
        {"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "height": h, "width": w}
        for i in range(num_images)
    ]
    image_of = np.sort(rng.integers(1, num_images + 1, num_annotations))
    annotations = []
    for n, image_id in enumerate(image_of.tolist()):
        cx, cy = rng.uniform(40, w - 40), rng.uniform(40, h - 40)
        radius = rng.uniform(4, 35)
        if n % 100 == 0:  # crowd region as uncompressed RLE (column-major runs)
            x0, y0, bw, bh = int(cx - radius), int(cy - radius), int(2 * radius), int(2 * radius)
            counts, pos = [], 0
            for x in range(x0, x0 + bw):
                start = x * h + y0
                counts += [start - pos, bh]
                pos = start + bh
            counts.append(h * w - pos)
            segm, box, area, crowd = (
                {"size": [h, w], "counts": counts},
                [x0, y0, bw, bh],
                bw * bh,
                1,
            )
        else:
            k = int(rng.integers(6, 21))
            angles = np.sort(rng.uniform(0, 2 * math.pi, k))
            r = radius * rng.uniform(0.6, 1.0, k)
            xs, ys = cx + r * np.cos(angles), cy + r * np.sin(angles)
            polygon = np.round(np.stack([xs, ys], 1).reshape(-1), 2).tolist()
            box = [
                float(xs.min()),
                float(ys.min()),
                float(xs.max() - xs.min()),
                float(ys.max() - ys.min()),
            ]
            area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
            segm, crowd = [polygon], 0
        annotations.append(
            {"id": n + 1, "image_id": image_id, "category_id": int(rng.integers(1, 81)), "segmentation": segm,
             "bbox": box, "area": area, "iscrowd": crowd}
        )  # fmt: skip
    categories = [{"id": i, "name": f"class {i}"} for i in range(1, 81)]
    with open(path, "w") as f:
        json.dump({"info": {}, "licenses": [], "images": images, "annotations": annotations,
                   "categories": categories}, f)  # fmt: skip


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=118287)
    parser.add_argument("--annotations", type=int, default=860001)
    parser.add_argument("--coco-json", help="a json with real image files, for the header checks")
    parser.add_argument("--image-root")
    args = parser.parse_args()

    if args.images:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "big.json")
            seconds, _ = timed(generate, path, args.images, args.annotations)
            print(f"generated {args.images:,} images / {args.annotations:,} annotations "
                  f"({os.path.getsize(path) / 2**20:.0f} MB) in {seconds:.1f} s")  # fmt: skip
            load_s, _ = timed(lambda: json.load(open(path)))
            check_s, check = timed(check_coco_json, path, tmp, check_files=False)
            print(f"json.load alone: {load_s:.1f} s; check_coco_json (no header checks): {check_s:.1f} s "
                  f"({1e6 * (check_s - load_s) / args.annotations:.1f} us per annotation beyond the load); "
                  f"repairs: {len(check.warnings)} warnings")  # fmt: skip
            for line in check.warnings:
                print("  ", line[:200])
    if args.coco_json:
        check_s, check = timed(check_coco_json, args.coco_json, args.image_root, check_files=True)
        nocheck_s, _ = timed(check_coco_json, args.coco_json, args.image_root, check_files=False)
        names = [e["file_name"] for e in check.data["images"]]
        header_s, _ = timed(
            lambda: [read_image_header(os.path.join(args.image_root, n)) for n in names]
        )
        print(
            f"{args.coco_json}: {len(names):,} images, {check.summary['num_annotations']:,} annotations: "
            f"check_coco_json {check_s:.2f} s with header checks, {nocheck_s:.2f} s without; the header reads "
            f"alone {header_s:.2f} s ({1e3 * header_s / len(names):.2f} ms per image)"
        )


if __name__ == "__main__":
    main()

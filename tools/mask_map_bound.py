#!/usr/bin/env python
"""What a stride-8 mask map can hold at each input size, before any training.

Every ground-truth mask of a COCO json is reduced to the stride-8 grid of its image resized to a short side S
(area average: the fraction of each cell the object covers), brought back to the image size bilinearly and
thresholded at 0.5, as the model's post-processing does with its mask logits; its box is the tight box of that
mask (`fastinst.modeling.postprocessing.mask_boxes`) or, with --box-threshold, of the map thresholded lower.
The results are scored with pycocotools as predictions of score 1 (mask AP, box AP, AP-small) and summarised as
median mask / box IoUs for compact objects and for objects with a thin part
(`fastinst.data.dataset_stats.has_thin_part`: extent > 2 x sqrt(area)).

    python tools/mask_map_bound.py photos/annotations/instances_val.json --sizes 176 256 416 512

docs/training.md ("Input size") has the figures for the generator's "photos" preset.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fastinst.data.dataset_stats import has_thin_part
from fastinst.modeling.postprocessing import mask_boxes

STRIDE = 8


def reduced_masks(coco: COCO, side: int, box_threshold: float):
    """Yield (image id, annotation, reduced bool mask (h, w), box (x0, y0, x1, y1)) for every annotation."""
    for img in coco.loadImgs(coco.getImgIds()):
        h, w = img["height"], img["width"]
        scale = side / min(h, w)
        grid = (int(np.ceil(w * scale / STRIDE)), int(np.ceil(h * scale / STRIDE)))  # (W8, H8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"], iscrowd=False)):
            cells = cv2.resize(
                coco.annToMask(ann).astype(np.float32), grid, interpolation=cv2.INTER_AREA
            )
            prob = F.interpolate(
                torch.from_numpy(cells)[None, None],
                size=(h, w),
                mode="bilinear",
                align_corners=False,
            )[0]  # (1, h, w)
            box = mask_boxes(prob > box_threshold)[0].tolist()
            yield img["id"], ann, (prob[0] > 0.5).numpy(), box


def evaluate(coco: COCO, side: int, box_threshold: float) -> str:
    results, rows = [], []
    for image_id, ann, mask, box in reduced_masks(coco, side, box_threshold):
        gt = coco.annToMask(ann).astype(bool)
        union = (mask | gt).sum()
        gt_box = BoxMode.convert(ann["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
        box_iou = pairwise_iou(Boxes(torch.tensor([box])), Boxes(torch.tensor([gt_box]))).item()
        thin = has_thin_part(ann["bbox"][2], ann["bbox"][3], ann["area"])
        rows.append(((mask & gt).sum() / max(union, 1), box_iou, thin))
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        xywh = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
        results.append(
            {
                "image_id": image_id,
                "category_id": ann["category_id"],
                "segmentation": rle,
                "bbox": xywh,
                "score": 1.0,
            }
        )
    ap = {}
    for task in ("segm", "bbox"):
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(coco, coco.loadRes(results), task)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        ap[task] = (100 * ev.stats[0], 100 * ev.stats[3])
    r = np.array(rows)
    thin = r[:, 2] > 0
    groups = []
    for name, sel in (("compact", ~thin), ("thin part", thin)):
        if sel.any():
            groups.append(
                f"{name} ({sel.sum()}) {np.median(r[sel, 0]):.3f} / {np.median(r[sel, 1]):.3f}"
            )
    return (
        f"S={side} box threshold {box_threshold:g}: mask AP {ap['segm'][0]:.1f} "
        f"(small {ap['segm'][1]:.1f}), box AP {ap['bbox'][0]:.1f} (small {ap['bbox'][1]:.1f}); "
        f"median mask / box IoU: all {np.median(r[:, 0]):.3f} / {np.median(r[:, 1]):.3f}, "
        + ", ".join(groups)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="COCO instance json (only its annotations are read)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[176, 256, 416, 512])
    parser.add_argument("--box-threshold", type=float, nargs="+", default=[0.5])
    args = parser.parse_args(argv)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(args.json)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {args.json}: cannot read it as a COCO json ({e})", file=sys.stderr)
        return 2
    for side in args.sizes:
        for t in args.box_threshold:
            print(evaluate(coco, side, t), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Why a trained model's boxes score below its masks: matched-instance figures on a COCO json.

    python tools/box_diagnostics.py --config-file output/custom/config.yaml --weights output/custom/model_final.pth \
        --coco-val photos/annotations/instances_val.json photos/val [KEY VALUE ...]

KEY VALUE pairs override the config (e.g. MODEL.FASTINST.TEST.LARGEST_COMPONENT True). For each ground-truth object
(not crowd), the highest-scoring prediction whose mask IoU with it is >= 0.5 is its match. Printed:
- matched objects, median mask IoU and box IoU (the model's own pred_boxes against the json's mask boxes), for all
  objects, compact ones and those with a thin part (`fastinst.data.dataset_stats.has_thin_part`);
- the share of matched masks with more than one 8-connected component, and the share of the pixels outside each
  such mask's largest component that lie on other objects (a mask firing on other objects of its class);
- the median and 90th percentile of predicted box area / object box area, and of the width error in px.
These are the figures of docs/training.md ("Boxes"). Exit 2 with one line on bad input (files, config, weights).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def diagnose(predictor, coco, image_root: str, max_matches_per_image: int = 100) -> dict[str, list]:
    """Per matched object: mask IoU, box IoU, thin?, components, stray pixels (total, on objects), box ratios."""
    import cv2
    import pycocotools.mask as mask_util
    import torch
    from detectron2.structures import Boxes, pairwise_iou

    from fastinst.data.dataset_stats import has_thin_part
    from fastinst.data.image_io import read_image

    rows: dict[str, list] = {k: [] for k in ("miou", "biou", "thin", "multi", "ratio", "dw")}
    stray = [0, 0]  # pixels outside the largest component, of which on other objects
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False))
        if not anns:
            continue
        image = read_image(str(Path(image_root) / info["file_name"]), format="BGR")
        instances = predictor(image)
        masks = instances.pred_masks.numpy()[:max_matches_per_image]
        boxes = instances.pred_boxes.tensor.numpy()[:max_matches_per_image]
        gt_masks = [coco.annToMask(a).astype(bool) for a in anns]
        objects = np.any(gt_masks, axis=0)
        pred_rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        gt_rles = mask_util.encode(np.asfortranarray(np.stack(gt_masks, -1).astype(np.uint8)))
        ious = mask_util.iou(
            pred_rles, gt_rles, [0] * len(gt_rles)
        )  # (P, G), predictions in score order
        for g, gt in enumerate(gt_masks):
            hits = np.flatnonzero(ious[:, g] >= 0.5) if len(masks) else []
            if len(hits) == 0:
                continue
            j = hits[0]
            gt_box = mask_util.toBbox(gt_rles[g])
            gt_box = np.array([gt_box[0], gt_box[1], gt_box[0] + gt_box[2], gt_box[1] + gt_box[3]])
            count, labels, stats, _ = cv2.connectedComponentsWithStats(
                masks[j].view(np.uint8), connectivity=8
            )
            if count > 2:
                largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
                outside = (labels > 0) & (labels != largest)
                stray[0] += int(outside.sum())
                stray[1] += int((outside & objects & ~gt).sum())
            pred_area = (boxes[j][2] - boxes[j][0]) * (boxes[j][3] - boxes[j][1])
            gt_area = (gt_box[2] - gt_box[0]) * (gt_box[3] - gt_box[1])
            rows["miou"].append(float(ious[j, g]))
            rows["biou"].append(
                pairwise_iou(
                    Boxes(torch.as_tensor(boxes[j : j + 1])), Boxes(torch.as_tensor(gt_box[None]))
                ).item()
            )
            rows["thin"].append(
                has_thin_part(gt_box[2] - gt_box[0], gt_box[3] - gt_box[1], gt.sum())
            )
            rows["multi"].append(count > 2)
            rows["ratio"].append(float(pred_area / max(gt_area, 1e-9)))
            rows["dw"].append(float((boxes[j][2] - boxes[j][0]) - (gt_box[2] - gt_box[0])))
    rows["stray"] = stray
    return rows


def report(rows: dict[str, list], num_objects: int) -> list[str]:
    miou, biou, thin, dw = (np.array(rows[k]) for k in ("miou", "biou", "thin", "dw"))
    lines = [f"matched {len(miou)} of {num_objects} objects (mask IoU >= 0.5)"]
    for name, sel in (("all", np.ones(len(miou), bool)), ("compact", ~thin), ("thin part", thin)):
        if sel.any():
            lines.append(
                f"  {name:9s} {int(sel.sum()):5d}: median mask IoU {np.median(miou[sel]):.2f}, "
                f"box IoU {np.median(biou[sel]):.2f}; box IoU < 0.5 for {np.mean(biou[sel] < 0.5):.0%}; "
                f"width error median {np.median(dw[sel]):+.0f} px"
            )
    if len(miou):
        stray, on_objects = rows["stray"]
        lines.append(
            f"masks with > 1 component: {np.mean(rows['multi']):.0%}; their pixels outside the largest component: "
            f"{stray}, {on_objects / max(stray, 1):.0%} of them on other objects"
        )
        ratio = np.array(rows["ratio"])
        lines.append(
            f"box area / object box area: median {np.median(ratio):.2f}, 90th percentile "
            f"{np.percentile(ratio, 90):.1f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--coco-val", nargs=2, metavar=("JSON", "IMAGE_DIR"), required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    args = parser.parse_args(argv)
    import contextlib
    import io

    from pycocotools.coco import COCO

    from fastinst.predictor import FastInstPredictor

    json_file, image_root = args.coco_val
    try:
        predictor = FastInstPredictor(
            args.config_file, weights=args.weights, score_threshold=0.0, opts=args.opts
        )
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(json_file)
        rows = diagnose(predictor, coco, image_root)
    except (OSError, ValueError, KeyError) as e:
        print(f"box_diagnostics: {e}", file=sys.stderr)
        return 2
    print("\n".join(report(rows, len(coco.getAnnIds(iscrowd=False)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

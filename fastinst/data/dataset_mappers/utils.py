"""Helpers shared by the instance mappers: annotation masks after augmentation, padding, `Instances`.

Shape shorthand: G ground-truth instances, H x W the augmented image size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances, polygons_to_bitmask

__all__ = [
    "segmentation_to_mask",
    "annotations_to_masks",
    "instances_from_masks",
    "pad_to_multiple",
]


def segmentation_to_mask(
    segm: Any, transforms: T.TransformList, image_size: tuple[int, int]
) -> np.ndarray:
    """Apply `transforms` to one annotation's segmentation and rasterise it at `image_size`.

    Args:
        segm: polygons (list of flat [x0, y0, x1, y1, ...] lists, in the original image), COCO RLE (dict with
            compressed or uncompressed counts) or a (H0, W0) array mask.
        transforms: the transforms that were applied to the image.
        image_size: (H, W) of the transformed image.

    Returns:
        bool (H, W) mask. Polygons clipped away by a crop give an all-False mask.
    """
    h, w = image_size
    if isinstance(segm, list):
        polygons = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in segm]
        polygons = [p.reshape(-1) for p in transforms.apply_polygons(polygons)]
        polygons = [p for p in polygons if len(p) >= 6]  # a crop may leave degenerate pieces
        return polygons_to_bitmask(polygons, h, w)
    if isinstance(segm, dict):
        if isinstance(segm["counts"], list):  # uncompressed RLE
            segm = mask_util.frPyObjects(segm, *segm["size"])
        mask = mask_util.decode(segm)
    elif isinstance(segm, np.ndarray):
        mask = segm.astype(np.uint8)
    else:
        raise ValueError(
            f"Cannot use a segmentation of type {type(segm).__name__}: expected polygons "
            "(list of lists), COCO RLE (dict) or a 2-D numpy mask."
        )
    mask = transforms.apply_segmentation(mask)
    if tuple(mask.shape[:2]) != (h, w):
        raise ValueError(f"Transformed mask has shape {mask.shape[:2]} but the image is {(h, w)}.")
    return mask.astype(bool)


def annotations_to_masks(
    annos: list[dict[str, Any]], transforms: T.TransformList, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transformed masks and classes of a list of (non-crowd) annotations.

    Returns:
        masks: bool (G, H, W); classes: int64 (G,) from each annotation's (contiguous) `category_id`.
    """
    h, w = image_size
    masks = [segmentation_to_mask(a["segmentation"], transforms, image_size) for a in annos]
    classes = torch.tensor([int(a["category_id"]) for a in annos], dtype=torch.int64)
    if not masks:
        return torch.zeros((0, h, w), dtype=torch.bool), classes
    stacked = torch.from_numpy(np.ascontiguousarray(np.stack(masks)))  # (G, H, W)
    return stacked, classes


def instances_from_masks(
    masks: torch.Tensor, classes: torch.Tensor, image_size: tuple[int, int]
) -> Instances:
    """`Instances` with `gt_classes` (int64 (G,)), `gt_masks` (bool (G, H, W)) and `gt_boxes` (from masks).

    `gt_masks` is a plain bool tensor, not a detectron2 `BitMasks`, as FastInst's `prepare_targets` expects.
    `gt_boxes` are the tight boxes of the masks (all-zero for an empty mask); FastInst does not use them.
    """
    instances = Instances(image_size)
    instances.gt_classes = classes
    bitmasks = BitMasks(masks)
    instances.gt_masks = bitmasks.tensor  # (G, H, W) bool
    instances.gt_boxes = bitmasks.get_bounding_boxes()
    return instances


def pad_to_multiple(
    image: torch.Tensor, masks: torch.Tensor, divisibility: int, pad_value: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a (C, H, W) image and its (G, H, W) masks at the bottom/right up to multiples of `divisibility`.

    The image is padded with `pad_value` (about the pixel mean) and the masks with False.
    """
    h, w = image.shape[-2:]
    ph = (h + divisibility - 1) // divisibility * divisibility - h
    pw = (w + divisibility - 1) // divisibility * divisibility - w
    if ph == 0 and pw == 0:
        return image, masks
    image = torch.nn.functional.pad(image, (0, pw, 0, ph), value=pad_value)
    masks = torch.nn.functional.pad(masks, (0, pw, 0, ph), value=False)
    return image.contiguous(), masks.contiguous()

"""Large-scale-jitter training mapper (INPUT.DATASET_MAPPER_NAME "coco_instance_lsj"; no shipped config uses it).

Augmentation: [RandomFlip per INPUT.RANDOM_FLIP] + ResizeScale(MIN_SCALE..MAX_SCALE of IMAGE_SIZE^2) +
FixedSizeCrop(IMAGE_SIZE) (pads with 128 up to IMAGE_SIZE). Output::

    {"image": uint8 (3, S, S), "padding_mask": bool (S, S) (True on padding),
     "instances": Instances(gt_classes int64 (G,), gt_masks bool (G, S, S), gt_boxes (G, 4)), ...}

Unlike the "fastinst_instance" mapper, instances left empty by the crop are removed (by box and by mask).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..image_io import read_image
from .utils import annotations_to_masks, instances_from_masks

__all__ = ["COCOInstanceNewBaselineDatasetMapper"]


class COCOInstanceNewBaselineDatasetMapper:
    """Training-time instance mapper with large-scale jitter (resize-scale + fixed-size crop)."""

    @configurable
    def __init__(
        self,
        *,
        tfm_gens: list[T.Augmentation],
        image_format: str,
        is_train: bool = True,
    ):
        """
        Args:
            tfm_gens: the augmentations (flip, resize-scale, fixed-size crop).
            image_format: format passed to `read_image`.
            is_train: must be True (training only).
        """
        if not is_train:
            raise ValueError(
                "COCOInstanceNewBaselineDatasetMapper is a training mapper; evaluate with detectron2's "
                "DatasetMapper(cfg, is_train=False)."
            )
        self.tfm_gens = list(tfm_gens)
        self.image_format = image_format
        self.is_train = is_train

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict[str, Any]:
        size = cfg.INPUT.IMAGE_SIZE
        tfm_gens: list[T.Augmentation] = []
        if cfg.INPUT.RANDOM_FLIP != "none":
            tfm_gens.append(
                T.RandomFlip(
                    horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                    vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
                )
            )
        tfm_gens += [
            T.ResizeScale(cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE, size, size),
            # seg_pad_value=0 so that the padded area reads as "not image" in the padding mask below
            T.FixedSizeCrop(crop_size=(size, size), seg_pad_value=0),
        ]
        return {"tfm_gens": tfm_gens, "image_format": cfg.INPUT.FORMAT, "is_train": is_train}

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        """Map one detectron2 dataset dict (see the module docstring for the output)."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image(
            dataset_dict["file_name"],
            self.image_format,
            exif_transpose=dataset_dict.get("exif_transpose", True),
        )
        utils.check_image_size(dataset_dict, image)

        valid = np.ones(image.shape[:2], dtype=np.uint8)
        aug_input = T.AugInput(image)
        transforms = T.AugmentationList(self.tfm_gens)(aug_input)
        image = aug_input.image
        image_size = image.shape[:2]  # (S, S)
        valid = transforms.apply_segmentation(valid)  # 1 on image pixels, 0 on padding

        annos = [a for a in dataset_dict.pop("annotations", []) if int(a.get("iscrowd", 0)) == 0]
        masks, classes = annotations_to_masks(annos, transforms, image_size)  # (G, S, S), (G,)
        keep = masks.flatten(1).any(1)  # (G,) drop instances the crop removed
        instances = instances_from_masks(masks[keep], classes[keep], image_size)

        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict["padding_mask"] = torch.as_tensor(valid == 0)  # (S, S) True on padding
        dataset_dict["instances"] = instances
        return dataset_dict

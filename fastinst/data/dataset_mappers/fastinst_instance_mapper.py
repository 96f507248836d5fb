"""Training mapper of the shipped FastInst configs (INPUT.DATASET_MAPPER_NAME "fastinst_instance").

A detectron2 dataset dict (from `load_coco_json`) becomes the model's input::

    {"image": uint8 (3, H, W) tensor, "instances": Instances(gt_classes int64 (G,), gt_masks bool (G, H, W),
     gt_boxes Boxes (G, 4)), ...the original keys except "annotations"}

Augmentation (one coin flip per image with the global numpy RNG, as in the official code):
    rand() >  0.5: ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN), [ColorAugSSD], RandomFlip
    rand() <= 0.5: ResizeShortestEdge(CROP.RESIZE.MIN_SIZE, unbounded), RandomCrop(CROP.TYPE, CROP.SIZE),
                   then the same three.
Without INPUT.CROP.ENABLED only the first branch exists (and no coin is drawn); without CROP.RESIZE.ENABLED the
crop branch has no pre-resize. Crowd annotations are dropped. Instances that a crop removes stay as all-False
masks (official behaviour; the criterion relies on it, SPEC §10 P6).
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..image_io import read_image
from .color_aug import ColorAugSSD
from .utils import annotations_to_masks, instances_from_masks, pad_to_multiple

__all__ = ["FastInstInstanceDatasetMapper"]


class FastInstInstanceDatasetMapper:
    """Training-time mapper for instance segmentation with FastInst's resize / crop / flip augmentation."""

    @configurable
    def __init__(
        self,
        *,
        tfm_gens: list[T.Augmentation],
        crop_gens: list[T.Augmentation] | None,
        image_format: str,
        size_divisibility: int = -1,
        is_train: bool = True,
    ):
        """
        Args:
            tfm_gens: augmentations of the plain branch (resize, optional colour jitter, flip).
            crop_gens: augmentations applied before `tfm_gens` in the crop branch; None disables the branch.
            image_format: format passed to `read_image` ("RGB" for the shipped configs).
            size_divisibility: if > 0, pad image and masks at the bottom/right to a multiple of it.
            is_train: must be True; this mapper is for training only (evaluation uses detectron2's
                `DatasetMapper`).
        """
        if not is_train:
            raise ValueError(
                "FastInstInstanceDatasetMapper is a training mapper; evaluate with detectron2's "
                "DatasetMapper(cfg, is_train=False)."
            )
        self.tfm_gens = list(tfm_gens)
        self.crop_gens = list(crop_gens) if crop_gens is not None else None
        self.image_format = image_format
        self.size_divisibility = size_divisibility
        self.is_train = is_train

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict[str, Any]:
        tfm_gens: list[T.Augmentation] = [
            T.ResizeShortestEdge(
                cfg.INPUT.MIN_SIZE_TRAIN,
                cfg.INPUT.MAX_SIZE_TRAIN,
                cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
            )
        ]
        if cfg.INPUT.COLOR_AUG_SSD:
            tfm_gens.append(ColorAugSSD(img_format=cfg.INPUT.FORMAT))
        tfm_gens.append(T.RandomFlip())

        crop_gens = None
        if cfg.INPUT.CROP.ENABLED:
            crop_gens = []
            if cfg.INPUT.CROP.RESIZE.ENABLED:
                crop_gens.append(
                    T.ResizeShortestEdge(
                        cfg.INPUT.CROP.RESIZE.MIN_SIZE,
                        sys.maxsize,
                        cfg.INPUT.CROP.RESIZE.MIN_SIZE_TRAIN_SAMPLING,
                    )
                )
            crop_gens.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        return {
            "tfm_gens": tfm_gens,
            "crop_gens": crop_gens,
            "image_format": cfg.INPUT.FORMAT,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "is_train": is_train,
        }

    def _augmentations(self) -> list[T.Augmentation]:
        if self.crop_gens is None or np.random.rand() > 0.5:
            return self.tfm_gens
        return self.crop_gens + self.tfm_gens

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        """Map one detectron2 dataset dict (see the module docstring for the output)."""
        dataset_dict = copy.deepcopy(dataset_dict)  # it is modified below
        image = read_image(
            dataset_dict["file_name"],
            self.image_format,
            exif_transpose=dataset_dict.get("exif_transpose", True),
        )
        utils.check_image_size(dataset_dict, image)

        aug_input = T.AugInput(image)
        transforms = T.AugmentationList(self._augmentations())(aug_input)
        image = aug_input.image
        image_size = image.shape[:2]  # (H, W)

        annos = [a for a in dataset_dict.pop("annotations", []) if int(a.get("iscrowd", 0)) == 0]
        masks, classes = annotations_to_masks(annos, transforms, image_size)  # (G, H, W), (G,)
        image_t = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, H, W)
        if self.size_divisibility > 0:
            image_t, masks = pad_to_multiple(image_t, masks, self.size_divisibility)

        dataset_dict["image"] = image_t
        dataset_dict["instances"] = instances_from_masks(masks, classes, tuple(image_t.shape[-2:]))
        return dataset_dict

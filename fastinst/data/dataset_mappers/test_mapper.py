"""Evaluation mapper: detectron2's `DatasetMapper(cfg, is_train=False)` reading images with the project's reader.

Output (as detectron2's)::

    {"image": uint8 (3, H, W) tensor resized by INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, "height", "width",
     "file_name", "image_id", ...}  (annotations removed)

The one difference is `fastinst.data.image_io.read_image`: every Pillow mode read as in training and in the
predictor, the dataset dict's `exif_transpose` honoured, and an unreadable file reported as `DatasetError` with
one line naming it (evaluation cannot skip an image without changing the AP).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..datasets.coco_validation import DatasetError
from ..image_io import UnreadableImageError, read_image

__all__ = ["InstanceTestDatasetMapper"]


class InstanceTestDatasetMapper(DatasetMapper):
    """`DatasetMapper` for evaluation (is_train False) with `read_image` from `fastinst.data.image_io`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.is_train:
            raise ValueError(
                "InstanceTestDatasetMapper is for evaluation; build it with is_train=False."
            )

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        try:
            image = read_image(
                dataset_dict["file_name"],
                self.image_format,
                exif_transpose=dataset_dict.get("exif_transpose", True),
            )
        except UnreadableImageError as e:
            raise DatasetError(f"{e} Evaluation needs every image of the dataset.") from None
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        dataset_dict["image"] = torch.as_tensor(
            np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))
        )
        dataset_dict.pop("annotations", None)
        dataset_dict.pop("sem_seg_file_name", None)
        return dataset_dict

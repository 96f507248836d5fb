"""Training dataset mappers: detectron2 dataset dicts -> model inputs with bool instance masks."""

from .coco_instance_lsj_mapper import COCOInstanceNewBaselineDatasetMapper
from .color_aug import ColorAugSSD, ColorAugSSDTransform
from .fastinst_instance_mapper import FastInstInstanceDatasetMapper
from .skip_unreadable import SkipUnreadableImages, skipped_images_summary
from .test_mapper import InstanceTestDatasetMapper

__all__ = [
    "COCOInstanceNewBaselineDatasetMapper",
    "ColorAugSSD",
    "ColorAugSSDTransform",
    "FastInstInstanceDatasetMapper",
    "InstanceTestDatasetMapper",
    "SkipUnreadableImages",
    "skipped_images_summary",
]

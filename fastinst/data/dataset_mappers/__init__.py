"""Training dataset mappers: detectron2 dataset dicts -> model inputs with bool instance masks."""

from .coco_instance_lsj_mapper import COCOInstanceNewBaselineDatasetMapper
from .color_aug import ColorAugSSD, ColorAugSSDTransform
from .fastinst_instance_mapper import FastInstInstanceDatasetMapper

__all__ = [
    "COCOInstanceNewBaselineDatasetMapper",
    "ColorAugSSD",
    "ColorAugSSDTransform",
    "FastInstInstanceDatasetMapper",
]

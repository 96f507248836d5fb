"""FastInst modeling: importing it registers every model component with detectron2."""

from fastinst.modeling import backbone  # noqa: F401  (registers build_resnet_vd_backbone)
from fastinst.modeling.criterion import SetCriterion
from fastinst.modeling.decoder import FastInstDecoder
from fastinst.modeling.head import FastInstHead
from fastinst.modeling.matcher import HungarianMatcher
from fastinst.modeling.meta_arch import FastInst, build_criterion
from fastinst.modeling.pixel_decoder import PyramidPoolingModuleFPN

__all__ = [
    "FastInst",
    "FastInstDecoder",
    "FastInstHead",
    "HungarianMatcher",
    "PyramidPoolingModuleFPN",
    "SetCriterion",
    "build_criterion",
]

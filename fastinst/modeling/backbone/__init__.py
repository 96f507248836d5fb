"""Backbones. Importing this package registers ``build_resnet_vd_backbone`` in BACKBONE_REGISTRY.

The R50/R101 configs use detectron2's own ``build_resnet_backbone`` (SPEC §2.2); the R50-vd-DCN configs
use :mod:`fastinst.modeling.backbone.resnet_vd` (SPEC §2.3).
"""

from fastinst.modeling.backbone.resnet_vd import ResNetVD, build_resnet_vd_backbone

__all__ = ["ResNetVD", "build_resnet_vd_backbone"]

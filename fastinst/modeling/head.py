"""FastInstHead: pixel decoder followed by the FastInst decoder (the "predictor")."""

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn

from fastinst.modeling.criterion import SetCriterion
from fastinst.modeling.decoder import build_transformer_decoder
from fastinst.modeling.pixel_decoder import build_pixel_decoder


@SEM_SEG_HEADS_REGISTRY.register()
class FastInstHead(nn.Module):
    @configurable
    def __init__(self, *, pixel_decoder: nn.Module, predictor: nn.Module, num_classes: int):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        self.num_classes = num_classes

    @classmethod
    def from_config(
        cls, cfg, input_shape: dict[str, ShapeSpec], criterion: SetCriterion | None = None
    ):
        return {
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "predictor": build_transformer_decoder(
                cfg, cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM, criterion
            ),
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        }

    def forward(self, features: dict[str, Tensor], targets: list[dict] | None = None) -> dict:
        mask_features, multi_scale_features = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale_features, mask_features, targets)

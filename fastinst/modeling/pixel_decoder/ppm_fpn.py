"""PPM-FPN pixel decoder (SPEC §2.5): a light FPN whose coarsest level goes through a pyramid pooling module.

Shape shorthand: B batch, C = CONVS_DIM channels; res3/res4/res5 are the backbone maps at strides 8/16/32.
Output: (None, [f32, f16, f8]), three (B, C, H/s, W/s) maps, coarsest first. The first element stands for the
"mask features" of Mask2Former-style heads; FastInst does not use it.
"""

import logging

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def build_pixel_decoder(cfg, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    """Build the pixel decoder named by MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    model = SEM_SEG_HEADS_REGISTRY.get(name)(cfg, input_shape)
    if not callable(getattr(model, "forward_features", None)):
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME={name!r} has no forward_features(); "
            "FastInst needs a pixel decoder such as 'PyramidPoolingModuleFPN'."
        )
    return model


class PyramidPoolingModule(nn.Module):
    """Pooled context at several grid sizes, concatenated with the input and fused by a 1x1 conv."""

    def __init__(self, in_channels: int, channels: int = 64, sizes=(1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(size), Conv2d(in_channels, channels, 1, bias=True))
            for size in sizes
        )
        self.bottleneck = Conv2d(in_channels + len(sizes) * channels, in_channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        priors = [
            F.interpolate(F.relu(stage(x)), size=(h, w), mode="bilinear", align_corners=False)
            for stage in self.stages
        ]  # each (B, channels, h, w)
        return F.relu(self.bottleneck(torch.cat(priors + [x], dim=1)))  # (B, in_channels, h, w)


@SEM_SEG_HEADS_REGISTRY.register()
class BaseFPN(nn.Module):
    """Top-down FPN over IN_FEATURES: 1x1 `adapter_n` laterals and 3x3 `layer_n` output convs (n = 1 finest)."""

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        convs_dim: int,
        mask_dim: int,
        norm: str | None = None,
    ):
        super().__init__()
        input_shape = dict(sorted(input_shape.items(), key=lambda x: x[1].stride))
        self.in_features = list(input_shape)
        self.mask_dim = (
            mask_dim  # kept for config compatibility; FastInst's masks come from the decoder
        )
        self.num_feature_levels = len(self.in_features)
        use_bias = norm == ""
        for n, shape in enumerate(input_shape.values(), start=1):
            adapter = Conv2d(
                shape.channels, convs_dim, 1, bias=use_bias, norm=get_norm(norm, convs_dim)
            )
            layer = Conv2d(
                convs_dim,
                convs_dim,
                3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, convs_dim),
                activation=F.relu,
            )
            weight_init.c2_xavier_fill(adapter)
            weight_init.c2_xavier_fill(layer)
            self.add_module(f"adapter_{n}", adapter)
            self.add_module(f"layer_{n}", layer)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "convs_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
        }

    def top(self, x: Tensor) -> Tensor:
        """Extra processing of the coarsest lateral (identity here; PPM in the subclass)."""
        return x

    def forward_features(self, features: dict[str, Tensor]) -> tuple[None, list[Tensor]]:
        outs = []
        y = None
        for n in range(self.num_feature_levels, 0, -1):  # coarsest first
            lateral = getattr(self, f"adapter_{n}")(features[self.in_features[n - 1]])
            if y is None:
                y = self.top(lateral)
            else:
                y = lateral + F.interpolate(
                    y, size=lateral.shape[-2:], mode="bilinear", align_corners=False
                )
            y = getattr(self, f"layer_{n}")(y)
            outs.append(y)
        return None, outs

    def forward(self, features: dict[str, Tensor], targets=None):
        logger.warning("Calling forward() of a pixel decoder runs forward_features().")
        return self.forward_features(features)


@SEM_SEG_HEADS_REGISTRY.register()
class PyramidPoolingModuleFPN(BaseFPN):
    """FastInst's PPM-FPN: BaseFPN with a pyramid pooling module on the coarsest level."""

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        convs_dim: int,
        mask_dim: int,
        norm: str | None = None,
    ):
        super().__init__(input_shape, convs_dim=convs_dim, mask_dim=mask_dim, norm=norm)
        self.ppm = PyramidPoolingModule(convs_dim, convs_dim // 4)

    def top(self, x: Tensor) -> Tensor:
        return self.ppm(x)

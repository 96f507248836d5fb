"""ResNet-D ("vd") backbone with optional DCN-v1 bottlenecks (SPEC §2.3, §2.4).

The R50-vd-DCN configs use a timm-style ResNet-D: a deep 3x3 stem (32-32-64), average-pool shortcuts, and
deformable 3x3 convs in every block of ``layer3`` and ``layer4``. The blocks are implemented here (not
imported from timm, SPEC §10 F6) with timm's attribute names, so timm ``resnet50d`` weights converted by
``tools/convert-timm-to-d2.py`` load by name, and the state dict matches the official checkpoints.

The deformable conv runs on ``torchvision.ops.deform_conv2d`` (CPU and GPU, with autograd; SPEC §10 F7).
It has the same offset layout as detectron2's CUDA op: 18 = 2*3*3 channels, (dy, dx) interleaved per tap.

Shape shorthand: B batch, C channels, H x W input size; feature maps at stride s are (B, C, H/s, W/s).
"""

from __future__ import annotations

import torch
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn
from torchvision.ops import deform_conv2d

__all__ = [
    "Bottleneck",
    "DeformConv2d",
    "DeformableBottleneck",
    "ResNetVD",
    "build_resnet_vd_backbone",
    "get_norm_layer",
]

# Blocks per stage for each supported depth.
_DEPTH_TO_BLOCKS: dict[int, list[int]] = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
_EXPANSION = 4


def get_norm_layer(norm: str) -> type[nn.Module]:
    """Map ``MODEL.RESNETS.NORM`` to a norm class, as the official backbone does.

    "FrozenBN" -> detectron2 ``FrozenBatchNorm2d``; "SyncBN" -> detectron2 ``NaiveSyncBatchNorm``;
    anything else (including "BN" and "") -> ``nn.BatchNorm2d``.
    """
    if norm == "FrozenBN":
        return FrozenBatchNorm2d
    if norm == "SyncBN":
        return NaiveSyncBatchNorm
    return nn.BatchNorm2d


class DeformConv2d(nn.Module):
    """DCN v1 (no modulation mask, no bias) on ``torchvision.ops.deform_conv2d``.

    Holds a single parameter ``weight`` (C_out, C_in, k, k), like detectron2's ``DeformConv`` with
    ``bias=False``, so the state-dict key is ``conv2.weight``. One deformable group: the offset has
    2*k*k channels, laid out (dy0, dx0, dy1, dx1, ...) per tap in row-major order (SPEC §2.4).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, H, W); offset: (B, 2*k*k, H_out, W_out) -> (B, C_out, H_out, W_out).

        Input and offset are cast to (at least) float32, as in the official code, so the DCN stays in
        fp32 under AMP (SPEC §10 P10). For float32 parameters this is exactly ``x.float()``.
        """
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        return deform_conv2d(
            x.to(dtype),
            offset.to(dtype),
            self.weight.to(dtype),
            bias=None,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=None,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, bias=False"
        )


class Bottleneck(nn.Module):
    """timm-style ResNet bottleneck: 1x1 -> 3x3(stride) -> 1x1, plus shortcut, then ReLU.

    Keys: ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``conv3``, ``bn3`` and, when given, ``downsample``.
    """

    expansion = _EXPANSION

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        width = planes  # base width 64, cardinality 1
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False)
        self.bn1 = norm_layer(width)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = self._make_conv2(width, stride)
        self.bn2 = norm_layer(width)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, outplanes, kernel_size=1, bias=False)
        self.bn3 = norm_layer(outplanes)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def _make_conv2(self, width: int, stride: int) -> nn.Module:
        return nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)

    def _conv2(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, inplanes, H, W) -> (B, 4*planes, H/stride, W/stride)."""
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))  # (B, width, H, W)
        x = self.act2(self.bn2(self._conv2(x)))  # (B, width, H/stride, W/stride)
        x = self.bn3(self.conv3(x))  # (B, 4*width, H/stride, W/stride)
        return self.act3(x + shortcut)


class DeformableBottleneck(Bottleneck):
    """Bottleneck whose 3x3 conv is a DCN v1 with offsets predicted by ``conv2_offset``.

    Keys: ``conv1``, ``bn1``, ``conv2_offset.{weight,bias}``, ``conv2.weight``, ``bn2``, ``conv3``,
    ``bn3``, ``downsample``. ``conv2_offset`` starts at zero, so the block starts out equal to a plain
    bottleneck with the same weights.
    """

    def _make_conv2(self, width: int, stride: int) -> nn.Module:
        # registered here, before conv2, to keep the official key order
        # 18 = 2 * 3 * 3: one (dy, dx) pair per kernel tap, one deformable group.
        self.conv2_offset = nn.Conv2d(
            width, 2 * 3 * 3, kernel_size=3, stride=stride, padding=1, dilation=1, bias=True
        )
        self.init_offset()
        return DeformConv2d(width, width, 3, stride=stride, padding=1, dilation=1)

    def _conv2(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.conv2_offset(x)  # (B, 18, H/stride, W/stride)
        return self.conv2(x, offset)

    def init_offset(self) -> None:
        """Zero the offset predictor (weight and bias)."""
        nn.init.zeros_(self.conv2_offset.weight)
        nn.init.zeros_(self.conv2_offset.bias)

    def zero_init_last(self) -> None:
        """Zero ``bn3.weight`` so the residual branch starts at zero (official init)."""
        nn.init.zeros_(self.bn3.weight)


def _make_downsample(
    inplanes: int, outplanes: int, stride: int, norm_layer: type[nn.Module]
) -> nn.Sequential:
    """ResNet-D shortcut: Sequential(0 avg-pool or Identity, 1 conv 1x1, 2 norm)."""
    if stride == 1:
        pool: nn.Module = nn.Identity()
    else:
        pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
    return nn.Sequential(
        pool,
        nn.Conv2d(inplanes, outplanes, kernel_size=1, stride=1, bias=False),
        norm_layer(outplanes),
    )


class ResNetVD(Backbone):
    """ResNet-D backbone (deep stem, avg-pool shortcuts) returning ``res2``..``res5``.

    Keys follow timm: ``conv1.{0,1,3,4,6}``, ``bn1``, ``layer{1..4}.{i}.*``. Outputs: ``res2`` (256 ch,
    stride 4), ``res3`` (512, 8), ``res4`` (1024, 16), ``res5`` (2048, 32).
    """

    def __init__(
        self,
        *,
        layers: list[int],
        norm_layer: type[nn.Module] = FrozenBatchNorm2d,
        deform_on_per_stage: list[bool] | tuple[bool, ...] = (False, False, False, False),
        stem_width: int = 32,
        zero_init_last: bool = True,
    ) -> None:
        """
        Args:
            layers: number of bottlenecks in each of the four stages, e.g. [3, 4, 6, 3].
            norm_layer: norm class used after every conv (see :func:`get_norm_layer`).
            deform_on_per_stage: per stage, use :class:`DeformableBottleneck` instead of
                :class:`Bottleneck`.
            stem_width: channels of the first two stem convs (the third outputs 64).
            zero_init_last: zero ``bn3.weight`` of deformable bottlenecks (official behaviour).
        """
        super().__init__()
        if len(layers) != 4 or len(deform_on_per_stage) != 4:
            raise ValueError(
                f"ResNetVD needs 4 stages; got layers={layers}, "
                f"deform_on_per_stage={list(deform_on_per_stage)}"
            )
        stem_out = 64
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, stem_width, 3, stride=2, padding=1, bias=False),
            norm_layer(stem_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem_width, stem_width, 3, stride=1, padding=1, bias=False),
            norm_layer(stem_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem_width, stem_out, 3, stride=1, padding=1, bias=False),
        )
        self.bn1 = norm_layer(stem_out)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        inplanes = stem_out
        self._out_features = ["res2", "res3", "res4", "res5"]
        self._out_feature_channels: dict[str, int] = {}
        self._out_feature_strides: dict[str, int] = {}
        current_stride = 4
        for idx, (num_blocks, planes, stride, deform) in enumerate(
            zip(layers, (64, 128, 256, 512), (1, 2, 2, 2), deform_on_per_stage)
        ):
            block_cls = DeformableBottleneck if deform else Bottleneck
            outplanes = planes * _EXPANSION
            blocks = []
            for i in range(num_blocks):
                block_stride = stride if i == 0 else 1
                downsample = (
                    _make_downsample(inplanes, outplanes, block_stride, norm_layer)
                    if i == 0 and (block_stride != 1 or inplanes != outplanes)
                    else None
                )
                blocks.append(
                    block_cls(
                        inplanes,
                        planes,
                        stride=block_stride,
                        downsample=downsample,
                        norm_layer=norm_layer,
                    )
                )
                inplanes = outplanes
            self.add_module(f"layer{idx + 1}", nn.Sequential(*blocks))
            current_stride *= stride
            name = f"res{idx + 2}"
            self._out_feature_channels[name] = outplanes
            self._out_feature_strides[name] = current_stride

        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        """Convs kaiming-normal (fan_out, as timm), BatchNorm weight 1 / bias 0; FrozenBN untouched.

        Then the deformable blocks re-zero their offset predictors and, if ``zero_init_last``, zero
        ``bn3.weight``. ``DeformConv2d`` keeps its own kaiming-uniform init. Pretrained weights
        overwrite all of this except ``conv2_offset`` (absent from timm checkpoints).
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, DeformableBottleneck):
                m.init_offset()
                if zero_init_last:
                    m.zero_init_last()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, H, W) -> {"res2": (B, 256, H/4, W/4), ..., "res5": (B, 2048, H/32, W/32)}."""
        x = self.act1(self.bn1(self.conv1(x)))  # (B, 64, H/2, W/2)
        x = self.maxpool(x)  # (B, 64, H/4, W/4)
        outputs: dict[str, torch.Tensor] = {}
        for idx in range(4):
            x = getattr(self, f"layer{idx + 1}")(x)
            outputs[f"res{idx + 2}"] = x
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        """Inputs are padded to a multiple of the largest stride (a property, SPEC §10 F5)."""
        return 32

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"size_divisibility": self.size_divisibility}


@BACKBONE_REGISTRY.register()
def build_resnet_vd_backbone(cfg, input_shape: ShapeSpec) -> ResNetVD:
    """Build the ResNet-D backbone from ``MODEL.RESNETS.{DEPTH, NORM, DEFORM_ON_PER_STAGE}``.

    Other RESNETS keys (OUT_FEATURES, STRIDE_IN_1X1, FREEZE_AT, DEFORM_MODULATED, DEFORM_NUM_GROUPS)
    are ignored, as in the official code: the backbone always returns res2..res5.
    """
    if input_shape is not None and input_shape.channels not in (None, 3):
        raise ValueError(
            f"build_resnet_vd_backbone expects 3 input channels (len(MODEL.PIXEL_MEAN)), "
            f"got {input_shape.channels}"
        )
    depth = cfg.MODEL.RESNETS.DEPTH
    if depth not in _DEPTH_TO_BLOCKS:
        raise NotImplementedError(
            f"build_resnet_vd_backbone: MODEL.RESNETS.DEPTH={depth} is not supported; "
            f"use one of {sorted(_DEPTH_TO_BLOCKS)}"
        )
    return ResNetVD(
        layers=_DEPTH_TO_BLOCKS[depth],
        norm_layer=get_norm_layer(cfg.MODEL.RESNETS.NORM),
        deform_on_per_stage=[bool(d) for d in cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE],
    )

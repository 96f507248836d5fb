"""ResNet-D (vd) backbone: official state-dict names, output contract, DCN semantics, cfg mapping."""

import inspect
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from detectron2.structures import ImageList
from torch import nn

from fastinst.modeling.backbone.resnet_vd import (
    Bottleneck,
    DeformableBottleneck,
    DeformConv2d,
    ResNetVD,
    build_resnet_vd_backbone,
    get_norm_layer,
)

REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "state_dict"
VD_CONFIGS = ["fastinst_R50-vd-dcn_ppm-fpn_x1_576", "fastinst_R50-vd-dcn_ppm-fpn_x3_640"]
R50_VD_BACKBONE_PARAMS = 23_971_842  # SPEC §2.9


def make_cfg(depth: int = 50, norm: str = "FrozenBN", deform=(False, False, True, True)):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_vd_backbone"
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = list(deform)
    return cfg


@pytest.fixture(scope="module")
def backbone() -> ResNetVD:
    torch.manual_seed(0)
    return build_backbone(make_cfg()).eval()


def test_registered_under_official_name():
    assert BACKBONE_REGISTRY.get("build_resnet_vd_backbone") is build_resnet_vd_backbone


@pytest.mark.parametrize("config", VD_CONFIGS)
def test_state_dict_matches_official_manifest(backbone, config):
    manifest = json.loads((REFERENCE / f"{config}.json").read_text())
    expected = [
        (key[len("backbone.") :], tuple(shape), dtype)
        for key, shape, dtype in manifest["keys"]
        if key.startswith("backbone.")
    ]
    got = [
        (k, tuple(v.shape), str(v.dtype).replace("torch.", ""))
        for k, v in backbone.state_dict().items()
    ]
    assert got == expected  # names, shapes, dtypes and order


def test_param_count(backbone):
    assert sum(p.numel() for p in backbone.parameters()) == R50_VD_BACKBONE_PARAMS


def test_outputs_shapes_strides_channels(backbone):
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = backbone(x)
    spec = backbone.output_shape()
    assert list(out) == list(spec) == ["res2", "res3", "res4", "res5"]
    for name, channels, stride in [
        ("res2", 256, 4),
        ("res3", 512, 8),
        ("res4", 1024, 16),
        ("res5", 2048, 32),
    ]:
        assert spec[name].channels == channels and spec[name].stride == stride
        assert out[name].shape == (1, channels, 64 // stride, 96 // stride)
        assert torch.isfinite(out[name]).all()


def test_size_divisibility_is_a_property(backbone):
    assert isinstance(inspect.getattr_static(ResNetVD, "size_divisibility"), property)
    assert backbone.size_divisibility == 32
    assert backbone.padding_constraints == {"size_divisibility": 32}
    images = ImageList.from_tensors(
        [torch.zeros(3, 50, 70)], size_divisibility=backbone.size_divisibility
    )
    assert images.tensor.shape[-2:] == (64, 96)


@pytest.mark.parametrize("stride", [1, 2])
def test_deform_conv_with_zero_offset_is_plain_conv(stride):
    torch.manual_seed(0)
    conv = DeformConv2d(8, 16, 3, stride=stride, padding=1)
    x = torch.randn(2, 8, 11, 13)
    ref = F.conv2d(x, conv.weight, stride=stride, padding=1)
    offset = torch.zeros(2, 18, *ref.shape[-2:])
    torch.testing.assert_close(conv(x, offset), ref, rtol=1e-5, atol=1e-5)


def test_deform_conv_offset_layout_is_dy_then_dx():
    """Channel 0 of a tap's pair moves the sample vertically, channel 1 horizontally (SPEC §2.4)."""
    conv = DeformConv2d(1, 1, 1, padding=0)
    nn.init.ones_(conv.weight)
    x = torch.arange(20.0).view(1, 1, 4, 5)
    dy = torch.cat([torch.ones(1, 1, 4, 5), torch.zeros(1, 1, 4, 5)], dim=1)
    out = conv(x, dy)
    torch.testing.assert_close(out[0, 0, :3], x[0, 0, 1:])  # sampled one row down
    assert (out[0, 0, 3] == 0).all()  # beyond the bottom edge
    dx = dy.flip(1)
    out = conv(x, dx)
    torch.testing.assert_close(out[0, 0, :, :4], x[0, 0, :, 1:])  # one column right


def test_deformable_bottleneck_starts_equal_to_plain_bottleneck():
    torch.manual_seed(0)
    down = nn.Sequential(
        nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
        nn.Conv2d(32, 64, 1, bias=False),
        nn.BatchNorm2d(64),
    )
    plain = Bottleneck(32, 16, stride=2, downsample=down).eval()
    deform = DeformableBottleneck(32, 16, stride=2, downsample=down).eval()
    missing, unexpected = deform.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["conv2_offset.bias", "conv2_offset.weight"] and not unexpected
    x = torch.randn(1, 32, 9, 10)
    with torch.no_grad():
        torch.testing.assert_close(deform(x), plain(x), rtol=1e-5, atol=1e-5)


def test_deformable_bottleneck_gradients_reach_offsets_and_weight():
    torch.manual_seed(0)
    block = DeformableBottleneck(16, 8, stride=2, downsample=nn.Conv2d(16, 32, 1, 2)).train()
    block(torch.randn(2, 16, 10, 10)).pow(2).mean().backward()
    for name in ("conv2_offset.weight", "conv2_offset.bias", "conv2.weight", "conv1.weight"):
        grad = dict(block.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_inits_with_batchnorm():
    torch.manual_seed(0)
    bb = build_backbone(make_cfg(norm="BN"))
    deform_blocks = [m for m in bb.modules() if isinstance(m, DeformableBottleneck)]
    assert len(deform_blocks) == 6 + 3
    for block in deform_blocks:
        assert (block.conv2_offset.weight == 0).all() and (block.conv2_offset.bias == 0).all()
        assert (block.bn3.weight == 0).all()  # official zero_init_last_bn
    zeroed = {id(block.bn3) for block in deform_blocks}
    for name, module in bb.named_modules():
        if isinstance(module, nn.BatchNorm2d) and id(module) not in zeroed:
            assert (module.weight == 1).all() and (module.bias == 0).all(), name
    assert isinstance(bb.layer3[0], DeformableBottleneck) and isinstance(bb.layer2[0], Bottleneck)
    assert (bb.layer1[0].bn3.weight == 1).all()  # plain blocks keep bn3 at 1
    assert isinstance(bb.layer1[0].downsample[0], nn.Identity)
    assert isinstance(bb.layer2[0].downsample[0], nn.AvgPool2d)


@pytest.mark.parametrize(
    "norm, cls",
    [
        ("FrozenBN", FrozenBatchNorm2d),
        ("SyncBN", NaiveSyncBatchNorm),
        ("BN", nn.BatchNorm2d),
        ("", nn.BatchNorm2d),
        ("GN", nn.BatchNorm2d),  # official: anything else is BatchNorm2d
    ],
)
def test_norm_mapping(norm, cls):
    assert get_norm_layer(norm) is cls
    bb = build_resnet_vd_backbone(make_cfg(norm=norm, deform=(False,) * 4), ShapeSpec(channels=3))
    assert type(bb.bn1) is cls and type(bb.conv1[1]) is cls and type(bb.layer4[2].bn3) is cls


def test_depth_101_builds_23_blocks_in_layer3():
    bb = build_resnet_vd_backbone(make_cfg(depth=101), ShapeSpec(channels=3))
    assert [len(getattr(bb, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]
    assert all(isinstance(block, DeformableBottleneck) for block in bb.layer3)


@pytest.mark.parametrize("depth", [18, 34, 152])
def test_unsupported_depth_raises_clear_error(depth):
    with pytest.raises(NotImplementedError, match=rf"MODEL\.RESNETS\.DEPTH={depth}.*\[50, 101\]"):
        build_resnet_vd_backbone(make_cfg(depth=depth), ShapeSpec(channels=3))

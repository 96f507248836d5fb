"""tools/convert-{timm,torchvision}-to-d2.py: converted weights load by name and reproduce features."""

import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from fastinst.modeling.backbone.convert import (
    ConversionError,
    convert_timm_resnet,
    convert_torchvision_resnet,
    main,
)
from fastinst.modeling.backbone.resnet_vd import build_resnet_vd_backbone

REPO = Path(__file__).resolve().parents[2]
TIMM_SCRIPT = REPO / "tools" / "convert-timm-to-d2.py"
TORCHVISION_SCRIPT = REPO / "tools" / "convert-torchvision-to-d2.py"
FEATURES = ["res2", "res3", "res4", "res5"]


class Wrapper(nn.Module):
    """Stand-in for a detector: the backbone sits under ``.backbone`` like in FastInst."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial BN affine parameters and running stats, so a wrong mapping changes features."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.num_batches_tracked.fill_(7)


def load_with_d2_checkpointer(backbone: nn.Module, pkl: Path):
    """Load ``pkl`` as FastInst would (DetectionCheckpointer, suffix heuristics); return incompatibles."""
    model = Wrapper(backbone)
    checkpointer = DetectionCheckpointer(model)
    return checkpointer._load_model(checkpointer._load_file(str(pkl)))


def assert_features_close(ours: dict, ref: list) -> None:
    for name, expected in zip(FEATURES, ref):
        got = ours[name]
        assert got.shape == expected.shape, name
        scale = expected.abs().max().clamp(min=1e-6)
        assert (got - expected).abs().max() / scale < 1e-5, name


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory) -> tuple[Path, dict]:
    torch.manual_seed(0)
    model = timm.create_model("resnet50d", pretrained=False)
    randomize_batchnorm(model, seed=1)
    state_dict = model.state_dict()
    path = tmp_path_factory.mktemp("timm") / "resnet50d.pth"
    torch.save(state_dict, path)
    return path, state_dict


@pytest.fixture(scope="module")
def torchvision_weights(tmp_path_factory) -> tuple[Path, dict, nn.Module]:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    randomize_batchnorm(model, seed=2)
    state_dict = model.state_dict()
    path = tmp_path_factory.mktemp("torchvision") / "resnet50.pth"
    torch.save({"state_dict": state_dict}, path)  # wrapped, as some checkpoints are
    return path, state_dict, model.eval()


def test_convert_timm_resnet_keys(timm_weights):
    _, state_dict = timm_weights
    converted = convert_timm_resnet(state_dict)
    expected = {
        "backbone." + k for k in state_dict if not k.startswith("fc.") and "num_batches" not in k
    }
    assert set(converted) == expected
    key = "layer3.2.bn2.running_var"
    assert isinstance(converted["backbone." + key], np.ndarray)
    np.testing.assert_array_equal(converted["backbone." + key], state_dict[key].numpy())


def test_timm_conversion_loads_into_vd_backbone_and_matches_timm(timm_weights, tmp_path):
    src, state_dict = timm_weights
    out = tmp_path / "resnet50d.pkl"
    assert main([str(src), str(out)], source="timm") == 0  # what the script runs
    data = pickle.loads(out.read_bytes())
    assert data["__author__"] == "timm" and data["matching_heuristics"] is True

    cfg = get_cfg()
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, True, True]
    backbone = build_resnet_vd_backbone(cfg, ShapeSpec(channels=3))
    incompatible = load_with_d2_checkpointer(backbone, out)
    offsets = {k for k in Wrapper(backbone).state_dict() if ".conv2_offset." in k}
    assert len(offsets) == 2 * (6 + 3)
    # Only the DCN offset predictors are absent from timm; they stay zero (SPEC §2.3).
    assert set(incompatible.missing_keys) == offsets
    assert incompatible.unexpected_keys == [] and incompatible.incorrect_shapes == []
    for key, value in backbone.state_dict().items():
        if ".conv2_offset." not in key:
            torch.testing.assert_close(value, state_dict[key], rtol=0, atol=0, msg=key)

    timm_features = timm.create_model(
        "resnet50d", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4)
    )
    timm_features.load_state_dict({k: v for k, v in state_dict.items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_features_close(backbone.eval()(x), timm_features.eval()(x))


def test_torchvision_conversion_loads_into_d2_resnet_and_matches_torchvision(
    torchvision_weights, tmp_path
):
    src, _, tv = torchvision_weights
    out = tmp_path / "R-50.pkl"
    assert main([str(src), str(out)], source="torchvision") == 0
    data = pickle.loads(out.read_bytes())
    assert data["__author__"] == "torchvision" and data["matching_heuristics"] is True
    assert "stem.conv1.weight" in data["model"] and "res2.0.shortcut.norm.weight" in data["model"]

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = FEATURES
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    incompatible = load_with_d2_checkpointer(backbone, out)
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    assert {"backbone." + k for k in data["model"]} == set(Wrapper(backbone).state_dict())

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        ref = []
        for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
            h = layer(h)
            ref.append(h)
        assert_features_close(backbone.eval()(x), ref)


def test_convert_torchvision_resnet_names():
    state_dict = {
        "conv1.weight": torch.zeros(64, 3, 7, 7),
        "bn1.running_var": torch.ones(64),
        "bn1.num_batches_tracked": torch.tensor(3),
        "layer4.2.bn3.bias": torch.zeros(2048),
        "layer1.0.downsample.0.weight": torch.zeros(256, 64, 1, 1),
        "layer1.0.downsample.1.weight": torch.zeros(256),
        "fc.weight": torch.zeros(1000, 2048),
    }
    assert sorted(convert_torchvision_resnet(state_dict)) == [
        "res2.0.shortcut.norm.weight",
        "res2.0.shortcut.weight",
        "res5.2.conv3.norm.bias",
        "stem.conv1.norm.running_var",
        "stem.conv1.weight",
    ]


def test_wrong_converter_is_refused(timm_weights):
    _, state_dict = timm_weights
    with pytest.raises(ConversionError, match="conv1.0.weight.*convert-timm-to-d2"):
        convert_torchvision_resnet(state_dict)
    with pytest.raises(ConversionError, match="convert-torchvision-to-d2"):
        convert_timm_resnet({"conv1.weight": torch.zeros(64, 3, 7, 7)})


@pytest.mark.parametrize("script", [TIMM_SCRIPT, TORCHVISION_SCRIPT], ids=lambda p: p.stem)
def test_script_with_missing_input_file_exits_with_one_line(tmp_path, script):
    """Runs the real script (a subprocess: ~4 s, mostly importing detectron2)."""
    missing = tmp_path / "nope.pth"
    result = subprocess.run(
        [sys.executable, str(script), str(missing), str(tmp_path / "out.pkl")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "no such file" in lines[0]
    assert not (tmp_path / "out.pkl").exists()


def _checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "write",
    [
        lambda p: p.write_text("hello, I am not a checkpoint\n"),
        lambda p: torch.save([1, 2, 3], p),
        lambda p: torch.save({"epoch": 3, "lr": 0.1}, p),
        lambda p: p.write_bytes(_checkpoint_bytes()[:5000]),  # an interrupted download
        lambda p: p.write_bytes(b""),
    ],
    ids=["text-file", "list", "dict-without-tensors", "truncated", "empty"],
)
@pytest.mark.parametrize("source", ["timm", "torchvision"])
def test_non_state_dict_input_exits_with_one_line(tmp_path, capsys, write, source):
    bad = tmp_path / "bad.pth"
    write(bad)
    assert main([str(bad), str(tmp_path / "out.pkl")], source=source) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and err[0].startswith("error: ")
    assert not (tmp_path / "out.pkl").exists()

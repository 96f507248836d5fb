"""Shared test helpers: config building, the golden weight recipe, reference paths."""

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

import fastinst

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
CONFIG_DIR = REPO / "configs" / "coco" / "instance-segmentation"
OFFICIAL_CONFIGS = [
    "fastinst_R50_ppm-fpn_x1_576",
    "fastinst_R50_ppm-fpn_x3_640",
    "fastinst_R101_ppm-fpn_x3_640",
    "fastinst_R50-vd-dcn_ppm-fpn_x1_576",
    "fastinst_R50-vd-dcn_ppm-fpn_x3_640",
]


def make_cfg(config: str | Path, opts: list | None = None):
    """A frozen config from a YAML path or an official config name, on the CPU."""
    path = Path(config)
    if not path.suffix:
        path = CONFIG_DIR / f"{config}.yaml"
    cfg = get_cfg()
    fastinst.add_fastinst_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"] + list(opts or []))
    cfg.freeze()
    return cfg


def recipe_value(key: str, shape: tuple[int, ...], current: torch.Tensor) -> torch.Tensor:
    """The golden weight recipe (reference/golden/README.md) for one state-dict entry."""
    if key.endswith("empty_weight"):
        return current
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    n = rng.standard_normal(shape)
    if key.endswith("running_var"):
        value = 1.0 + 0.5 * rng.random(shape)
    elif key.endswith("running_mean"):
        value = 0.1 * n
    elif key.endswith("bias"):
        value = 0.02 * n
    elif key.endswith("weight") and len(shape) == 1:
        value = 1.0 + 0.1 * n
    elif len(shape) >= 2 and key.endswith("weight"):
        value = n / np.sqrt(np.prod(shape[1:]))
    else:
        value = 0.5 * n
    return torch.as_tensor(np.asarray(value), dtype=torch.float32)


def load_recipe_weights(model: torch.nn.Module) -> None:
    """Overwrite every state-dict entry of `model` with the golden recipe."""
    state = model.state_dict()
    new = {k: recipe_value(k, tuple(v.shape), v) for k, v in state.items()}
    model.load_state_dict(new, strict=True)


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    torch.manual_seed(0)
    yield

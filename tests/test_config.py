"""Every shipped YAML merges and builds; every key that add_fastinst_config declares is read by some code."""

import re
from pathlib import Path

import pytest
from detectron2.config import CfgNode, get_cfg

import fastinst
from tests.conftest import REPO, make_cfg

# Keys the official YAML files set although nothing reads them; they exist so that those files merge.
SET_BY_OFFICIAL_YAML_ONLY = {
    "MODEL.FASTINST.DROPOUT",
    "MODEL.FASTINST.TEST.OBJECT_MASK_THRESHOLD",
    "MODEL.FASTINST.TEST.OVERLAP_THRESHOLD",
    "MODEL.RESNETS.STEM_TYPE",
    "MODEL.RESNETS.RES5_MULTI_GRID",
}
SHIPPED_YAMLS = sorted(
    p for p in (REPO / "configs").rglob("*.yaml") if not p.name.startswith("Base-")
)


def leaf_keys(node: CfgNode, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in node.items():
        name = f"{prefix}{k}"
        keys |= leaf_keys(v, name + ".") if isinstance(v, CfgNode) else {name}
    return keys


def source_text() -> str:
    files = list((REPO / "fastinst").rglob("*.py")) + [REPO / "train_net.py"]
    files += list((REPO / "tools").glob("*.py")) + list((REPO / "demo").glob("*.py"))
    return "\n".join(p.read_text() for p in files if p.exists() and p.name != "config.py")


def declared_keys() -> set[str]:
    base = get_cfg()
    cfg = get_cfg()
    fastinst.add_fastinst_config(cfg)
    return leaf_keys(cfg) - leaf_keys(base)


@pytest.mark.parametrize("key", sorted(declared_keys()))
def test_every_declared_key_is_read(key):
    if key in SET_BY_OFFICIAL_YAML_ONLY:
        return
    # cfg access looks like `cfg.INPUT.CROP.RESIZE.MIN_SIZE` or, through a local alias, `fi.TRAIN_NUM_POINTS`
    last = key.split(".")[-1]
    parent = key.split(".")[-2]
    text = source_text()
    assert re.search(rf"\.{last}\b", text), f"{key} is declared but no code reads it"
    if parent not in ("FASTINST", "INPUT", "SOLVER", "RESNETS", "SEM_SEG_HEAD", "TEST"):
        assert re.search(rf"\.{parent}\.{last}\b", text), f"{key} is declared but no code reads it"


def test_yaml_only_keys_are_set_by_the_official_yamls():
    base_text = (
        REPO / "configs/coco/instance-segmentation/Fast-COCO-InstanceSegmentation.yaml"
    ).read_text()
    for key in SET_BY_OFFICIAL_YAML_ONLY:
        assert key.split(".")[-1] in base_text, key


@pytest.mark.parametrize("path", SHIPPED_YAMLS, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_yaml_merges_with_add_fastinst_config_alone(path: Path):
    cfg = get_cfg()
    fastinst.add_fastinst_config(cfg)
    cfg.merge_from_file(str(path))  # raises on any key the config does not declare


def test_official_yaml_values():
    cfg = make_cfg("fastinst_R50-vd-dcn_ppm-fpn_x3_640")
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_vd_backbone"
    assert cfg.MODEL.FASTINST.DEC_LAYERS == 3
    assert cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE == [False, False, True, True]
    assert list(cfg.SOLVER.STEPS) == [327778, 355092] and cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1
    assert list(cfg.INPUT.CROP.SIZE) == [384, 600] and cfg.INPUT.MIN_SIZE_TEST == 640
    assert cfg.MODEL.FASTINST.TRAIN_NUM_POINTS == 12544

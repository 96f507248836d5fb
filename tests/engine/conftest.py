"""Shared fixtures of the engine tests: tiny synthetic data and the tiny-test config."""

from __future__ import annotations

from pathlib import Path

import pytest
from detectron2.config import CfgNode, get_cfg

from fastinst import add_fastinst_config
from fastinst.data import generate_synthetic_dataset, register_synthetic

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "synthetic" / "tiny-test.yaml"


@pytest.fixture(scope="session")
def tiny_synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic dataset (8 train / 4 val images of 64-96 px) in `<tmp>/synthetic`."""
    root = tmp_path_factory.mktemp("datasets") / "synthetic"
    generate_synthetic_dataset(root, num_train=8, num_val=4, image_size=(64, 96), seed=0)
    return root


@pytest.fixture
def tiny_synthetic(tiny_synthetic_root):
    """Registers `synthetic_train` / `synthetic_val` on the tiny data for one test, then restores them."""
    register_synthetic(tiny_synthetic_root)
    yield tiny_synthetic_root
    register_synthetic()


@pytest.fixture
def make_tiny_cfg(tmp_path):
    """Factory: the tiny-test config with OUTPUT_DIR in this test's tmp dir, plus `KEY VALUE` overrides."""

    def make(*opts) -> CfgNode:
        cfg = get_cfg()
        add_fastinst_config(cfg)
        cfg.merge_from_file(str(TINY_CONFIG))
        cfg.OUTPUT_DIR = str(tmp_path / "output")
        cfg.merge_from_list(list(opts))
        return cfg

    return make

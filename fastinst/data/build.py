"""Choose the training mapper named by INPUT.DATASET_MAPPER_NAME."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from detectron2.config import CfgNode

from .dataset_mappers import COCOInstanceNewBaselineDatasetMapper, FastInstInstanceDatasetMapper

__all__ = ["DATASET_MAPPERS", "build_train_mapper"]

# INPUT.DATASET_MAPPER_NAME -> mapper class (constructed as cls(cfg, is_train=True))
DATASET_MAPPERS: dict[str, type] = {
    "fastinst_instance": FastInstInstanceDatasetMapper,
    "coco_instance_lsj": COCOInstanceNewBaselineDatasetMapper,
}


def build_train_mapper(cfg: CfgNode) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The training mapper for `cfg`, chosen by INPUT.DATASET_MAPPER_NAME.

    Unlike the official trainer, an unknown name is an error instead of a silent fallback to detectron2's
    `DatasetMapper`, whose polygon masks the model cannot use (SPEC §10 F13).
    """
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPERS:
        allowed = ", ".join(repr(n) for n in DATASET_MAPPERS)
        raise ValueError(
            f"Unknown INPUT.DATASET_MAPPER_NAME {name!r}. Allowed values: {allowed}. "
            "Set INPUT.DATASET_MAPPER_NAME in your config to one of them."
        )
    return DATASET_MAPPERS[name](cfg, is_train=True)

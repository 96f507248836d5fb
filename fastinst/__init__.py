"""FastInst: a simple query-based model for real-time instance segmentation, as a detectron2 extension.

Importing this package registers every component (meta-architecture, head, pixel decoder, decoder, backbones,
dataset mappers and datasets) with detectron2's registries.
"""

from fastinst import data, modeling  # noqa: F401  (registers components)
from fastinst.config import add_fastinst_config
from fastinst.predictor import FastInstPredictor

__all__ = ["FastInstPredictor", "add_fastinst_config"]

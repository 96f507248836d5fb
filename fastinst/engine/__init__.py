"""Training and evaluation: detectron2's DefaultTrainer configured for FastInst (used by train_net.py)."""

from fastinst.engine.optimizer import build_optimizer, build_param_groups
from fastinst.engine.trainer import Trainer

__all__ = ["Trainer", "build_optimizer", "build_param_groups"]

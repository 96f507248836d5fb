"""`Trainer`: detectron2's `DefaultTrainer` with FastInst's optimizer, loaders, evaluators and AMP handling.

Everything else (hooks, checkpointing, iteration logs with ETA, LR schedule) is detectron2's.
"""

from __future__ import annotations

import logging
import os
import weakref

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model
from detectron2.evaluation import DatasetEvaluator
from detectron2.solver import build_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from fastinst.data.build import build_train_mapper
from fastinst.data.dataset_mappers import (
    InstanceTestDatasetMapper,
    SkipUnreadableImages,
    skipped_images_summary,
)
from fastinst.data.datasets import check_image_files
from fastinst.engine.amp import build_step_trainer
from fastinst.engine.evaluation import ProgressLoader, build_instance_evaluator
from fastinst.engine.optimizer import build_optimizer


class Trainer(DefaultTrainer):
    """detectron2's default training loop, configured for FastInst (SPEC §7.4, §8.3)."""

    def __init__(self, cfg: CfgNode) -> None:
        # Same steps as DefaultTrainer.__init__, with two changes: the step trainer follows the device
        # (AMPTrainer only on CUDA, see fastinst/engine/amp.py) and DDP gets no device_ids on CPU (gloo).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        on_cuda = torch.device(cfg.MODEL.DEVICE).type == "cuda"
        ddp_kwargs = {} if on_cuda else {"device_ids": None}
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_kwargs)
        self._trainer = build_step_trainer(
            model,
            data_loader,
            optimizer,
            amp_enabled=cfg.SOLVER.AMP.ENABLED,
            device=cfg.MODEL.DEVICE,
        )

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """detectron2's loader, after checking that every training image exists (one clear error, not a
        traceback from a loader worker in the middle of training). An image that fails to decode during training
        is skipped with a warning (`SkipUnreadableImages`); `train` ends with a summary of the skips."""
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        check_image_files(dataset, cfg.DATASETS.TRAIN)
        record = cls.skipped_images_file(cfg)
        if comm.is_main_process() and os.path.isfile(record):
            os.remove(record)  # a record of this run only
        mapper = SkipUnreadableImages(build_train_mapper(cfg), record)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)

    @staticmethod
    def skipped_images_file(cfg: CfgNode) -> str:
        """OUTPUT_DIR/skipped_images.txt: one "file_name<TAB>reason" line per image skipped in training."""
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        return os.path.join(cfg.OUTPUT_DIR, "skipped_images.txt")

    def train(self):
        """detectron2's training loop, then one log line if training images had to be skipped."""
        try:
            return super().train()
        finally:
            summary = skipped_images_summary(self.skipped_images_file(self.cfg))
            if summary is not None and comm.is_main_process():
                logging.getLogger("fastinst").warning(summary)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        """detectron2's test loader with `InstanceTestDatasetMapper` (the project's image reader)."""
        mapper = InstanceTestDatasetMapper(cfg, is_train=False)
        loader = build_detection_test_loader(cfg, dataset_name, mapper=mapper)
        return ProgressLoader(loader, desc=f"eval {dataset_name}")

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> DatasetEvaluator:
        """By the dataset's evaluator_type; files go to `output_folder` (default OUTPUT_DIR/inference)."""
        return build_instance_evaluator(cfg, dataset_name, output_folder)

#!/usr/bin/env python
"""Train or evaluate FastInst with detectron2 (SPEC §9).

Examples::

    python train_net.py --config-file configs/synthetic/quickstart.yaml
    python train_net.py --config-file CFG --num-gpus 2            # 2 processes (gloo on a CPU-only machine)
    python train_net.py --config-file CFG --resume                # continue from OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth
    python train_net.py --config-file CFG --coco-train train.json train_images/ \\
        --coco-val val.json val_images/                           # your own COCO-format dataset

Trailing `KEY VALUE` pairs override config keys. With `--coco-train` / `--coco-val` the datasets are registered
from the json files, DATASETS.TRAIN / DATASETS.TEST point at them and MODEL.SEM_SEG_HEAD.NUM_CLASSES is set from
the json categories.
"""

from __future__ import annotations

import logging
import os
import sys
from argparse import ArgumentParser, Namespace

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from fastinst import add_fastinst_config
from fastinst.data import (
    DatasetError,
    check_dataset_files,
    check_num_classes,
    register_coco_json_dataset,
)
from fastinst.engine import Trainer
from fastinst.engine.time_budget import time_budget_overrides

CUSTOM_TRAIN = "custom_coco_train"
CUSTOM_VAL = "custom_coco_val"


class InputError(Exception):
    """A user-facing problem with the command line or the dataset files (reported as one line)."""


def get_parser() -> ArgumentParser:
    parser = default_argument_parser()
    parser.add_argument(
        "--coco-train",
        nargs=2,
        metavar=("JSON", "IMAGE_DIR"),
        help="train on this COCO-format instance json and image folder",
    )
    parser.add_argument(
        "--coco-val",
        nargs=2,
        metavar=("JSON", "IMAGE_DIR"),
        help="evaluate on this COCO-format instance json and image folder",
    )
    return parser


def register_custom_datasets(args: Namespace) -> dict[str, list[str]]:
    """Register the `--coco-train` / `--coco-val` datasets (once per process); returns name -> class names.

    It must run in every process that `launch` starts (dataset registrations live in the process), so `main`
    calls it. The registration validates the json and the images and raises on bad input.
    """
    registered: dict[str, list[str]] = {}
    for name, paths in ((CUSTOM_TRAIN, args.coco_train), (CUSTOM_VAL, args.coco_val)):
        if paths is None:
            continue
        json_file, image_root = paths
        if name not in DatasetCatalog.list():
            register_coco_json_dataset(name, json_file, image_root)
        registered[name] = list(MetadataCatalog.get(name).thing_classes)
    if len(registered) == 2 and registered[CUSTOM_TRAIN] != registered[CUSTOM_VAL]:
        raise InputError(
            f"{args.coco_val[0]}: its categories {registered[CUSTOM_VAL]} differ from those of "
            f"{args.coco_train[0]} ({registered[CUSTOM_TRAIN]}); both files need the same category list."
        )
    return registered


def apply_custom_datasets(cfg: CfgNode, custom: dict[str, list[str]]) -> None:
    """Point DATASETS.TRAIN/TEST at the custom datasets and set NUM_CLASSES from their categories."""
    if not custom:
        return
    if CUSTOM_TRAIN in custom:
        cfg.DATASETS.TRAIN = (CUSTOM_TRAIN,)
    if CUSTOM_VAL in custom:
        cfg.DATASETS.TEST = (CUSTOM_VAL,)
    elif CUSTOM_TRAIN in custom:
        cfg.DATASETS.TEST = ()  # the config's test set has other classes
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = len(next(iter(custom.values())))


def build_cfg(args: Namespace, custom: dict[str, list[str]] | None = None) -> CfgNode:
    """get_cfg -> add_fastinst_config -> config file -> opts -> custom datasets (not frozen)."""
    cfg = get_cfg()
    add_fastinst_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    apply_custom_datasets(cfg, custom or {})
    return cfg


def setup(args: Namespace, custom: dict[str, list[str]] | None = None) -> CfgNode:
    """`build_cfg`, freeze, detectron2's default_setup (logs, config dump, seed) and the "fastinst" logger."""
    cfg = build_cfg(args, custom)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fastinst")
    _share_cpu_threads(cfg)
    return cfg


def _share_cpu_threads(cfg: CfgNode) -> None:
    """Several CPU processes on one machine: split the cores between them instead of oversubscribing."""
    local = comm.get_local_size()
    if local > 1 and torch.device(cfg.MODEL.DEVICE).type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def main(args: Namespace):
    custom = register_custom_datasets(args)
    cfg = setup(args, custom)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        if cfg.TEST.AUG.ENABLED:
            logging.getLogger("fastinst").warning(
                "TEST.AUG.ENABLED is ignored: test-time augmentation is not implemented for instances."
            )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def check_inputs(args: Namespace) -> CfgNode:
    """Fail fast, before any process starts: config file, custom datasets, dataset/NUM_CLASSES agreement.

    Returns the merged config.
    """
    if args.config_file and not os.path.isfile(args.config_file):
        raise InputError(f"{args.config_file}: config file not found.")
    custom = register_custom_datasets(args)
    cfg = build_cfg(args, custom)
    names = list(cfg.DATASETS.TEST) if args.eval_only else [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]
    for name in names:
        if name not in DatasetCatalog.list():
            raise InputError(
                f"dataset {name!r} (DATASETS.TRAIN / DATASETS.TEST) is not registered; "
                "use --coco-train / --coco-val for your own COCO json files."
            )
        check_dataset_files(name)
        check_num_classes(name, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    return cfg


def fit_time_budget(args: Namespace, cfg: CfgNode) -> list[str]:
    """SOLVER.TIME_BUDGET_MINUTES > 0: iteration-count overrides measured here, once, for every process."""
    if args.eval_only or cfg.SOLVER.TIME_BUDGET_MINUTES <= 0:
        return []
    if args.num_machines > 1:
        raise InputError(
            "SOLVER.TIME_BUDGET_MINUTES measures the speed of one machine; for a multi-machine run set "
            "SOLVER.TIME_BUDGET_MINUTES 0 and SOLVER.MAX_ITER."
        )
    threads = None
    if torch.device(cfg.MODEL.DEVICE).type == "cpu" and args.num_gpus > 1:
        threads = max(1, (os.cpu_count() or 1) // args.num_gpus)  # as _share_cpu_threads will
    overrides = time_budget_overrides(
        cfg, resume=args.resume, world_size=args.num_gpus, threads=threads
    )
    print(
        f"SOLVER.TIME_BUDGET_MINUTES {cfg.SOLVER.TIME_BUDGET_MINUTES:g}: training with "
        + " ".join(overrides),
        flush=True,
    )
    return overrides


def cli(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    print("Command Line Args:", args)
    try:
        cfg = check_inputs(args)
        args.opts = [*args.opts, *fit_time_budget(args, cfg)]
    except (InputError, DatasetError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except DatasetError as e:
        # found when the training loader is built (e.g. image files missing), before the first iteration
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())

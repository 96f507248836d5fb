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
the json categories; a shipped config's OUTPUT_DIR (made for its own dataset) becomes `output/custom` unless the
command line sets OUTPUT_DIR.

A trained model describes itself: training writes the class names and the dataset's category ids into
DATASETS.THING_CLASSES / THING_DATASET_IDS of OUTPUT_DIR/config.yaml and into each checkpoint, so `--eval-only`,
`FastInstPredictor`, the demo and the export read them in another process. Weights are checked before anything
runs: a file that cannot be read, `--eval-only` weights that do not fit the config (loaded strictly, as the
predictor does), and a `--resume` checkpoint of another run (other shapes, classes or datasets) are one line and
exit status 2. Training from MODEL.WEIGHTS stays lenient (fine-tuning to other classes), with the skipped keys
listed in the log.
"""

from __future__ import annotations

import logging
import os
import sys
from argparse import ArgumentParser, Namespace

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from fastinst.checkpoint import (
    METADATA_KEY,
    CheckpointMismatchError,
    CheckpointReadError,
    ModelRecord,
    guard_optimizer_state,
    load_checkpoint,
    model_record,
    read_checkpoint,
)
from fastinst.config import load_config
from fastinst.data import (
    DatasetError,
    check_dataset_files,
    check_num_classes,
    register_coco_json_dataset,
)
from fastinst.engine import Trainer
from fastinst.engine.input_size import input_size_overrides
from fastinst.engine.time_budget import time_budget_overrides

CUSTOM_TRAIN = "custom_coco_train"
CUSTOM_VAL = "custom_coco_val"
CUSTOM_OUTPUT_DIR = (
    "output/custom"  # OUTPUT_DIR of --coco-train runs with a shipped config (see build_cfg)
)
REPO_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


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


def custom_output_dir(args: Namespace, cfg: CfgNode) -> str | None:
    """`output/custom` for `--coco-train` with a shipped config whose OUTPUT_DIR is made for its own dataset.

    None (keep cfg.OUTPUT_DIR) when the command line sets OUTPUT_DIR, when the config is the user's own (outside
    this repository's configs/), or when its OUTPUT_DIR is already under output/custom (configs/custom/).
    """
    if not args.coco_train or not args.config_file or "OUTPUT_DIR" in args.opts[::2]:
        return None
    config = os.path.abspath(args.config_file)
    if os.path.commonpath([config, REPO_CONFIGS]) != REPO_CONFIGS:
        return None
    current = os.path.normpath(cfg.OUTPUT_DIR)
    if current == os.path.normpath(CUSTOM_OUTPUT_DIR) or current.startswith(
        os.path.normpath(CUSTOM_OUTPUT_DIR) + os.sep
    ):
        return None
    return CUSTOM_OUTPUT_DIR


def describe_model(cfg: CfgNode) -> None:
    """DATASETS.THING_CLASSES / THING_DATASET_IDS from the training dataset's metadata (training runs only).

    They go into OUTPUT_DIR/config.yaml and the checkpoints, where `fastinst.predictor.dataset_metadata` reads
    them in another process. Left as they are when the dataset's metadata has no class list of NUM_CLASSES names.
    """
    if not cfg.DATASETS.TRAIN:
        return
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    classes = meta.get("thing_classes")
    if classes is None or len(classes) != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
        return
    id_map = meta.get("thing_dataset_id_to_contiguous_id") or {}
    ids = (
        sorted(id_map, key=id_map.get)
        if sorted(id_map.values()) == list(range(len(classes)))
        else []
    )
    cfg.DATASETS.THING_CLASSES = list(classes)
    cfg.DATASETS.THING_DATASET_IDS = [int(i) for i in ids]


def build_cfg(args: Namespace, custom: dict[str, list[str]] | None = None) -> CfgNode:
    """get_cfg -> add_fastinst_config -> config file -> opts -> custom datasets (not frozen).

    Training runs also get DATASETS.THING_CLASSES / THING_DATASET_IDS from their training data (`describe_model`)
    and, for `--coco-train` with a shipped config, OUTPUT_DIR `output/custom` (`custom_output_dir`).
    """
    cfg = load_config(args.config_file, args.opts)
    apply_custom_datasets(cfg, custom or {})
    output_dir = custom_output_dir(args, cfg)
    if output_dir is not None:
        cfg.OUTPUT_DIR = output_dir
    if not args.eval_only:
        describe_model(cfg)
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


def weights_file(args: Namespace, cfg: CfgNode) -> tuple[str, bool]:
    """(the weights this run reads, whether it is OUTPUT_DIR's last checkpoint), as `resume_or_load` picks them."""
    checkpointer = DetectionCheckpointer(torch.nn.Module(), save_dir=cfg.OUTPUT_DIR)
    if args.resume and checkpointer.has_checkpoint():
        return checkpointer.get_checkpoint_file(), True
    return cfg.MODEL.WEIGHTS, False


def main(args: Namespace):
    custom = register_custom_datasets(args)
    cfg = setup(args, custom)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        path, _ = weights_file(args, cfg)
        if path:
            load_checkpoint(
                model, path, strict=True
            )  # as the predictor: every weight from the file
        else:
            logging.getLogger("fastinst").warning(
                "MODEL.WEIGHTS is empty: evaluating random weights."
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
    trainer.checkpointer.add_checkpointable(METADATA_KEY, ModelRecord(model_record(cfg)))
    guard_optimizer_state(trainer.optimizer, trainer.model)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def check_device(device: str) -> None:
    """InputError (one line) for a MODEL.DEVICE torch does not know, or CUDA where there is none (detectron2's
    default MODEL.DEVICE is cuda: official configs on a CPU-only machine)."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise InputError(
            f"MODEL.DEVICE {device!r} is not a device torch knows (cpu, cuda, cuda:0, ...)."
        ) from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"MODEL.DEVICE {device!r}: no CUDA device is available here; add MODEL.DEVICE cpu to run on the CPU."
        )


def check_inputs(args: Namespace) -> CfgNode:
    """Fail fast, before any process starts: config file, custom datasets, dataset/NUM_CLASSES agreement.

    Returns the merged config.
    """
    if args.config_file and not os.path.isfile(args.config_file):
        raise InputError(f"{args.config_file}: config file not found.")
    custom = register_custom_datasets(args)
    cfg = build_cfg(args, custom)
    check_device(cfg.MODEL.DEVICE)
    names = list(cfg.DATASETS.TEST) if args.eval_only else [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]
    for name in names:
        if name not in DatasetCatalog.list():
            raise InputError(
                f"dataset {name!r} (DATASETS.TRAIN / DATASETS.TEST) is not registered; "
                "use --coco-train / --coco-val for your own COCO json files."
            )
        check_dataset_files(name)
        check_num_classes(name, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    check_weights(args, cfg)
    return cfg


def check_weights(args: Namespace, cfg: CfgNode) -> None:
    """Before anything runs: the weights file can be read, and it fits where numbers are reported or resumed.

    - `--resume` without a checkpoint in OUTPUT_DIR: one warning line (MODEL.WEIGHTS only initialises).
    - `--eval-only`: the weights load strictly into the model of the config (as in `FastInstPredictor`), and the
      model's classes (DATASETS.THING_CLASSES or the checkpoint's record) are those of the test dataset.
    - `--resume` from OUTPUT_DIR's checkpoint: it loads strictly (same shapes, same keys) and its record names
      the same training datasets and classes as this command.
    - training from MODEL.WEIGHTS: the file can be read (the load itself stays lenient, for fine-tuning).
    Raises InputError, CheckpointReadError, CheckpointMismatchError or FileNotFoundError, each one line.
    """
    path, resuming = weights_file(args, cfg)
    if args.resume and not resuming:
        start = (
            "evaluating MODEL.WEIGHTS"
            if args.eval_only
            else "starting at iteration 0 from MODEL.WEIGHTS"
        )
        print(
            f"warning: --resume: no checkpoint to resume in {cfg.OUTPUT_DIR} (no last_checkpoint file): "
            f"{start} {path or '(empty: random weights)'}, which is an initialisation only (no iteration, "
            "optimizer or scheduler state).",
            file=sys.stderr,
            flush=True,
        )
    if not path or "://" in path:
        return  # random weights, or a URL that detectron2 downloads (and names if that fails)
    if not (args.eval_only or resuming):
        read_checkpoint(path)  # lenient load later; only "can it be read" now
        return
    cpu_cfg = cfg.clone()
    cpu_cfg.defrost()
    cpu_cfg.MODEL.DEVICE = "cpu"
    try:
        extra = load_checkpoint(build_model(cpu_cfg), path, strict=True)
    except CheckpointMismatchError as e:
        if not resuming:
            raise
        raise InputError(f"--resume: {e} {_OTHER_RUN.format(cfg.OUTPUT_DIR)}") from None
    record = extra.get(METADATA_KEY) or {}
    if args.eval_only:
        classes = list(cfg.DATASETS.THING_CLASSES) or record.get("thing_classes")
        for name in cfg.DATASETS.TEST:
            test_classes = MetadataCatalog.get(name).get("thing_classes")
            if classes and test_classes is not None and list(test_classes) != list(classes):
                raise InputError(
                    f"{path}: the model was trained for the classes {list(classes)}, but {name} has "
                    f"{list(test_classes)}; its AP would compare other classes."
                )
    elif record:
        ours = model_record(cfg)
        for key in ("datasets", "thing_classes"):
            if record.get(key) and record[key] != ours[key]:
                raise InputError(
                    f"--resume: {path} was trained with {key} {record[key]}, this command trains with "
                    f"{ours[key]}. {_OTHER_RUN.format(cfg.OUTPUT_DIR)}"
                )


_OTHER_RUN = (
    "The checkpoint belongs to another run in OUTPUT_DIR {}: give this run its own OUTPUT_DIR, or drop "
    "--resume (MODEL.WEIGHTS then only initialises, e.g. to fine-tune)."
)


def fit_time_budget(args: Namespace, cfg: CfgNode) -> list[str]:
    """SOLVER.TIME_BUDGET_MINUTES != 0: iteration-count overrides measured here, once, for every process (a
    negative budget is refused by `time_budget_overrides`)."""
    if args.eval_only or cfg.SOLVER.TIME_BUDGET_MINUTES == 0:
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
        sizes = input_size_overrides(cfg, resume=args.resume, eval_only=args.eval_only)
        # INPUT.AUTO_SIZE: sizes from the data, merged before the time budget is measured
        cfg.merge_from_list(sizes)
        args.opts = [*args.opts, *sizes, *fit_time_budget(args, cfg)]
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
    except (DatasetError, CheckpointMismatchError, CheckpointReadError) as e:
        # found when the training loader is built (e.g. image files missing), before the first iteration,
        # or when a checkpoint is loaded (a last check: check_weights has seen the file)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())

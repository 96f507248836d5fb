"""Quickstart: generate the synthetic shapes, train a small FastInst on the CPU, evaluate, draw predictions.

    python -m fastinst.engine.quickstart [--config-file configs/synthetic/quickstart.yaml] [--resume]
        [--eval-only] [--num-vis 8] [--vis-threshold 0.3] [KEY VALUE ...]

The data goes to `$DETECTRON2_DATASETS/synthetic` (default `datasets/synthetic`; generated once), everything else
to OUTPUT_DIR (`output/quickstart`): checkpoints, logs, `inference/` (COCO results) and `vis/` (each picture shows
the ground truth on the left and the predictions with score >= --vis-threshold on the right). The last line printed is
`quickstart mask AP: <AP>`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_setup
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

from fastinst.checkpoint import (
    CheckpointMismatchError,
    CheckpointReadError,
    guard_optimizer_state,
    load_checkpoint,
)
from fastinst.config import ConfigError, load_config
from fastinst.data import ensure_synthetic_dataset, register_synthetic
from fastinst.data.image_io import read_image
from fastinst.engine.time_budget import time_budget_overrides
from fastinst.engine.trainer import Trainer

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic" / "quickstart.yaml"
# A model trained for minutes scores its correct instances around 0.3-0.6: 0.5 would hide most of them.
SCORE_THRESHOLD = 0.3

logger = logging.getLogger("fastinst")


def build_cfg(args: argparse.Namespace) -> CfgNode:
    return load_config(args.config_file, args.opts)


def setup(args: argparse.Namespace) -> CfgNode:
    cfg = build_cfg(args)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, name="fastinst")
    return cfg


def draw_side_by_side(
    model: torch.nn.Module,
    dataset_dict: dict,
    metadata,
    input_format: str,
    score_threshold: float = SCORE_THRESHOLD,
) -> np.ndarray:
    """RGB uint8 picture: ground truth (left) | predictions with score >= `score_threshold` (right)."""
    image = read_image(dataset_dict["file_name"], format="RGB")
    gt = Visualizer(image, metadata, instance_mode=ColorMode.IMAGE).draw_dataset_dict(dataset_dict)

    model_input = image if input_format == "RGB" else image[:, :, ::-1]
    tensor = torch.as_tensor(np.ascontiguousarray(model_input.transpose(2, 0, 1)))  # (3, H, W)
    with torch.no_grad():
        output = model([{"image": tensor, "height": image.shape[0], "width": image.shape[1]}])[0]
    instances = output["instances"].to("cpu")
    instances = instances[instances.scores >= score_threshold]
    pred = Visualizer(image, metadata, instance_mode=ColorMode.IMAGE).draw_instance_predictions(
        instances
    )
    return np.concatenate([gt.get_image(), pred.get_image()], axis=1)


def save_visualizations(
    cfg: CfgNode, model: torch.nn.Module, num: int, score_threshold: float = SCORE_THRESHOLD
) -> list[str]:
    """Draw the first `num` images of DATASETS.TEST[0] into OUTPUT_DIR/vis; returns the file paths."""
    if num <= 0 or not cfg.DATASETS.TEST:
        return []
    name = cfg.DATASETS.TEST[0]
    metadata = MetadataCatalog.get(name)
    out_dir = os.path.join(cfg.OUTPUT_DIR, "vis")
    os.makedirs(out_dir, exist_ok=True)
    was_training = model.training
    model.eval()
    paths = []
    for d in DatasetCatalog.get(name)[:num]:
        picture = draw_side_by_side(model, d, metadata, cfg.INPUT.FORMAT, score_threshold)
        path = os.path.join(out_dir, os.path.splitext(os.path.basename(d["file_name"]))[0] + ".png")
        Image.fromarray(picture).save(path)
        paths.append(path)
    model.train(was_training)
    return paths


def run(args: argparse.Namespace) -> float:
    """Generate data, train (unless --eval-only), evaluate, draw; returns the mask AP."""
    root = ensure_synthetic_dataset(args.data_root)
    register_synthetic(root)
    if not args.eval_only:
        budget = time_budget_overrides(build_cfg(args), resume=args.resume)
        if budget:
            print("SOLVER.TIME_BUDGET_MINUTES: training with " + " ".join(budget), flush=True)
        args.opts = [*args.opts, *budget]
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        weights = cfg.MODEL.WEIGHTS or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
        load_checkpoint(model, weights, strict=True)  # as the predictor: every weight from the file
        results = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        guard_optimizer_state(trainer.optimizer, trainer.model)  # no resumed state of another shape
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        model = trainer.model
        results = getattr(trainer, "_last_eval_results", None) or Trainer.test(cfg, model)
    paths = save_visualizations(cfg, model, args.num_vis, args.vis_threshold)
    if paths:
        logger.info(
            "Wrote %d pictures (ground truth | prediction) to %s",
            len(paths),
            os.path.dirname(paths[0]),
        )
    return float(results["segm"]["AP"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=str(DEFAULT_CONFIG), metavar="FILE")
    parser.add_argument(
        "--data-root",
        default=None,
        help="synthetic data folder (default $DETECTRON2_DATASETS/synthetic)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint"
    )
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="evaluate MODEL.WEIGHTS (default OUTPUT_DIR/model_final.pth)",
    )
    parser.add_argument(
        "--num-vis", type=int, default=8, help="number of validation pictures to draw"
    )
    parser.add_argument(
        "--vis-threshold",
        type=float,
        default=SCORE_THRESHOLD,
        help="draw predictions with at least this score",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    try:
        ap = run(args)
    except (CheckpointMismatchError, CheckpointReadError, ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)  # weights that cannot be read or do not fit: one line
        raise SystemExit(2) from None
    print(f"quickstart mask AP: {ap:.1f}", flush=True)


if __name__ == "__main__":
    main()

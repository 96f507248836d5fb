#!/usr/bin/env python
"""Mask AP and box AP of a FastInst checkpoint and its exported artifacts, side by side, with the project's evaluator.

Usage::

    python tools/evaluate_exported.py --config-file output/quickstart/config.yaml \\
        --weights output/quickstart/model_final.pth model.onnx model.xml model_int8.xml [--dataset synthetic_val]

Each --weights is evaluated on the dataset (default DATASETS.TEST[0]) with the test loader of `train_net.py
--eval-only` (`fastinst.engine.trainer.Trainer.build_test_loader`: the image resized with INPUT.MIN/MAX_SIZE_TEST)
and `fastinst.engine.evaluation.build_instance_evaluator` (COCO mask and box AP, pycocotools):

- ``.pth``: the PyTorch model in fp32, loaded strictly, as ``--eval-only`` runs it;
- ``.onnx``: ``fastinst.export.OnnxFastInst`` (onnxruntime, CPU);
- ``.xml``: ``fastinst.export.OpenVinoFastInst`` (OpenVINO CPU, inference precision f32; INT8 where quantized).

Exported graphs must take the dataset's sizes: export them with ``--dynamic``. The table gives each row's AP and its
difference to the first row. A missing or unreadable file is one line naming it (exit 2).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from fastinst.export.cli import setup_cfg  # noqa: E402

SUFFIXES = (".pth", ".pkl", ".onnx", ".xml")


class RuntimeModel(nn.Module):
    """An exported-graph runner (OnnxFastInst / OpenVinoFastInst) as the nn.Module detectron2's loop expects."""

    def __init__(self, runner):
        super().__init__()
        self.runner = runner

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        return self.runner.forward(batched_inputs)


def build_runner(cfg, weights: str, threads: int) -> nn.Module:
    """The model to evaluate for one weights file (by its suffix)."""
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"Weights file not found: {weights}")
    if weights.endswith(".onnx"):
        from fastinst.export import OnnxFastInst

        return RuntimeModel(OnnxFastInst(weights, num_threads=threads, bool_masks=True))
    if weights.endswith(".xml"):
        from fastinst.export import OpenVinoFastInst

        return RuntimeModel(OpenVinoFastInst(weights, num_threads=threads, bool_masks=True))
    if not weights.endswith((".pth", ".pkl")):
        raise ValueError(
            f"{weights}: unknown model file type; expected one of {', '.join(SUFFIXES)}."
        )
    from detectron2.modeling import build_model

    from fastinst.checkpoint import load_checkpoint

    model = build_model(cfg)
    load_checkpoint(model, weights, strict=True)
    return model.eval()


def evaluate(cfg, model: nn.Module, dataset: str, folder: str) -> dict:
    """COCO results {"segm": {...}, "bbox": {...}} of `model` on `dataset`; the evaluator's files go to `folder`
    (one folder for all rows: a dataset without a json gets its COCO json cached there by the first row)."""
    from detectron2.evaluation import inference_on_dataset

    from fastinst.engine.evaluation import build_instance_evaluator
    from fastinst.engine.trainer import Trainer

    loader = Trainer.build_test_loader(cfg, dataset)
    evaluator = build_instance_evaluator(cfg, dataset, output_folder=folder)
    with torch.no_grad():
        return inference_on_dataset(model, loader, evaluator)


def format_table(rows: list[tuple[str, dict, float]]) -> str:
    header = (
        "| weights | mask AP | mask AP50 | box AP | mask AP vs first | box AP vs first | s/image |"
    )
    lines = [header, "|---|---|---|---|---|---|---|"]
    first = rows[0][1]
    for name, res, seconds in rows:
        segm, bbox = res["segm"], res["bbox"]
        lines.append(
            f"| {name} | {segm['AP']:.2f} | {segm['AP50']:.2f} | {bbox['AP']:.2f} | "
            f"{segm['AP'] - first['segm']['AP']:+.2f} | {bbox['AP'] - first['bbox']['AP']:+.2f} | "
            f"{seconds:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the trained config")
    parser.add_argument(
        "--weights", nargs="+", required=True, metavar="FILE", help=", ".join(SUFFIXES)
    )
    parser.add_argument("--dataset", help="registered dataset (default: DATASETS.TEST[0])")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every runtime")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        cfg = setup_cfg(args)
        dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
        if not dataset:
            raise ValueError(f"{args.config_file} has no DATASETS.TEST; pass --dataset.")
        runners = [(w, build_runner(cfg, w, args.threads)) for w in args.weights]
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from detectron2.data import DatasetCatalog

    num_images = max(len(DatasetCatalog.get(dataset)), 1)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, model in runners:
            start = time.perf_counter()
            results = evaluate(cfg, model, dataset, folder)
            rows.append((name, results, (time.perf_counter() - start) / num_images))
            print(
                f"{name}: mask AP {results['segm']['AP']:.2f}, box AP {results['bbox']['AP']:.2f}"
            )
    print(f"Dataset: {dataset}; config: {args.config_file}; {args.threads} threads")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())

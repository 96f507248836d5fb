"""Command line of tools/export_model.py: build a FastInst from a config, load weights, export, verify.

    python tools/export_model.py --config-file configs/coco/instance-segmentation/fastinst_R50_ppm-fpn_x1_576.yaml \\
        --output fastinst_r50_x1.onnx --input-size 576 768 MODEL.WEIGHTS fastinst_R50_ppm-fpn_x1_576.pth

Formats: "onnx" (default; fixed size, or any size with --dynamic), "torchscript" (traced at --input-size),
"pt2" (`torch.export.save`; fixed size, or any size with --dynamic). After writing, the file is run once on a
random image and compared with the PyTorch model (--no-verify skips this).
"""

import argparse
import json
import logging
import os
import sys
import time
import warnings

import numpy as np
import torch

logger = logging.getLogger("fastinst.export")

FORMATS = ("onnx", "torchscript", "pt2")
VERIFY_TOLERANCE = 1e-4  # relative; measured: ~1e-6 (R18/R50), ~5e-6 (R50-vd-DCN)
# Near-tied proposal scores (common with random weights) can change which location wins the last top-Q slots
VERIFY_MIN_MATCHED = 0.9


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a FastInst model to ONNX, TorchScript or torch.export (.pt2).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Trailing KEY VALUE pairs override the config, e.g. MODEL.WEIGHTS model.pth.",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="FastInst YAML config")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--output", required=True, metavar="PATH", help="file to write")
    parser.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="graph input size (the example size with --dynamic). Default: INPUT.MIN_SIZE_TEST x "
        "4/3 of it (capped by MAX_SIZE_TEST), rounded up to the size divisibility, e.g. 576 768",
    )
    parser.add_argument(
        "--dynamic",
        action="store_true",
        help="onnx/pt2: any input size (sides multiples of 32, at least a minimum stored in the metadata)",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=19,
        help="ONNX opset of the written file: 18 or higher (19 or higher for DCN backbones); a lower one "
        "is refused (torch's exporter implements 18 and later)",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the check against PyTorch")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def setup_cfg(args):
    from detectron2.config import get_cfg

    from fastinst import add_fastinst_config

    if not os.path.isfile(args.config_file):
        raise FileNotFoundError(f"Config file not found: {args.config_file}")
    cfg = get_cfg()
    add_fastinst_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(list(args.opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def build_model_for_export(cfg) -> torch.nn.Module:
    """The eval-mode model with MODEL.WEIGHTS loaded strictly (an empty MODEL.WEIGHTS gives random weights)."""
    from detectron2.modeling import build_model

    from fastinst.checkpoint import load_checkpoint

    torch.manual_seed(0)  # reproducible random initialisation when there are no weights
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        load_checkpoint(model, cfg.MODEL.WEIGHTS, strict=True)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting random weights (useful for timing only).")
    return model


def query_errors(got: list[np.ndarray], expected: list[np.ndarray]) -> np.ndarray:
    """Per-query error (Q,) between two (pred_logits, pred_masks) pairs, after matching the queries.

    Each output is scaled by max |expected|; a query's error is the max |difference| over its logits and mask
    logits. Queries are paired by minimum total error (Hungarian), because near-tied proposal scores may rank
    (or, at the top-Q boundary, pick) locations differently in two runtimes.
    """
    from scipy.optimize import linear_sum_assignment

    def features(outputs):
        return np.concatenate(
            [
                o[0].reshape(o.shape[1], -1) / max(np.abs(e).max(), 1e-6)
                for o, e in zip(outputs, expected)
            ],
            axis=1,
        )  # (Q, K+1 + L8)

    a, b = torch.from_numpy(features(got)), torch.from_numpy(features(expected))
    cost = torch.cdist(a[None].double(), b[None].double(), p=float("inf"))[0].numpy()  # (Q, Q)
    rows, cols = linear_sum_assignment(cost)
    return cost[rows, cols]


def verify(model: torch.nn.Module, path, fmt: str, input_size: tuple[int, int]) -> np.ndarray:
    """`query_errors` of the exported file vs the PyTorch model on a fixed random image."""
    from fastinst.export.exporter import example_image
    from fastinst.export.wrapper import FastInstExportModel

    image = example_image(model, input_size)
    with torch.no_grad():
        expected = [t.numpy() for t in FastInstExportModel(model).eval()(image)]
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": image.numpy()})
    elif fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated")
            got = [t.numpy() for t in torch.jit.load(str(path))(image)]
    else:
        with torch.no_grad():
            got = [t.numpy() for t in torch.export.load(str(path)).module()(image)]
    return query_errors(got, expected)


def main(argv: list[str] | None = None) -> int:
    from fastinst.export.exporter import (
        default_input_size,
        export_metadata,
        export_onnx,
        export_pt2,
        export_torchscript,
    )

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("onnxscript").setLevel(logging.ERROR)  # "Skipping constant folding ..." notes
    if args.dynamic and args.format == "torchscript":
        print(
            "error: --dynamic is for --format onnx or pt2 (TorchScript is traced at one size)",
            file=sys.stderr,
        )
        return 2
    start = time.perf_counter()
    try:
        cfg = setup_cfg(args)
        input_size = tuple(args.input_size) if args.input_size else default_input_size(cfg)
        model = build_model_for_export(cfg)
        if args.format == "onnx":
            path = export_onnx(
                model, args.output, input_size, dynamic=args.dynamic, opset_version=args.opset
            )
        elif args.format == "torchscript":
            path = export_torchscript(model, args.output, input_size)
        else:
            path = export_pt2(model, args.output, input_size, dynamic=args.dynamic)
    except (ValueError, FileNotFoundError) as e:  # bad config, weights or size: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    size_mb = path.stat().st_size / 2**20
    print(f"Wrote {path} ({args.format}, {size_mb:.1f} MiB) in {time.perf_counter() - start:.0f} s")
    print("metadata: " + json.dumps(export_metadata(model, input_size, args.dynamic)))
    if not args.no_verify:
        errors = verify(model, path, args.format, input_size)
        ok = errors <= VERIFY_TOLERANCE
        print(
            f"verify: {ok.sum()}/{len(ok)} queries within {VERIFY_TOLERANCE:g} of PyTorch (relative); "
            f"median error {np.median(errors):.1e}, max {errors.max():.1e}"
        )
        if ok.mean() < VERIFY_MIN_MATCHED:
            print(
                "error: the exported graph does not reproduce the PyTorch outputs", file=sys.stderr
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

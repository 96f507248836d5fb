"""Command line of tools/export_model.py: build a FastInst from a config, load weights, export, verify.

    python tools/export_model.py --config-file configs/coco/instance-segmentation/fastinst_R50_ppm-fpn_x1_576.yaml \\
        --output fastinst_r50_x1.onnx --input-size 576 768 MODEL.WEIGHTS fastinst_R50_ppm-fpn_x1_576.pth

Formats: "onnx" (default; fixed size, or any size with --dynamic), "torchscript" (traced at --input-size),
"pt2" (`torch.export.save`; fixed size, or any size with --dynamic), "openvino" (an OpenVINO IR .xml + .bin
converted from the ONNX export; with --int8 --calibration SOURCE quantized by NNCF). After writing, the file is run
once on a random image and compared with the PyTorch model (--no-verify skips this; an INT8 IR is reported, not
held to the fp32 tolerance).

    python tools/export_model.py --config-file output/quickstart/config.yaml --format openvino --dynamic \
        --output model_int8.xml --int8 --calibration synthetic_train MODEL.WEIGHTS output/quickstart/model_final.pth
"""

import argparse
import json
import logging
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("fastinst.export")

# keys of fastinst.export.openvino_model.FP32_SCOPES and its default (repeated so that --help imports no openvino)
OPENVINO_SCOPES = (
    "backbone", "pixel-decoder", "query-proposal", "decoder-attention", "decoder-ffn", "class-head",
    "mask-head",
)  # fmt: skip
OPENVINO_DEFAULT_KEEP = ("decoder-attention",)

FORMATS = ("onnx", "torchscript", "pt2", "openvino")
VERIFY_TOLERANCE = 1e-4  # relative; measured: ~1e-6 (R18/R50), ~5e-6 (R50-vd-DCN)
# Near-tied proposal scores (common with random weights) can change which location wins the last top-Q slots
VERIFY_MIN_MATCHED = 0.9


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a FastInst model to ONNX, TorchScript, torch.export (.pt2) or OpenVINO IR.",
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
        help="onnx/openvino/pt2: any input size (sides multiples of 32, at least a minimum stored in the "
        "metadata)",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=19,
        help="ONNX opset of the written file: 18 or higher (19 or higher for DCN backbones); a lower one "
        "is refused (torch's exporter implements 18 and later)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="openvino: quantize to INT8 with NNCF post-training quantization (needs --calibration)",
    )
    parser.add_argument(
        "--calibration",
        metavar="SOURCE",
        help="--int8: an image folder or a registered dataset name (e.g. synthetic_train); images are "
        "resized as at test time (INPUT.MIN/MAX_SIZE_TEST)",
    )
    parser.add_argument(
        "--calibration-size",
        type=int,
        default=64,
        metavar="N",
        help="--int8: number of calibration images, spread evenly over the source (default 64)",
    )
    parser.add_argument(
        "--keep-fp32",
        nargs="*",
        metavar="SCOPE",
        help="--int8: parts kept in floating point, from: "
        f"{', '.join(sorted(OPENVINO_SCOPES))} (default: {' '.join(OPENVINO_DEFAULT_KEEP)}; "
        "none: pass the option without a scope, or 'none'); config KEY VALUE pairs may follow",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the check against PyTorch")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def setup_cfg(args):
    from fastinst.config import load_config

    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def build_model_for_export(cfg) -> tuple[torch.nn.Module, dict]:
    """The eval-mode model with MODEL.WEIGHTS loaded strictly (an empty MODEL.WEIGHTS gives random weights),
    and its classes for the export metadata.

    The classes are `fastinst.predictor.dataset_metadata`'s answer (the config's DATASETS.THING_CLASSES, the
    checkpoint's training record, the registered dataset, else stand-ins) as {"thing_classes": [K names],
    "thing_dataset_ids": [K ids] or []}.
    """
    from detectron2.modeling import build_model

    from fastinst.checkpoint import METADATA_KEY, load_checkpoint
    from fastinst.predictor import dataset_metadata

    torch.manual_seed(0)  # reproducible random initialisation when there are no weights
    model = build_model(cfg).eval()
    record = None
    if cfg.MODEL.WEIGHTS:
        record = load_checkpoint(model, cfg.MODEL.WEIGHTS, strict=True).get(METADATA_KEY)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting random weights (useful for timing only).")
    meta = dataset_metadata(cfg, record)
    id_map = meta.get("thing_dataset_id_to_contiguous_id") or {}
    ids = sorted(id_map, key=id_map.get) if len(id_map) == len(meta.thing_classes) else []
    return model, {"thing_classes": list(meta.thing_classes), "thing_dataset_ids": ids}


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
    elif fmt == "openvino":
        from fastinst.export.openvino_model import OpenVinoFastInst

        got = list(OpenVinoFastInst(path).run_graph(image.numpy()))
    else:
        with torch.no_grad():
            got = [t.numpy() for t in torch.export.load(str(path)).module()(image)]
    return query_errors(got, expected)


CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")  # MODEL.WEIGHTS, SOLVER.BASE_LR, ...


def split_keep_fp32(args) -> None:
    """--keep-fp32 takes every word after it (nargs="*"): from the first config key on (e.g. MODEL.WEIGHTS), the
    words are the config overrides they look like, moved to `args.opts`; a lone "none" means no scope."""
    if not args.keep_fp32:
        return
    words = list(args.keep_fp32)
    cut = next((i for i, w in enumerate(words) if CONFIG_KEY.match(w)), len(words))
    args.keep_fp32, args.opts = words[:cut], words[cut:] + list(args.opts or [])
    if args.keep_fp32 == ["none"]:
        args.keep_fp32 = []


def check_args(args) -> str | None:
    """The usage error of a combination of options, or None."""
    if args.dynamic and args.format == "torchscript":
        return "--dynamic is for --format onnx, pt2 or openvino (TorchScript is traced at one size)"
    if args.format == "openvino" and not str(args.output).endswith(".xml"):
        return f"--format openvino writes an IR: --output must end in .xml, got {args.output}"
    if args.int8 and args.format != "openvino":
        return "--int8 is for --format openvino"
    if args.int8 and not args.calibration:
        return (
            "--int8 needs --calibration (an image folder or a dataset name, e.g. synthetic_train)"
        )
    if (args.calibration or args.keep_fp32 is not None) and not args.int8:
        return "--calibration and --keep-fp32 are for --int8"
    if args.calibration_size < 1:
        return f"--calibration-size must be at least 1, got {args.calibration_size}"
    unknown = [s for s in args.keep_fp32 or () if s not in OPENVINO_SCOPES]
    if unknown:
        return f"unknown --keep-fp32 scope(s) {unknown}; choose from {', '.join(OPENVINO_SCOPES)}"
    return None


def export_openvino(
    model, cfg, args, input_size, classes: dict | None = None, images: list[str] | None = None
) -> Path:
    """ONNX export to a temporary folder beside the output, then the IR (INT8 with calibration `images`)."""
    from fastinst.export.exporter import export_onnx
    from fastinst.export.openvino_model import (
        calibration_inputs,
        onnx_to_openvino,
        read_onnx_metadata,
    )

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".export-") as tmp:
        onnx_path = export_onnx(
            model,
            Path(tmp) / "model.onnx",
            input_size,
            dynamic=args.dynamic,
            opset_version=args.opset,
            classes=classes,
        )
        calibration = None
        if images is not None:
            test_size = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
            calibration = calibration_inputs(images, read_onnx_metadata(onnx_path), test_size)
            print(f"calibration: {len(calibration)} images from {args.calibration}")
        keep = tuple(args.keep_fp32) if args.keep_fp32 is not None else OPENVINO_DEFAULT_KEEP
        return onnx_to_openvino(onnx_path, output, calibration, keep)


def configure_logging() -> None:
    """Root logging for the command line: warnings and errors as `LEVEL logger: message` on stderr.

    Called by the script entry point (tools/export_model.py), not by `main`, so that calling `main` from Python
    (tests, notebooks) leaves the caller's logging configuration alone.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    from fastinst.export.exporter import (
        default_input_size,
        export_metadata,
        export_onnx,
        export_pt2,
        export_torchscript,
    )

    args = build_parser().parse_args(argv)
    split_keep_fp32(args)
    logging.getLogger("onnxscript").setLevel(logging.ERROR)  # "Skipping constant folding ..." notes
    # "No CUDA runtime is found, using CUDA_HOME=..." when nncf loads torch's extension builder (CPU export)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if (
        args.int8
    ):  # nncf sets its logger to INFO (a line per unquantized input) when imported: import it first
        import nncf

        nncf.set_log_level(logging.WARNING)
    usage_error = check_args(args)
    if usage_error:
        print(f"error: {usage_error}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        cfg = setup_cfg(args)
        images = None
        if args.int8:  # a bad calibration source is refused before the export's minutes
            from fastinst.export.openvino_model import check_calibration_source

            images = check_calibration_source(args.calibration, args.calibration_size)
        input_size = tuple(args.input_size) if args.input_size else default_input_size(cfg)
        model, classes = build_model_for_export(cfg)
        if args.format == "onnx":
            path = export_onnx(
                model,
                args.output,
                input_size,
                dynamic=args.dynamic,
                opset_version=args.opset,
                classes=classes,
            )
        elif args.format == "torchscript":
            path = export_torchscript(model, args.output, input_size, classes)
        elif args.format == "openvino":
            path = export_openvino(model, cfg, args, input_size, classes, images)
        else:
            path = export_pt2(model, args.output, input_size, dynamic=args.dynamic, classes=classes)
    except (
        ValueError,
        FileNotFoundError,
    ) as e:  # bad config, weights, size or calibration: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    size_mb = path.stat().st_size / 2**20
    if args.format == "openvino":
        size_mb += path.with_suffix(".bin").stat().st_size / 2**20
    kind = f"{args.format}{' int8' if args.int8 else ''}"
    print(f"Wrote {path} ({kind}, {size_mb:.1f} MiB) in {time.perf_counter() - start:.0f} s")
    print("metadata: " + json.dumps(export_metadata(model, input_size, args.dynamic, classes)))
    if not args.no_verify:
        errors = verify(model, path, args.format, input_size)
        ok = errors <= VERIFY_TOLERANCE
        summary = f"median error {np.median(errors):.1e}, max {errors.max():.1e}"
        if args.int8:
            print(f"verify: INT8 vs PyTorch fp32 (not held to the fp32 tolerance): {summary}")
            return 0
        print(
            f"verify: {ok.sum()}/{len(ok)} queries within {VERIFY_TOLERANCE:g} of PyTorch (relative); "
            + summary
        )
        if ok.mean() < VERIFY_MIN_MATCHED:
            print(
                "error: the exported graph does not reproduce the PyTorch outputs", file=sys.stderr
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

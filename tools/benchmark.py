#!/usr/bin/env python
"""Inference speed of FastInst and, in the same run, of detectron2's Mask R-CNN R50-FPN at the same input size.

Usage::

    python tools/benchmark.py \\
        --config-file configs/coco/instance-segmentation/fastinst_R50_ppm-fpn_x1_576.yaml \\
        --precision fp32 bf16 --official-path [--compile] [--input-size 576 768] [--threads 2] [--runs 10]

What is timed: one call ``model([{"image": uint8-valued float32 (3, H, W) tensor}])``, batch 1, i.e. normalisation,
padding, backbone, pixel decoder, decoder and post-processing to instances with binary masks at the original
size (= the input size; no resize before the model). Image decoding and the test-time resize are outside the timer.
Rows are timed round-robin (one run of each row in turn) after warm-ups, so that load on a shared machine affects
them alike; the table gives the median and the minimum.

Rows:
- "official path": the FastInst model with every optimisation off (``fastinst.inference.Optimizations.off()``): fp32,
  the official order of post-processing work (``instance_inference_reference``), no batch-norm folding, no
  channels-last, no positional-embedding cache.
- one row per ``--precision``: ``fastinst.inference.prepare_for_inference(model, precision, compile)`` with all
  optimisations on (see that module), compiled with ``--compile`` (the first call, which compiles, is reported
  apart from the steady state).
- Mask R-CNN R50-FPN (detectron2 model zoo ``mask_rcnn_R_50_FPN_3x``), fp32, eager, as detectron2 runs it.

Memory: the optimised rows run with ``fastinst.inference.keep_freed_memory()`` (glibc keeps freed memory for reuse
instead of handing out fresh pages, which fault and get zeroed on every call); the official-path and Mask R-CNN
rows with glibc's default (``--keep-freed-memory all`` / ``none`` to change that). The setting is applied before
each call of a row; after a change, one untimed call lets the heap settle.

Exported runtimes (``--runtimes``), the same random-weight FastInst exported once with ``--dynamic`` (ONNX opset 19):
- "onnxruntime": ``fastinst.export.OnnxFastInst`` (CPU provider, ``--threads`` intra-op threads);
- "openvino": ``fastinst.export.OpenVinoFastInst``, fp32 IR, inference precision f32, reshaped to the static size;
- "openvino-int8": the IR quantized by NNCF (``--keep-fp32`` default of tools/export_model.py) with 8 random
  calibration images (random weights: the ranges do not matter for speed), run as "openvino".
Each is timed as ``runner(image)``: padding, the graph, the PyTorch post-processing to instances with bool masks.
``--sizes 320x448 448x608 576x768`` measures every row at each size (one table per size and a summary).

All weights are random (timing only; the outputs are meaningless). With random weights Mask R-CNN keeps few
detections, so its ROI heads do less work than with trained weights. FastInst's graph does not depend on the
weights; its post-processing skips the resizing of empty masks, and random weights give only empty masks, so with
random weights the skip is turned off (``--skip-empty-masks auto``): every one of the top-100 masks is resized
and measured, as if all were non-empty (the worst case; a trained model's figure is in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings
from collections.abc import Callable

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
warnings.filterwarnings("ignore", message=r".*(pkg_resources|torch\.meshgrid)")

import torch  # noqa: E402
from detectron2.config import CfgNode, get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import fastinst.export.postprocess  # noqa: E402
from fastinst.checkpoint import load_checkpoint  # noqa: E402
from fastinst.config import load_config_or_exit  # noqa: E402
from fastinst.inference import (  # noqa: E402
    Optimizations,
    default_input_size,
    inference_context,
    keep_freed_memory,
    prepare_for_inference,
    synthetic_inputs,
)

MASK_RCNN_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
RUNTIMES = ("onnxruntime", "openvino", "openvino-int8")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="default: from MIN/MAX_SIZE_TEST",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"]
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the FastInst rows")
    parser.add_argument(
        "--official-path", action="store_true", help="add the unoptimised official-path row"
    )
    parser.add_argument("--no-mask-rcnn", action="store_true", help="leave out the Mask R-CNN row")
    parser.add_argument(
        "--runtimes",
        nargs="*",
        default=[],
        choices=RUNTIMES,
        help="exported-model rows (the model is exported once, --dynamic)",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        metavar="HxW",
        help="several input sizes, e.g. 320x448 448x608 576x768 (instead of --input-size)",
    )
    parser.add_argument("--weights", default="", help="FastInst checkpoint ('' = random weights)")
    parser.add_argument(
        "--skip-empty-masks",
        choices=["auto", "on", "off"],
        default="auto",
        help="skip the resizing of empty masks (fastinst.export.postprocess.SKIP_EMPTY_MASKS); auto: on with "
        "--weights, off with random weights (all their masks are empty: off times the work of 100 non-empty "
        "masks, the worst case)",
    )
    parser.add_argument(
        "--keep-freed-memory",
        choices=["optimised", "all", "none"],
        default="optimised",
        help="rows that run with fastinst.inference.keep_freed_memory() (default: the optimised ones)",
    )
    parser.add_argument(
        "--perf-count",
        action="store_true",
        help="OpenVINO rows: compile with PERF_COUNT and print where the graph's time goes (by kind of op)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per row (>= 1)")
    parser.add_argument("--runs", type=int, default=10, help="timed calls per row")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="FastInst config KEY VALUE pairs")
    return parser


@dataclasses.dataclass
class Row:
    name: str
    precision: str
    compiled: bool
    run: Callable[[], object]
    keep_memory: bool = False
    runner: object = None  # exported rows: the OnnxFastInst / OpenVinoFastInst
    first_s: float = float("nan")
    times: list[float] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def fastinst_cfg(config_file: str, opts: list[str], device: str) -> CfgNode:
    cfg = load_config_or_exit(config_file, list(opts) + ["MODEL.DEVICE", device])
    cfg.freeze()
    return cfg


def mask_rcnn_cfg(device: str) -> CfgNode:
    from detectron2 import model_zoo

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(MASK_RCNN_CONFIG))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", device])
    cfg.freeze()
    return cfg


def timed_call(model, inputs, precision: str, device: str) -> Callable[[], object]:
    def run():
        with inference_context(model, precision):
            out = model(inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def build_rows(args, cfg: CfgNode, inputs: list[dict]) -> list[Row]:
    keep_optimised = args.keep_freed_memory != "none"
    keep_others = args.keep_freed_memory == "all"

    def fastinst(precision: str, compile: bool, optimizations: Optimizations) -> Callable:
        torch.manual_seed(0)
        model = build_model(cfg)
        if args.weights:
            load_checkpoint(model, args.weights, strict=True)
        prepare_for_inference(model, precision, compile, optimizations)
        return timed_call(model, inputs, precision, args.device)

    rows = []
    if args.official_path:
        run = fastinst("fp32", False, Optimizations.off())
        rows.append(Row("FastInst official path", "fp32", False, run, keep_others))
    optimised = Optimizations(keep_freed_memory=keep_optimised)
    for precision in args.precision:
        run = fastinst(precision, args.compile, optimised)
        rows.append(Row("FastInst", precision, args.compile, run, keep_optimised))
    if not args.no_mask_rcnn:
        torch.manual_seed(0)
        model = build_model(mask_rcnn_cfg(args.device)).eval()
        image = inputs[0]["image"]
        mrcnn_inputs = [{"image": image, "height": image.shape[1], "width": image.shape[2]}]
        run = timed_call(model, mrcnn_inputs, "fp32", args.device)
        rows.append(Row("Mask R-CNN R50-FPN", "fp32", False, run, keep_others))
    return rows


def export_runtimes(args, cfg: CfgNode, folder: str, size: tuple[int, int]) -> dict[str, str]:
    """Export the random-weight FastInst once (dynamic ONNX, IR, INT8 IR) for the requested runtimes."""
    from pathlib import Path

    from fastinst.export import export_onnx, onnx_to_openvino, read_onnx_metadata
    from fastinst.export.openvino_model import calibration_inputs

    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if args.weights:
        load_checkpoint(model, args.weights, strict=True)
    paths = {"onnxruntime": str(export_onnx(model, Path(folder) / "m.onnx", size, dynamic=True))}
    if "openvino" in args.runtimes:
        paths["openvino"] = str(onnx_to_openvino(paths["onnxruntime"], Path(folder) / "m.xml"))
    if "openvino-int8" in args.runtimes:
        g = torch.Generator().manual_seed(1)
        images = [
            torch.randint(0, 256, (*size, 3), generator=g, dtype=torch.uint8).numpy()
            for _ in range(8)
        ]
        meta = read_onnx_metadata(paths["onnxruntime"])
        inputs = calibration_inputs(
            images, meta, (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        )
        xml = onnx_to_openvino(paths["onnxruntime"], Path(folder) / "m_int8.xml", inputs)
        paths["openvino-int8"] = str(xml)
    return paths


def runtime_rows(args, paths: dict[str, str], inputs: list[dict], size) -> list[Row]:
    """One row per --runtimes entry: runner(image) with the image of `inputs`."""
    from fastinst.export import OnnxFastInst, OpenVinoFastInst

    image = inputs[0]["image"]
    keep = args.keep_freed_memory != "none"
    rows = []
    for name in args.runtimes:
        if name == "onnxruntime":
            runner = OnnxFastInst(paths[name], num_threads=args.threads, bool_masks=True)
            label, precision = "FastInst onnxruntime", "fp32"
        else:
            runner = OpenVinoFastInst(
                paths[name],
                num_threads=args.threads,
                bool_masks=True,
                static_size=size,
                perf_count=args.perf_count,
            )
            label = "FastInst OpenVINO"
            precision = "int8" if name.endswith("int8") else "fp32"
        rows.append(Row(label, precision, False, lambda r=runner: r(image), keep, runner))
    return rows


def measure(rows: list[Row], warmup: int, runs: int, device: str) -> None:
    state = {"keep": None}

    def use_memory_policy(row: Row, settle: bool = True) -> None:
        if device == "cpu" and row.keep_memory != state["keep"]:
            keep_freed_memory(row.keep_memory)
            if settle and state["keep"] is not None:
                row.run()  # untimed: let the heap settle under the new policy
            state["keep"] = row.keep_memory

    for row in rows:  # first call (compiles, if compiled), then the other warm-ups
        use_memory_policy(row, settle=False)
        start = time.perf_counter()
        row.run()
        row.first_s = time.perf_counter() - start
        for _ in range(max(warmup - 1, 0)):
            row.run()
    for _ in range(runs):  # round-robin, so that machine load hits every row alike
        for row in rows:
            use_memory_policy(row)
            start = time.perf_counter()
            row.run()
            row.times.append(time.perf_counter() - start)


def format_table(rows: list[Row]) -> str:
    official = next((r for r in rows if r.name.endswith("official path")), None)
    mask_rcnn = next((r for r in rows if r.name.startswith("Mask R-CNN")), None)
    header = [
        "model", "precision", "compiled", "median ms", "min ms", "images/s", "first call s",
        "vs official path", "vs Mask R-CNN",
    ]  # fmt: skip
    lines = []
    for r in rows:
        lines.append(
            [
                r.name,
                r.precision,
                "yes" if r.compiled else "no",
                f"{r.median * 1000:.1f}",
                f"{min(r.times) * 1000:.1f}",
                f"{1 / r.median:.2f}",
                f"{r.first_s:.2f}",
                f"{official.median / r.median:.2f}x" if official else "-",
                f"{mask_rcnn.median / r.median:.2f}x" if mask_rcnn else "-",
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def fmt(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), sep] + [fmt(line) for line in lines])


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--sizes: expected HxW such as 576x768, got {text!r}.") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available; use --device cpu.")
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1.")
    if args.runtimes and args.device != "cpu":
        raise SystemExit("--runtimes are measured on the CPU only.")
    torch.set_num_threads(args.threads)
    skip = args.skip_empty_masks == "on" or (args.skip_empty_masks == "auto" and bool(args.weights))
    previous, fastinst.export.postprocess.SKIP_EMPTY_MASKS = (
        fastinst.export.postprocess.SKIP_EMPTY_MASKS,
        skip,
    )
    try:
        run_benchmark(args)
    finally:  # the setting is process-wide: give it back (in-process callers, tests)
        fastinst.export.postprocess.SKIP_EMPTY_MASKS = previous
    return 0


def run_benchmark(args) -> None:
    """Every size's table (and the summary of several sizes), printed."""
    import tempfile

    cfg = fastinst_cfg(args.config_file, args.opts, args.device)
    if args.sizes:
        sizes = [parse_size(s) for s in args.sizes]
    else:
        sizes = [tuple(args.input_size) if args.input_size else default_input_size(cfg)]
    device = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    )
    summary = []
    with tempfile.TemporaryDirectory(prefix="fastinst-benchmark-") as folder:
        paths = export_runtimes(args, cfg, folder, sizes[-1]) if args.runtimes else {}
        for size in sizes:
            inputs = synthetic_inputs(size)
            inputs[0]["image"] = inputs[0]["image"].to(args.device)
            rows = build_rows(args, cfg, inputs) + runtime_rows(args, paths, inputs, size)
            measure(rows, args.warmup, args.runs, args.device)
            summary.append((size, rows))
            print_report(args, size, device, rows)
    if len(sizes) > 1:
        print(format_summary(summary))


def print_report(args, size, device: str, rows: list[Row]) -> None:
    print(f"Config: {args.config_file} {' '.join(map(str, args.opts))}".rstrip())
    print(
        f"Input: 3x{size[0]}x{size[1]}, batch 1; device: {device}; torch {torch.__version__}; "
        f"{args.warmup} warm-up + {args.runs} timed runs per row, round-robin"
    )
    print(
        "Timed: model(inputs) = normalisation, padding, backbone, pixel decoder, decoder, post-processing to "
        "instances with masks at the original size."
    )
    print(
        f"Weights: {args.weights or 'random'} FastInst, random Mask R-CNN "
        "(timing only; outputs are meaningless)."
    )
    skip = fastinst.export.postprocess.SKIP_EMPTY_MASKS
    print(
        "Post-processing: "
        + (
            "empty masks skipped"
            if skip
            else "every kept mask resized, empty or not (the worst case)"
        )
        + f" (--skip-empty-masks {args.skip_empty_masks})."
    )
    kept = {"optimised": "the optimised FastInst rows", "all": "all rows", "none": "no row"}
    print(
        f"Memory: glibc keeps freed memory (fastinst.inference.keep_freed_memory) for "
        f"{kept[args.keep_freed_memory]}; default malloc for the others."
    )
    print(format_table(rows))
    for row in rows:
        if getattr(row.runner, "perf_count", False):
            print(format_op_times(row, row.runner.op_times()))


def format_op_times(row: Row, times: dict[str, float], top: int = 8) -> str:
    """One paragraph: the graph's time (OpenVINO PERF_COUNT, the row's last run) against the row's median, and
    the `top` largest kinds of op (`OpenVinoFastInst.op_times`)."""
    graph = sum(times.values())
    median = row.median * 1000
    kinds = "; ".join(f"{kind} {ms:.1f}" for kind, ms in list(times.items())[:top])
    return (
        f"{row.name} {row.precision}: graph {graph:.1f} ms (sum of op times, last run), whole pipeline "
        f"{median:.1f} ms (median), outside the graph ~{median - graph:.1f} ms. Largest kinds of op (ms): "
        f"{kinds}."
    )


def format_summary(summary: list[tuple[tuple[int, int], list[Row]]]) -> str:
    """Images/s (median) of every row at every size: one line per row."""
    sizes = [f"{h}x{w}" for (h, w), _ in summary]
    lines = [
        "| model | precision | " + " | ".join(f"{s} img/s" for s in sizes) + " |",
        "|---|---|" + "---|" * len(sizes),
    ]
    for i, row in enumerate(summary[0][1]):
        cells = [f"{1 / rows[i].median:.2f}" for _, rows in summary]
        compiled = " (compiled)" if row.compiled else ""
        lines.append(f"| {row.name}{compiled} | {row.precision} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

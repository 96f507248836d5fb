#!/usr/bin/env python
"""Parameters, FLOPs, activations, speed and structure of a FastInst model (SPEC §9).

Usage::

    python tools/analyze_model.py \\
        --config-file configs/coco/instance-segmentation/fastinst_R50_ppm-fpn_x1_576.yaml \\
        --tasks parameter flop activation [--input-size 576 768] [-n 1] [--weights model.pth] [KEY VALUE ...]

The inputs are synthetic images (random uint8 RGB) of ``--input-size``, by default the size a 480x640 (4:3)
image gets from the test resize (MIN_SIZE_TEST / MAX_SIZE_TEST): 576x768 for the "576" configs, 640x853 for
the "640" ones. The image is passed without "height"/"width", so masks are post-processed to that size.

- parameter: detectron2 ``parameter_count_table`` (max depth 5) and the total; for an official config, the official
  total next to it.
- flop: detectron2 ``FlopCountAnalysis`` of ``model(inputs)`` (the whole model: normalisation to instances),
  fvcore convention: **one multiply-add = one flop** (so these are GMACs, like the README's "GFlops"). Attention
  runs through ``bmm`` (counted by fvcore) and, for the masked cross-attention logits, ``baddbmm``, which fvcore
  has no rule for; this tool counts it. The official model ran attention the same way, and its figures leave
  the baddbmm out, so the "official-comparable" total does too. torchvision's ``deform_conv2d`` (R50-vd-DCN) has no rule
  either and is not counted, as in the official figures (tests/reference/costs.json).
- activation: detectron2 ``activation_count_operators``, averaged over the ``-n`` inputs (SPEC §10 F16: the
  official tool divided by n - 1).
- speed: median wall time of ``model(inputs)`` (see tools/benchmark.py for the full comparison).
- structure: ``print(model)``.

Weights are random unless ``--weights`` names a FastInst checkpoint (MODEL.WEIGHTS of the shipped configs is an
ImageNet backbone, so it is not read). FLOPs depend on the weights only through the number of distinct queries
the fast post-processing resizes; ``--official-path`` measures the official order of post-processing work.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

# fvcore (imported through detectron2) calls torch.jit.script at import time, which recent torch reports as
# deprecated; keep the tool's output to its own messages.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")

import torch  # noqa: E402
from detectron2.config import CfgNode  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.analysis import (  # noqa: E402
    FlopCountAnalysis,
    activation_count_operators,
    parameter_count_table,
)
from fvcore.nn import parameter_count  # noqa: E402
from fvcore.nn.jit_handles import get_shape  # noqa: E402

from fastinst.checkpoint import load_checkpoint  # noqa: E402
from fastinst.config import load_config_or_exit  # noqa: E402
from fastinst.inference import default_input_size, synthetic_inputs  # noqa: E402

TASKS = ("flop", "activation", "parameter", "speed", "structure")

# Parameter totals of the official implementation (tests/reference/README.md), by config file stem.
OFFICIAL_PARAMETERS = {
    "fastinst_R50_ppm-fpn_x1_576": 29_658_035,
    "fastinst_R50_ppm-fpn_x3_640": 34_176_597,
    "fastinst_R101_ppm-fpn_x3_640": 53_116_501,
    "fastinst_R50-vd-dcn_ppm-fpn_x1_576": 30_174_965,
    "fastinst_R50-vd-dcn_ppm-fpn_x3_640": 34_693_527,
}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=["parameter", "flop"])
    parser.add_argument(
        "-n", "--num-inputs", type=int, default=1, help="synthetic images to average over"
    )
    parser.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="default: from MIN/MAX_SIZE_TEST",
    )
    parser.add_argument(
        "--weights", default="", help="FastInst checkpoint to load ('' = random weights)"
    )
    parser.add_argument(
        "--official-path",
        action="store_true",
        help="post-process in the official order of work (resize all Q masks, then pick the top-k)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch default)"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs for --tasks speed")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return parser


def setup_cfg(config_file: str, opts: list[str]) -> CfgNode:
    cfg = load_config_or_exit(config_file, opts)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def build(cfg: CfgNode, weights: str, official_path: bool) -> torch.nn.Module:
    model = build_model(cfg).eval()
    if weights:
        load_checkpoint(model, weights, strict=True)
    model.fast_postprocessing = not official_path
    return model


# --------------------------------------------------------------------------------------------------------------
# fvcore rules for baddbmm (fvcore has none): the decoder's masked attention logits


class MaskedAttentionFlops:
    """FLOP rule for aten::baddbmm(bias, batch1, batch2): the multiply-adds of batch1 @ batch2.

    The decoder computes masked attention logits with baddbmm (an additive mask), as torch's MultiheadAttention
    did for the official model; fvcore has no baddbmm rule, so the official figures leave them out. This rule
    counts them and sums them in `masked_qk`, which the "official-comparable" total subtracts.
    """

    def __init__(self):
        self.masked_qk = 0

    def __call__(self, inputs, outputs) -> int:
        b, n, m = get_shape(inputs[1])
        p = get_shape(inputs[2])[-1]
        flops = b * n * m * p
        self.masked_qk += flops
        return flops


def masked_attention_activations(inputs, outputs) -> int:
    """Activation rule for baddbmm: its output (the attention logits)."""
    total = 1
    for s in get_shape(outputs[0]):
        total *= s
    return total


BADDBMM = "aten::baddbmm"


# --------------------------------------------------------------------------------------------------------------
# tasks


def do_parameter(model, config_file: str, overridden: bool) -> None:
    print(parameter_count_table(model, max_depth=5))
    total = parameter_count(model)[""]
    line = f"Parameters: {total:,}"
    official = OFFICIAL_PARAMETERS.get(Path(config_file).stem)
    if official is not None and not overridden:  # KEY VALUE overrides may change the model
        line += f" (official {official:,}: {'match' if total == official else 'DIFFERENT'})"
    print(line)


def do_flop(model, inputs) -> None:
    totals, comparable = [], []
    by_operator: dict[str, list[float]] = defaultdict(list)
    for inp in inputs:
        rule = MaskedAttentionFlops()
        flops = FlopCountAnalysis(model, [inp]).set_op_handle(BADDBMM, rule)
        flops.unsupported_ops_warnings(False)
        flops.uncalled_modules_warnings(False)
        total = flops.total()
        totals.append(total / 1e9)
        comparable.append((total - rule.masked_qk) / 1e9)
        for op, count in flops.by_operator().items():
            by_operator[op].append(count / 1e9)
    n = len(inputs)
    print("FLOPs by operator (G, average over inputs; fvcore: 1 multiply-add = 1 flop):")
    for op, counts in sorted(by_operator.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {op:<28s} {sum(counts) / n:10.4f}")
    print(f"FLOPs total: {_mean_std(totals)} G over {n} input(s) of {_size(inputs[0])}")
    print(
        f"FLOPs official-comparable: {_mean_std(comparable)} G (masked attention logits not counted, "
        "as fvcore's baddbmm rule was missing for the official model)"
    )


def do_activation(model, inputs) -> None:
    totals, by_operator = [], Counter()
    for inp in inputs:
        counts = activation_count_operators(
            model, [inp], supported_ops={BADDBMM: masked_attention_activations}
        )
        by_operator.update(counts)
        totals.append(sum(counts.values()))
    n = len(inputs)  # SPEC §10 F16: the official tool divided by n - 1
    print("Activations by operator (M, average over inputs):")
    for op, count in by_operator.most_common():
        print(f"  {op:<28s} {count / n:10.4f}")
    print(f"Activations total: {_mean_std(totals)} M over {n} input(s) of {_size(inputs[0])}")


def do_speed(model, inputs, runs: int) -> None:
    times = []
    with torch.inference_mode():
        model(inputs[:1])  # warm-up
        for i in range(runs):
            start = time.perf_counter()
            model([inputs[i % len(inputs)]])
            times.append(time.perf_counter() - start)
    med = statistics.median(times)
    print(
        f"Speed: median {med * 1000:.1f} ms over {runs} runs ({1 / med:.2f} images/s), batch 1, "
        f"{_size(inputs[0])}, {torch.get_num_threads()} CPU threads; see tools/benchmark.py"
    )


def _mean_std(values: list[float]) -> str:
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def _size(inp: dict) -> str:
    return "x".join(str(s) for s in inp["image"].shape)


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    # fvcore logs every op without a FLOP rule (shape ops, post-processing) and every uncalled module
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = setup_cfg(args.config_file, args.opts)
    model = build(cfg, args.weights, args.official_path)
    size = tuple(args.input_size) if args.input_size else default_input_size(cfg)
    inputs = synthetic_inputs(size, args.num_inputs)
    print(
        f"Config {args.config_file}; input 3x{size[0]}x{size[1]}; weights: "
        f"{args.weights or 'random (the model as built)'}; post-processing: "
        f"{'official order of work' if args.official_path else 'top-k first (fastinst default)'}"
    )
    for task in args.tasks:
        if task == "parameter":
            do_parameter(model, args.config_file, bool(args.opts))
        elif task == "flop":
            do_flop(model, inputs)
        elif task == "activation":
            do_activation(model, inputs)
        elif task == "speed":
            do_speed(model, inputs, args.runs)
        elif task == "structure":
            print(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())

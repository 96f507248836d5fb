#!/usr/bin/env python
"""Peak memory (RSS) and time of `FastInstPredictor` on one large photo: the old and the new post-processing.

    python tools/benchmark_memory.py                                   # R50 D1, 4000x3000, score 0.5
    python tools/benchmark_memory.py --size 2000 1500 --runs 5 --paths new

Each path runs in its own process (a process's peak RSS only grows), with random weights (MODEL.WEIGHTS ""):
timings and memory do not depend on the weights, except through how many instances pass the threshold.

- new: the predictor as shipped. Pairs whose class probability is below the score threshold are dropped before
  their masks are resized to the photo's size, and masks are bool.
- old: the order of work before issue 12, reproduced with the same code: every top-k pair (TEST.DETECTIONS_PER_IMAGE)
  is pasted at full size, the model returns the masks as float32, the predictor makes a bool copy and only then
  applies the threshold.

Printed per path: RSS after the model is built, peak RSS after the runs, their difference (what inference
costs), and the median seconds of the post-processing (`FastInst.postprocess`) and of the rest ("network":
pre-processing, backbone to decoder and, for old, the predictor's bool copy of the masks), plus the number of
instances kept. The image is a smooth random photo-like array
(seeded), passed as a numpy array, so no decoder memory is counted.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def photo(height: int, width: int, seed: int = 0):
    """A smooth random BGR uint8 image (low-frequency noise, upsampled), like a photo for the network."""
    import cv2
    import numpy as np

    small = np.random.default_rng(seed).integers(0, 256, (height // 64 + 2, width // 64 + 2, 3))
    return cv2.resize(small.astype(np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)


def measure(args: argparse.Namespace) -> dict:
    """One path, in this process: build, predict `runs` times (+1 warm-up), report figures."""
    import torch

    from fastinst import FastInstPredictor

    torch.set_num_threads(args.threads)
    image = photo(args.size[1], args.size[0])
    predictor = FastInstPredictor(
        args.config, score_threshold=args.score, opts=["MODEL.WEIGHTS", ""]
    )
    model = predictor.model
    built_mb = rss_peak_mb()
    post_seconds: list[float] = []
    original = model.postprocess

    def timed_postprocess(outputs, batched_inputs, images):
        if args.child == "old":
            model.test_score_threshold = 0.0  # every top-k pair is pasted
        start = time.perf_counter()
        results = original(outputs, batched_inputs, images)
        if args.child == "old":
            for r in results:  # the model's float32 masks; the predictor then makes its bool copy
                r["instances"].pred_masks = r["instances"].pred_masks.float()
        post_seconds.append(time.perf_counter() - start)
        return results

    model.postprocess = timed_postprocess
    totals, kept = [], 0
    for _ in range(args.runs + 1):
        start = time.perf_counter()
        kept = len(predictor(image))
        totals.append(time.perf_counter() - start)
    totals, post = totals[1:], post_seconds[1:]  # drop the warm-up
    return {
        "path": args.child,
        "built_mb": built_mb,
        "peak_mb": rss_peak_mb(),
        "network_s": statistics.median(t - p for t, p in zip(totals, post)),
        "post_s": statistics.median(post),
        "kept": kept,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", default="fastinst_R50_ppm-fpn_x1_576", help="model name or YAML"
    )
    parser.add_argument("--size", type=int, nargs=2, default=(4000, 3000), metavar=("W", "H"))
    parser.add_argument("--score", type=float, default=0.5, help="the predictor's score_threshold")
    parser.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paths", nargs="+", choices=["old", "new"], default=["old", "new"])
    parser.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)))
        return 0
    rows = []
    for path in args.paths:
        cmd = [sys.executable, __file__, "--child", path, "--config", args.config]
        cmd += ["--size", *map(str, args.size), "--score", str(args.score)]
        cmd += ["--runs", str(args.runs), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    w, h = args.size
    print(
        f"{args.config}, random weights, {w}x{h} ({w * h / 1e6:.1f} Mpx), score {args.score}, "
        f"{args.threads} threads, median of {args.runs} runs"
    )
    print(
        "| path | RSS built (MB) | peak RSS (MB) | inference (MB) | network (s) | post-proc (s) | kept |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['path']} | {r['built_mb']:.0f} | {r['peak_mb']:.0f} | "
            f"{r['peak_mb'] - r['built_mb']:.0f} | {r['network_s']:.2f} | {r['post_s']:.2f} | "
            f"{r['kept']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

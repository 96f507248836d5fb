"""Seconds per training iteration: our training path against the official one, side by side in one run.

    python tools/benchmark_training.py [--config-file configs/synthetic/quickstart.yaml] [--runs 4] [--threads 2]

One fixed batch of IMS_PER_BATCH synthetic training images (the quickstart mapper), three models built from the
same config and seed, timed in turn (forward, backward, optimizer step with full-model gradient clipping), medians:
  official path: float32, MODEL.FASTINST.TRAIN_NUM_POINTS 12544 (the official point count), the official
    proposal targets and GT-mask-guided branch, torch's nn.MultiheadAttention forward, the plain (unfused) AdamW loop;
  ours fp32: the config's point count, the decoder's batched-matmul attention, the trainer's optimizer (fused AdamW
    on the CPU);
  ours: the same with bf16 autocast (what SOLVER.AMP.ENABLED gives on a CPU with native bf16; channels-last
    measured no faster).
"""

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

import fastinst.modeling.decoder.layers as decoder_layers
from fastinst.config import load_config_or_exit
from fastinst.data import build_train_mapper, ensure_synthetic_dataset, register_synthetic
from fastinst.engine.optimizer import build_optimizer

# The official training recipe's settings that the quickstart config changes.
OFFICIAL_PATH = [
    "MODEL.FASTINST.TRAIN_NUM_POINTS", 12544,
    "MODEL.FASTINST.DENSE_PROPOSAL_TARGETS", False,
    "MODEL.FASTINST.GT_MASK_GUIDED", True,
]  # fmt: skip


@contextlib.contextmanager
def torch_attention():
    """The decoder layers call nn.MultiheadAttention's own forward (torch's fused attention), as the official code."""
    ours = decoder_layers.multi_head_attention

    def official(attn, query, key, value, blocked=None):
        return attn(query, key, value, attn_mask=blocked, need_weights=False)[0]

    decoder_layers.multi_head_attention = official
    try:
        yield
    finally:
        decoder_layers.multi_head_attention = ours


def make_cfg(config_file: str, opts: list):
    cfg = load_config_or_exit(config_file, ["MODEL.DEVICE", "cpu", *opts])
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/synthetic/quickstart.yaml")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    register_synthetic(ensure_synthetic_dataset())
    cfg = make_cfg(args.config_file, [])
    np.random.seed(0)
    mapper = build_train_mapper(cfg)
    batch = [
        mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[: cfg.SOLVER.IMS_PER_BATCH]
    ]

    points = cfg.MODEL.FASTINST.TRAIN_NUM_POINTS
    variants = {  # name: (config changes, bf16 autocast, official code path)
        "official path (fp32, 12544 points)": (OFFICIAL_PATH, False, True),
        f"ours fp32 ({points} points)": ([], False, False),
        f"ours (bf16 autocast, {points} points)": ([], True, False),
    }
    runs = {}
    for name, (opts, bf16, official) in variants.items():
        torch.manual_seed(0)
        run_cfg = make_cfg(args.config_file, opts)
        model = build_model(run_cfg).train()
        optimizer = build_optimizer(run_cfg, model, fused=False if official else None)
        runs[name] = (model, optimizer, bf16, official, [])

    def step(model, optimizer, bf16, official):
        context = torch_attention() if official else contextlib.nullcontext()
        with context, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    for *run, _ in runs.values():  # warm-up
        step(*run)
    for _ in range(args.runs):
        for *run, times in runs.values():
            start = time.perf_counter()
            step(*run)
            times.append(time.perf_counter() - start)

    base = statistics.median(next(iter(runs.values()))[-1])
    print(f"{'training path':60s} {'s/iter':>8s} {'vs official':>12s}")
    for name, (*_, times) in runs.items():
        median = statistics.median(times)
        print(f"{name:60s} {median:8.3f} {base / median:11.2f}x")


if __name__ == "__main__":
    main()

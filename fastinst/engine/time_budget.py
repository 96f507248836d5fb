"""Fit the training schedule to a wall-clock budget: `SOLVER.TIME_BUDGET_MINUTES`.

With a budget > 0 the iteration counts of a config (SOLVER.MAX_ITER, STEPS, WARMUP_ITERS, CHECKPOINT_PERIOD and
TEST.EVAL_PERIOD) give the *shape* of the schedule. Before training, a few training iterations of the config's
model are timed on this machine, and every one of those counts is scaled by the same factor so that MAX_ITER
iterations take about the budget: a faster machine trains for more iterations, a slower one for fewer, with the
same schedule shape. The budget covers training only (not dataset loading, evaluation or pictures).

The measured counts become ordinary config overrides (KEY VALUE pairs), so every process of a multi-process run
gets the same schedule, and they are written to OUTPUT_DIR/config.yaml. `--resume` reuses the counts of that file
instead of measuring again, so a resumed run ends where the interrupted one would have.
"""

from __future__ import annotations

import itertools
import logging
import os
import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch
import yaml
from detectron2.config import CfgNode
from detectron2.data import get_detection_dataset_dicts
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from fastinst.config import ConfigError
from fastinst.data.build import build_train_mapper
from fastinst.engine.amp import build_step_trainer
from fastinst.engine.optimizer import build_optimizer

__all__ = ["measure_seconds_per_iter", "scaled_schedule", "time_budget_overrides"]

logger = logging.getLogger(__name__)

# The keys scaled with MAX_ITER. The values of the rest of the config are never touched.
_COUNT_KEYS = (
    "SOLVER.MAX_ITER",
    "SOLVER.STEPS",
    "SOLVER.WARMUP_ITERS",
    "SOLVER.CHECKPOINT_PERIOD",
    "TEST.EVAL_PERIOD",
)


def scaled_schedule(cfg: CfgNode, seconds_per_iter: float, budget_minutes: float) -> list[str]:
    """KEY VALUE overrides that scale the iteration counts of `cfg` so MAX_ITER iterations take the budget.

    MAX_ITER, CHECKPOINT_PERIOD and a positive EVAL_PERIOD stay >= 1; STEPS and WARMUP_ITERS keep their
    fraction of MAX_ITER (rounded). A scaled step that is not below MAX_ITER, or that rounds onto the step
    before it, is left out: fvcore's MultiStepParamScheduler (detectron2's LR schedule) refuses milestones that
    are not strictly increasing and below MAX_ITER, which short budgets produced (MAX_ITER 9, STEPS (8, 9)).
    """
    if not (seconds_per_iter > 0 and np.isfinite(seconds_per_iter)):
        raise ValueError(
            f"seconds per iteration must be positive and finite, got {seconds_per_iter}"
        )
    if budget_minutes <= 0:
        raise ValueError(f"SOLVER.TIME_BUDGET_MINUTES must be > 0 here, got {budget_minutes}")
    reference = cfg.SOLVER.MAX_ITER
    max_iter = max(1, round(budget_minutes * 60.0 / seconds_per_iter))
    factor = max_iter / reference
    steps: list[int] = []
    for step in (round(s * factor) for s in cfg.SOLVER.STEPS):
        if 0 < step < max_iter and (not steps or step > steps[-1]):
            steps.append(step)
    counts = {
        "SOLVER.MAX_ITER": max_iter,
        "SOLVER.STEPS": tuple(steps),
        "SOLVER.WARMUP_ITERS": round(cfg.SOLVER.WARMUP_ITERS * factor),
        "SOLVER.CHECKPOINT_PERIOD": max(1, round(cfg.SOLVER.CHECKPOINT_PERIOD * factor)),
    }
    if cfg.TEST.EVAL_PERIOD > 0:
        counts["TEST.EVAL_PERIOD"] = max(1, round(cfg.TEST.EVAL_PERIOD * factor))
    return as_overrides(counts)


def as_overrides(counts: dict) -> list[str]:
    """{KEY: value} -> [KEY, repr(value), ...], the string form `merge_from_list` and command lines take."""
    overrides = []
    for key, value in counts.items():
        overrides += [key, repr(tuple(value)) if isinstance(value, (list, tuple)) else repr(value)]
    return overrides


def measure_seconds_per_iter(
    cfg: CfgNode, num_batches: int = 8, images_per_batch: int | None = None
) -> float:
    """Seconds one training iteration of `cfg`'s model takes: forward, backward and optimizer step, plus mapping
    the batch's images.

    Uses the training path of `Trainer` (AMP handling, optimizer) on `num_batches` batches of training images
    spread over the dataset, mapped by the training mapper with a fixed seed, run twice. The result is the *mean*
    step time of the second pass (the total is what the budget is about; image sizes vary from batch to batch)
    plus, on CPU, the time the mapper took per batch: the data-loader workers run on the same cores as training.
    The model is built and discarded.
    """
    images_per_batch = images_per_batch or cfg.SOLVER.IMS_PER_BATCH
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    needed = num_batches * images_per_batch
    picks = [dicts[(i * len(dicts)) // needed] for i in range(needed)]  # spread over the dataset
    state = np.random.get_state()
    np.random.seed(0)  # the mapper's random augmentations: the same batches on every call
    try:
        mapper = build_train_mapper(cfg)
        start = time.perf_counter()
        mapped = [mapper(d) for d in picks]
        map_seconds_per_batch = (time.perf_counter() - start) * images_per_batch / needed
    finally:
        np.random.set_state(state)
    batches = [mapped[i : i + images_per_batch] for i in range(0, len(mapped), images_per_batch)]

    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    step_trainer = build_step_trainer(
        model,
        itertools.cycle(batches),
        optimizer,
        amp_enabled=cfg.SOLVER.AMP.ENABLED,
        device=cfg.MODEL.DEVICE,
    )
    on_cuda = torch.device(cfg.MODEL.DEVICE).type == "cuda"
    with EventStorage(0):
        # Two passes over the same batches, the second one timed: the first run of every input size is slow
        # (kernel selection, allocations), and training soon has seen all of its few padded sizes.
        for _ in range(2):
            times = []
            for _ in batches:
                start = time.perf_counter()
                step_trainer.run_step()
                if on_cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
    step_seconds = statistics.mean(times)
    if on_cuda:
        return step_seconds  # the workers' CPU time overlaps GPU work
    return step_seconds + map_seconds_per_batch


def saved_config_values(output_dir: str, keys: Sequence[str]) -> dict[str, object]:
    """{KEY: value} of the dotted `keys` that a previous run's OUTPUT_DIR/config.yaml sets ({} without one)."""
    path = os.path.join(output_dir, "config.yaml")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        saved = yaml.safe_load(f) or {}
    values = {}
    for key in keys:
        node = saved
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            values[key] = node
    return values


def _saved_counts(output_dir: str) -> list[str] | None:
    """The scaled counts of a previous run in `output_dir` (its config.yaml), as KEY VALUE overrides."""
    counts = saved_config_values(output_dir, _COUNT_KEYS)
    return as_overrides(counts) if "SOLVER.MAX_ITER" in counts else None


def time_budget_overrides(
    cfg: CfgNode, *, resume: bool = False, world_size: int = 1, threads: int | None = None
) -> list[str]:
    """Overrides that fit `cfg`'s schedule to SOLVER.TIME_BUDGET_MINUTES; [] when the budget is 0 (ConfigError when
    it is negative).

    Args:
        cfg: the merged (unfrozen or frozen) training config.
        resume: reuse the counts of OUTPUT_DIR/config.yaml when it exists, instead of measuring.
        world_size: number of training processes; each is timed with its share of the batch.
        threads: torch threads to time with (default: the current setting).
    """
    budget = cfg.SOLVER.TIME_BUDGET_MINUTES
    if budget < 0:
        raise ConfigError(
            f"SOLVER.TIME_BUDGET_MINUTES must be >= 0 (0: train the config's SOLVER.MAX_ITER), got {budget}"
        )
    if budget == 0:
        return []
    if resume:
        saved = _saved_counts(cfg.OUTPUT_DIR)
        if saved is not None:
            logger.info(
                "SOLVER.TIME_BUDGET_MINUTES: resuming with the schedule of %s/config.yaml",
                cfg.OUTPUT_DIR,
            )
            return saved
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        seconds = measure_seconds_per_iter(
            cfg, images_per_batch=max(1, cfg.SOLVER.IMS_PER_BATCH // world_size)
        )
    finally:
        torch.set_num_threads(previous_threads)
    overrides = scaled_schedule(cfg, seconds, budget)
    logger.info(
        "SOLVER.TIME_BUDGET_MINUTES %g: %.3f s per iteration measured here -> %s",
        budget,
        seconds,
        " ".join(overrides),
    )
    return overrides

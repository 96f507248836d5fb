"""Inference-time options shared by the predictor, the demo and the benchmark: precision, channels-last, compile.

    model = prepare_for_inference(model, precision="bf16", compile=False)
    with inference_context(model, "bf16"):
        outputs = model(inputs)

Post-processing always runs in float32, so binary masks and scores are computed at full precision.
"""

import contextlib

import torch
from torch import nn

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device | str) -> str:
    """Validate a precision name for a device; fp16 needs CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}.")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' on the CPU.")
    return precision


def prepare_for_inference(
    model: nn.Module, precision: str = "fp32", compile: bool = False
) -> nn.Module:
    """Put `model` in eval mode, channels-last for reduced precision, optionally compiled (in place)."""
    check_precision(precision, next(model.parameters()).device)
    model.eval()
    if precision != "fp32":
        model.backbone.to(memory_format=torch.channels_last)
        model.sem_seg_head.to(memory_format=torch.channels_last)
    if compile:
        model.backbone = torch.compile(model.backbone)
    return model


def inference_context(model: nn.Module, precision: str = "fp32"):
    """A context for `model(...)`: no grad, plus autocast for bf16/fp16."""
    device_type = next(model.parameters()).device.type
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    dtype = PRECISIONS[check_precision(precision, device_type)]
    if dtype is not None:
        stack.enter_context(torch.autocast(device_type=device_type, dtype=dtype))
    return stack

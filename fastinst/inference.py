"""Inference-time options shared by the predictor, the demo and the benchmark: precision, layout, compile.

    model = prepare_for_inference(model, precision="bf16", compile=False)
    with inference_context(model, "bf16"):
        outputs = model(inputs)

What `prepare_for_inference` can do, each switchable through `Optimizations` (all on by default; `Optimizations.off()`
is the official order of work, fp32, for honest comparisons):

- fast_postprocessing: pick the top-k (query, class) pairs before resizing masks, skip the identity resize,
  gather the masks once (`fastinst.modeling.postprocessing.instance_inference`). Same outputs as the official order
  of work (`instance_inference_reference`), except that boxes are real instead of zeros.
- cache_positional_embeddings: the decoder resizes `meta_pos_embed` once per input size (exact).
- fold_batchnorm: FrozenBatchNorm2d / eval-mode BatchNorm2d folded into the preceding convolution (exact in
  real arithmetic; float rounding differs by ~1e-6 relative). Changes the state-dict keys: apply after loading weights.
- channels_last: backbone and head in channels-last memory format (fp32: rounding-level differences only).
- bf16_weights: for precision "bf16", cast the backbone and head weights to bfloat16 (the input is cast by a
  forward pre-hook) instead of running under autocast, which re-casts weights on every call and is slow on CPUs.
- keep_freed_memory: (CPU, glibc) `keep_freed_memory()`: large tensors reuse freed heap memory instead of fresh
  pages from the kernel. Process-wide, so it also speeds up other models in the process; memory is not given back
  to the system. False leaves the process setting as it is (`keep_freed_memory(False)` restores glibc's).

Post-processing always runs in float32, so binary masks and scores are computed at full precision. `compile`
wraps the backbone, the pixel decoder and the decoder in `torch.compile` (inductor, with weight freezing), in
place, so state-dict keys stay the same; the first call of each input size compiles.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class Optimizations:
    """Inference optimisations; see the module docstring. `Optimizations.off()` is the official path."""

    fast_postprocessing: bool = True
    cache_positional_embeddings: bool = True
    fold_batchnorm: bool = True
    channels_last: bool = True
    bf16_weights: bool = True
    keep_freed_memory: bool = True

    @classmethod
    def off(cls) -> Optimizations:
        return cls(**{f.name: False for f in dataclasses.fields(cls)})


def check_precision(precision: str, device: torch.device | str) -> str:
    """Validate a precision name for a device; fp16 needs CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}.")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' on the CPU.")
    return precision


def prepare_for_inference(
    model: nn.Module,
    precision: str = "fp32",
    compile: bool = False,
    optimizations: Optimizations | None = None,
) -> nn.Module:
    """Eval mode plus the chosen optimisations, in place; returns `model` (a FastInst meta-architecture).

    Call it once, after loading weights (folding batch norms and casting weights change the state dict).
    """
    opts = Optimizations() if optimizations is None else optimizations
    device = next(model.parameters()).device
    check_precision(precision, device)
    model.eval()
    dtype = PRECISIONS[precision]
    parts = [model.backbone, model.sem_seg_head]

    model.fast_postprocessing = opts.fast_postprocessing
    decoder = model.sem_seg_head.predictor
    decoder.cache_positional_embeddings = opts.cache_positional_embeddings and not compile
    if opts.fold_batchnorm:
        for part in parts:
            fold_batchnorm(part)
    cast_weights = dtype is torch.bfloat16 and opts.bf16_weights  # fp16 (CUDA) keeps autocast
    if cast_weights:
        for part in parts:
            part.to(dtype)
    memory_format = torch.channels_last if opts.channels_last else torch.contiguous_format
    if opts.channels_last:
        for part in parts:
            part.to(memory_format=torch.channels_last)
    _set_input_hook(model.backbone, dtype if cast_weights else None, memory_format)
    model._inference_precision = precision
    if opts.keep_freed_memory and device.type == "cpu":
        keep_freed_memory(True)
    model._inference_weights_cast = cast_weights

    if compile and not getattr(model, "_inference_compiled", False):
        # Weights become constants of the compiled graphs (conv/BN folding, weight pre-packing). Inference only.
        torch._inductor.config.freezing = True
        model.backbone.compile()
        pixel_decoder = model.sem_seg_head.pixel_decoder
        pixel_decoder.forward_features = torch.compile(pixel_decoder.forward_features)
        decoder.compile()
        model._inference_compiled = True
    return model


def inference_context(model: nn.Module, precision: str = "fp32"):
    """A context for `model(...)`: inference mode, plus autocast for bf16/fp16 unless the weights were cast."""
    device_type = next(model.parameters()).device.type
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    dtype = PRECISIONS[check_precision(precision, device_type)]
    if dtype is not None and not getattr(model, "_inference_weights_cast", False):
        stack.enter_context(torch.autocast(device_type=device_type, dtype=dtype))
    return stack


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024


def keep_freed_memory(enabled: bool = True) -> bool:
    """glibc malloc: serve large blocks from the heap and keep freed memory (True), or the default policy (False).

    By default every block over 128 KiB-32 MiB is a fresh mmap, so each call's large tensors (image-size masks,
    early feature maps) pay page faults and kernel zeroing, which can cost more than the work done on them (here:
    75 ms vs 8 ms to write 100 float masks of 576x768). Process-wide; returns False where it does not apply (no
    glibc). False restores the default thresholds (the dynamic mmap threshold stays off).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mmap_threshold = 1 << 30 if enabled else _GLIBC_DEFAULT_THRESHOLD
    trim_threshold = (1 << 31) - 1 if enabled else _GLIBC_DEFAULT_THRESHOLD
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )


def _set_input_hook(backbone: nn.Module, dtype: torch.dtype | None, memory_format) -> None:
    """Cast the backbone input to the weights' dtype and memory format (a forward pre-hook; replaces an old one)."""
    old = getattr(backbone, "_fastinst_input_hook", None)
    if old is not None:
        old.remove()
        backbone._fastinst_input_hook = None
    if dtype is None and memory_format is torch.contiguous_format:
        return

    def hook(module, args):
        x = args[0]
        return (x.to(dtype=dtype or x.dtype, memory_format=memory_format),) + tuple(args[1:])

    backbone._fastinst_input_hook = backbone.register_forward_pre_hook(hook)


# --------------------------------------------------------------------------------------------------------------
# Batch-norm folding


def _is_foldable_norm(norm: nn.Module | None) -> bool:
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return (
        isinstance(norm, nn.BatchNorm2d)
        and not norm.training
        and norm.track_running_stats
        and norm.running_mean is not None
    )


@torch.no_grad()
def _fold_into_conv(conv: nn.Conv2d, norm: nn.Module) -> None:
    """conv <- norm(conv(.)): W' = W * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps)."""
    w = conv.weight
    weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
    bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
    scale = weight.double() / (norm.running_var.double() + norm.eps).sqrt()  # (C_out,)
    conv_bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    new_bias = (conv_bias - norm.running_mean.double()) * scale + bias.double()
    conv.weight = nn.Parameter(
        (w.double() * scale.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype), requires_grad=False
    )
    conv.bias = nn.Parameter(new_bias.to(w.dtype), requires_grad=False)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every FrozenBatchNorm2d / eval BatchNorm2d that directly follows a convolution into it, in place.

    Handles detectron2 `Conv2d(norm=...)` (the norm becomes None) and, for the ResNet-D backbone, `convN`/`bnN`
    attribute pairs and `Conv2d, norm` neighbours in `nn.Sequential` (the norm becomes `nn.Identity`).
    Deformable convolutions keep their norm. Returns the number of folded norms.
    """
    count = 0
    for m in list(module.modules()):
        if isinstance(m, nn.Conv2d) and _is_foldable_norm(getattr(m, "norm", None)):
            _fold_into_conv(m, m.norm)
            m.norm = None
            count += 1
            continue
        if isinstance(m, nn.Sequential):
            children = list(m.named_children())
            for (_, conv), (name, norm) in zip(children, children[1:]):
                if type(conv) is nn.Conv2d and _is_foldable_norm(norm):
                    _fold_into_conv(conv, norm)
                    setattr(m, name, nn.Identity())
                    count += 1
        for i in range(
            1, 4
        ):  # ResNet-D blocks: conv1/bn1 .. conv3/bn3; stem: conv1 (Sequential) / bn1
            conv, norm = getattr(m, f"conv{i}", None), getattr(m, f"bn{i}", None)
            if isinstance(conv, nn.Sequential) and len(conv) > 0:
                conv = conv[-1]
            if type(conv) is nn.Conv2d and _is_foldable_norm(norm):
                _fold_into_conv(conv, norm)
                setattr(m, f"bn{i}", nn.Identity())
                count += 1
    return count


# --------------------------------------------------------------------------------------------------------------
# Inputs for analysis and benchmarks


def default_input_size(cfg, image_size: tuple[int, int] = (480, 640)) -> tuple[int, int]:
    """(H, W) that the test resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST) gives a 4:3 image: 576x768, 640x853."""
    from detectron2.data.transforms import ResizeShortestEdge

    h, w = image_size
    return ResizeShortestEdge.get_output_shape(
        h, w, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    )


def synthetic_inputs(size: tuple[int, int], n: int = 1, seed: int = 0) -> list[dict]:
    """`n` model inputs {"image": (3, H, W) float32 random 0..255} (no "height"/"width": output at that size)."""
    g = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8).float()}
        for _ in range(n)
    ]

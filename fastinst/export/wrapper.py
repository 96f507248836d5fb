"""The exportable FastInst graph: normalise, pad, backbone, pixel decoder, decoder; raw predictions out.

Shape shorthand: Q object queries, K classes (+1 no-object), H x W the input image, Hp x Wp the image padded to
a multiple of the size divisibility (32), H8 x W8 = Hp/8 x Wp/8.

    image (1, 3, H, W) float32 RGB in [0, 255]
      -> pred_logits (1, Q, K+1), pred_masks (1, Q, H8, W8)

This is `FastInst.forward` in eval mode up to, but not including, `postprocess`. Post-processing (top-k pairs,
mask resizing, scores, boxes) runs outside the graph (`fastinst.export.postprocess` in numpy, or the model's
own `instance_inference`): its output size is chosen per image and its number of distinct queries depends on
the data, which graph formats handle badly, and it is cheap next to the network.

Export notes: `nn.AdaptiveAvgPool2d` (the PPM) is swapped for `ExportableAdaptiveAvgPool2d`, because torch's
decomposition of adaptive pooling bakes the example's bin layout into the graph (a dynamic-size ONNX graph then
gives wrong results or index errors at other sizes). Everything else (FrozenBN, the decoder's attention as
batched matmuls with a bool 3-D mask, top-k with k = Q, `torchvision.ops.deform_conv2d` -> ONNX DeformConv)
exports as it is.
"""

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def adaptive_pool_matrix(n: int, s: int, like: Tensor) -> Tensor:
    """The (s, n) matrix that averages n positions into s adaptive bins, as `nn.AdaptiveAvgPool*d`.

    Bin i covers [floor(i n / s), ceil((i + 1) n / s)). Built from tensor ops on `n`, so the size stays
    symbolic in an exported graph.
    """
    i = torch.arange(s, device=like.device)
    start = (i * n) // s  # (s,)
    end = ((i + 1) * n + s - 1) // s  # (s,)
    pos = torch.arange(n, device=like.device)  # (n,)
    inside = (pos[None] >= start[:, None]) & (pos[None] < end[:, None])  # (s, n)
    weights = inside.to(like.dtype)
    return weights / weights.sum(dim=1, keepdim=True)


class ExportableAdaptiveAvgPool2d(nn.Module):
    """`nn.AdaptiveAvgPool2d` as two averaging matmuls, so that it exports with a dynamic input size.

    torch's decomposition of adaptive pooling bakes the bin layout of the example input into the graph, which
    silently gives wrong results (or index errors) at other sizes. Same values as the original up to float
    summation order (about 1e-7 relative).
    """

    def __init__(self, output_size):
        super().__init__()
        size = output_size if isinstance(output_size, tuple | list) else (output_size, output_size)
        if any(s is None for s in size):
            raise ValueError(
                f"Export supports fixed adaptive-pool output sizes, got {output_size}."
            )
        self.output_size = tuple(int(s) for s in size)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        rows = adaptive_pool_matrix(h, self.output_size[0], x)  # (s_h, H)
        cols = adaptive_pool_matrix(w, self.output_size[1], x)  # (s_w, W)
        x = F.linear(x, cols)  # (B, C, H, s_w)
        return F.linear(x.transpose(-1, -2), rows).transpose(-1, -2)  # (B, C, s_h, s_w)


def replace_adaptive_pools(module: nn.Module) -> int:
    """Swap every `nn.AdaptiveAvgPool2d` in `module` (in place) for the exportable version; returns the count."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.AdaptiveAvgPool2d):
            setattr(module, name, ExportableAdaptiveAvgPool2d(child.output_size))
            count += 1
        else:
            count += replace_adaptive_pools(child)
    return count


class FastInstExportModel(nn.Module):
    """FastInst's inference network as one module with a single tensor input, for ONNX / TorchScript export.

    Built from an eval-mode `FastInst` (the model is copied, not modified). The input is one RGB image in the
    model's pixel range (0-255); it is normalised with the model's PIXEL_MEAN / PIXEL_STD and zero-padded
    (after normalisation) to a multiple of the size divisibility, exactly as `FastInst.preprocess` does for a
    batch of one. Dynamic-size exports declare H and W as multiples of the size divisibility (the padding is
    then a no-op): callers pad, e.g. with the pixel mean, which normalises to exactly 0 (`OnnxFastInst` does).
    `MODEL.FASTINST.SMALL_INPUT 'pad'` is not in the graph either: `OnnxFastInst` applies it.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        model = copy.deepcopy(model).eval()
        self.backbone = model.backbone
        self.sem_seg_head = model.sem_seg_head
        # the criterion is for training only; dropping it keeps its buffer out of the graph
        self.sem_seg_head.predictor.criterion = None
        replace_adaptive_pools(self)
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone(), False)  # (3, 1, 1)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone(), False)  # (3, 1, 1)
        self.size_divisibility = int(model.size_divisibility)
        self.num_queries = int(model.num_queries)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """image (1, 3, H, W) float -> pred_logits (1, Q, K+1), pred_masks (1, Q, Hp/8, Wp/8)."""
        x = (image - self.pixel_mean) / self.pixel_std
        if self.size_divisibility > 1:
            h, w = x.shape[-2:]
            d = self.size_divisibility
            x = F.pad(x, (0, (-w) % d, 0, (-h) % d), value=0.0)  # (1, 3, Hp, Wp)
        outputs = self.sem_seg_head(self.backbone(x))
        return outputs["pred_logits"], outputs["pred_masks"]

"""Point sampling for the matcher and the mask losses (PointRend style).

Every random point draw of FastInst goes through `sample_uniform_points`, and the mask losses choose their points
with `sample_uncertain_points`. Callers always go through this module (``point_sampling.sample_uniform_points``), so
a test can replace either function with fixed points.

Shape shorthand: N masks, P points, H x W mask size. Point coordinates are (x, y) in [0, 1]^2, where 0 and 1 are
the image *edges* (``align_corners=False`` convention).
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def sample_uniform_points(n: int, p: int, device: torch.device | str) -> Tensor:
    """(n, p, 2) points drawn uniformly from [0, 1)^2 with `torch.rand` (the official draw)."""
    return torch.rand(n, p, 2, device=device)


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinearly sample `inputs` (N, C, H, W) at `coords` (N, P, 2) in [0, 1]^2 -> (N, C, P).

    Zero padding outside the image, ``align_corners=False``; the same as detectron2's PointRend `point_sample`.
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2)  # (N, P, 1, 2)
    return F.grid_sample(inputs, grid, mode="bilinear", align_corners=False).squeeze(3)  # (N, C, P)


def sample_uncertain_points(
    mask_logits: Tensor, p: int, oversample_ratio: float, importance_sample_ratio: float
) -> Tensor:
    """PointRend training point selection for mask logits (N, 1, H, W) -> (N, p, 2).

    Draw ``int(p * oversample_ratio)`` uniform points, keep the ``int(importance_sample_ratio * p)`` whose logits are
    closest to 0 (uncertainty ``-|logit|``), then append fresh uniform points up to `p`. Both draws go through
    `sample_uniform_points`, in the official order and shapes.
    """
    n = mask_logits.shape[0]
    num_sampled = int(p * oversample_ratio)
    coords = sample_uniform_points(n, num_sampled, mask_logits.device)  # (N, S, 2)
    uncertainty = -point_sample(mask_logits, coords).abs()[:, 0]  # (N, S)
    num_uncertain = int(importance_sample_ratio * p)
    num_random = p - num_uncertain
    idx = torch.topk(uncertainty, k=num_uncertain, dim=1)[1]  # (N, p_u)
    coords = torch.gather(coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))  # (N, p_u, 2)
    if num_random > 0:
        extra = sample_uniform_points(n, num_random, mask_logits.device)  # (N, p_r, 2)
        coords = torch.cat([coords, extra], dim=1)
    return coords

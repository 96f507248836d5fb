"""Hungarian matching between predictions and ground truth, with FastInst's location cost (SPEC §4).

Shape shorthand: B images, Q queries, K classes (+1 no-object), G targets of one image, Hp x Wp padded image,
H8 x W8 and H16 x W16 the stride-8 and stride-16 maps, L16 = H16 * W16, P points.

Input contract of `HungarianMatcher.forward(outputs, targets)`:
  targets: list of B dicts {"labels": (G,) int64, "masks": (G, Hp, Wp) bool or float, zero-padded}.
  query matching: outputs {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, H8, W8),
                           "query_locations": (B, Q, 2) in (x, y) order, [0, 1] image edges}
  proposal matching (when outputs has a non-None "proposal_cls_logits" (B, K+1, H16, W16)).
Output: list of B tuples (rows int64 ascending, cols int64): prediction (or location) index -> target index.
"""

import logging

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from fastinst.modeling import point_sampling
from fastinst.modeling.losses import pairwise_dice_cost, pairwise_sigmoid_ce_cost

logger = logging.getLogger(__name__)

Indices = list[tuple[Tensor, Tensor]]


def solve_assignment(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost assignment of a (rows, cols) matrix on the CPU.

    A non-finite entry (which makes scipy raise) is replaced by a large finite cost and logged: training then stops
    cleanly on the non-finite loss that always accompanies it, instead of crashing inside scipy (SPEC §10 F17).
    """
    cost = cost.detach().float().cpu()
    if not torch.isfinite(cost).all():
        logger.warning("Non-finite values in the matching cost matrix; replacing them with 1e8.")
        cost = torch.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8)
    rows, cols = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def cell_coverage(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """(G, H * W) fraction of each cell of an H x W grid over the padded image that each of G masks covers."""
    return F.adaptive_avg_pool2d(masks.float(), size).flatten(1)


def location_inside(target_masks: Tensor, locations: Tensor) -> Tensor:
    """Whether each query location falls inside each target: (G, Hp, Wp), (Q, 2) -> (Q, G) float 0/1.

    Bilinear sample of the padded mask at the location (grid edges at 0 and 1) > 0 (SPEC §10 P3).
    """
    g = target_masks.shape[0]
    coords = locations.unsqueeze(0).expand(g, -1, -1)  # (G, Q, 2)
    values = point_sampling.point_sample(target_masks.unsqueeze(1), coords)[:, 0]  # (G, Q)
    return (values > 0).float().T  # (Q, G)


class HungarianMatcher(nn.Module):
    """Matches predictions to targets with class, BCE, dice and location costs (no parameters)."""

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        cost_location: float = 1.0,
        num_points: int = 0,
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: class, mask and dice costs cannot all be 0.")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.cost_location = cost_location
        self.num_points = num_points

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> Indices:
        if outputs.get("proposal_cls_logits") is not None:
            return self.proposal_matching(outputs["proposal_cls_logits"], targets)
        return self.query_matching(outputs, targets)

    @torch.no_grad()
    def query_matching(self, outputs: dict, targets: list[dict]) -> Indices:
        indices = []
        for b, target in enumerate(targets):
            prob = outputs["pred_logits"][b].softmax(-1)  # (Q, K+1)
            out_mask = outputs["pred_masks"][b]  # (Q, H8, W8)
            tgt_mask = target["masks"].to(out_mask)  # (G, Hp, Wp)
            labels = target["labels"]
            num_queries, num_targets = prob.shape[0], labels.shape[0]
            if num_targets == 0:
                indices.append(solve_assignment(prob.new_zeros(num_queries, 0)))
                continue

            cost_location = -location_inside(tgt_mask, outputs["query_locations"][b])  # (Q, G)
            cost_class = -prob[:, labels]  # (Q, G)

            points = point_sampling.sample_uniform_points(1, self.num_points, out_mask.device)
            tgt_points = point_sampling.point_sample(
                tgt_mask.unsqueeze(1), points.expand(num_targets, -1, -1)
            )[:, 0]  # (G, P)
            out_points = point_sampling.point_sample(
                out_mask.unsqueeze(1), points.expand(num_queries, -1, -1)
            )[:, 0]  # (Q, P)
            with torch.autocast(device_type=out_mask.device.type, enabled=False):
                out_points, tgt_points = out_points.float(), tgt_points.float()
                cost_mask = pairwise_sigmoid_ce_cost(out_points, tgt_points)  # (Q, G)
                cost_dice = pairwise_dice_cost(out_points, tgt_points)  # (Q, G)

            cost = (
                self.cost_mask * cost_mask
                + self.cost_class * cost_class
                + self.cost_dice * cost_dice
                + self.cost_location * cost_location
            )
            indices.append(solve_assignment(cost.reshape(num_queries, num_targets)))
        return indices

    @torch.no_grad()
    def proposal_matching(self, proposal_cls_logits: Tensor, targets: list[dict]) -> Indices:
        """Match stride-16 locations to targets: class cost plus "the 16x16 cell overlaps the object"."""
        size = proposal_cls_logits.shape[-2:]
        probs = proposal_cls_logits.flatten(2).transpose(1, 2).softmax(-1)  # (B, L16, K+1)
        indices = []
        for b, target in enumerate(targets):
            labels = target["labels"]
            masks = target["masks"]
            if labels.numel() > 0:
                inside = (cell_coverage(masks, size) > 0).T.float()  # (L16, G)
            else:
                inside = probs.new_zeros(probs.shape[1], 0)
            cost = self.cost_class * -probs[b][:, labels] + self.cost_location * -inside  # (L16, G)
            indices.append(solve_assignment(cost))
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
            f"cost_location={self.cost_location}, num_points={self.num_points}"
        )

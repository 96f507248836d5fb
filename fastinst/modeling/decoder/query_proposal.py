"""Instance-activation-guided query proposal (SPEC §3.2).

Shape shorthand: B batch, C channels, K classes (+1 background), H x W the stride-16 map, L = H * W, Q queries.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def local_maximum_score(cls_logits: Tensor) -> Tensor:
    """Per-location ranking score (B, K+1, H, W) -> (B, L): p_c* + 1[local maximum].

    c* is the argmax over the *foreground* classes only. A location is a local maximum when its c* probability is
    >= that of every 8-neighbour whose argmax class is also c* (zero padding outside, so ties count) and >= 1e-6.
    """
    probs = cls_logits.softmax(dim=1)  # (B, K+1, H, W)
    fg = probs[:, :-1]  # (B, K, H, W)
    best = fg.argmax(dim=1, keepdim=True)  # (B, 1, H, W)
    masked = torch.zeros_like(fg).scatter_(
        1, best, fg.gather(1, best)
    )  # (B, K, H, W) p in plane c* only
    neighbourhood_max = F.max_pool2d(masked, kernel_size=3, stride=1, padding=1)  # (B, K, H, W)
    is_peak = (masked >= neighbourhood_max) & (
        masked >= 1e-6
    )  # background planes of c* are never peaks
    score = (masked + is_peak.float()).amax(dim=1)  # (B, H, W)
    return score.flatten(1)  # (B, L)


class QueryProposal(nn.Module):
    """Predicts per-pixel class logits on the stride-16 map and picks the Q best locations as queries."""

    def __init__(self, hidden_dim: int, num_queries: int, num_classes: int):
        super().__init__()
        self.num_queries = num_queries
        self.conv_proposal_cls_logits = nn.Sequential(
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, stride=1, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, num_classes + 1, kernel_size=1, stride=1, padding=0),
        )

    def forward(
        self, x: Tensor, pos_embeds: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
        """x: (B, C, H, W) features; pos_embeds: (1, C, H, W).

        Returns query features (B, C, Q), query positional embeddings (B, C, Q), query locations (B, Q, 2) in
        (x, y) order on [0, 1] (training only, else None), the proposal logits (B, K+1, H, W) and the chosen
        flat indices (B, Q).
        """
        b, c, h, w = x.shape
        if h * w < self.num_queries:
            raise ValueError(
                f"The stride-16 feature map is {h}x{w} = {h * w} locations, fewer than the "
                f"{self.num_queries} object queries (MODEL.FASTINST.NUM_OBJECT_QUERIES). Use larger input "
                f"images (at least {self.num_queries * 256} padded pixels) or set "
                "MODEL.FASTINST.SMALL_INPUT 'pad'."
            )
        cls_logits = self.conv_proposal_cls_logits(x)  # (B, K+1, H, W)
        score = local_maximum_score(cls_logits)  # (B, L)
        topk_indices = torch.topk(score, self.num_queries, dim=1)[1]  # (B, Q)

        index = topk_indices.unsqueeze(1).expand(-1, c, -1)  # (B, C, Q)
        query_features = torch.gather(x.flatten(2), 2, index)  # (B, C, Q)
        query_pos = torch.gather(pos_embeds.flatten(2).expand(b, -1, -1), 2, index)  # (B, C, Q)

        query_locations = None
        if self.training:
            with torch.no_grad():
                ys = torch.linspace(0, 1, h, device=x.device)
                xs = torch.linspace(0, 1, w, device=x.device)
                grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
                grid = torch.stack([grid_x, grid_y]).flatten(1)  # (2, L), (x, y) order
                query_locations = grid.T[topk_indices]  # (B, Q, 2)
        return query_features, query_pos, query_locations, cls_logits, topk_indices

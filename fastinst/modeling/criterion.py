"""FastInst's set criterion: class, point-sampled mask/dice and proposal losses (SPEC §5).

Shape shorthand: B images, Q queries, K classes (+1 no-object), N matched pairs, P points, H8 x W8 mask logits,
Hp x Wp padded image, L16 stride-16 locations.
"""

import torch
import torch.nn.functional as F
from detectron2.utils import comm
from torch import Tensor, nn

from fastinst.modeling import point_sampling
from fastinst.modeling.losses import dice_loss, sigmoid_ce_loss
from fastinst.modeling.matcher import HungarianMatcher, Indices, cell_coverage


def _src_permutation(indices: Indices) -> tuple[Tensor, Tensor]:
    """(batch index, prediction index) of every matched pair, image by image."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    return batch_idx, src_idx


def dense_cell_classes(target: dict, size: tuple[int, int], no_object: int) -> Tensor:
    """(H * W,) class of the object covering most of each cell of an H x W grid over the padded image, or
    `no_object` where objects cover at most half of the cell."""
    masks = target["masks"]
    if masks.shape[0] == 0:
        return torch.full((size[0] * size[1],), no_object, dtype=torch.int64, device=masks.device)
    cover = cell_coverage(masks, size)  # (G, H*W)
    best_cover, best = cover.max(dim=0)  # (H*W,)
    classes = target["labels"].to(masks.device)[best]
    return torch.where(best_cover > 0.5, classes, torch.full_like(classes, no_object))


def proposal_loss(
    proposal_cls_logits: Tensor, targets: list[dict], indices: Indices, dense: bool = False
) -> Tensor:
    """Plain cross-entropy over every stride-16 location (padding included) (B, K+1, H16, W16) -> scalar.

    Unmatched locations are no-object (class K) -- or, with `dense`, the class of the object covering most of the
    cell when objects cover more than half of it; there are no class weights and no instance normaliser.
    """
    b, k1 = proposal_cls_logits.shape[:2]
    logits = proposal_cls_logits.float().flatten(2)  # (B, K+1, L16)
    target_classes = torch.full(
        (b, logits.shape[2]), k1 - 1, dtype=torch.int64, device=logits.device
    )  # (B, L16)
    size = tuple(proposal_cls_logits.shape[-2:])
    for i, (target, (src, tgt)) in enumerate(zip(targets, indices)):
        if dense:
            target_classes[i] = dense_cell_classes(target, size, k1 - 1).to(logits.device)
        target_classes[i, src.to(logits.device)] = target["labels"][tgt]
    return F.cross_entropy(logits, target_classes, ignore_index=-1)


class SetCriterion(nn.Module):
    """Computes FastInst's losses for one forward pass of the decoder.

    The returned dict holds unweighted losses in the official key order: ``loss_ce, loss_mask, loss_dice``, the same
    with suffixes ``_0 .. _{2Ld-1}`` for the auxiliary outputs, then ``loss_proposal``.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        eos_coef: float,
        losses: list[str],
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        dense_proposal_targets: bool = False,
    ):
        super().__init__()
        self.dense_proposal_targets = dense_proposal_targets
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = losses
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def loss_labels(self, outputs: dict, targets: list[dict], indices: Indices, num_masks: float):
        """Weighted cross-entropy over Q queries: matched ones get their GT class, the rest no-object."""
        logits = outputs["pred_logits"].float()  # (B, Q, K+1)
        idx = _src_permutation(indices)
        matched_classes = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )  # (B, Q)
        target_classes[idx] = matched_classes.to(logits.device)
        loss = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss}

    def loss_masks(self, outputs: dict, targets: list[dict], indices: Indices, num_masks: float):
        """BCE and dice on P points per matched mask, chosen by PointRend importance sampling."""
        src_masks = outputs["pred_masks"][_src_permutation(indices)]  # (N, H8, W8)
        if src_masks.shape[0] == 0:
            zero = outputs["pred_masks"].sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        tgt_masks = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)])  # (N, Hp, Wp)
        src_masks = src_masks.unsqueeze(1)  # (N, 1, H8, W8)
        tgt_masks = tgt_masks.to(src_masks).unsqueeze(1)  # (N, 1, Hp, Wp)

        with torch.no_grad():
            coords = point_sampling.sample_uncertain_points(
                src_masks, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )  # (N, P, 2)
            labels = point_sampling.point_sample(tgt_masks, coords)[:, 0]  # (N, P)
        logits = point_sampling.point_sample(src_masks, coords)[:, 0]  # (N, P)
        return {
            "loss_mask": sigmoid_ce_loss(logits, labels, num_masks),
            "loss_dice": dice_loss(logits, labels, num_masks),
        }

    def get_loss(self, name: str, outputs, targets, indices, num_masks) -> dict[str, Tensor]:
        loss_fns = {"labels": self.loss_labels, "masks": self.loss_masks}
        if name not in loss_fns:
            raise ValueError(f"Unknown loss {name!r}; expected one of {sorted(loss_fns)}.")
        return loss_fns[name](outputs, targets, indices, num_masks)

    def _match(self, outputs: dict, targets: list[dict]) -> Indices:
        if outputs.get("pred_matching_indices") is not None:
            return outputs["pred_matching_indices"]
        query_outputs = {k: v for k, v in outputs.items() if k != "proposal_cls_logits"}
        return self.matcher(query_outputs, targets)

    def num_masks(self, targets: list[dict], device: torch.device) -> float:
        """Average number of target masks per process (at least 1), shared by every output."""
        num = torch.as_tensor(
            [float(sum(len(t["labels"]) for t in targets))], dtype=torch.float, device=device
        )
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(num)
        return torch.clamp(num / comm.get_world_size(), min=1).item()

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """outputs: the decoder's dict (SPEC §3.9); targets: list of {"labels", "masks" (G, Hp, Wp)}."""
        losses: dict[str, Tensor] = {}
        proposal = None
        if outputs.get("proposal_cls_logits") is not None:
            logits = outputs["proposal_cls_logits"]
            proposal = proposal_loss(
                logits,
                targets,
                self.matcher.proposal_matching(logits, targets),
                dense=self.dense_proposal_targets,
            )

        main_outputs = {
            k: v for k, v in outputs.items() if k not in ("aux_outputs", "proposal_cls_logits")
        }
        indices = self._match(main_outputs, targets)
        num_masks = self.num_masks(targets, outputs["pred_logits"].device)
        for name in self.losses:
            losses.update(self.get_loss(name, main_outputs, targets, indices, num_masks))

        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_indices = self._match(aux, targets)
            for name in self.losses:
                aux_losses = self.get_loss(name, aux, targets, aux_indices, num_masks)
                losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})

        if proposal is not None:
            losses["loss_proposal"] = proposal
        return losses

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}"
        )

"""The FastInst decoder (SPEC §3): query proposal, dual-path layers, GT-mask-guided learning.

Shape shorthand: B batch, C hidden dim, D mask dim, K classes (+1 no-object), Q object queries, A auxiliary
queries, N = Q + A, Nh heads, Ld decoder layers, H8 x W8 the stride-8 map (L8 = H8 * W8), H16 x W16 the
stride-16 map, Hp x Wp the padded image. Queries and pixels travel sequence-first: (N, B, C) and (L8, B, C).
"""

import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from fastinst.modeling.criterion import SetCriterion
from fastinst.modeling.decoder.layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer
from fastinst.modeling.decoder.query_proposal import QueryProposal

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = (
    "Registry for FastInst decoders (MODEL.FASTINST.TRANSFORMER_DECODER_NAME)."
)


def build_transformer_decoder(cfg, in_channels: int, criterion: SetCriterion) -> nn.Module:
    """Build the decoder named by MODEL.FASTINST.TRANSFORMER_DECODER_NAME."""
    name = cfg.MODEL.FASTINST.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, criterion)


def attention_mask_from_logits(mask_logits: Tensor, num_aux: int, num_heads: int) -> Tensor:
    """Cross-attention mask from predicted mask logits (B, Q, H8, W8) -> bool (B * Nh, N, L8).

    True means "may not attend": logit < 0. Auxiliary queries attend everywhere, and so does any row that would
    be blocked everywhere.
    """
    padded = F.pad(mask_logits, (0, 0, 0, 0, 0, num_aux), value=1.0)  # (B, N, H8, W8)
    blocked = (padded < 0).flatten(2)  # (B, N, L8)
    return _finish_attention_mask(blocked, num_heads)


def _finish_attention_mask(blocked: Tensor, num_heads: int) -> Tensor:
    blocked = blocked & ~blocked.all(dim=-1, keepdim=True)  # all-blocked rows attend everywhere
    return blocked.repeat_interleave(num_heads, dim=0).detach()  # (B * Nh, N, L8), index b * Nh + h


def gt_attention_mask(
    targets: list[dict],
    indices,
    num_queries: int,
    num_aux: int,
    size: tuple[int, int],
    num_heads: int,
) -> Tensor:
    """Attention mask from the matched GT masks (SPEC §3.8) -> bool (B * Nh, N, L8).

    A matched query may attend only inside its GT mask (nearest-sampled at stride 8, i.e. pixel (8r, 8c)); unmatched
    and auxiliary queries attend everywhere.
    """
    h8, w8 = size
    rows = []
    for target, (src, tgt) in zip(targets, indices):
        masks = target["masks"]  # (G, Hp, Wp)
        stride_h, stride_w = masks.shape[-2] // h8, masks.shape[-1] // w8
        blocked = torch.zeros(num_queries + num_aux, h8, w8, dtype=torch.bool, device=masks.device)
        if len(src) > 0:
            small = masks[tgt][:, ::stride_h, ::stride_w][:, :h8, :w8].bool()  # (n, H8, W8)
            blocked[src.to(masks.device)] = ~small
        rows.append(blocked.flatten(1))  # (N, L8)
    return _finish_attention_mask(torch.stack(rows), num_heads)


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


@TRANSFORMER_DECODER_REGISTRY.register()
class FastInstDecoder(nn.Module):
    """Query proposal + Ld dual-path decoder layers + prediction heads (+ GT-mask-guided branch in training)."""

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        num_aux_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        criterion: SetCriterion | None = None,
        gt_mask_guided: bool = True,
    ):
        super().__init__()
        self.gt_mask_guided = gt_mask_guided
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.num_aux_queries = num_aux_queries
        self.num_heads = nheads
        self.num_layers = dec_layers

        side = round(math.sqrt(num_queries))
        # Official: torch.empty (never initialised, SPEC §10 P2). Here N(0, 1), so training from scratch is
        # deterministic; pretrained weights overwrite it.
        self.meta_pos_embed = nn.Parameter(torch.randn(1, hidden_dim, side, side))
        if num_aux_queries > 0:
            self.empty_query_features = nn.Embedding(num_aux_queries, hidden_dim)
            self.empty_query_pos_embed = nn.Embedding(num_aux_queries, hidden_dim)
        self.query_proposal = QueryProposal(hidden_dim, num_queries, num_classes)

        def repeat(make):
            return nn.ModuleList(make() for _ in range(dec_layers))

        self.transformer_query_cross_attention_layers = repeat(
            lambda: CrossAttentionLayer(hidden_dim, nheads, pre_norm)
        )
        self.transformer_query_self_attention_layers = repeat(
            lambda: SelfAttentionLayer(hidden_dim, nheads, pre_norm)
        )
        self.transformer_query_ffn_layers = repeat(
            lambda: FFNLayer(hidden_dim, dim_feedforward, pre_norm)
        )
        self.transformer_mask_cross_attention_layers = repeat(
            lambda: CrossAttentionLayer(hidden_dim, nheads, pre_norm)
        )
        self.transformer_mask_ffn_layers = repeat(
            lambda: FFNLayer(hidden_dim, dim_feedforward, pre_norm)
        )

        # prediction heads j = 0 (initial prediction) .. Ld (after the last layer)
        num_heads = dec_layers + 1
        self.decoder_query_norm_layers = nn.ModuleList(
            nn.LayerNorm(hidden_dim) for _ in range(num_heads)
        )
        self.class_embed_layers = nn.ModuleList(
            MLP(hidden_dim, hidden_dim, num_classes + 1, 3) for _ in range(num_heads)
        )
        self.mask_embed_layers = nn.ModuleList(
            MLP(hidden_dim, hidden_dim, mask_dim, 3) for _ in range(num_heads)
        )
        self.mask_features_layers = nn.ModuleList(
            nn.Linear(hidden_dim, mask_dim) for _ in range(num_heads)
        )
        # The criterion's matcher supplies the GT-mask-guided matching. It is the same module as the
        # meta-architecture's `criterion`, so official checkpoints' two `empty_weight` keys both exist.
        self.criterion = criterion
        # Inference: reuse the resized positional embeddings per input size (exact; `positional_embeddings`).
        self.cache_positional_embeddings = True
        self._pos_cache: dict = {}

    @classmethod
    def from_config(cls, cfg, in_channels: int, criterion: SetCriterion | None = None):
        fi = cfg.MODEL.FASTINST
        if cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM != fi.HIDDEN_DIM:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.CONVS_DIM ({cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM}) must equal "
                f"MODEL.FASTINST.HIDDEN_DIM ({fi.HIDDEN_DIM}): the decoder reads pixel-decoder features directly."
            )
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": fi.HIDDEN_DIM,
            "num_queries": fi.NUM_OBJECT_QUERIES,
            "num_aux_queries": fi.NUM_AUX_QUERIES,
            "nheads": fi.NHEADS,
            "dim_feedforward": fi.DIM_FEEDFORWARD,
            "dec_layers": fi.DEC_LAYERS,
            "pre_norm": fi.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "criterion": criterion,
            "gt_mask_guided": fi.GT_MASK_GUIDED,
        }

    # ------------------------------------------------------------------------------------------------------
    def positional_embeddings(
        self, size8: tuple[int, int], size16: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """`meta_pos_embed` resized to the stride-8 map, as (L8, 1, C), and to the stride-16 map, (1, C, H16, W16).

        Without gradients and in eval mode (and `cache_positional_embeddings` set), the results are kept per
        size and reused until `meta_pos_embed` changes (in place, e.g. by loading weights, or by `.to()`).
        """
        use_cache = (
            self.cache_positional_embeddings
            and not self.training
            and not torch.is_grad_enabled()
            and not _tracing()  # exports and compiled graphs must keep the resize itself
        )
        p = self.meta_pos_embed
        # no data_ptr() on the fake tensors of torch.export: build the key only when caching
        key = (size8, size16, p.data_ptr(), p._version, p.dtype, p.device) if use_cache else None
        if use_cache and key in self._pos_cache:
            return self._pos_cache[key]
        pixel_pos = F.interpolate(
            p, size=size8, mode="bilinear", align_corners=False
        )  # (1, C, H8, W8)
        pixel_pos = pixel_pos.flatten(2).permute(2, 0, 1)  # (L8, 1, C)
        proposal_pos = F.interpolate(
            p, size=size16, mode="bilinear", align_corners=False
        )  # (1, C, H16, W16)
        if use_cache:
            if len(self._pos_cache) >= 8:  # a handful of input sizes; forget the oldest
                self._pos_cache.pop(next(iter(self._pos_cache)))
            self._pos_cache[key] = (pixel_pos, proposal_pos)
        return pixel_pos, proposal_pos

    def prediction_heads(
        self, query_features: Tensor, pixel_features: Tensor, size: tuple[int, int], j: int
    ) -> tuple[Tensor | None, Tensor]:
        """Class logits (B, Q, K+1) (training, or the last head only) and mask logits (B, Q, H8, W8)."""
        z = self.decoder_query_norm_layers[j](query_features[: self.num_queries])  # (Q, B, C)
        z = z.transpose(0, 1)  # (B, Q, C)
        cls = None
        if self.training or j == self.num_layers:
            cls = self.class_embed_layers[j](z)  # (B, Q, K+1)
        mask_embed = self.mask_embed_layers[j](z)  # (B, Q, D)
        pixel_embed = self.mask_features_layers[j](pixel_features.transpose(0, 1))  # (B, L8, D)
        masks = torch.einsum("bqd,bld->bql", mask_embed, pixel_embed)  # (B, Q, L8)
        return cls, masks.unflatten(2, size)  # (B, Q, H8, W8)

    def layer(
        self,
        i: int,
        query_features: Tensor,
        pixel_features: Tensor,
        query_pos: Tensor,
        pixel_pos: Tensor,
        attn_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """One dual-path layer: pixels attend to queries, then queries to the *updated* pixels (SPEC §3.6)."""
        pixel_features = self.transformer_mask_cross_attention_layers[i](
            pixel_features, query_features, pos=query_pos, query_pos=pixel_pos
        )  # (L8, B, C)
        pixel_features = self.transformer_mask_ffn_layers[i](pixel_features)
        query_features = self.transformer_query_cross_attention_layers[i](
            query_features,
            pixel_features,
            memory_mask=attn_mask,
            pos=pixel_pos,
            query_pos=query_pos,
        )  # (N, B, C)
        query_features = self.transformer_query_self_attention_layers[i](
            query_features, query_pos=query_pos
        )
        query_features = self.transformer_query_ffn_layers[i](query_features)
        return query_features, pixel_features

    def forward(self, x: list[Tensor], mask_features=None, targets: list[dict] | None = None):
        """x: pixel-decoder outputs [f32, f16, f8], each (B, C, H, W). targets: training targets.

        Returns a dict with `pred_logits` (B, Q, K+1), `pred_masks` (B, Q, H8, W8), `proposal_cls_logits`
        (B, K+1, H16, W16), `query_locations`, `topk_indices` (B, Q), `pred_matching_indices` (None) and
        `aux_outputs` (SPEC §3.9).
        """
        if self.training and targets is None:
            raise ValueError("FastInstDecoder needs `targets` in training mode.")
        proposal_map, pixel_map = x[1], x[2]
        b = pixel_map.shape[0]
        size8 = tuple(pixel_map.shape[-2:])

        pixel_pos, proposal_pos = self.positional_embeddings(size8, tuple(proposal_map.shape[-2:]))
        pixel_features = pixel_map.flatten(2).permute(2, 0, 1)  # (L8, B, C)

        query_features, query_pos, query_locations, proposal_cls_logits, topk_indices = (
            self.query_proposal(proposal_map, proposal_pos)
        )
        query_features = query_features.permute(2, 0, 1)  # (Q, B, C)
        query_pos = query_pos.permute(2, 0, 1)  # (Q, B, C)
        if self.num_aux_queries > 0:
            aux_features = self.empty_query_features.weight.unsqueeze(1).repeat(
                1, b, 1
            )  # (A, B, C)
            aux_pos = self.empty_query_pos_embed.weight.unsqueeze(1).repeat(1, b, 1)  # (A, B, C)
            query_features = torch.cat([query_features, aux_features])  # (N, B, C)
            query_pos = torch.cat([query_pos, aux_pos])  # (N, B, C)

        cls, masks = self.prediction_heads(query_features, pixel_features, size8, 0)
        attn_mask = attention_mask_from_logits(masks, self.num_aux_queries, self.num_heads)
        all_cls, all_masks = [cls], [masks]
        query_memory, pixel_memory = [query_features], [pixel_features]
        for i in range(self.num_layers):
            query_features, pixel_features = self.layer(
                i, query_features, pixel_features, query_pos, pixel_pos, attn_mask
            )
            cls, masks = self.prediction_heads(query_features, pixel_features, size8, i + 1)
            if i < self.num_layers - 1:
                attn_mask = attention_mask_from_logits(masks, self.num_aux_queries, self.num_heads)
            all_cls.append(cls)
            all_masks.append(masks)
            query_memory.append(query_features)
            pixel_memory.append(pixel_features)

        all_indices = [None] * (self.num_layers + 1)
        if self.training and self.gt_mask_guided:
            guided_cls, guided_masks, indices = self.gt_guided_branch(
                query_memory, pixel_memory, query_pos, pixel_pos, size8, cls, masks,
                query_locations, targets,
            )  # fmt: skip
            all_cls = guided_cls + all_cls
            all_masks = guided_masks + all_masks
            all_indices = [indices] * self.num_layers + all_indices

        aux_outputs = [
            {
                "query_locations": query_locations,
                "pred_logits": c,
                "pred_masks": m,
                "pred_matching_indices": idx,
            }
            for c, m, idx in zip(all_cls[:-1], all_masks[:-1], all_indices[:-1])
        ]
        return {
            "proposal_cls_logits": proposal_cls_logits,
            "query_locations": query_locations,
            "topk_indices": topk_indices,
            "pred_logits": all_cls[-1],
            "pred_masks": all_masks[-1],
            "pred_matching_indices": None,
            "aux_outputs": aux_outputs,
        }

    def gt_guided_branch(
        self,
        query_memory,
        pixel_memory,
        query_pos,
        pixel_pos,
        size8,
        cls,
        masks,
        query_locations,
        targets,
    ):
        """Re-run every layer on its own outputs with the matched GT masks as attention mask (SPEC §3.8)."""
        if self.criterion is None:
            raise ValueError("FastInstDecoder needs a criterion (its matcher) for training.")
        indices = self.criterion.matcher(
            {"pred_logits": cls, "pred_masks": masks, "query_locations": query_locations}, targets
        )
        attn_mask = gt_attention_mask(
            targets, indices, self.num_queries, self.num_aux_queries, size8, self.num_heads
        )
        guided_cls, guided_masks = [], []
        for i in range(self.num_layers):
            q, p = self.layer(
                i, query_memory[i + 1], pixel_memory[i + 1], query_pos, pixel_pos, attn_mask
            )
            c, m = self.prediction_heads(q, p, size8, i + 1)
            guided_cls.append(c)
            guided_masks.append(m)
        return guided_cls, guided_masks, indices

"""Transformer sublayers of the FastInst decoder (SPEC §2.7, §3.6).

All layers are sequence-first, (L, B, C), like `nn.MultiheadAttention(batch_first=False)`, which keeps the official
state-dict keys. Post-norm (default): x <- LN(x + f(x)). Pre-norm: x <- x + f(LN(x)); only the query side (tgt) is
normalised, never the memory. Dropout is 0, as hard-coded in the official decoder.
"""

import torch.nn.functional as F
from torch import Tensor, nn


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


def _xavier_init(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
    """Self-attention among queries: q = k = tgt + query_pos, v = tgt."""

    def __init__(self, d_model: int, nhead: int, normalize_before: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt: Tensor, query_pos: Tensor | None = None) -> Tensor:
        x = self.norm(tgt) if self.normalize_before else tgt
        q = k = _with_pos(x, query_pos)
        out = self.self_attn(q, k, value=x, need_weights=False)[0]
        return tgt + out if self.normalize_before else self.norm(tgt + out)


class CrossAttentionLayer(nn.Module):
    """tgt attends to memory: q = tgt + query_pos, k = memory + pos, v = memory.

    `memory_mask` is a bool (B * nhead, L_tgt, L_memory) mask where True means "may not attend".
    """

    def __init__(self, d_model: int, nhead: int, normalize_before: bool = False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_mask: Tensor | None = None,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
    ) -> Tensor:
        x = self.norm(tgt) if self.normalize_before else tgt
        out = self.multihead_attn(
            query=_with_pos(x, query_pos),
            key=_with_pos(memory, pos),
            value=memory,
            attn_mask=memory_mask,
            need_weights=False,
        )[0]
        return tgt + out if self.normalize_before else self.norm(tgt + out)


class FFNLayer(nn.Module):
    """linear2(ReLU(linear1(x))) with a residual connection and LayerNorm."""

    def __init__(self, d_model: int, dim_feedforward: int, normalize_before: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt: Tensor) -> Tensor:
        x = self.norm(tgt) if self.normalize_before else tgt
        out = self.linear2(F.relu(self.linear1(x)))
        return tgt + out if self.normalize_before else self.norm(tgt + out)


class MLP(nn.Module):
    """A stack of Linear layers (`layers.0 .. layers.{n-1}`) with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x

"""Transformer sublayers of the FastInst decoder (SPEC §2.7, §3.6).

All layers are sequence-first, (L, B, C), like `nn.MultiheadAttention(batch_first=False)`, which keeps the official
state-dict keys. Post-norm (default): x <- LN(x + f(x)). Pre-norm: x <- x + f(LN(x)); only the query side (tgt) is
normalised, never the memory. Dropout is 0, as hard-coded in the official decoder.

The attention keeps `nn.MultiheadAttention` modules (their parameters are the official `in_proj_weight`,
`in_proj_bias`, `out_proj.*`) but computes with `multi_head_attention`: plain batched matmuls and a softmax. The
sequences here are short (tens of queries, hundreds of pixels), where torch's fused CPU attention kernel is
slow: measured for bf16 forward+backward with 4 images, 4 heads, 58 queries and 576 pixels, 9.3 ms against 2.8 ms
(pixels attending to queries) and 7.5 against 5.5 ms (queries attending to pixels, masked).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


def multi_head_attention(
    attn: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    blocked: Tensor | None = None,
) -> Tensor:
    """`attn(query, key, value, attn_mask=blocked, need_weights=False)[0]`, computed with batched matmuls.

    query (Lq, B, C), key and value (Lk, B, C); `blocked` is a bool (B * nhead, Lq, Lk) mask, True = may not
    attend, with heads laid out like `nn.MultiheadAttention`'s (batch-major). The softmax runs in float32.
    """
    lq, batch, channels = query.shape
    lk = key.shape[0]
    heads = attn.num_heads
    head_dim = channels // heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
    q = F.linear(query, w_q, b_q).reshape(lq, batch * heads, head_dim).transpose(0, 1)
    k = F.linear(key, w_k, b_k).reshape(lk, batch * heads, head_dim).transpose(0, 1)
    v = F.linear(value, w_v, b_v).reshape(lk, batch * heads, head_dim).transpose(0, 1)
    q = q * head_dim**-0.5
    if blocked is None:
        scores = torch.bmm(q, k.transpose(1, 2))  # (B * nhead, Lq, Lk)
    else:  # an additive mask through baddbmm, as torch's MultiheadAttention did when FastInst was released
        bias = torch.zeros(blocked.shape, dtype=q.dtype, device=q.device).masked_fill_(
            blocked, float("-inf")
        )
        scores = torch.baddbmm(bias, q, k.transpose(1, 2))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    out = torch.bmm(weights, v).transpose(0, 1).reshape(lq, batch, channels)
    return attn.out_proj(out)


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
        out = multi_head_attention(self.self_attn, q, k, x)
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
        out = multi_head_attention(
            self.multihead_attn,
            _with_pos(x, query_pos),
            _with_pos(memory, pos),
            memory,
            memory_mask,
        )
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

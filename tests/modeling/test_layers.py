"""The decoder's attention: `multi_head_attention` against `nn.MultiheadAttention` itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastinst.modeling.decoder.layers import multi_head_attention


def _case(
    lq: int, lk: int, batch: int = 3, channels: int = 32, heads: int = 4, masked: bool = False
):
    torch.manual_seed(lq * 100 + lk)
    attn = nn.MultiheadAttention(channels, heads, dropout=0.0)
    nn.init.normal_(
        attn.in_proj_bias
    )  # torch initialises it to zero, which would hide a bias mix-up
    query, key, value = (torch.randn(n, batch, channels) for n in (lq, lk, lk))
    blocked = None
    if masked:
        blocked = torch.rand(batch * heads, lq, lk) > 0.6
        blocked[:, :, 0] = False  # every row may attend somewhere (the decoder guarantees this)
        blocked[1] = True  # ... except in one head of one image, where only column 0 is open
        blocked[1, :, 0] = False
    return attn, query, key, value, blocked


@pytest.mark.parametrize("lq,lk,masked", [(7, 7, False), (7, 30, True), (30, 7, False)])
def test_matches_torch_multihead_attention_in_float32(lq: int, lk: int, masked: bool) -> None:
    attn, query, key, value, blocked = _case(lq, lk, masked=masked)
    expected = attn(query, key, value, attn_mask=blocked, need_weights=False)[0]
    torch.testing.assert_close(
        multi_head_attention(attn, query, key, value, blocked), expected, rtol=1e-5, atol=1e-6
    )


def test_gradients_match_torch_multihead_attention() -> None:
    attn, query, key, value, blocked = _case(9, 20, masked=True)
    grads = []
    for fn in (
        lambda q, k, v: attn(q, k, v, attn_mask=blocked, need_weights=False)[0],
        lambda q, k, v: multi_head_attention(attn, q, k, v, blocked),
    ):
        attn.zero_grad()
        inputs = [t.clone().requires_grad_(True) for t in (query, key, value)]
        fn(*inputs).square().sum().backward()
        grads.append([t.grad for t in inputs] + [p.grad.clone() for p in attn.parameters()])
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_bfloat16_autocast_stays_close_to_float32() -> None:
    attn, query, key, value, blocked = _case(12, 40, masked=True)
    reference = multi_head_attention(attn, query, key, value, blocked)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = multi_head_attention(attn, query, key, value, blocked)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    # bfloat16 keeps 8 bits of mantissa (relative step 2^-8 = 0.004); measured max error 0.009 on outputs up to 2.2
    torch.testing.assert_close(out.float(), reference, rtol=0.01, atol=0.02)

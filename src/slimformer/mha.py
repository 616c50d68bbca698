"""A drop-in for torch.nn.MultiheadAttention made of plain Linears, so every projection can be quantized or sliced.

Stock MHA keeps q/k/v in one fused `in_proj_weight` Parameter and calls it through F.multi_head_attention_forward,
which no Linear-swapping pass can reach. `QuantizableMHA` holds q, k, v and out_proj as four nn.Linear and computes
the same function (equal to 1e-5; see tests/test_mha.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UnsupportedArchitectureError
from .surgery import replace_modules


class QuantizableMHA(nn.Module):
    # TransformerEncoderLayer's fused fast path reads these attributes; `in_proj_bias = None` makes it take the
    # regular path, which calls this module.
    _qkv_same_embed_dim = True
    in_proj_bias = None
    in_proj_weight = None

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int | None = None, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = head_dim if head_dim is not None else embed_dim // num_heads
        self.inner_dim = self.num_heads * self.head_dim  # narrower than embed_dim once heads are pruned
        self.batch_first, self.dropout = batch_first, dropout
        self.q = nn.Linear(embed_dim, self.inner_dim, bias=bias)
        self.k = nn.Linear(embed_dim, self.inner_dim, bias=bias)
        self.v = nn.Linear(embed_dim, self.inner_dim, bias=bias)
        self.out_proj = nn.Linear(self.inner_dim, embed_dim, bias=bias)

    @classmethod
    @torch.no_grad()
    def from_mha(cls, mha: nn.MultiheadAttention) -> "QuantizableMHA":
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise UnsupportedArchitectureError("MultiheadAttention with kdim/vdim, bias_k or add_zero_attn")
        bias = mha.in_proj_bias is not None
        new = cls(mha.embed_dim, mha.num_heads, bias=bias, batch_first=mha.batch_first, dropout=mha.dropout)
        for i, lin in enumerate((new.q, new.k, new.v)):
            rows = slice(i * mha.embed_dim, (i + 1) * mha.embed_dim)
            lin.weight.copy_(mha.in_proj_weight[rows])
            if bias:
                lin.bias.copy_(mha.in_proj_bias[rows])
        new.out_proj.weight.copy_(mha.out_proj.weight)
        if bias:
            new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.train(mha.training)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.batch_first:  # (T, B, E) -> (B, T, E)
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        B, T, _ = query.shape
        S = key.shape[1]
        q = self.q(query).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k(key).view(B, S, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, S, hs)
        v = self.v(value).view(B, S, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, S, hs)

        mask = _additive_mask(attn_mask, key_padding_mask, B, T, S, q.dtype, is_causal)  # (B, 1|nh, T, S) or None
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (B, nh, T, S)
            if mask is not None:
                scores = scores + mask
            weights = F.dropout(scores.softmax(-1), p)
            y = weights @ v
        else:
            weights = None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = self.out_proj(y.transpose(1, 2).reshape(B, T, self.inner_dim))  # (B, T, E)
        if not self.batch_first:
            y = y.transpose(0, 1)
        if weights is not None and average_attn_weights:
            weights = weights.mean(1)
        return y, weights


def _additive_mask(attn_mask, key_padding_mask, B, T, S, dtype, is_causal):
    """Merge MHA's two masks (bool: True = may not attend; float: added) into one additive (B, 1|nh, T, S) mask."""
    if is_causal and attn_mask is None:
        attn_mask = torch.ones(T, S, dtype=torch.bool).triu(1)
    mask = None
    for m, shape in ((attn_mask, None), (key_padding_mask, (B, 1, 1, S))):
        if m is None:
            continue
        m = torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(dtype)
        if shape is not None:
            m = m.view(shape)
        elif m.dim() == 3:  # (B*nh, T, S)
            m = m.view(B, -1, T, S)
        mask = m if mask is None else mask + m
    return mask


def make_quantizable(model: nn.Module) -> list[str]:
    """Swap every nn.MultiheadAttention in `model` for an equal QuantizableMHA. Returns the swapped paths."""
    return replace_modules(model, lambda m, _: isinstance(m, nn.MultiheadAttention),
                           lambda m, _: QuantizableMHA.from_mha(m))

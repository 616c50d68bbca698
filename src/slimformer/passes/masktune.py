"""Mask tuning without retraining (Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers"):
after the choice of heads and neurons, rescale what is kept, layer by layer, by least squares against the original
model's hidden states on calibration text; the scales fold into the output projections at no run-time cost."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..arch import Adapter, blocks, head_size
from ..surgery import hooks
from .calib import Calibration
from .structure import ffn_per_layer, has_attention, heads_per_layer, unit_masks


class _Stop(Exception):
    """Raised by a capture hook: the rest of the forward is not needed."""


def _tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    x = x.reshape(-1, x.shape[-1])
    return (x if mask is None else x[mask.reshape(-1).bool()]).double()  # (N real tokens, D); no mask: an image


def _capture(encoder, adapter, calib, layer: int, roles: tuple[str, ...], stop_after: str | None, head_mask=None,
             neuron_mask=None) -> dict[str, torch.Tensor]:
    """Inputs ("<role>.in") and outputs ("<role>.out") of roles in block `layer`, real tokens only, (N, D) each."""
    block = blocks(encoder, adapter)[layer]
    got: dict[str, list] = {}

    def record(role: str):
        def hook(_m, args, out):
            got.setdefault(role + ".in", []).append(args[0].detach())
            got.setdefault(role + ".out", []).append(out.detach())
            if role == stop_after:
                raise _Stop
        return hook

    masks = contextlib.nullcontext() if head_mask is None else unit_masks(encoder, adapter, head_mask, neuron_mask)
    # while block `layer` is being tuned its own masks are still 0/1, so the kept units' inputs seen here are raw
    capture = hooks(post=[(block.get_submodule(getattr(adapter, r)), record(r)) for r in roles])
    with masks, capture, torch.inference_mode():
        for b in calib.batches:
            try:
                encoder(**b)
            except _Stop:
                pass
    masks_ = [b.get("attention_mask") for b in calib.batches]
    return {k: torch.cat([_tokens(x, mk) for x, mk in zip(v, masks_)]) for k, v in got.items()}


def _ridge_to_one(gram: torch.Tensor, rhs: torch.Tensor, damp: float = 1.0) -> torch.Tensor:
    """argmin_m ||A m - y||^2 + lam ||m - 1||^2 from A^T A and A^T y; lam relative to the mean diagonal."""
    lam = damp * gram.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(len(rhs), dtype=gram.dtype)
    return torch.linalg.solve(gram + lam * eye, rhs + lam)


@torch.no_grad()
def tune_masks(model, teacher, calib: Calibration, keep_heads, keep_neurons) -> tuple[torch.Tensor, torch.Tensor]:
    """Kwon et al.'s mask tuning: layer by layer, rescale the kept heads and neurons (least squares, ridge towards 1)
    so that the pruned layer's pre-LayerNorm sum (residual + block output) matches the original's, given the pruned
    model's own input to that layer. Returns the tuned masks (0 for pruned units)."""
    enc, adapter = model.encoder, model.adapter
    L = len(keep_heads)
    n_heads, n_neurons = heads_per_layer(enc, adapter), ffn_per_layer(enc, adapter)  # per layer
    hs = head_size(enc, adapter)
    head_mask, neuron_mask = torch.zeros(L, max(n_heads)), torch.zeros(L, max(n_neurons))
    for l in range(L):
        head_mask[l, keep_heads[l]] = 1.0
        neuron_mask[l, keep_neurons[l]] = 1.0
    for l in range(L):
        block = blocks(enc, adapter)[l]
        roles = ("q", "o", "ffn_in", "ffn_out") if has_attention(block, adapter) else ("ffn_in", "ffn_out")
        ref = _capture(teacher.encoder, adapter, calib, l, roles, "ffn_out")
        if "o" in roles and keep_heads[l]:
            # contribution of kept head h: ctx_h (N, hs) @ W_o[:, h cols].T -> (N, H)
            got = _capture(enc, adapter, calib, l, ("q", "o"), "o", head_mask, neuron_mask)
            w_o = block.get_submodule(adapter.o).weight.double()
            kept = keep_heads[l]
            contrib = torch.stack([got["o.in"][:, h * hs:(h + 1) * hs] @ w_o[:, h * hs:(h + 1) * hs].T for h in kept],
                                  -1)  # (N, H, K)
            bias = block.get_submodule(adapter.o).bias
            target = ref["q.in"] + ref["o.out"] - got["q.in"] - (bias.double() if bias is not None else 0)  # (N, H)
            gram = torch.einsum("nhk,nhj->kj", contrib, contrib)
            rhs = torch.einsum("nhk,nh->k", contrib, target)
            head_mask[l, kept] = _ridge_to_one(gram, rhs).float()
        if keep_neurons[l]:
            got = _capture(enc, adapter, calib, l, ("ffn_in", "ffn_out"), "ffn_out", head_mask, neuron_mask)
            kept = torch.tensor(keep_neurons[l])
            act = got["ffn_out.in"][:, kept]  # (N, K) activations of the kept neurons, before their mask
            w2 = block.get_submodule(adapter.ffn_out).weight.double()[:, kept]  # (H, K)
            bias = block.get_submodule(adapter.ffn_out).bias
            target = ref["ffn_in.in"] + ref["ffn_out.out"] - got["ffn_in.in"] - (
                bias.double() if bias is not None else 0)  # (N, H)
            gram = (act.T @ act) * (w2.T @ w2)  # (K, K): sum over tokens and hidden dims of c_k . c_j
            rhs = (act * (target @ w2)).sum(0)  # (K,)
            neuron_mask[l, kept] = _ridge_to_one(gram, rhs).float()
    return head_mask, neuron_mask


@torch.no_grad()
def fold_masks(encoder: nn.Module, adapter: Adapter, head_mask: torch.Tensor, neuron_mask: torch.Tensor) -> None:
    """Scale o's columns by their head's mask and ffn_out's columns by their neuron's mask (no run-time cost)."""
    hs = head_size(encoder, adapter)
    for l, block in enumerate(blocks(encoder, adapter)):
        if has_attention(block, adapter):
            o = block.get_submodule(adapter.o)
            o.weight.mul_(head_mask[l, : o.in_features // hs].repeat_interleave(hs))
        f = block.get_submodule(adapter.ffn_out)
        f.weight.mul_(neuron_mask[l, : f.in_features])

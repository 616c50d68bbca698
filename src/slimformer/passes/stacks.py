"""Models with several stacks of blocks (arch.STACKS: Whisper's encoder, decoder self-attention and decoder
cross-attention): unit importance of every stack from one gradient pass, one score table across stacks (so a
fraction of heads is kept where the output needs them, wherever that is), and the split back per stack.

A model with one stack goes through the same functions with a list of one, unchanged.
"""

from __future__ import annotations

import contextlib

import torch

from ..arch import Adapter, blocks, stacks
from .calib import Calibration, squared_gradients
from .structure import _record, ffn_per_layer, has_attention, heads_per_layer, unit_masks


def owns_ffn(adapters: tuple[Adapter, ...]) -> list[bool]:
    """Whether each stack's FFN is its own: Whisper's cross-attention stack shares its blocks (and their FFN) with
    the decoder's self-attention stack, so only the first stack of a block list narrows the FFN."""
    return [not any(b.layers == a.layers and b.ffn_in == a.ffn_in for b in adapters[:i])
            for i, a in enumerate(adapters)]


def stack_importance(model, calib: Calibration, seed: int = 0, progress=None, fisher: str = "states",
                     adapters: tuple[Adapter, ...] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(fisher_h (L, max heads), fisher_n (L, max neurons))] per stack (default: every stack of the model): the
    diagonal Fisher of each head and neuron mask w.r.t. the model's output, all masks in one gradient pass. Units a
    layer does not have, and the FFN of a stack that does not own it (owns_ffn), score -inf."""
    enc = model.encoder
    adapters = adapters or stacks(model.model_type)
    masks = []
    with contextlib.ExitStack() as hooked:
        for a in adapters:
            h, f = heads_per_layer(enc, a), ffn_per_layer(enc, a)
            head_mask = torch.ones(len(h), max(h), requires_grad=True)
            neuron_mask = torch.ones(len(f), max(f), requires_grad=True)
            hooked.enter_context(unit_masks(enc, a, head_mask, neuron_mask))
            masks += [head_mask, neuron_mask]
        grads = squared_gradients(model, calib, masks, seed, progress, fisher)
    out = []
    for a, own, fisher_h, fisher_n in zip(adapters, owns_ffn(adapters), grads[0::2], grads[1::2]):
        for l, (h, f) in enumerate(zip(heads_per_layer(enc, a), ffn_per_layer(enc, a))):
            fisher_h[l, h:] = float("-inf")
            fisher_n[l, f if own else 0 :] = float("-inf")
        out.append((fisher_h, fisher_n))
    return out


def joined(tables: list[torch.Tensor]) -> torch.Tensor:
    """Per-stack (L_s, U_s) score tables -> one (sum L_s, max U_s) table, missing units -inf."""
    width = max(t.shape[1] for t in tables)
    return torch.cat([torch.cat([t, torch.full((len(t), width - t.shape[1]), float("-inf"))], 1) for t in tables])


def split(keep: list[list[int]], tables: list[torch.Tensor]) -> list[list[list[int]]]:
    """Per-layer keep lists of a joined table -> one list of per-layer keep lists per stack."""
    out, at = [], 0
    for t in tables:
        out.append(keep[at : at + len(t)])
        at += len(t)
    return out


def at_least(model, adapter: Adapter, fisher_h: torch.Tensor, keep_heads: list[list[int]]) -> list[list[int]]:
    """A stack with min_heads (a decoder's self-attention: the KV cache its positions are read off needs every
    layer to attend) keeps that many heads in every layer that has attention: its best ones where pruning chose
    fewer."""
    if not adapter.min_heads:
        return keep_heads
    out = []
    for block, kept, scores in zip(blocks(model.encoder, adapter), keep_heads, fisher_h):
        if has_attention(block, adapter) and len(kept) < adapter.min_heads:
            best = [int(i) for i in scores.argsort(descending=True) if scores[i] > float("-inf")]
            kept = sorted(set(kept) | set(best[: adapter.min_heads - len(kept)]))
        out.append(kept)
    return out


def record_all(model, adapter: Adapter) -> None:
    """After `adapter`'s blocks changed (layers dropped): every stack on the same blocks records its widths anew."""
    for a in stacks(model.model_type):
        if a.layers == adapter.layers:
            _record(model.encoder, a)

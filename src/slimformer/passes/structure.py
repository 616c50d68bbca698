"""The structure layer of narrowed models: per-layer head and FFN widths, their FLOPs, unit masks, physical slicing
(through `surgery.keep`) and the record in the config (`cfg.slimformer_*`) that save -> load rebuilds it from.

The pruning pass (prune.py), mask tuning (masktune.py), io.py and the exporters build on this module; it builds on
nothing but arch and surgery.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch import nn

from ..arch import Adapter, blocks, config_of, head_size
from ..errors import BudgetError
from ..surgery import hooks, keep, set_module

REF_TOKENS = 128  # sequence length at which FLOPs are counted (the attention core grows with it)


# ------------------------------------------------------------------------------------------------- widths and FLOPs

def has_attention(block: nn.Module, adapter: Adapter) -> bool:
    """False where the attention module has no heads left to prune (NoAttention, FNet's FourierMixer): such modules
    say so with a class attribute `has_heads = False`, so this layer needs to know none of them."""
    return bool(getattr(block.get_submodule(adapter.attn), "has_heads", True))


def heads_per_layer(encoder: nn.Module, adapter: Adapter) -> list[int]:
    hs = head_size(encoder, adapter)
    return [b.get_submodule(adapter.o).in_features // hs if has_attention(b, adapter) else 0
            for b in blocks(encoder, adapter)]


def ffn_per_layer(encoder: nn.Module, adapter: Adapter) -> list[int]:
    return [b.get_submodule(adapter.ffn_in).out_features for b in blocks(encoder, adapter)]


def hidden_size(encoder: nn.Module, adapter: Adapter) -> int:
    return blocks(encoder, adapter)[0].get_submodule(adapter.ffn_in).in_features


def layer_flops(heads: int, neurons: int, hidden: int, hs: int, t: int = REF_TOKENS, ffn_mats: int = 2,
                ) -> tuple[float, float]:
    """Multiply-adds per sentence of t tokens: (attention, FFN). Per head: q, k, v, o projections (4 H hs t) and the
    attention core (2 t^2 hs); per neuron: in and out (2 H t; a gated FFN has ffn_mats=3: gate, up and down).
    Grouped-query attention shares k, v between heads, so this overstates a head's cost there."""
    return heads * (4 * hidden * hs * t + 2 * t * t * hs), neurons * ffn_mats * hidden * t


def flops_tokens(encoder: nn.Module, adapter: Adapter) -> int:
    """The sequence length FLOPs are counted at: the stack's fixed length where it has one (adapter.tokens_key:
    Whisper's encoder always sees 1,500 frames, where the attention core is most of a head's cost), else REF_TOKENS."""
    value = getattr(getattr(encoder, "config", None), adapter.tokens_key or "", None)
    return int(value) if value else REF_TOKENS


def encoder_flops(encoder: nn.Module, adapter: Adapter) -> float:
    hs, hidden = head_size(encoder, adapter), hidden_size(encoder, adapter)
    mats, t = 3 if adapter.ffn_gate else 2, flops_tokens(encoder, adapter)
    return sum(sum(layer_flops(h, f, hidden, hs, t, ffn_mats=mats)) for h, f in zip(heads_per_layer(encoder, adapter),
                                                                    ffn_per_layer(encoder, adapter)))


# ------------------------------------------------------------------------------------------------- masks

@contextlib.contextmanager
def unit_masks(encoder: nn.Module, adapter: Adapter, head_mask: torch.Tensor, neuron_mask: torch.Tensor):
    """Multiply each head's context (input of o) by head_mask[l, h] and each FFN neuron (input of ffn_out) by
    neuron_mask[l, n], through forward pre-hooks: head_mask (L, max heads), neuron_mask (L, max neurons); a layer
    narrower than the maximum uses the first columns."""
    hs = head_size(encoder, adapter)
    pre = []
    for l, block in enumerate(blocks(encoder, adapter)):
        def head_hook(_m, args, l=l):
            x = args[0]  # (B, T, h_l * hs)
            return (x * head_mask[l, : x.shape[-1] // hs].repeat_interleave(hs),) + args[1:]

        def neuron_hook(_m, args, l=l):
            x = args[0]  # (B, T, f_l)
            return (x * neuron_mask[l, : x.shape[-1]],) + args[1:]

        if has_attention(block, adapter):
            pre.append((block.get_submodule(adapter.o), head_hook))
        pre.append((block.get_submodule(adapter.ffn_out), neuron_hook))
    with hooks(pre=pre):
        yield


# ------------------------------------------------------------------------------------------------- slicing

class NoAttention(nn.Module):
    """What is left of an attention block whose every head was pruned: no compute; the residual path stays.

    Returns the architecture's (output, weights) tuple: the output projection's bias broadcast over the tokens when
    o lived inside this module, else an empty (..., 0) context for the outer o = Linear(0, H) to turn into its bias."""

    has_heads = False  # read by has_attention: nothing left to prune or mask here
    # what torch's TransformerEncoder(Layer) reads off its self_attn to pick a path; in_proj_bias=None: the plain one
    _qkv_same_embed_dim, in_proj_weight, in_proj_bias, num_heads = True, None, None, 0

    def __init__(self, hidden_size: int, width: int, batch_first: bool = True):
        super().__init__()
        self.hidden_size, self.width, self.batch_first = hidden_size, width, batch_first
        self.register_buffer("bias", torch.zeros(width))  # (width,): o's bias, or empty

    def spec(self) -> dict:
        return {"hidden_size": self.hidden_size, "width": self.width, "batch_first": self.batch_first}

    def forward(self, hidden_states, *args, **kwargs):
        del args, kwargs  # masks, position bias, cache: nothing attends any more
        return self.bias.expand(*hidden_states.shape[:-1], self.width), None


def _set_heads_attrs(attn: nn.Module, adapter: Adapter, n: int, hs: int) -> None:
    for a in adapter.heads_attrs:
        setattr(attn, a, n)
    for a in adapter.width_attrs:
        setattr(attn, a, n * hs)


def _set_kv_groups(block: nn.Module, adapter: Adapter, hs: int) -> None:
    """Grouped-query attention: query heads per key/value head, from the projections' widths (repeat_kv reads it)."""
    if adapter.kv_groups_attr and has_attention(block, adapter):
        n_kv = block.get_submodule(adapter.k).out_features // hs
        setattr(block.get_submodule(adapter.attn), adapter.kv_groups_attr,
                block.get_submodule(adapter.o).in_features // hs // n_kv)


def head_channels(heads: list[int], hs: int) -> torch.Tensor:
    """The channels of the listed heads in a projection laid out head by head: (len(heads) * hs,)."""
    return torch.tensor([h * hs + i for h in heads for i in range(hs)], dtype=torch.long)


def _kv_index(block: nn.Module, adapter: Adapter, kept: list[int], hs: int) -> torch.Tensor | None:
    """Grouped-query attention: the k/v rows of the key/value heads that keep a query head, (n_kv' * hs,); None
    without grouped-query attention. Query head h reads key/value head h // g (g query heads per group, contiguous,
    as repeat_kv lays them out), so every kept group must keep the same number of query heads."""
    if not adapter.kv_heads_key:
        return None
    n_kv = block.get_submodule(adapter.k).out_features // hs
    g = block.get_submodule(adapter.o).in_features // hs // n_kv
    per_group = [sum(1 for h in kept if h // g == j) for j in range(n_kv)]
    if len({n for n in per_group if n}) > 1:
        raise BudgetError(f"grouped-query attention: every kept key/value group needs the same number of query "
                          f"heads, got {per_group} per group")
    return head_channels([j for j in range(n_kv) if per_group[j]], hs)


def _select_position_bias(attn: nn.Module, idx: torch.Tensor) -> None:
    """Models with one shared (B, heads, T, T) position bias (MPNet): each layer takes the rows of its kept heads.
    The hook stays for the module's life (it is part of the narrowed structure), so it is not a `hooks` body."""
    attn.register_buffer("head_index", idx, persistent=False)
    # where the bias sits among the positional arguments: found by name, since transformers 4.x passes head_mask
    # before it (index 3) and 5.x does not (index 2)
    at = list(inspect.signature(attn.forward).parameters).index("position_bias")

    def hook(mod, args, kwargs):
        if kwargs.get("position_bias") is not None:
            kwargs["position_bias"] = kwargs["position_bias"].index_select(1, mod.head_index)
        elif len(args) > at and args[at] is not None:
            args = (*args[:at], args[at].index_select(1, mod.head_index), *args[at + 1 :])
        return args, kwargs

    attn.register_forward_pre_hook(hook, with_kwargs=True)


@torch.no_grad()
def slice_heads(encoder: nn.Module, adapter: Adapter, keep_heads: list[list[int]]) -> None:
    """Keep the listed heads of each layer: q/k/v rows and o columns of those heads; 0 heads -> NoAttention."""
    hs = head_size(encoder, adapter)
    for block, kept in zip(blocks(encoder, adapter), keep_heads):
        attn = block.get_submodule(adapter.attn)
        if not has_attention(block, adapter):
            continue
        idx = head_channels(kept, hs)  # (len(kept) * hs,)
        o = block.get_submodule(adapter.o)
        hidden = o.out_features
        if not kept:
            bias = o.bias if adapter.o_in_attn and o.bias is not None else None
            new = NoAttention(hidden, hidden if adapter.o_in_attn else 0, getattr(attn, "batch_first", True))
            if bias is not None:
                new.bias.copy_(bias)
            set_module(block, adapter.attn, new)
            if not adapter.o_in_attn:
                set_module(block, adapter.o, keep(o, idx, dim=1))  # Linear(0, H): its output is its bias
            continue
        kv_idx = _kv_index(block, adapter, kept, hs)  # (n_kv' * hs,) or None: k/v rows follow the query heads
        for role in ("q", "k", "v"):
            rows = idx if role == "q" or kv_idx is None else kv_idx
            set_module(block, getattr(adapter, role), keep(block.get_submodule(getattr(adapter, role)), rows, dim=0))
        set_module(block, adapter.o, keep(o, idx, dim=1))
        _set_heads_attrs(attn, adapter, len(kept), hs)
        _set_kv_groups(block, adapter, hs)
        if adapter.shared_head_bias:
            prev = getattr(attn, "head_index", None)
            chosen = torch.tensor(kept, dtype=torch.long)
            if prev is None:
                _select_position_bias(attn, chosen)
            else:
                attn.head_index = prev[chosen]
    _record(encoder, adapter)


@torch.no_grad()
def slice_ffn(encoder: nn.Module, adapter: Adapter, keep_neurons: list[list[int]]) -> None:
    for block, kept in zip(blocks(encoder, adapter), keep_neurons):
        idx = torch.tensor(kept, dtype=torch.long)
        set_module(block, adapter.ffn_in, keep(block.get_submodule(adapter.ffn_in), idx, dim=0))
        if adapter.ffn_gate:  # a gated FFN: neuron n is act(gate_n . x) * (up_n . x), both rows go together
            set_module(block, adapter.ffn_gate, keep(block.get_submodule(adapter.ffn_gate), idx, dim=0))
        set_module(block, adapter.ffn_out, keep(block.get_submodule(adapter.ffn_out), idx, dim=1))
    _record(encoder, adapter)


def drop_layers(encoder: nn.Module, adapter: Adapter, keep_layers: list[int]) -> None:
    layers = encoder.get_submodule(adapter.layers)
    set_module(encoder, adapter.layers, nn.ModuleList([layers[i] for i in sorted(keep_layers)]))
    if hasattr(encoder, "num_layers"):  # torch nn.TransformerEncoder
        encoder.num_layers = len(keep_layers)
    cfg = config_of(encoder)
    if isinstance(getattr(cfg, "layer_types", None), list):  # a decoder's per-layer attention kind (sliding/full)
        cfg.layer_types = [cfg.layer_types[i] for i in sorted(keep_layers)]
    for i, block in enumerate(blocks(encoder, adapter)):  # a decoder's KV cache is indexed by layer position
        for m in (block, *block.children()):
            if hasattr(m, "layer_idx"):
                m.layer_idx = i
    _record(encoder, adapter)


# ------------------------------------------------------------------------------------------------- the record

def _record(encoder: nn.Module, adapter: Adapter) -> None:
    """Update the config in the same place as the surgery, so save -> load rebuilds this exact structure."""
    cfg = config_of(encoder)
    if cfg is None:
        return
    setattr(cfg, adapter.layers_key, len(blocks(encoder, adapter)))
    setattr(cfg, f"{adapter.record}_heads", heads_per_layer(encoder, adapter))  # slimformer_heads unless a stack of
    setattr(cfg, f"{adapter.record}_ffn", ffn_per_layer(encoder, adapter))  # several (arch.STACKS) names its own
    if adapter.shared_head_bias:
        cfg.slimformer_head_index = [
            b.get_submodule(adapter.attn).head_index.tolist() if hasattr(b.get_submodule(adapter.attn), "head_index")
            else None for b in blocks(encoder, adapter)]


def restore_structure(encoder: nn.Module, adapter: Adapter) -> None:
    """At load, after the manifest's modules are in place: per-layer head counts and position-bias selections."""
    cfg = config_of(encoder)
    heads = getattr(cfg, f"{adapter.record}_heads", None)
    if not heads:
        return
    hs = head_size(encoder, adapter)
    for block, n, index in zip(blocks(encoder, adapter), heads,
                               getattr(cfg, "slimformer_head_index", None) or [None] * len(heads)):
        attn = block.get_submodule(adapter.attn)
        if not has_attention(block, adapter):
            continue
        _set_heads_attrs(attn, adapter, n, hs)
        _set_kv_groups(block, adapter, hs)
        if index is not None:
            _select_position_bias(attn, torch.tensor(index, dtype=torch.long))

"""Narrowing without retraining: drop attention heads, FFN neurons and whole layers by measured importance.

After Michel et al. 2019 ("Are Sixteen Heads Really Better than One?") and Kwon et al. 2022 ("A Fast Post-Training
Pruning Framework for Transformers"): a mask variable multiplies each head's context and each FFN neuron; the
importance of a unit is the diagonal Fisher information of its mask, from gradients on unlabeled calibration text.
Label-free: the Fisher of the pooled sentence embedding under a Gaussian model, estimated with random projections
(E_r[(d r.f / dm)^2] = sum_d (df_d / dm)^2). Units are chosen greedily by importance per FLOP; the kept units are then
rescaled layer by layer by least squares against the original's hidden states (Kwon's mask tuning), and finally
sliced out physically through `surgery.keep`, so the model really shrinks.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..arch import Adapter, blocks, config_of, head_size
from ..errors import BudgetError
from ..surgery import keep, set_module
from .calib import Calibration, embedding_distance, pooled, squared_gradients
from ..configs import Ffn, Heads, Layers, Prune

REF_TOKENS = 128  # sequence length at which FLOPs are counted (the attention core grows with it)


# ------------------------------------------------------------------------------------------------- structure

def heads_per_layer(encoder: nn.Module, adapter: Adapter) -> list[int]:
    hs = head_size(encoder, adapter)
    return [b.get_submodule(adapter.o).in_features // hs if _has_attention(b, adapter) else 0
            for b in blocks(encoder, adapter)]


def ffn_per_layer(encoder: nn.Module, adapter: Adapter) -> list[int]:
    return [b.get_submodule(adapter.ffn_in).out_features for b in blocks(encoder, adapter)]


def hidden_size(encoder: nn.Module, adapter: Adapter) -> int:
    return blocks(encoder, adapter)[0].get_submodule(adapter.ffn_in).in_features


def layer_flops(heads: int, neurons: int, hidden: int, hs: int, t: int = REF_TOKENS) -> tuple[float, float]:
    """Multiply-adds per sentence of t tokens: (attention, FFN). Per head: q, k, v, o projections (4 H hs t) and the
    attention core (2 t^2 hs); per neuron: in and out (2 H t)."""
    return heads * (4 * hidden * hs * t + 2 * t * t * hs), neurons * 2 * hidden * t


def encoder_flops(encoder: nn.Module, adapter: Adapter) -> float:
    hs, hidden = head_size(encoder, adapter), hidden_size(encoder, adapter)
    return sum(sum(layer_flops(h, f, hidden, hs)) for h, f in zip(heads_per_layer(encoder, adapter),
                                                                 ffn_per_layer(encoder, adapter)))


# ------------------------------------------------------------------------------------------------- masks

def _has_attention(block: nn.Module, adapter: Adapter) -> bool:
    from .fnet import FourierMixer  # a mixing layer has no heads to prune

    return not isinstance(block.get_submodule(adapter.attn), (NoAttention, FourierMixer))


@contextlib.contextmanager
def unit_masks(encoder: nn.Module, adapter: Adapter, head_mask: torch.Tensor, neuron_mask: torch.Tensor):
    """Multiply each head's context (input of o) by head_mask[l, h] and each FFN neuron (input of ffn_out) by
    neuron_mask[l, n], through forward pre-hooks: head_mask (L, max heads), neuron_mask (L, max neurons); a layer
    narrower than the maximum uses the first columns."""
    hs = head_size(encoder, adapter)
    handles = []
    for l, block in enumerate(blocks(encoder, adapter)):
        def head_hook(_m, args, l=l):
            x = args[0]  # (B, T, h_l * hs)
            return (x * head_mask[l, : x.shape[-1] // hs].repeat_interleave(hs),) + args[1:]

        def neuron_hook(_m, args, l=l):
            x = args[0]  # (B, T, f_l)
            return (x * neuron_mask[l, : x.shape[-1]],) + args[1:]

        if _has_attention(block, adapter):
            handles.append(block.get_submodule(adapter.o).register_forward_pre_hook(head_hook))
        handles.append(block.get_submodule(adapter.ffn_out).register_forward_pre_hook(neuron_hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def importance(model, calib: Calibration, seed: int = 0, progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonal Fisher of head and neuron masks w.r.t. the pooled embedding: (L, max heads) and (L, max neurons).
    Units a layer does not have score -inf."""
    encoder, adapter = model.encoder, model.adapter
    heads, ffn = heads_per_layer(encoder, adapter), ffn_per_layer(encoder, adapter)
    head_mask = torch.ones(len(heads), max(heads), requires_grad=True)
    neuron_mask = torch.ones(len(ffn), max(ffn), requires_grad=True)
    with unit_masks(encoder, adapter, head_mask, neuron_mask):
        fisher_h, fisher_n = squared_gradients(model, calib, [head_mask, neuron_mask], seed, progress)
    for l, (h, f) in enumerate(zip(heads, ffn)):
        fisher_h[l, h:] = float("-inf")
        fisher_n[l, f:] = float("-inf")
    return fisher_h, fisher_n


# ------------------------------------------------------------------------------------------------- choosing

def _count(keep_: float | int, total: int, what: str) -> int:
    if isinstance(keep_, float):
        return max(1, round(keep_ * total))
    if keep_ > total:
        raise BudgetError(f"cannot keep {keep_} {what}: the model has {total}")
    return keep_


def top_units(scores: torch.Tensor, n_keep: int) -> list[list[int]]:
    """Keep the n_keep highest-scoring units of an (L, U) score table, as per-layer index lists."""
    flat = scores.flatten().argsort(descending=True)[:n_keep]
    per = [[] for _ in range(scores.shape[0])]
    for i in flat.tolist():
        per[i // scores.shape[1]].append(i % scores.shape[1])
    return [sorted(p) for p in per]


def choose_by_flops(fisher_h, fisher_n, flops: float, hidden: int, hs: int) -> tuple[list[list[int]], list[list[int]]]:
    """Greedy knapsack: drop the units of least importance per FLOP until the encoder's FLOPs <= flops x original.
    Head and neuron Fisher values are both ~2x the loss increase of removing the unit, so they compare directly."""
    L, H = fisher_h.shape
    F = fisher_n.shape[1]
    cost_h, cost_n = layer_flops(1, 1, hidden, hs)
    score = torch.cat([(fisher_h / cost_h).flatten(), (fisher_n / cost_n).flatten()])
    cost = torch.cat([torch.full((L * H,), cost_h), torch.full((L * F,), cost_n)])
    cost[score == float("-inf")] = 0.0  # units a narrowed layer no longer has: dropped first, at no gain
    total = float(cost.sum())
    order = score.argsort()  # least valuable first
    over = total - flops * total
    dropped = order[: int((cost[order].cumsum(0) < over).sum()) + 1] if over > 0 else order[:0]
    keep_mask = torch.ones(len(score), dtype=torch.bool)
    keep_mask[dropped] = False
    kh, kn = keep_mask[: L * H].view(L, H), keep_mask[L * H :].view(L, F)
    return ([torch.nonzero(r).flatten().tolist() for r in kh], [torch.nonzero(r).flatten().tolist() for r in kn])


# ------------------------------------------------------------------------------------------------- slicing

class NoAttention(nn.Module):
    """What is left of an attention block whose every head was pruned: no compute; the residual path stays.

    Returns the architecture's (output, weights) tuple: the output projection's bias broadcast over the tokens when
    o lived inside this module, else an empty (..., 0) context for the outer o = Linear(0, H) to turn into its bias."""

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


def _select_position_bias(attn: nn.Module, idx: torch.Tensor) -> None:
    """Models with one shared (B, heads, T, T) position bias (MPNet): each layer takes the rows of its kept heads."""
    attn.register_buffer("head_index", idx, persistent=False)

    def hook(mod, args):
        if len(args) > 2 and args[2] is not None:
            args = (*args[:2], args[2].index_select(1, mod.head_index), *args[3:])
        return args

    attn.register_forward_pre_hook(hook)


@torch.no_grad()
def slice_heads(encoder: nn.Module, adapter: Adapter, keep_heads: list[list[int]]) -> None:
    """Keep the listed heads of each layer: q/k/v rows and o columns of those heads; 0 heads -> NoAttention."""
    hs = head_size(encoder, adapter)
    for block, kept in zip(blocks(encoder, adapter), keep_heads):
        attn = block.get_submodule(adapter.attn)
        if not _has_attention(block, adapter):
            continue
        idx = torch.tensor([h * hs + i for h in kept for i in range(hs)], dtype=torch.long)  # (len(kept) * hs,)
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
        for role in ("q", "k", "v"):
            set_module(block, getattr(adapter, role), keep(block.get_submodule(getattr(adapter, role)), idx, dim=0))
        set_module(block, adapter.o, keep(o, idx, dim=1))
        _set_heads_attrs(attn, adapter, len(kept), hs)
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
        set_module(block, adapter.ffn_out, keep(block.get_submodule(adapter.ffn_out), idx, dim=1))
    _record(encoder, adapter)


def drop_layers(encoder: nn.Module, adapter: Adapter, keep_layers: list[int]) -> None:
    layers = encoder.get_submodule(adapter.layers)
    set_module(encoder, adapter.layers, nn.ModuleList([layers[i] for i in sorted(keep_layers)]))
    if hasattr(encoder, "num_layers"):  # torch nn.TransformerEncoder
        encoder.num_layers = len(keep_layers)
    _record(encoder, adapter)


def _record(encoder: nn.Module, adapter: Adapter) -> None:
    """Update the config in the same place as the surgery, so save -> load rebuilds this exact structure."""
    cfg = config_of(encoder)
    if cfg is None:
        return
    setattr(cfg, adapter.layers_key, len(blocks(encoder, adapter)))
    cfg.slimformer_heads = heads_per_layer(encoder, adapter)
    cfg.slimformer_ffn = ffn_per_layer(encoder, adapter)
    if adapter.shared_head_bias:
        cfg.slimformer_head_index = [
            b.get_submodule(adapter.attn).head_index.tolist() if hasattr(b.get_submodule(adapter.attn), "head_index")
            else None for b in blocks(encoder, adapter)]


def restore_structure(encoder: nn.Module, adapter: Adapter) -> None:
    """At load, after the manifest's modules are in place: per-layer head counts and position-bias selections."""
    cfg = config_of(encoder)
    heads = getattr(cfg, "slimformer_heads", None)
    if not heads:
        return
    hs = getattr(cfg, adapter.hidden_key) // getattr(cfg, adapter.heads_key)
    for block, n, index in zip(blocks(encoder, adapter), heads,
                               getattr(cfg, "slimformer_head_index", None) or [None] * len(heads)):
        attn = block.get_submodule(adapter.attn)
        if not _has_attention(block, adapter):
            continue
        _set_heads_attrs(attn, adapter, n, hs)
        if index is not None:
            _select_position_bias(attn, torch.tensor(index, dtype=torch.long))


# ------------------------------------------------------------------------------------------------- layers

@torch.no_grad()
def choose_layers(model, calib: Calibration, n_keep: int) -> list[int]:
    """Greedy: repeatedly drop the layer whose removal moves the pooled embeddings least (cosine distance)."""
    enc, adapter = model.encoder, model.adapter
    layers = enc.get_submodule(adapter.layers)
    ref = [pooled(model, b) for b in calib.batches]
    kept = list(range(len(layers)))

    def distance(candidate: list[int]) -> float:
        set_module(enc, adapter.layers, nn.ModuleList([layers[i] for i in candidate]))
        try:
            return embedding_distance(model, calib, ref)
        finally:
            set_module(enc, adapter.layers, layers)

    while len(kept) > n_keep:
        kept.remove(min(kept, key=lambda i: distance([j for j in kept if j != i])))
    return kept


# ------------------------------------------------------------------------------------------------- passes

# weight of head importance relative to neuron importance tried by prune(flops=F): the diagonal Fisher of a head
# mask misses the interactions inside the head, and the right exchange rate differs by model, so it is measured
HEAD_WEIGHTS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0)


def narrow(model, teacher, calib: Calibration, keep_heads, keep_neurons, tune: bool = True) -> dict:
    """Mask-tune (optionally), then slice. Returns the decisions for the manifest."""
    enc, adapter = model.encoder, model.adapter
    before = encoder_flops(enc, adapter)
    if tune:
        from .masktune import fold_masks, tune_masks  # it builds on this module's masks and structure helpers

        head_mask, neuron_mask = tune_masks(model, teacher, calib, keep_heads, keep_neurons)
        fold_masks(enc, adapter, head_mask, neuron_mask)
    slice_heads(enc, adapter, keep_heads)
    slice_ffn(enc, adapter, keep_neurons)
    return {"heads_per_layer": heads_per_layer(enc, adapter), "ffn_per_layer": ffn_per_layer(enc, adapter),
            "kept_heads": keep_heads, "flops_fraction": round(encoder_flops(enc, adapter) / before, 4),
            "mask_tuning": tune}


@torch.no_grad()
def pair_similarities(model, calib: Calibration) -> torch.Tensor:
    """Cosine similarity of every pair of calibration sentences' pooled embeddings: (N (N - 1) / 2,)."""
    e = torch.cat([torch.nn.functional.normalize(pooled(model, b), dim=-1) for b in calib.batches])
    iu = torch.triu_indices(len(e), len(e), 1)
    return (e @ e.T)[iu[0], iu[1]]


def similarity_fidelity(model, calib: Calibration, reference: torch.Tensor) -> float:
    """Label-free quality: Spearman correlation of the model's pairwise sentence similarities with the original's
    on held-out calibration text -- what an STS benchmark asks of an embedder, without its labels."""
    from scipy.stats import spearmanr

    return float(spearmanr(pair_similarities(model, calib).numpy(), reference.numpy()).statistic)


def _keep_lists(scores: torch.Tensor, keep_: float | int, what: str) -> list[list[int]]:
    """A fraction keeps that share of all units, placed by importance across layers; a count keeps that many in
    every layer."""
    if isinstance(keep_, float):
        return top_units(scores, max(1, round(keep_ * int((scores > float("-inf")).sum()))))
    present = (scores > float("-inf")).sum(1)
    if keep_ > int(present.min()):
        raise BudgetError(f"cannot keep {keep_} {what} per layer: a layer has {int(present.min())}")
    return [sorted(row.argsort(descending=True)[:keep_].tolist()) for row in scores]


def heads(model, cfg: Heads, ctx) -> dict:
    fit, _ = ctx.calib.split()
    fisher_h, _ = importance(model, fit)
    keep_neurons = [list(range(f)) for f in ffn_per_layer(model.encoder, model.adapter)]
    return narrow(model, ctx.teacher, fit, _keep_lists(fisher_h, cfg.keep, "heads"), keep_neurons, cfg.tune)


def ffn(model, cfg: Ffn, ctx) -> dict:
    fit, _ = ctx.calib.split()
    _, fisher_n = importance(model, fit)
    keep_heads = [list(range(h)) for h in heads_per_layer(model.encoder, model.adapter)]
    return narrow(model, ctx.teacher, fit, keep_heads, _keep_lists(fisher_n, cfg.keep, "FFN neurons"), cfg.tune)


def prune(model, cfg: Prune, ctx) -> dict:
    """Heads and neurons jointly under a FLOPs budget; the head/neuron exchange rate is chosen on held-out text."""
    enc, adapter = model.encoder, model.adapter
    fit, held = ctx.calib.split()
    fisher_h, fisher_n = importance(model, fit)
    hidden, hs = hidden_size(enc, adapter), head_size(enc, adapter)
    reference = pair_similarities(ctx.teacher, held)

    def trial(weight: float) -> float:
        kh, kn = choose_by_flops(fisher_h * weight, fisher_n, cfg.flops, hidden, hs)
        candidate = model.clone()
        slice_heads(candidate.encoder, adapter, kh)
        slice_ffn(candidate.encoder, adapter, kn)
        return similarity_fidelity(candidate, held, reference)

    fidelity = {w: trial(w) for w in HEAD_WEIGHTS}
    weight = max(fidelity, key=fidelity.get)
    keep_heads, keep_neurons = choose_by_flops(fisher_h * weight, fisher_n, cfg.flops, hidden, hs)
    decisions = narrow(model, ctx.teacher, fit, keep_heads, keep_neurons, cfg.tune)
    return {**decisions, "head_weight": weight, "fidelity": {str(w): round(f, 4) for w, f in fidelity.items()}}


def layers(model, cfg: Layers, ctx) -> dict:
    enc, adapter = model.encoder, model.adapter
    n = _count(cfg.keep, len(blocks(enc, adapter)), "layers")
    kept = choose_layers(model, ctx.calib.split()[1], n)
    drop_layers(enc, adapter, kept)
    return {"kept_layers": kept}

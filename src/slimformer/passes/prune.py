"""Narrowing without retraining: drop attention heads, FFN neurons and whole layers by measured importance.

After Michel et al. 2019 ("Are Sixteen Heads Really Better than One?") and Kwon et al. 2022 ("A Fast Post-Training
Pruning Framework for Transformers"): a mask variable multiplies each head's context and each FFN neuron; the
importance of a unit is the diagonal Fisher information of its mask, from gradients on unlabeled calibration text.
Label-free: for an embedder, the Fisher of every block's token states (`fisher=pooled`: of the pooled sentence
embedding only) under a Gaussian model, estimated with random projections
(E_r[(d r.f / dm)^2] = sum_d (df_d / dm)^2); for a classifier, the Fisher of its output distribution, the expected
one over the classes it predicts itself (calib._projected_output says how and why), and its layer and head/neuron
trade-off choices are measured on its class distributions too. Units are chosen greedily by importance per FLOP;
with `tune=true` the kept units are then rescaled layer by layer by least squares against the original's hidden
states (Kwon's mask tuning, masktune.py; off by default); finally they are sliced out physically (structure.py), so
the model really shrinks.
"""

from __future__ import annotations

import torch
from torch import nn

from ..arch import LAYER_STACK, blocks, head_size, stacks
from ..configs import HEAD_WEIGHTS, Ffn, Heads, Layers, Prune
from ..errors import BudgetError
from ..surgery import set_module
from .calib import Calibration, fit_text, has_head, output_distance, pooled, rows, sentence_output
from .compensate import REGRESSION_SENTENCES, compensate, input_moments
from .masktune import fold_masks, tune_masks
from .stacks import at_least, joined, owns_ffn, record_all, split, stack_importance
from .structure import (REF_TOKENS, drop_layers, encoder_flops, ffn_per_layer, flops_tokens, has_attention,
                        heads_per_layer, hidden_size, layer_flops, slice_ffn, slice_heads)


# ------------------------------------------------------------------------------------------------- importance

# sentences importance reads where the calibration text has them (calib.fit_text: the sample's fit half, 256, then
# the text after the sample): one backward each, ~15 s more on MiniLM. all-MiniLM-L6-v2 `prune(flops=0.8)+int8`,
# other-text fidelity 93.74 / 94.34 / 94.19 at 256 / 1,024 / 2,048; transfer gap -0.51 -> -0.43 at 1,024, every
# out-of-distribution cell closer to the original or above it (README, "Importance and compensation read more text")
IMPORTANCE_SENTENCES = 1024


def importance(model, calib: Calibration, seed: int = 0, progress=None, fisher: str = "states",
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonal Fisher of head and neuron masks w.r.t. the model's output (an embedder's every block's token states
    or its pooled embedding, as `fisher` says; a classifier's class distribution): (L, max heads) and
    (L, max neurons). Units a layer does not have score -inf."""
    return stack_importance(model, calib, seed, progress, fisher, (model.adapter,))[0]


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


def choose_by_flops(fisher_h, fisher_n, flops: float, hidden: int, hs: int, ffn_mats: int = 2, t: int = REF_TOKENS,
                    ) -> tuple[list[list[int]], list[list[int]]]:
    """Greedy knapsack: drop the units of least importance per FLOP until the encoder's FLOPs <= flops x original.
    Head and neuron Fisher values are both ~2x the loss increase of removing the unit, so they compare directly."""
    L, H = fisher_h.shape
    F = fisher_n.shape[1]
    cost_h, cost_n = layer_flops(1, 1, hidden, hs, t, ffn_mats=ffn_mats)  # per head, per neuron at t tokens
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


# ------------------------------------------------------------------------------------------------- layers

@torch.no_grad()
def choose_layers(model, calib: Calibration, n_keep: int, adapter=None) -> list[int]:
    """Greedy: repeatedly drop the layer (of `adapter`'s stack; default the model's) whose removal moves the
    model's output least (calib.output_distance: cosine of pooled embeddings, or KL of a classifier's class
    distributions, or of next-token distributions)."""
    enc, adapter = model.encoder, adapter or model.adapter
    stack = enc.get_submodule(adapter.layers)  # the full ModuleList, put back after each trial
    ref = [sentence_output(model, b) for b in calib.batches]
    kept = list(range(len(stack)))

    def distance(candidate: list[int]) -> float:
        set_module(enc, adapter.layers, nn.ModuleList([stack[i] for i in candidate]))
        try:
            return output_distance(model, calib, ref)
        finally:
            set_module(enc, adapter.layers, stack)

    while len(kept) > n_keep:
        kept.remove(min(kept, key=lambda i: distance([j for j in kept if j != i])))
    return kept


# ------------------------------------------------------------------------------------------------- passes

def even_groups(encoder: nn.Module, adapter, fisher_h: torch.Tensor, keep_heads: list[list[int]]
                ) -> list[list[int]]:
    """Grouped-query attention (the decoders here): repeat_kv needs the same number of query heads on every
    key/value head, so a layer that keeps k of its heads keeps round(k / n_kv) (at least 1) in every group, the most
    important of each (with one key/value head, as Gemma 3 270M has, that is any k >= 1). No layer loses its last
    head: generate() reads the KV cache's length and mask sizes off its layers, and a layer without attention fills
    no cache slot (drop whole layers with `layers` instead). Other models: unchanged."""
    if not adapter.kv_heads_key:
        return keep_heads
    hs, out = head_size(encoder, adapter), []
    for block, kept, scores in zip(blocks(encoder, adapter), keep_heads, fisher_h):
        if not has_attention(block, adapter):
            out.append(kept)
            continue
        n_kv = block.get_submodule(adapter.k).out_features // hs
        g = block.get_submodule(adapter.o).in_features // hs // n_kv
        per = max(1, round(len(kept) / n_kv))
        out.append(sorted(j * g + int(i) for j in range(n_kv)
                          for i in scores[j * g : (j + 1) * g].argsort(descending=True)[:per]))
    return out


def narrow(model, teacher, calib: Calibration, keep_heads, keep_neurons, tune: bool, adapter=None,
           moments: dict | None = None) -> dict:
    """Fold the dropped units into the kept ones (where `moments`, compensate.input_moments of this model, are
    given), mask-tune (if `tune`: every config's default is off), then slice `adapter`'s stack (default:
    the model's one). Returns the decisions for the manifest."""
    enc, adapter = model.encoder, adapter or model.adapter
    before = encoder_flops(enc, adapter)
    if moments is not None:
        compensate(model, adapter, moments, keep_heads, keep_neurons)
    if tune:
        head_mask, neuron_mask = tune_masks(model, teacher, calib, keep_heads, keep_neurons)
        fold_masks(enc, adapter, head_mask, neuron_mask)
    slice_heads(enc, adapter, keep_heads)
    slice_ffn(enc, adapter, keep_neurons)
    return {"heads_per_layer": heads_per_layer(enc, adapter), "ffn_per_layer": ffn_per_layer(enc, adapter),
            "kept_heads": keep_heads, "flops_fraction": round(encoder_flops(enc, adapter) / before, 4),
            "mask_tuning": tune, "compensated": moments is not None}


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


def fidelity_of(teacher, held: Calibration):
    """candidate -> its label-free quality on held-out text, higher is better: similarity_fidelity for an embedder;
    for a classifier minus the mean KL divergence of its class distributions from the teacher's."""
    if not has_head(teacher):
        reference = pair_similarities(teacher, held)
        return lambda candidate: similarity_fidelity(candidate, held, reference)
    with torch.no_grad():
        ref = [sentence_output(teacher, b) for b in held.batches]
    per_token = teacher.head in ("token-classification", "causal-lm", "speech-seq2seq")
    n = sum(int((b["attention_mask"] if "attention_mask" in b else b["decoder_input_ids"]).bool().sum())
            if per_token else rows(b) for b in held.batches)  # sentences, or real tokens
    return lambda candidate: -output_distance(candidate, held, ref) / n


def _keep_lists(scores: torch.Tensor, keep_: float | int, what: str) -> list[list[int]]:
    """A fraction keeps that share of all units, placed by importance across layers; a count keeps that many in
    every layer."""
    if isinstance(keep_, float):
        return top_units(scores, max(1, round(keep_ * int((scores > float("-inf")).sum()))))
    present = (scores > float("-inf")).sum(1)
    if keep_ > int(present.min()):
        raise BudgetError(f"cannot keep {keep_} {what} per layer: a layer has {int(present.min())}")
    return [sorted(row.argsort(descending=True)[:keep_].tolist()) for row in scores]


def _per_stack(model, ctx, cfg, decide) -> dict:
    """Run `decide(adapter, keep) -> (keep_heads, keep_neurons)` for every stack (arch.STACKS) and narrow each.
    One stack: its decisions; several: {stack name: decisions}."""
    fit, _ = ctx.calib.split()
    text = fit_text(model, ctx, REGRESSION_SENTENCES) if cfg.compensate else None
    adapters = stacks(model.model_type)
    # decided (and their input moments measured) stack by stack, after the ones before were sliced: stacks on the
    # same blocks see the widths as they are
    out = {a.name: narrow(model, ctx.teacher, fit, *decide(a, i), cfg.tune, a,
                          input_moments(model, a, text) if cfg.compensate else None)
           for i, a in enumerate(adapters)}
    return next(iter(out.values())) if len(out) == 1 else out


def heads(model, cfg: Heads, ctx) -> dict:
    """Heads kept by importance; across every stack of the model (a fraction: ranked over all of them at once)."""
    fisher_h = [t[0] for t in stack_importance(model, fit_text(model, ctx, IMPORTANCE_SENTENCES), fisher=cfg.fisher)]
    kept = split(_keep_lists(joined(fisher_h), cfg.keep, "heads"), fisher_h)
    enc = model.encoder
    return _per_stack(model, ctx, cfg, lambda a, i: (
        at_least(model, a, fisher_h[i], even_groups(enc, a, fisher_h[i], kept[i])),
        [list(range(f)) for f in ffn_per_layer(enc, a)]))


def ffn(model, cfg: Ffn, ctx) -> dict:
    """FFN neurons kept by importance, in every stack that owns its FFN (stacks.owns_ffn)."""
    enc, adapters = model.encoder, stacks(model.model_type)
    own = owns_ffn(adapters)
    tables = stack_importance(model, fit_text(model, ctx, IMPORTANCE_SENTENCES), fisher=cfg.fisher)
    fisher_n = [t[1] for t, o in zip(tables, own) if o]
    kept = iter(split(_keep_lists(joined(fisher_n), cfg.keep, "FFN neurons"), fisher_n))
    return _per_stack(model, ctx, cfg, lambda a, i: (
        [list(range(h)) for h in heads_per_layer(enc, a)],
        next(kept) if own[i] else [list(range(f)) for f in ffn_per_layer(enc, a)]))


def prune(model, cfg: Prune, ctx) -> dict:
    """Heads and neurons jointly under a FLOPs budget; the head/neuron exchange rate is cfg.head_weight, or, when
    not given, the one of HEAD_WEIGHTS (configs.py) whose narrowed model scores best on held-out text."""
    enc, adapter = model.encoder, model.adapter
    fit, held = ctx.calib.split()
    fisher_h, fisher_n = importance(model, fit_text(model, ctx, IMPORTANCE_SENTENCES), fisher=cfg.fisher)
    hidden, hs = hidden_size(enc, adapter), head_size(enc, adapter)

    def choose(weight: float) -> tuple[list[list[int]], list[list[int]]]:
        kh, kn = choose_by_flops(fisher_h * weight, fisher_n, cfg.flops, hidden, hs, 3 if adapter.ffn_gate else 2,
                                 flops_tokens(enc, adapter))
        return even_groups(enc, adapter, fisher_h, kh), kn

    moments = input_moments(model, adapter, fit_text(model, ctx, REGRESSION_SENTENCES)) if cfg.compensate else None
    if cfg.head_weight is not None:  # given (the search samples it): nothing to measure
        keep_heads, keep_neurons = choose(cfg.head_weight)
        return {**narrow(model, ctx.teacher, fit, keep_heads, keep_neurons, cfg.tune, moments=moments),
                "head_weight": cfg.head_weight}
    score = fidelity_of(ctx.teacher, held)

    def trial(weight: float) -> float:
        candidate = model.clone()  # each exchange rate is scored as it will be made (compensated, untuned)
        narrow(candidate, ctx.teacher, fit, *choose(weight), tune=False, moments=moments)
        return score(candidate)

    fidelity = {w: trial(w) for w in HEAD_WEIGHTS}
    weight = max(fidelity, key=fidelity.get)
    keep_heads, keep_neurons = choose(weight)
    decisions = narrow(model, ctx.teacher, fit, keep_heads, keep_neurons, cfg.tune, moments=moments)
    return {**decisions, "head_weight": weight, "fidelity": {str(w): round(f, 4) for w, f in fidelity.items()}}


def layers(model, cfg: Layers, ctx) -> dict:
    """Drop whole layers; of an encoder-decoder, the decoder's (arch.LAYER_STACK: they run once per token)."""
    enc, adapter = model.encoder, LAYER_STACK.get(model.model_type, model.adapter)
    n = _count(cfg.keep, len(blocks(enc, adapter)), "layers")
    kept = choose_layers(model, ctx.calib.split()[1], n, adapter)
    drop_layers(enc, adapter, kept)
    record_all(model, adapter)
    return {"kept_layers": kept}

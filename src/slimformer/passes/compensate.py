"""Bias compensation of pruned units (after An et al. 2024, "Fluctuation-based Adaptive Structured Pruning for Large
Language Models", FLAP): a dropped head or FFN neuron j takes its whole contribution W[:, j] a_j out of its block's
output, the part that is the same for every token included. That constant part is put back into the output
projection's bias: b += W[:, dropped] @ c[dropped], with c_j = E[a_j] * E[a_j]^2 / E[a_j^2] over the calibration
text's real tokens (a_j: the projection's input channel j, a head's context or a neuron's activation).

FLAP adds the plain mean E[a_j]. The factor E[a_j]^2 / E[a_j^2] (1 for a constant unit, near 0 for one that fires on
a few tokens, e.g. only on [SEP]) keeps such a unit's mean off every other token: on all-MiniLM-L6-v2 plain means cost
STS-B -22.7 at half the FLOPs, where the shrunk ones lifted both STS-B and fidelity on held-out text (README, "Beyond
the calibration text"). Output projections without a bias (Gemma's) are left as they are.
"""

from __future__ import annotations

import torch

from ..arch import Adapter, blocks, head_size
from ..surgery import hooks
from .calib import Calibration, sentence_output
from .structure import head_channels

ROLES = ("o", "ffn_out")  # the projections whose inputs are the units pruning drops: head contexts, FFN activations


def _targets(model, adapter: Adapter) -> dict[tuple[int, str], torch.nn.Module]:
    """{(layer, role): the output projection} of every block where it has a bias and inputs to drop."""
    out = {}
    for i, block in enumerate(blocks(model.encoder, adapter)):
        for role in ROLES:
            lin = block.get_submodule(getattr(adapter, role))
            if getattr(lin, "bias", None) is not None and getattr(lin, "in_features", 0) > 0:
                out[(i, role)] = lin
    return out


@torch.no_grad()
def constant_parts(model, adapter: Adapter, calib: Calibration) -> dict[tuple[int, str], torch.Tensor]:
    """{(layer, role): c (K,)}, c_j = E[a_j]^3 / E[a_j^2] of each target projection's input over real tokens (a
    batch's mask of the input's (B, T) shape picks them; none: every position). A projection its block never calls as
    a module (a stock nn.MultiheadAttention's) is missing."""
    targets = _targets(model, adapter)
    if not targets:
        return {}
    sums: dict[tuple[int, str], list] = {}
    masks: list[torch.Tensor] = []

    def hook(key):
        def f(_m, args):
            x = args[0]  # (B, T, K) or (N, K)
            mask = next((m for m in masks if m.shape == x.shape[:-1]), None)
            x = (x[mask] if mask is not None else x.reshape(-1, x.shape[-1])).double()  # (real tokens, K)
            acc = sums.setdefault(key, [0.0, 0.0, 0])
            acc[0], acc[1], acc[2] = acc[0] + x.sum(0), acc[1] + (x * x).sum(0), acc[2] + len(x)
        return f

    with hooks(pre=[(lin, hook(key)) for key, lin in targets.items()]):
        for b in calib.batches:
            masks[:] = [v.bool() for k, v in b.items() if k.endswith("attention_mask")]
            sentence_output(model, b)
    out = {}
    for key, (s, s2, n) in sums.items():
        mean, second = s / max(n, 1), s2 / max(n, 1)
        out[key] = (mean * mean * mean / second.clamp_min(1e-30)).float()  # E[a] x its constant share E[a]^2/E[a^2]
    return out


@torch.no_grad()
def compensate(model, adapter: Adapter, parts: dict, keep_heads: list[list[int]], keep_neurons: list[list[int]]
               ) -> None:
    """Add the dropped units' constant parts to their output projections' biases, in place; before slicing (the
    weights still hold the dropped columns). keep_*: per layer, the heads / neurons that stay."""
    hs = head_size(model.encoder, adapter)
    for (i, role), lin in _targets(model, adapter).items():
        c = parts.get((i, role))
        if c is None or len(c) != lin.in_features:
            continue
        kept = head_channels(keep_heads[i], hs) if role == "o" else keep_neurons[i]
        dropped = torch.ones(lin.in_features, dtype=torch.bool)
        dropped[kept] = False
        lin.bias += (lin.weight[:, dropped].float() @ c[dropped]).to(lin.bias.dtype)

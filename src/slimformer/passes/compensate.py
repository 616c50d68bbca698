"""Compensation of pruned units by linear regression on the kept ones: a dropped head's or FFN neuron's
contribution is predicted from the units that stay and folded into the output projection, so the block's output moves
as little as the calibration text allows.

A projection y = W a + b reads its input channels a = (a_K kept, a_D dropped): a head's context or a neuron's
activation. Over the calibration text's real tokens, regress a_D on z = (a_K, 1): C = E[a_D z^T] (E[z z^T] + lam)^-1,
(D, k + 1). Then W a + b ~ W_K a_K + W_D C z, so W_K += W_D C[:, :k] and b += W_D C[:, k]. One regression serves
every output row (they share the regressors), so it minimises the output's error for any W_D. A projection without a
bias (Gemma's) regresses on a_K alone. `lam` is a ridge of DAMP times the kept channels' mean second moment: the fit
should hold on text unlike the calibration text. A dropped unit that is constant, or a linear function of kept ones,
goes exactly (up to the ridge, which leaves the constant part alone).

The regression has up to a whole FFN's width of regressors (MiniLM: 1,536), and the fit half of the calibration
sample holds a few thousand tokens: it reads up to REGRESSION_SENTENCES of the calibration text instead
(calib.fit_text; forward passes only, seconds). On all-MiniLM-L6-v2 `prune(flops=0.8)+int8`, other-text fidelity
92.71 with the fit half (256 sentences), 93.74 with 2,048 (README, "Importance and compensation read more text").

Each token's error counts relative to what the projection writes for it: the moments weight a token by 1 / |y|^2, y
= W a + b its output. Unweighted, a few tokens with massive activations rule the fit: in all-MiniLM-L6-v2's first
FFN the neurons `prune(flops=0.5)` drops write |y_D| ~ 97 on [CLS] / [SEP] and ~2 elsewhere; the plain fit cut the
special tokens' error to 3 but raised the median of the others from 2.0 to 2.9, and the model's held-out fidelity fell
from 0.81 (no compensation) to 0.52. The layer norm after the residual sum scales such tokens' large errors down
anyway; weighted, the same narrowing scores 0.91.

This generalises FLAP's bias compensation (An et al. 2024, C = (0, E[a_D])): on all-MiniLM-L6-v2 plain means cost STS-B
-22.7 at half the FLOPs, because some neurons fire on a few tokens (e.g. only on [SEP]) and their mean then lands on
every token; regressed on the kept units, such a neuron follows the units that see the same tokens. Measured in the
README, "Compensation of the dropped units".
"""

from __future__ import annotations

import torch

from ..arch import Adapter, blocks, head_size
from ..surgery import hooks
from .calib import Calibration, sentence_output
from .structure import head_channels

ROLES = ("o", "ffn_out")  # the projections whose inputs are the units pruning drops: head contexts, FFN activations
DAMP = 0.1  # all-MiniLM-L6-v2 prune(flops=0.8), other-text fidelity: 92.63 at 0.01, 93.23 at 0.1, 92.47 at 1.0
FLOOR = 0.01  # a token whose output is tinier than this share of the median's counts as that much (no 1 / 0)
REGRESSION_SENTENCES = 2048  # what the regression reads in all, where the calibration text has that many


def _targets(model, adapter: Adapter) -> dict[tuple[int, str], torch.nn.Module]:
    """{(layer, role): the output projection} of every block where it has inputs to drop."""
    out = {}
    for i, block in enumerate(blocks(model.encoder, adapter)):
        for role in ROLES:
            lin = block.get_submodule(getattr(adapter, role))
            if getattr(lin, "in_features", 0) > 0:
                out[(i, role)] = lin
    return out


@torch.no_grad()
def input_moments(model, adapter: Adapter, calib: Calibration) -> dict[tuple[int, str], torch.Tensor]:
    """{(layer, role): E_w[z z^T]}, (K + 1, K + 1) float64, z = (a, 1) the target projection's input and a constant,
    over real tokens (a batch's mask of the input's (B, T) shape picks them; none: every position), each weighted by
    w = 1 / |y|^2 of the projection's output y (floored at FLOOR of the batch's median |y|^2). The last row holds the
    weighted means. A projection its block never calls as a module (a stock nn.MultiheadAttention's) is missing."""
    targets = _targets(model, adapter)
    if not targets:
        return {}
    sums: dict[tuple[int, str], torch.Tensor] = {}
    masks: list[torch.Tensor] = []

    def hook(key):
        def f(_m, args, y):
            x = args[0]  # (B, T, K) or (N, K); y: (..., out)
            mask = next((m for m in masks if m.shape == x.shape[:-1]), None)
            x, y = (x[mask], y[mask]) if mask is not None else (x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]))
            n2 = y.float().pow(2).sum(1)  # (real tokens,)
            w = 1.0 / n2.clamp_min(FLOOR * float(n2.median()) + 1e-12)
            z = torch.cat([x.float(), x.new_ones(len(x), 1, dtype=torch.float32)], 1)
            # one batch's sums in float32 (a few thousand tokens), the running total in float64
            sums[key] = sums.get(key, 0.0) + ((z * w[:, None]).T @ z).double()
        return f

    with hooks(post=[(lin, hook(key)) for key, lin in targets.items()]):
        for b in calib.batches:
            masks[:] = [v.bool() for k, v in b.items() if k.endswith("attention_mask")]
            sentence_output(model, b)
    return {key: s / s[-1, -1].clamp_min(1e-300) for key, s in sums.items()}  # s[-1, -1]: the weights' sum (> 0)


def regression(moments: torch.Tensor, kept: torch.Tensor, intercept: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dropped channels (D,), C (D, k [+ 1])): the ridge regression of the dropped channels on the kept ones (and a
    constant, where `intercept`), from E[z z^T] (K + 1, K + 1)."""
    K = len(moments) - 1
    dropped = torch.ones(K, dtype=torch.bool)
    dropped[kept] = False
    d = torch.nonzero(dropped).flatten()
    rows = torch.cat([kept, torch.tensor([K])]) if intercept else kept
    if not len(rows):
        return d, moments.new_zeros(len(d), 0)
    gram = moments[rows][:, rows].clone()  # (k [+ 1], k [+ 1])
    if len(kept):
        gram.diagonal()[: len(kept)] += DAMP * gram.diagonal()[: len(kept)].mean().clamp_min(1e-12)
    return d, torch.linalg.solve(gram, moments[d][:, rows].T).T


@torch.no_grad()
def compensate(model, adapter: Adapter, moments: dict, keep_heads: list[list[int]], keep_neurons: list[list[int]]
               ) -> None:
    """Fold each dropped unit's regression on the kept ones into its output projection, in place; before slicing
    (the weights still hold the dropped columns). keep_*: per layer, the heads / neurons that stay."""
    hs = head_size(model.encoder, adapter)
    for (i, role), lin in _targets(model, adapter).items():
        m = moments.get((i, role))
        if m is None or len(m) != lin.in_features + 1:
            continue
        kept = head_channels(keep_heads[i], hs) if role == "o" else torch.tensor(keep_neurons[i], dtype=torch.long)
        d, coef = regression(m, kept, lin.bias is not None)
        if not len(d):
            continue
        update = lin.weight[:, d].double() @ coef  # (out, k [+ 1])
        lin.weight[:, kept] += update[:, : len(kept)].to(lin.weight.dtype)
        if lin.bias is not None:
            lin.bias += update[:, len(kept)].to(lin.bias.dtype)

"""Low-rank factorization: W (out, in) ~= (U sqrt(S)) (sqrt(S) V^T), as a FactorizedLinear of two plain nn.Linear
(so the int8 pass quantizes both halves), ranks allocated across layers under one global parameter budget from the
singular-value spectra, and a layer left dense wherever factorizing would not make it smaller *and* faster.

Fisher-weighted SVD (Hsu et al. 2022, "Language Model Compression with Weighted Low-Rank Factorization"): rows of W
are weighted by their gradient-based importance on calibration text before the SVD, so the approximation error
lands where the model's output is least sensitive.
"""

from __future__ import annotations

import heapq

import torch
from torch import nn

from ..arch import Adapter, blocks, stacks
from ..configs import LowRank
from ..errors import BudgetError
from ..surgery import set_module
from ..timing import median_ms
from .calib import Calibration, squared_gradients

FAST_MARGIN = 0.9  # a factorized layer must take at most this share of the dense layer's time
TIMING_TOKENS = 1024  # rows of the timing matmul: the 8x128 benchmark shape


class FactorizedLinear(nn.Module):
    """x (..., in) -> first (in -> rank, no bias) -> second (rank -> out, bias) -> (..., out)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)  # weight (rank, in) = sqrt(S) V^T
        self.second = nn.Linear(rank, out_features, bias=bias)  # weight (out, rank) = U sqrt(S)

    def spec(self) -> dict:
        return dict(in_features=self.in_features, out_features=self.out_features, rank=self.rank,
                    bias=self.second.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


@torch.no_grad()
def factorize(lin: nn.Linear, rank: int, row_weight: torch.Tensor | None = None) -> FactorizedLinear:
    """Best rank-`rank` approximation of lin.weight (in the row-weighted norm when row_weight (out,) is given)."""
    out_f, in_f = lin.weight.shape
    if not 1 <= rank <= min(out_f, in_f):
        raise BudgetError(f"lowrank: rank {rank} is impossible for a {out_f}x{in_f} weight (1..{min(out_f, in_f)})")
    w = lin.weight.detach().double()
    d = row_weight.double().clamp_min(1e-12).sqrt()[:, None] if row_weight is not None else None  # (out, 1)
    u, s, vt = torch.linalg.svd(w * d if d is not None else w, full_matrices=False)
    root = s[:rank].sqrt()
    a = u[:, :rank] * root  # (out, r)
    if d is not None:
        a = a / d  # undo the row weighting: W ~= D^-1 (D W)_r
    new = FactorizedLinear(in_f, out_f, rank, lin.bias is not None)
    new.first.weight.copy_(root[:, None] * vt[:rank])
    new.second.weight.copy_(a)
    if lin.bias is not None:
        new.second.bias.copy_(lin.bias)
    return new


# --------------------------------------------------------------------------------------------- speed per shape

_FAST_RANK: dict[tuple[int, int], int] = {}  # (out, in) -> largest rank (multiple of 16) that is faster than dense


@torch.inference_mode()
def fastest_rank(out_f: int, in_f: int) -> int:
    """Largest rank at which two matmuls beat the dense one on this CPU (0 if none), measured once per shape class
    at TIMING_TOKENS rows and cached for the process."""
    key = (out_f, in_f)
    if key not in _FAST_RANK:
        x = torch.randn(TIMING_TOKENS, in_f)
        w = torch.randn(out_f, in_f)
        dense = median_ms(lambda: torch.nn.functional.linear(x, w))
        lo, hi = 0, (out_f * in_f // (out_f + in_f)) // 16  # candidate ranks 16 * k, k in (lo, hi]
        while lo < hi:  # time falls with rank: binary search for the last fast one
            mid = (lo + hi + 1) // 2
            r = 16 * mid
            a, b = torch.randn(r, in_f), torch.randn(out_f, r)
            fact = median_ms(lambda: torch.nn.functional.linear(torch.nn.functional.linear(x, a), b))
            lo, hi = (mid, hi) if fact <= FAST_MARGIN * dense else (lo, mid - 1)
        _FAST_RANK[key] = 16 * lo
    return _FAST_RANK[key]


# --------------------------------------------------------------------------------------------- rank allocation

def allocate(spectra: dict[str, torch.Tensor], shapes: dict[str, tuple[int, int]], cfg: LowRank,
             caps: dict[str, int]) -> dict[str, int]:
    """Rank per layer (0 = stay dense). ratio: greedy over all singular values by relative energy per parameter
    until the factorized layers hold `ratio` of their dense parameters; energy: per layer, the smallest rank that
    keeps that share of spectral energy; rank: one rank everywhere. A rank at or above a layer's cap (the smaller
    of mn/(m+n), where the factors stop being smaller, and the fastest rank) leaves that layer dense."""
    if cfg.rank is not None:
        for name, (m, n) in shapes.items():
            if cfg.rank > min(m, n):
                raise BudgetError(f"lowrank: rank {cfg.rank} is larger than {name}'s {m}x{n} weight allows")
        ranks = {name: cfg.rank for name in shapes}
    elif cfg.energy is not None:
        ranks = {}
        for name, s in spectra.items():
            cum = (s.pow(2).cumsum(0) / s.pow(2).sum()).tolist()
            ranks[name] = next((i + 1 for i, e in enumerate(cum) if e >= cfg.energy - 1e-12), len(cum))
    else:
        ranks = _greedy_budget(spectra, shapes, cfg.ratio, caps)
    return {name: (r if r < caps[name] else 0) for name, r in ranks.items()}


def _greedy_budget(spectra, shapes, ratio, caps) -> dict[str, int]:
    """Take singular values in order of relative energy per parameter while the budget lasts. A layer that reaches
    its cap stays dense at its full cost; the others then share what is left, until no new layer reaches its cap."""
    budget = ratio * sum(shapes[n][0] * shapes[n][1] for n in spectra)
    dense = {n for n in spectra if caps[n] <= 0}
    while True:
        left = budget - sum(shapes[n][0] * shapes[n][1] for n in dense)
        ranks = _fill([n for n in spectra if n not in dense], spectra, shapes, caps, left)
        capped = {n for n, r in ranks.items() if r >= caps[n]}
        if not capped:
            return {n: ranks.get(n, 0) for n in spectra}
        dense |= capped


def _fill(names, spectra, shapes, caps, budget) -> dict[str, int]:
    rel = {n: spectra[n].pow(2) / spectra[n].pow(2).sum() for n in names}
    cost = {n: shapes[n][0] + shapes[n][1] for n in names}
    ranks = {n: 0 for n in names}
    heap = [(-float(rel[n][0]) / cost[n], n) for n in names]
    heapq.heapify(heap)
    used = 0.0
    while heap:
        _, n = heapq.heappop(heap)
        if used + cost[n] > budget:
            continue  # this layer's next value does not fit; a cheaper layer's may
        used += cost[n]
        ranks[n] += 1
        if ranks[n] < min(caps[n], len(rel[n])):
            heapq.heappush(heap, (-float(rel[n][ranks[n]]) / cost[n], n))
    return ranks


# --------------------------------------------------------------------------------------------- Fisher rows

def row_fisher(model, calib: Calibration, names: list[str], seed: int = 0) -> dict[str, torch.Tensor]:
    """Label-free Fisher importance of each weight row (calib.squared_gradients summed over a row): {fqn: (out,)}."""
    weights = [model.encoder.get_submodule(n).weight for n in names]
    before = [w.requires_grad for w in weights]
    for w in weights:
        w.requires_grad_(True)
    try:
        return {n: f.sum(1) for n, f in zip(names, squared_gradients(model, calib, weights, seed))}
    finally:
        for w, flag in zip(weights, before):
            w.requires_grad_(flag)


# --------------------------------------------------------------------------------------------- the pass

def target_linears(encoder: nn.Module, adapter: Adapter) -> dict[str, nn.Linear]:
    """The Linears of every block's roles (attention and FFN), by fully qualified name."""
    out = {}
    for i, block in enumerate(blocks(encoder, adapter)):
        for path in adapter.roles().values():  # q, k, v, o, ffn_in, ffn_out (and a gated FFN's gate)
            try:
                m = block.get_submodule(path)
            except AttributeError:  # an attention block removed by pruning
                continue
            if type(m) is nn.Linear and min(m.weight.shape) > 0:
                out[f"{adapter.layers}.{i}.{path}"] = m
    return out


@torch.no_grad()
def lowrank(model, cfg: LowRank, ctx) -> dict:
    enc = model.encoder
    # every stack's projections (Whisper: encoder, decoder, cross-attention; a shared FFN is listed once)
    linears = {k: v for a in stacks(model.model_type) for k, v in target_linears(enc, a).items()}
    row_weight = row_fisher(model, ctx.calib.split()[0], list(linears)) if cfg.fisher else {}
    spectra, shapes, caps = {}, {}, {}
    for name, lin in linears.items():
        w = lin.weight.double()
        if name in row_weight:
            w = w * row_weight[name].double().clamp_min(1e-12).sqrt()[:, None]
        spectra[name] = torch.linalg.svdvals(w).float()
        m, n = lin.weight.shape
        shapes[name] = (m, n)
        caps[name] = min(m * n // (m + n), fastest_rank(m, n))
    ranks = allocate(spectra, shapes, cfg, caps)
    dense = sum(m * n for m, n in shapes.values())
    for name, r in ranks.items():
        if r > 0:
            set_module(enc, name, factorize(linears[name], r, row_weight.get(name)))
    kept = sum(r * (shapes[n][0] + shapes[n][1]) if r else shapes[n][0] * shapes[n][1] for n, r in ranks.items())
    return {"ranks": {n: r for n, r in ranks.items() if r}, "dense": [n for n, r in ranks.items() if not r],
            "param_fraction": round(kept / dense, 4), "fisher": cfg.fisher,
            "fast_rank": {f"{m}x{n}": fastest_rank(m, n) for m, n in sorted(set(shapes.values()))}}

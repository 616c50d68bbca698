"""Dynamic int8: every Linear (attention q/k/v/o included) and the embedding tables (the token table optionally at
4 bits).

Weights: symmetric int8 with one scale per output channel (per row for embeddings). Activations: symmetric int8
with one scale per token, computed at run time, so a sentence's embedding does not depend on its batch-mates or on
padding (one scale per tensor, as torch.ao does, couples them); layers where that costs too much keep float
activations (float_act_layers: a next-token model's KL budget). Optional SmoothQuant-style migration (Xiao et al.
2023) divides activation channel j by s_j = max|X_j|^a / max|W_j|^(1-a) and multiplies weight column j by it,
measured on calibration text. How the int8 matmul runs is chosen per CPU by measurement (int8_kernels.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import Int8
from ..errors import RecipeError
from ..mha import make_quantizable
from ..surgery import hooks, replace_modules, set_module
from .calib import (Calibration, activation_absmax, output_distance, output_error, outputs, sentence_output,
                    token_logits, token_mask)
from . import int8_kernels, int8_settle
from .int8_kernels import Int8Linear, quantize_rows
from .int8_ops import row_absmax


SCALED_EMBEDDINGS = ("Gemma3TextScaledWordEmbedding",)  # embeddings whose forward is only rows x a constant
RANK_BATCHES_LM = 1  # calibration batches (of 8 sentences) a causal LM's fp32=N ranking runs each trial on
# float_act=auto: what int8 activations may add to a next-token model's KL (nats per token) over int8 weights alone.
# A KL of d nats costs about d in log-perplexity, so 0.005 is ~0.5% perplexity, beside the ~2.3% of Gemma 3 270M's
# int8 weights; on that model int8 activations in every Linear took it to +8.4% on a VNNI CPU (README).
ACT_KL = 0.005


class QuantizedEmbedding(nn.Module):
    """An embedding table stored in `bits` (8 or 4) per weight with one fp32 scale per row.

    8 bits: weight (V, D) int8. 4 bits: weight (V, D/2) uint8, two weights a byte (low nibble first), each stored
    as q + 8 with q in [-7, 7]. Only the gathered rows are dequantized."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, bits: int = 8,
                 embed_scale: float = 1.0):
        super().__init__()
        self.embed_scale = embed_scale  # what every row is multiplied by on the way out (Gemma: sqrt(hidden))
        if bits not in (4, 8) or (bits == 4 and embedding_dim % 2):
            raise RecipeError(f"int8: embeddings of {bits} bits need bits 8, or 4 with an even width")
        self.num_embeddings, self.embedding_dim, self.padding_idx, self.bits = (num_embeddings, embedding_dim,
                                                                                 padding_idx, bits)
        shape, dtype = ((num_embeddings, embedding_dim), torch.int8) if bits == 8 else \
            ((num_embeddings, embedding_dim // 2), torch.uint8)
        self.register_buffer("weight", torch.zeros(shape, dtype=dtype))  # (V, D) or (V, D/2)
        self.register_buffer("weight_scale", torch.ones(num_embeddings))  # (V,)

    def spec(self) -> dict:
        return dict(num_embeddings=self.num_embeddings, embedding_dim=self.embedding_dim,
                    padding_idx=self.padding_idx, bits=self.bits,
                    **({"embed_scale": self.embed_scale} if self.embed_scale != 1.0 else {}))

    @classmethod
    @torch.no_grad()
    def from_embedding(cls, emb: nn.Embedding, bits: int = 8) -> "QuantizedEmbedding":
        # a scaled table (Gemma3TextScaledWordEmbedding: rows x sqrt(hidden)) keeps its scale
        new = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, bits,
                  float(getattr(emb, "scalar_embed_scale", 1.0)))
        w = emb.weight.detach().float()
        if bits == 8:
            new.weight, new.weight_scale = quantize_rows(w)
        else:
            scale = w.abs().amax(1).clamp_min(1e-8) / 7.0
            q = (torch.round(w / scale[:, None]).clamp_(-7, 7) + 8).to(torch.uint8)  # (V, D) in [1, 15]
            new.weight = q[:, 0::2] | (q[:, 1::2] << 4)  # (V, D/2)
            new.weight_scale = scale
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight)  # (..., D) int8 or (..., D/2) uint8
        if self.bits == 4:
            rows = torch.stack((rows & 15, rows >> 4), -1).flatten(-2).to(torch.int8) - 8  # (..., D)
        out = rows.float() * self.weight_scale[ids].unsqueeze(-1)
        return out * self.embed_scale if self.embed_scale != 1.0 else out


def _smoothing(absmax_x: torch.Tensor, lin: nn.Linear, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^a / max|W_j|^(1-a), per input channel j (K,)."""
    absmax_w = lin.weight.detach().abs().amax(0).clamp_min(1e-5)  # (K,)
    s = absmax_x.clamp_min(1e-5).pow(alpha) / absmax_w.pow(1 - alpha)
    return s.clamp(1e-2, 1e2)  # keeps dead or tiny channels from blowing up a weight column


def rank_by_sensitivity(model: nn.Module, calib: Calibration, names: list[str], absmax: dict, alpha: float,
                        damage=None) -> list[str]:
    """Linears ordered by how much quantizing each one alone moves the model's output on calibration text:
    `damage()` measures it on the model as it stands (default: relative squared error of its main output)."""
    if damage is None:
        ref = outputs(model, calib)
        damage = lambda: output_error(ref, outputs(model, calib))  # noqa: E731
    errors = {}
    for fqn in names:
        lin = model.get_submodule(fqn)
        smooth = _smoothing(absmax[fqn], lin, alpha) if alpha > 0 else None
        set_module(model, fqn, Int8Linear.from_linear(lin, smooth))
        errors[fqn] = damage()
        set_module(model, fqn, lin)
    return sorted(names, key=errors.__getitem__, reverse=True)


@torch.inference_mode()
def input_noise(model: nn.Module, calib: Calibration) -> dict[str, float]:
    """{fqn: ||q8(x) - x||^2 / ||x||^2} of every Int8Linear's (smoothed) input x over calibration text, with q8 the
    per-token symmetric int8 its activation-quantizing kernels apply: how much int8 activations blur each layer's
    input (an FFN's output projection, fed a GeLU's outliers, is typically among the noisiest)."""
    sums: dict[str, list[float]] = {}

    def hook(fqn):
        def f(m, args):
            x = args[0].reshape(-1, m.in_features).float()  # (M, K)
            x = x * m.inv_smooth if m.inv_smooth is not None else x
            step = row_absmax(x) / 127.0  # (M, 1)
            acc = sums.setdefault(fqn, [0.0, 0.0])
            acc[0] += float(((x / step).round() * step - x).pow(2).sum())
            acc[1] += float(x.pow(2).sum())
        return f

    with hooks(pre=[(m, hook(fqn)) for fqn, m in model.named_modules() if isinstance(m, Int8Linear)]):
        for b in calib.batches:
            model(**b)
    return {fqn: e / max(x, 1e-12) for fqn, (e, x) in sums.items()}


def float_act_layers(model: nn.Module, cfg: Int8, calib: Calibration | None, damage) -> list[str]:
    """The Int8Linears that keep float activations: float_act=N, the N noisiest inputs (input_noise); "auto", for a
    next-token model (`damage`: its KL in nats per token), greedily as little compute on float activations as keeps
    the KL within ACT_KL of int8 weights alone (all float): each layer's own KL with int8 activations (the rest
    float) per FLOP it would run in int8 orders them, and the longest cheapest-first run within the budget keeps int8
    activations, found by bisection (a forward of the few ranking batches each). Returned in the model's order."""
    if cfg.float_act == 0 or (cfg.float_act == "auto" and (damage is None or calib is None)):
        return []
    if calib is None:
        raise RecipeError("int8: float_act needs calibration text")
    if cfg.float_act != "auto":
        noise = input_noise(model, calib)
        return sorted(noise, key=noise.__getitem__, reverse=True)[: cfg.float_act]
    layers = {fqn: m for fqn, m in model.named_modules() if isinstance(m, Int8Linear)}
    order = list(layers)  # the model's own order
    chosen = {fqn: m.__dict__["kernel"] for fqn, m in layers.items()}
    # the kernels are chosen again at every load, on every machine (this process may have picked float ones, which
    # hide the activation noise), so the budget holds for the coarsest activations a machine may run: fbgemm's 7 bits
    # (intmm's 8 then keep it too), or the kernel forced
    act = int8_kernels.forced() or ("fbgemm" if int8_kernels.available("fbgemm") else "intmm")

    def kl_with(int8_act: set[str]) -> float:  # these Linears on int8 activations, the rest on fp32 compute
        for fqn, m in layers.items():
            int8_kernels.ensure(m, act if fqn in int8_act else "fp32")
        return damage()

    weights_only = kl_with(set())
    budget = weights_only + ACT_KL
    cheap, lo, hi = order, len(order), len(order) + 1  # all int8 (Whisper base: within budget), else rank them
    if kl_with(set(order)) > budget:
        # a layer's KL alone per FLOP of a token: the big GEMMs (an FFN's up and gate) stay int8 where they cost little
        alone = {fqn: max(kl_with({fqn}) - weights_only, 0.0) / (m.in_features * m.out_features)
                 for fqn, m in layers.items()}
        cheap, lo, hi = sorted(order, key=alone.__getitem__), 0, len(order)
    # kl_with(cheap[:lo]) keeps the budget (none: by definition), cheap[:hi] breaks it
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if kl_with(set(cheap[:mid])) <= budget else (lo, mid)
    for fqn, m in layers.items():
        int8_kernels.ensure(m, chosen[fqn])  # the kernels as chosen
    floats = set(cheap[lo:])
    return [fqn for fqn in order if fqn in floats]


def _has_weights(m: nn.Module) -> bool:
    """A Linear to quantize: not a Linear(0, H) (a layer whose heads or neurons were all pruned: its output is its
    bias) nor a Linear(K, 0)."""
    return isinstance(m, nn.Linear) and m.weight.numel() > 0


def int8(model: nn.Module, cfg: Int8, calib: Calibration | None = None, damage=None, skip: tuple[str, ...] = ()
         ) -> tuple[nn.Module, dict]:
    """Quantize `model` in place; returns it and the decisions made (recorded in the manifest). `damage`: what
    fp32=N ranks the Linears by (rank_by_sensitivity); given for a next-token model, its KL in nats per token, which
    float_act=auto holds to a budget. `skip`: name suffixes of embeddings left in float (their owner reads `.weight`
    itself: arch.Adapter.float_modules)."""
    make_quantizable(model)  # stock nn.MultiheadAttention hides its projections from a Linear swap
    linears = {fqn for fqn, m in model.named_modules() if _has_weights(m)}
    needs_calib = cfg.smooth > 0 or cfg.fp32 > 0
    if needs_calib and calib is None:
        raise RecipeError("int8: smooth/fp32 need calibration text")
    absmax = activation_absmax(model, calib, linears) if needs_calib else {}

    keep_fp32: list[str] = []
    if cfg.fp32 > 0:
        keep_fp32 = rank_by_sensitivity(model, calib, sorted(linears), absmax, cfg.smooth, damage)[: cfg.fp32]

    originals: dict[str, nn.Linear] = {}

    def swap(lin: nn.Linear, fqn: str) -> nn.Module:
        originals[fqn] = lin
        smooth = _smoothing(absmax[fqn], lin, cfg.smooth) if cfg.smooth > 0 else None
        return Int8Linear.from_linear(lin, smooth)

    quantized = replace_modules(model, lambda m, fqn: _has_weights(m) and fqn not in keep_fp32, swap)
    embedded = []
    if cfg.embeddings:
        token = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        token = getattr(token, "embedding", token)  # a vocabulary-pruned table sits inside its id remap
        embedded = replace_modules(
            model, lambda m, fqn: (type(m) is nn.Embedding or type(m).__name__ in SCALED_EMBEDDINGS)
            and not fqn.endswith(skip),
            lambda m, _: QuantizedEmbedding.from_embedding(m, cfg.embedding_bits if m is token else 8))
    int8_kernels.choose(model)  # measured on this CPU (or forced); not stored: each machine chooses at load
    float_act = float_act_layers(model, cfg, calib, damage)
    for fqn in float_act:  # unsmoothed: migrating outliers into the weights only pays when activations are int8
        set_module(model, fqn, Int8Linear.from_linear(originals[fqn], None, float_act=True))
        int8_kernels.choose(model.get_submodule(fqn))  # the others keep theirs
    return model, {"quantized": len(quantized), "fp32_kept": keep_fp32, "embeddings": embedded,
                   "smooth": cfg.smooth, "float_act": float_act}


def quantize(model, cfg: Int8, ctx) -> dict:
    """The `int8` step: quantize a SlimModel's net in place (a task head's Linears too, ranked for `fp32=N` by how
    much they move the logits; a causal LM's by the next-token KL on a few calibration batches, RANK_BATCHES_LM,
    since each trial is a forward through the whole vocabulary); returns the decisions for the manifest."""
    damage = None
    if token_logits(model) and (cfg.fp32 > 0 or cfg.float_act != 0) and ctx.calib is not None:
        mid = len(ctx.calib.batches) // 2  # batches are sorted by length: the middle ones hold typical sentences
        few = Calibration(ctx.calib.batches[mid : mid + RANK_BATCHES_LM])
        ref = [sentence_output(model, b) for b in few.batches]
        tokens = sum(int(token_mask(b, r.shape[:2]).sum()) for b, r in zip(few.batches, ref))  # r: (B, T, K, 2)
        damage = lambda: output_distance(model, few, ref) / tokens  # noqa: E731  (nats per token)
    decisions = int8(model.net, cfg, ctx.calib, damage, skip=model.adapter.float_modules)[1]
    int8_settle.settle(model)  # the batch kernel among close rivals by the whole model's speed (machine-specific)
    return decisions

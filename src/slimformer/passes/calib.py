"""Calibration text as model inputs, and the measurements passes take on it (activation ranges, outputs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model import main_output
from ..surgery import hooks


@dataclass
class Calibration:
    """Batches of encoder inputs (forward kwargs), padded per batch."""

    batches: list[dict[str, torch.Tensor]]

    @classmethod
    def from_texts(cls, tokenizer, texts: list[str], batch_size: int = 32, max_length: int = 128) -> "Calibration":
        texts = sorted(texts, key=len)  # similar lengths per batch: less padding
        batches = [dict(tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                                  return_tensors="pt"))
                   for i in range(0, len(texts), batch_size)]
        return cls(batches)

    @classmethod
    def from_pixels(cls, pixels: torch.Tensor, batch_size: int = 8) -> "Calibration":
        """Images, already preprocessed (N, C, H, W) -> batches of {"pixel_values"} (vision.calibration_pixels)."""
        return cls([{"pixel_values": pixels[i : i + batch_size]} for i in range(0, len(pixels), batch_size)])

    def split(self) -> tuple["Calibration", "Calibration"]:
        """(fit, held-out): even and odd batches, so both halves span every sentence length (batches are sorted).
        One batch (up to 32 sentences) is split by its even and odd rows instead, so neither half is empty."""
        if len(self.batches) == 1 and rows(self.batches[0]) > 1:
            b = self.batches[0]
            return Calibration([{k: v[0::2] for k, v in b.items()}]), Calibration([{k: v[1::2] for k, v in b.items()}])
        return Calibration(self.batches[0::2]), Calibration(self.batches[1::2])


def rows(batch: dict[str, torch.Tensor]) -> int:
    """How many sentences (or images) a batch holds."""
    return len(next(iter(batch.values())))


def fit_text(model, ctx, n: int) -> Calibration:
    """The fit half of ctx's calibration sample, then the calibration text after the sample (ctx.corpus_texts, which
    leaves out the compress report's check sentences), up to n sentences in all: for measurements that gain from more
    text than the sample's half (importance, compensation's regression). The sample's other half is never read: it
    scores prune's trials. A causal LM (every forward ends in vocabulary-wide logits; not measured there), speech and
    images: the fit half alone."""
    fit = ctx.calib.split()[0]
    texts = ctx.corpus_texts
    if texts is None or is_causal_lm(model):
        return fit
    start = sum(rows(b) for b in ctx.calib.batches)  # the sample is the text's first sentences
    more = texts[start : start + max(0, n - sum(rows(b) for b in fit.batches))]
    return Calibration(fit.batches + Calibration.from_texts(model.tokenizer, more).batches) if more else fit


@torch.inference_mode()
def outputs(model: nn.Module, calib: Calibration) -> list[torch.Tensor]:
    return [main_output(model(**b)) for b in calib.batches]


def output_error(ref: list[torch.Tensor], new: list[torch.Tensor]) -> float:
    """Relative squared error ||new - ref||^2 / ||ref||^2 over all batches."""
    num = sum(float((n - r).pow(2).sum()) for r, n in zip(ref, new))
    den = sum(float(r.pow(2).sum()) for r in ref)
    return num / max(den, 1e-12)


@torch.inference_mode()
def activation_absmax(model: nn.Module, calib: Calibration, names: set[str]) -> dict[str, torch.Tensor]:
    """max |x_j| over all calibration tokens of each input channel j of the named Linears: {fqn: (K,)}."""
    stats: dict[str, torch.Tensor] = {}

    def hook(fqn):
        def f(_module, args):
            a = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(0)
            stats[fqn] = a if fqn not in stats else torch.maximum(stats[fqn], a)
        return f

    with hooks(pre=[(m, hook(fqn)) for fqn, m in model.named_modules() if fqn in names]):
        for b in calib.batches:
            model(**b)
    return stats


def pooled(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's sentence embeddings for one batch of inputs, through its own pooling: (B, H)."""
    return model.pool(main_output(model.encoder(**batch)), batch.get("attention_mask"))  # no mask: an image


def has_head(model) -> bool:
    return getattr(model, "head", None) is not None


LM_TOP_K = 64  # a causal LM's reference: its K likeliest next tokens per position (the full (B, T, V) logits of
# 512 calibration sentences would take ~10 GB with Gemma's 262k-token vocabulary)


LOG_FLOOR = -100.0  # lm_kl's floor of a log-probability (a vocabulary-pruned LM's dropped tokens: -inf)


def is_causal_lm(model) -> bool:
    from ..arch import CAUSAL_LM

    return getattr(model, "head", None) == CAUSAL_LM


def token_logits(model) -> bool:
    """A model whose output is next-token logits (B, T, V): a causal LM, or a speech recognizer's decoder (its
    tokens after the audio); both are compared by the top-K next-token KL (lm_kl)."""
    from ..arch import SPEECH_SEQ2SEQ

    return is_causal_lm(model) or getattr(model, "head", None) == SPEECH_SEQ2SEQ


def token_mask(batch: dict[str, torch.Tensor], shape) -> torch.Tensor:
    """Which of the (B, T) next-token positions are real: the attention mask where the batch has one (a speech
    calibration batch holds one unpadded clip: every decoder position)."""
    mask = batch.get("attention_mask")
    return mask.bool() if mask is not None else torch.ones(shape, dtype=torch.bool)


def lm_reference(logits: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits -> (B, T, K, 2): the K largest next-token log-probabilities and their token ids (as float:
    exact below 2^24), what lm_kl compares a changed model against."""
    logp = F.log_softmax(logits.float(), -1)
    top, ids = logp.topk(LM_TOP_K, -1)  # (B, T, K) each
    return torch.stack((top, ids.float()), -1)


def lm_kl(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Next-token KL(p_reference || p_model) per position, (B, T), restricted to the reference's top K tokens (the
    tail it leaves out holds little of its mass): sum_k p_r(k) (log p_r(k) - log p_m(k))."""
    log_r, ids = reference[..., 0], reference[..., 1].long()  # (B, T, K) each
    # a vocabulary-pruned model gives a dropped token -inf: floored, so it costs much but stays finite (comparable)
    log_m = F.log_softmax(logits.float(), -1).gather(-1, ids).clamp_min(LOG_FLOOR)  # (B, T, K)
    return (log_r.exp() * (log_r - log_m)).sum(-1)


def sentence_output(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a model's decisions are measured on: its pooled sentence embeddings (B, H) for an embedder, its head's
    logits (B, C), or (B, T, C) for a token classifier; a causal LM's top-K next-token log-probabilities
    (lm_reference: (B, T, K, 2))."""
    if token_logits(model):
        return lm_reference(model.net(**batch).logits)
    return model.net(**batch).logits if has_head(model) else pooled(model, batch)


@torch.no_grad()
def output_distance(model, calib: Calibration, reference: list[torch.Tensor]) -> float:
    """How far a changed model has moved, summed over calibration sentences: 1 - cos of the pooled embeddings, or
    for a classifier KL(p_reference || p_model) of the class distributions (summed over the real tokens of a token
    classifier; a causal LM: of its next-token distributions, lm_kl).
    `reference`: [sentence_output(original, b) for b in calib.batches]."""
    total = 0.0
    for b, r in zip(calib.batches, reference):
        if token_logits(model):
            kl = lm_kl(model.net(**b).logits, r)  # (B, T)
            total += float(kl[token_mask(b, kl.shape)].sum())
            continue
        out = sentence_output(model, b)
        if not has_head(model):
            total += float((1 - torch.cosine_similarity(out, r)).sum())
            continue
        log_r = F.log_softmax(r.float(), -1)
        kl = (log_r.exp() * (log_r - F.log_softmax(out.float(), -1))).sum(-1)  # (B,) or (B, T)
        total += float((kl[b["attention_mask"].bool()] if kl.dim() == 2 else kl).sum())
    return total


def _block_states(model, one: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Every block's output token states for one input: L tensors (1, T, H), read with forward hooks so any
    adapter's blocks work (a plain torch encoder has no output_hidden_states)."""
    from ..arch import blocks

    states: list[torch.Tensor] = []

    def keep(_module, _args, out):
        states.append(out[0] if isinstance(out, tuple) else out)

    with hooks(post=[(b, keep) for b in blocks(model.encoder, model.adapter)]):
        model.encoder(**one)
    return states


def _projected_output(model, one: dict[str, torch.Tensor], g: torch.Generator, target: str = "pooled"
                      ) -> torch.Tensor:
    """A scalar whose squared gradient is, in expectation over the Gaussian draw, the Fisher of the output.

    Embedder, target "pooled": r . pooled, r ~ N(0, I_H): E[(d r.f / dt)^2] = sum_d (df_d / dt)^2, the Fisher of
    the embedding under a Gaussian model. Target "states": the same over every block's token states, each block's
    (1, T, H) divided by its own norm (detached) so that every depth counts alike: a unit then matters by what it
    does to the representation at every layer, not only to the one mean the calibration text's pooling reads,
    which transferred better to text unlike the calibration text (benchmarks/transfer.py).
    Classifier: v . z for logits z (C,) per sentence or token, v = sqrt(p) * r - p
    (sqrt(p) . r) with p = softmax(z) held constant and r ~ N(0, I_C): Cov(v) = diag(p) - p p^T, so
    E[(v . dz/dt)^2] = sum_c p_c (d log p_c / dt)^2, the expected Fisher over the classes the model itself
    predicts (label-free; no gold labels). Chosen over backpropagating log p(y) of one sampled label y ~ p, which
    has the same expectation but, for a confident classifier, almost always draws the argmax (gradient ~ 0) and
    rests on rare draws; and over the exact sum over classes, which costs C backward passes (T C per sentence
    for a token classifier)."""
    if not has_head(model):
        if target == "states":
            return sum((h * torch.randn(h.shape, generator=g)).sum() / h.detach().norm().clamp_min(1e-12)
                       for h in _block_states(model, one))
        out = pooled(model, one)  # (1, H)
        return (out * torch.randn(out.shape, generator=g)).sum()
    z = model.net(**one).logits  # (1, C) or (1, T, C)
    p = F.softmax(z.detach().float(), -1)
    r = torch.randn(z.shape, generator=g)
    v = p.sqrt() * r - p * (p.sqrt() * r).sum(-1, keepdim=True)  # (..., C), covariance diag(p) - p p^T
    # a vocabulary-pruned LM's dropped tokens: z = -inf and v = 0 there (p = 0); 0 * inf would be nan
    return (v * z.masked_fill(z == float("-inf"), 0.0)).sum()


def squared_gradients(model, calib: Calibration, tensors: list[torch.Tensor], seed: int = 0,
                      progress=None, target: str = "pooled") -> list[torch.Tensor]:
    """Label-free Fisher: the sum over calibration sentences of the squared gradient of a Gaussian projection of
    the model's output (_projected_output: an embedder's `target`, or a classifier's class distribution) with
    respect to each tensor, a fresh projection per sentence. One backward per sentence (cut to its own length): a
    Fisher is a sum of squares, which a batched gradient would mix. Same shapes as `tensors` (each must require
    grad)."""
    sums = [torch.zeros_like(t) for t in tensors]
    g = torch.Generator().manual_seed(seed)
    model.net.eval()
    with torch.enable_grad():
        for batch in calib.batches:
            for i in range(rows(batch)):
                if "attention_mask" in batch:  # text: cut to the sentence's own length
                    n = int(batch["attention_mask"][i].sum())
                    one = {k: v[i : i + 1, :n] for k, v in batch.items()}
                else:  # pixel_values: every patch is real
                    one = {k: v[i : i + 1] for k, v in batch.items()}
                grads = torch.autograd.grad(_projected_output(model, one, g, target), tensors, allow_unused=True)
                for acc, gr in zip(sums, grads):
                    if gr is not None:  # a mask of a layer that has no such units
                        acc += gr.detach().pow(2)
            if progress:
                progress()
    return sums

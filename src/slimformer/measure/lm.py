"""A causal language model's quality: perplexity on documents (one a line), and how far two models' perplexities
differ beyond what resampling the documents moves (paired bootstrap over documents)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PPL_BATCH = 8  # documents a forward: each ends in (B, T, vocabulary) logits, 262k wide for Gemma 3


@torch.inference_mode()
def document_nll(model, docs: list[str], batch_size: int = PPL_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(nll, tokens), each (n,): the summed negative log-likelihood (nats) of each document's tokens after the first
    (the tokenizer's BOS, where it adds one), given the tokens before them, and how many tokens that is. Documents
    are cut to the model's max_seq_length and padded on the right (a decoder numbers positions from the left)."""
    nll, tokens = np.zeros(len(docs)), np.zeros(len(docs), dtype=np.int64)
    order = np.argsort([-len(d) for d in docs], kind="stable")  # similar lengths a batch: less padding
    for i in range(0, len(docs), batch_size):
        idx = order[i : i + batch_size]
        batch = dict(model.tokenizer([docs[j] for j in idx], padding=True, truncation=True, return_tensors="pt",
                                     max_length=model.max_seq_length, padding_side="right"))
        logits = model(**batch).logits[:, :-1].float()  # (B, T-1, V): the prediction of each next token
        target, mask = batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:].bool()  # (B, T-1)
        loss = F.cross_entropy(logits.transpose(1, 2), target, reduction="none") * mask  # (B, T-1)
        nll[idx], tokens[idx] = loss.sum(1).double().numpy(), mask.sum(1).numpy()
    return nll, tokens


def perplexity(nll: np.ndarray, tokens: np.ndarray) -> float:
    """exp(total nll / total tokens): per token over the whole set, so long documents weigh by their length."""
    return float(np.exp(nll.sum() / max(int(tokens.sum()), 1)))


def ppl_interval(tokens: np.ndarray, a: np.ndarray, b: np.ndarray, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Paired bootstrap interval of perplexity(b) - perplexity(a) over documents: both models' per-document nll
    (a, b: (n,)) resampled together, each resample's perplexity from its own token total (tokens: (n,))."""
    a, b, tokens = (np.asarray(x, dtype=np.float64) for x in (a, b, tokens))
    idx = np.random.default_rng(seed).integers(0, len(a), (resamples, len(a)))  # (R, n)
    n = tokens[idx].sum(1).clip(1)
    d = np.exp(b[idx].sum(1) / n) - np.exp(a[idx].sum(1) / n)
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


# ------------------------------------------------------------------------------------------------- speed

PREFILL_SHAPES = ((1, 128), (8, 128))  # (batch, prompt tokens): one prompt, and a batch of them
DECODE_TOKENS = 32  # greedy tokens generated per timed decode, after a 16-token prompt


def _generate(net, ids: torch.Tensor, n: int) -> None:
    net.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                 do_sample=False, use_cache=True)


@torch.inference_mode()
def lm_speed(model, runs: int = 20) -> dict:
    """A causal LM's own speed keys for `bench`: {"prefill_ms": {"1x128", "8x128"}: median ms of the forward over a
    prompt (logits included), "decode_tokens_per_s": greedy tokens/s with the KV cache at batch 1}. Decode time is
    generate(1 + DECODE_TOKENS) minus generate(1), so the prompt's prefill and generate's set-up cancel."""
    from ..timing import latency_ms, median_ms

    net = model.net
    prefill = latency_ms({"m": lambda x: net(**x, use_cache=False)}, {"m": model.tokenizer.vocab_size},
                         PREFILL_SHAPES, runs)["m"]
    ids = torch.randint(1000, model.tokenizer.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    reps = max(3, runs // 5)
    first = median_ms(lambda: _generate(net, ids, 1), reps)
    full = median_ms(lambda: _generate(net, ids, 1 + DECODE_TOKENS), reps)
    return {"prefill_ms": prefill, "decode_tokens_per_s": round(DECODE_TOKENS / max(full - first, 1e-6) * 1e3, 2)}

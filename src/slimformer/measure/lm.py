"""A causal language model's quality: perplexity on documents (one a line), and how far two models' perplexities
differ beyond what resampling the documents moves (paired bootstrap over documents); its speed: time to the first
token and greedy decoding.

A vocabulary-pruned model (passes/vocab.py: VocabHead) gives probability 0 to every dropped token. Perplexity still
runs over the original tokenization, and a document token outside the kept vocabulary is scored as the model's
probability of the tokenizer's <unk> (kept, and never trained to be likely: an honest penalty, not a skip);
`coverage` says what share of the predicted tokens were kept."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..passes.vocab import kept_tokens

PPL_BATCH = 8  # documents a forward: each ends in (B, T, vocabulary) logits, 262k wide for Gemma 3


def _targets(model, ids: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """The next-token targets (B, T-1); with a pruned vocabulary, a dropped token becomes the tokenizer's <unk>."""
    target = ids[:, 1:]
    if kept is None:
        return target
    unk = model.tokenizer.unk_token_id if model.tokenizer.unk_token_id is not None else int(kept[0])
    return torch.where(torch.isin(target, kept), target, torch.full_like(target, unk))


def coverage(model, docs: list[str]) -> float | None:
    """The share of the documents' predicted tokens (after the first, cut as document_nll cuts them) that a
    vocabulary-pruned model kept; None for a model with its whole vocabulary."""
    kept = kept_tokens(model.net)
    if kept is None:
        return None
    ids = model.tokenizer(docs, truncation=True, max_length=model.max_seq_length)["input_ids"]
    predicted = torch.tensor([t for row in ids for t in row[1:]], dtype=torch.long)
    return float(torch.isin(predicted, kept).float().mean()) if len(predicted) else 1.0


@torch.inference_mode()
def document_nll(model, docs: list[str], batch_size: int = PPL_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(nll, tokens), each (n,): the summed negative log-likelihood (nats) of each document's tokens after the first
    (the tokenizer's BOS, where it adds one), given the tokens before them, and how many tokens that is. Documents
    are cut to the model's max_seq_length and padded on the right (a decoder numbers positions from the left). A
    vocabulary-pruned model's dropped tokens are scored as <unk> (module docstring)."""
    nll, tokens = np.zeros(len(docs)), np.zeros(len(docs), dtype=np.int64)
    kept = kept_tokens(model.net)
    order = np.argsort([-len(d) for d in docs], kind="stable")  # similar lengths a batch: less padding
    for i in range(0, len(docs), batch_size):
        idx = order[i : i + batch_size]
        batch = dict(model.tokenizer([docs[j] for j in idx], padding=True, truncation=True, return_tensors="pt",
                                     max_length=model.max_seq_length, padding_side="right"))
        logits = model(**batch).logits[:, :-1].float()  # (B, T-1, V): the prediction of each next token
        target, mask = _targets(model, batch["input_ids"], kept), batch["attention_mask"][:, 1:].bool()  # (B, T-1)
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


def _prefill(net):
    """What generate's first step runs: the forward over the prompt filling the KV cache, with the logits of the
    last position only (logits_to_keep=1: (B, 1, V), not the (B, T, V) a scoring forward computes)."""
    return lambda x: net(**x, use_cache=True, logits_to_keep=1)


@torch.inference_mode()
def lm_speeds(models: dict, runs: int = 20) -> dict[str, dict]:
    """A causal LM's own speed keys for `bench`, every model timed in one alternating loop (timing.latency_ms; the
    decodes in turns, timing.interleaved_ms): {name: {"prefill_ms": {"1x128", "8x128"}: median ms to the first
    token (the forward over the prompt with the last position's logits, as generate runs it),
    "decode_tokens_per_s": greedy tokens/s with the KV cache at batch 1}}. Decode time is generate(1 +
    DECODE_TOKENS) minus generate(1), so the prompt's prefill and generate's set-up cancel. (The standard
    latency_ms keys time model(**inputs), logits at every position: the scoring / perplexity forward.)"""
    from ..timing import interleaved_ms, latency_ms

    nets = {n: m.net for n, m in models.items()}
    prefill = latency_ms({n: _prefill(net) for n, net in nets.items()},
                         {n: m.tokenizer.vocab_size for n, m in models.items()}, PREFILL_SHAPES, runs)
    vocab = min(m.tokenizer.vocab_size for m in models.values())
    ids = torch.randint(min(1000, vocab // 2), vocab, (1, 16), generator=torch.Generator().manual_seed(0))
    reps = max(3, runs // 5)
    first = interleaved_ms({n: (lambda net: lambda: _generate(net, ids, 1))(net) for n, net in nets.items()}, reps,
                           give_up_ms=float("inf"))
    full = interleaved_ms({n: (lambda net: lambda: _generate(net, ids, 1 + DECODE_TOKENS))(net)
                           for n, net in nets.items()}, reps, give_up_ms=float("inf"))
    return {n: {"prefill_ms": prefill[n],
                "decode_tokens_per_s": round(DECODE_TOKENS / max(full[n] - first[n], 1e-6) * 1e3, 2)}
            for n in models}

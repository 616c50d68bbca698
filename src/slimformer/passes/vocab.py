"""Vocabulary pruning: keep the embedding rows of the tokens a corpus uses (plus the special tokens).

The tokenizer is left exactly as it was; the model maps its ids through a (V,) lookup table into the kept rows, so a
text whose tokens were all kept gets the same ids and the same embeddings as before. A token outside the kept
vocabulary never causes an index error: with `fallback=unk` it reads [UNK]'s row; with `fallback=nearest` (the
default) it reads the row of the kept token whose original embedding is nearest by cosine, which measured 81.96 vs
80.85 STS-B (original 82.03) for the default corpus on all-MiniLM-L6-v2. This works the same for WordPiece, BPE and Unigram
tokenizers: pruning a BPE vocabulary itself would break the merges that pass through intermediate tokens.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from ..configs import Vocab
from ..errors import BudgetError, DataNotFoundError, StepNotApplicableError
from ..surgery import set_module


class VocabEmbedding(nn.Module):
    """ids (..., ) in the tokenizer's full vocabulary -> remap -> rows of a smaller table (N, D)."""

    def __init__(self, vocab_size: int, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.vocab_size, self.num_embeddings, self.embedding_dim = vocab_size, num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self.register_buffer("remap", torch.zeros(vocab_size, dtype=torch.int32))  # (V,) old id -> kept row
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)  # may become an QuantizedEmbedding

    def spec(self) -> dict:
        return dict(vocab_size=self.vocab_size, num_embeddings=self.num_embeddings,
                    embedding_dim=self.embedding_dim, padding_idx=self.padding_idx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.remap[ids].long())


def token_counts(tokenizer, texts: list[str]) -> Counter:
    counts: Counter = Counter()
    for i in range(0, len(texts), 1024):
        for ids in tokenizer(texts[i : i + 1024], add_special_tokens=False)["input_ids"]:
            counts.update(ids)
    return counts


@torch.no_grad()
def prune_vocab(encoder: nn.Module, tokenizer, texts: list[str], keep: int | None = None,
                fallback: str = "nearest") -> dict:
    emb = encoder.get_input_embeddings()
    if not isinstance(emb, nn.Embedding):
        raise StepNotApplicableError(f"vocab: the input embeddings are a {type(emb).__name__}, not a plain table "
                                     "(already vocabulary-pruned or quantized)")
    counts = token_counts(tokenizer, texts)
    special = sorted(set(tokenizer.all_special_ids))
    if keep is not None:
        if keep > emb.num_embeddings:
            raise BudgetError(f"vocab: cannot keep {keep} tokens: the vocabulary has {emb.num_embeddings}")
        used = [t for t, _ in counts.most_common() if t not in special][: max(0, keep - len(special))]
    else:
        used = list(counts)
    kept = torch.tensor(sorted(set(used) | set(special)), dtype=torch.long)  # (N,) old ids, ascending
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else special[0]
    new = VocabEmbedding(emb.num_embeddings, len(kept), emb.embedding_dim, emb.padding_idx)
    new.embedding.weight.copy_(emb.weight[kept])
    remap = torch.full((emb.num_embeddings,), int((kept == unk).nonzero()[0, 0]), dtype=torch.int32)
    if fallback == "nearest":
        remap = _nearest_kept(emb.weight.detach(), kept)
    remap[kept] = torch.arange(len(kept), dtype=torch.int32)
    new.remap.copy_(remap)
    target = next(fqn for fqn, m in encoder.named_modules() if m is emb)
    set_module(encoder, target, new)
    return {"kept_tokens": len(kept), "vocab_size": emb.num_embeddings, "corpus_sentences": len(texts),
            "fallback": fallback}


def _nearest_kept(weight: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """For every token id, the kept row whose embedding is nearest by cosine: (V,) int32 (kept ids map to self)."""
    w = torch.nn.functional.normalize(weight.float(), dim=1)  # (V, D)
    wk = w[kept].T.contiguous()  # (D, N)
    out = torch.empty(len(w), dtype=torch.int32)
    for i in range(0, len(w), 4096):  # (4096, N) similarities at a time
        out[i : i + 4096] = (w[i : i + 4096] @ wk).argmax(1).to(torch.int32)
    return out


def vocab(model, cfg: Vocab, ctx) -> dict:
    if cfg.corpus is not None:
        try:
            with open(cfg.corpus, encoding="utf-8") as f:
                texts = [line.strip() for line in f if line.strip()]
        except OSError:
            raise DataNotFoundError(f"vocab: corpus file not found: {cfg.corpus}") from None
    else:
        texts = ctx.corpus_texts
    return prune_vocab(model.encoder, model.tokenizer, texts, cfg.keep, cfg.fallback)

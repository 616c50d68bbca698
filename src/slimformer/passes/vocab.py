"""Vocabulary pruning: keep the embedding rows of the tokens a corpus uses (plus the special tokens).

The tokenizer is left exactly as it was; the model maps its ids through a (V,) lookup table into the kept rows, so a
text whose tokens were all kept gets the same ids and the same embeddings as before. A token outside the kept
vocabulary never causes an index error: with `fallback=unk` it reads [UNK]'s row; with `fallback=nearest` (the
default) it reads the row of the kept token whose original embedding is nearest by cosine, which measured 81.96 vs
80.85 STS-B (original 82.03) for the default corpus on all-MiniLM-L6-v2. This works the same for WordPiece, BPE and Unigram
tokenizers: pruning a BPE vocabulary itself would break the merges that pass through intermediate tokens.

What is kept is decided by the calibration text, so it must be the kind of text the model will read. Coverage, the
share of the vocabulary the text uses at least once, is the check: below MIN_COVERAGE a CoverageWarning (measured on
all-MiniLM-L6-v2's 30,522 tokens: STS-B + SST-2 train 53%, the shipped corpus 34%, 512 of its sentences 9%). A
vocabulary of MULTILINGUAL_VOCAB tokens or more is multilingual-sized (mBERT 119,547, XLM-R 250,002; English
encoders have 29-51k): slimformer's English default text would drop most languages, so `vocab` refuses it there
unless the text is given (`--calib`, `vocab(corpus=PATH)`).
"""

from __future__ import annotations

import warnings
from collections import Counter

import torch
from torch import nn

from ..configs import Vocab
from ..data import read_lines
from ..errors import BudgetError, CoverageWarning, StepNotApplicableError
from ..surgery import set_module
from ..vision import not_for_images

MIN_COVERAGE = 0.2  # warn when the calibration text uses less than this share of the vocabulary
MULTILINGUAL_VOCAB = 100_000  # vocabularies this large are multilingual: the default English text is refused


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
    coverage = len(counts) / emb.num_embeddings
    if coverage < MIN_COVERAGE:
        warnings.warn(f"vocab: the calibration text ({len(texts)} sentences) uses {len(counts):,} of the "
                      f"{emb.num_embeddings:,} tokens ({coverage:.0%}); any other token will read its nearest kept "
                      "token's embedding: give more text of the kind the model will read (--calib)",
                      CoverageWarning, stacklevel=3)  # the caller, past no_grad's wrapper
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
            "coverage": round(coverage, 4), "fallback": fallback}


def _nearest_kept(weight: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """For every token id, the kept row whose embedding is nearest by cosine: (V,) int32 (kept ids map to self)."""
    w = torch.nn.functional.normalize(weight.float(), dim=1)  # (V, D)
    wk = w[kept].T.contiguous()  # (D, N)
    out = torch.empty(len(w), dtype=torch.int32)
    for i in range(0, len(w), 4096):  # (4096, N) similarities at a time
        out[i : i + 4096] = (w[i : i + 4096] @ wk).argmax(1).to(torch.int32)
    return out


def vocab(model, cfg: Vocab, ctx) -> dict:
    not_for_images(model, "vocab", "it has no token vocabulary (its input is patches of pixels)")
    if cfg.corpus is not None:
        texts = read_lines(cfg.corpus)
    else:
        texts = ctx.corpus_texts
        size = getattr(model.encoder.get_input_embeddings(), "num_embeddings", 0)
        if getattr(ctx, "default_calib", False) and size >= MULTILINGUAL_VOCAB:
            raise StepNotApplicableError(
                f"vocab: this model's vocabulary has {size:,} tokens (multilingual-sized) and the calibration text is "
                "slimformer's English default, which would drop every other language: give text of the languages "
                "the model will read (--calib FILE, or vocab(corpus=PATH))")
    return prune_vocab(model.encoder, model.tokenizer, texts, cfg.keep, cfg.fallback)

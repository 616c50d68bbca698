"""Vocabulary pruning: keep the embedding rows of the tokens a corpus uses, plus the special tokens and the
tokenizer's COMMON_TOKENS most common ones (its first ids), which a user's other text is likely to need.

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
# the tokenizer's first ids kept whatever the text: WordPiece, BPE and Unigram vocabularies are built in (roughly)
# frequency order, so these are its most common pieces (all-MiniLM-L6-v2: the first 16,384 of 30,522 ids hold 93% of
# the default text's tokens). Why: a rare-in-the-text common word read its nearest kept row; on held-out news and
# Wikipedia `vocab+int8` kept fidelity 93.95 with the text's tokens alone, 97.29 with these (README, "Common tokens")
COMMON_TOKENS = 16_384
MULTILINGUAL_VOCAB = 100_000  # vocabularies this large are multilingual: the default English text is refused


class VocabEmbedding(nn.Module):
    """ids (..., ) in the tokenizer's full vocabulary -> remap -> rows of a smaller table (N, D), times embed_scale
    (Gemma scales its token rows by sqrt(hidden); 1 elsewhere)."""

    def __init__(self, vocab_size: int, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 embed_scale: float = 1.0):
        super().__init__()
        self.vocab_size, self.num_embeddings, self.embedding_dim = vocab_size, num_embeddings, embedding_dim
        self.padding_idx, self.embed_scale = padding_idx, embed_scale
        self.register_buffer("remap", torch.zeros(vocab_size, dtype=torch.int32))  # (V,) old id -> kept row
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)  # may become an QuantizedEmbedding

    def spec(self) -> dict:
        return dict(vocab_size=self.vocab_size, num_embeddings=self.num_embeddings,
                    embedding_dim=self.embedding_dim, padding_idx=self.padding_idx,
                    **({"embed_scale": self.embed_scale} if self.embed_scale != 1.0 else {}))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.embedding(self.remap[ids].long())  # (..., D)
        return out * self.embed_scale if self.embed_scale != 1.0 else out


class VocabHead(nn.Module):
    """A decoder's output layer over the kept tokens only: hidden (..., D) -> logits (..., V) in the tokenizer's full
    vocabulary, each kept token's logit at its own id and -inf (probability 0) at every dropped one, so generate,
    its eos / pad ids and the tokenizer work on the ids they know. The matmul is (N, D) instead of (V, D); filling
    the (..., V) row costs a memset."""

    def __init__(self, vocab_size: int, num_kept: int, hidden_size: int):
        super().__init__()
        self.vocab_size, self.num_kept, self.hidden_size = vocab_size, num_kept, hidden_size
        self.register_buffer("remap", torch.zeros(num_kept, dtype=torch.long))  # (N,) kept row -> old id, ascending
        self.proj = nn.Linear(hidden_size, num_kept, bias=False)  # (N, D); tied to the embedding's table; int8 swaps it

    def spec(self) -> dict:
        return dict(vocab_size=self.vocab_size, num_kept=self.num_kept, hidden_size=self.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        z = self.proj(hidden)  # (..., N)
        return z.new_full((*z.shape[:-1], self.vocab_size), float("-inf")).index_copy_(-1, self.remap, z)  # (..., V)


def token_counts(tokenizer, texts: list[str]) -> Counter:
    counts: Counter = Counter()
    for i in range(0, len(texts), 1024):
        for ids in tokenizer(texts[i : i + 1024], add_special_tokens=False)["input_ids"]:
            counts.update(ids)
    return counts


def choose_tokens(tokenizer, texts: list[str], vocab_size: int, keep: int | None = None,
                  extra_special: tuple[int, ...] = (), common: int = 0) -> tuple[torch.Tensor, float]:
    """(kept ids (N,) ascending, coverage): the tokens `texts` use (all of them, or the `keep` most frequent) plus
    the tokenizer's special tokens, `extra_special` and its first `common` ids; coverage is the share of the
    vocabulary the text uses."""
    counts = token_counts(tokenizer, texts)
    coverage = len(counts) / vocab_size
    if coverage < MIN_COVERAGE:
        warnings.warn(f"vocab: the calibration text ({len(texts)} sentences) uses {len(counts):,} of the "
                      f"{vocab_size:,} tokens ({coverage:.0%}); any other token will read its nearest kept "
                      "token's embedding: give more text of the kind the model will read (--calib)",
                      CoverageWarning, stacklevel=4)  # the pass's caller, past no_grad's wrapper
    special = sorted(set(tokenizer.all_special_ids) | set(extra_special))
    if keep is not None:
        if keep > vocab_size:
            raise BudgetError(f"vocab: cannot keep {keep} tokens: the vocabulary has {vocab_size}")
        used = [t for t, _ in counts.most_common() if t not in special][: max(0, keep - len(special))]
    else:
        used = list(counts)
    return torch.tensor(sorted(set(used) | set(special) | set(range(min(common, vocab_size)))),
                        dtype=torch.long), coverage


def _plain_table(emb) -> nn.Embedding:
    if not isinstance(emb, nn.Embedding):
        raise StepNotApplicableError(f"vocab: the input embeddings are a {type(emb).__name__}, not a plain table "
                                     "(already vocabulary-pruned or quantized)")
    return emb


def _swap_embedding(encoder: nn.Module, emb: nn.Embedding, kept: torch.Tensor, unk: int,
                    fallback: str) -> VocabEmbedding:
    """Replace `emb` inside `encoder` by a VocabEmbedding of the rows `kept`; a dropped id reads its nearest kept
    row (fallback nearest) or unk's."""
    new = VocabEmbedding(emb.num_embeddings, len(kept), emb.embedding_dim, emb.padding_idx,
                         float(getattr(emb, "scalar_embed_scale", 1.0)))  # Gemma: rows x sqrt(hidden), kept
    new.embedding.weight.copy_(emb.weight[kept])
    remap = torch.full((emb.num_embeddings,), int((kept == unk).nonzero()[0, 0]), dtype=torch.int32)
    if fallback == "nearest":
        remap = _nearest_kept(emb.weight.detach(), kept)
    remap[kept] = torch.arange(len(kept), dtype=torch.int32)
    new.remap.copy_(remap)
    set_module(encoder, next(fqn for fqn, m in encoder.named_modules() if m is emb), new)
    return new


@torch.no_grad()
def prune_vocab(encoder: nn.Module, tokenizer, texts: list[str], keep: int | None = None,
                fallback: str = "nearest", common: int = 0) -> dict:
    """Swap the encoder's token table for a VocabEmbedding of the tokens `texts` use (and the first `common` ids);
    returns the decisions."""
    emb = _plain_table(encoder.get_input_embeddings())
    kept, coverage = choose_tokens(tokenizer, texts, emb.num_embeddings, keep, common=common)
    _swap_embedding(encoder, emb, kept, _unk(tokenizer, kept), fallback)
    return {"kept_tokens": len(kept), "vocab_size": emb.num_embeddings, "corpus_sentences": len(texts),
            "coverage": round(coverage, 4), "fallback": fallback, "common": common}


def _unk(tokenizer, kept: torch.Tensor) -> int:
    return tokenizer.unk_token_id if tokenizer.unk_token_id is not None else int(kept[0])


def _generation_ids(net: nn.Module) -> tuple[int, ...]:
    """The bos / eos / pad ids generate reads from the config and the generation config (Gemma's eos may be a list;
    a chat model's end-of-turn is one of them though the tokenizer may not list it as special)."""
    ids: set[int] = set()
    for cfg in (getattr(net, "config", None), getattr(net, "generation_config", None)):
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
            v = getattr(cfg, key, None)
            ids.update(int(i) for i in (v if isinstance(v, (list, tuple)) else [v]) if i is not None)
    return tuple(sorted(ids))


@torch.no_grad()
def prune_lm_vocab(net: nn.Module, tokenizer, texts: list[str], keep: int | None = None,
                   fallback: str = "nearest", common: int = 0) -> dict:
    """A causal LM's tied token table and lm_head cut to the kept tokens together: the input side a VocabEmbedding,
    the output side a VocabHead sharing its (N, D) table (when the original ties them; else its own kept rows).
    generate's bos / eos / pad ids are always kept. The tokenizer is untouched (ids stay the original ones)."""
    emb, head = _plain_table(net.get_input_embeddings()), net.get_output_embeddings()
    if type(head) is not nn.Linear or head.out_features != emb.num_embeddings:
        raise StepNotApplicableError(f"vocab: the output layer is a {type(head).__name__}, not the plain "
                                     f"(vocabulary x hidden) Linear (already vocabulary-pruned or quantized)")
    tied = head.weight is emb.weight
    kept, coverage = choose_tokens(tokenizer, texts, emb.num_embeddings, keep, _generation_ids(net), common)
    new_head = VocabHead(head.out_features, len(kept), head.in_features)
    new_head.remap.copy_(kept)
    if not tied:
        new_head.proj.weight.copy_(head.weight[kept])
    new_emb = _swap_embedding(net.base_model, emb, kept, _unk(tokenizer, kept), fallback)
    if tied:
        new_head.proj.weight = new_emb.embedding.weight  # one (N, D) table, as the original had one (V, D)
    set_module(net, next(fqn for fqn, m in net.named_modules() if m is head), new_head)
    return {"kept_tokens": len(kept), "vocab_size": emb.num_embeddings, "corpus_sentences": len(texts),
            "coverage": round(coverage, 4), "fallback": fallback, "common": common, "tied": tied}


def kept_tokens(net: nn.Module) -> torch.Tensor | None:
    """The (N,) token ids a vocabulary-pruned causal LM can predict (its VocabHead's, or an export's), or None: all
    of them."""
    if not isinstance(net, nn.Module):  # an export's session (runtime/causal.py) keeps them from its folder
        return getattr(net, "kept_tokens", None)
    head = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    return head.remap if isinstance(head, VocabHead) else None


def tie_vocab(net: nn.Module) -> None:
    """After loading: a causal LM whose config ties its embeddings shares one table between input and output again
    (the saved file holds two copies; int8 unties them): a vocabulary-pruned one's (N, D) between its VocabEmbedding
    and VocabHead, any other's (V, D) between its embedding and lm_head (262k x 640 for Gemma 3: 671 MB once)."""
    head, emb = getattr(net, "get_output_embeddings", lambda: None)(), net.get_input_embeddings()
    tied = getattr(net.config, "tie_word_embeddings", False)
    if (isinstance(head, VocabHead) and isinstance(emb, VocabEmbedding) and type(head.proj) is nn.Linear
            and type(emb.embedding) is nn.Embedding and tied):
        head.proj.weight = emb.embedding.weight
    elif (tied and type(head) is nn.Linear and isinstance(emb, nn.Embedding) and head.weight.shape == emb.weight.shape
          and torch.equal(head.weight, emb.weight)):  # a narrowed decoder's full table: loaded as two (V, D) copies
        head.weight = emb.weight


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
    size = getattr(model.encoder.get_input_embeddings(), "num_embeddings", 0)
    if cfg.corpus is not None:
        texts = read_lines(cfg.corpus)
    else:
        texts = ctx.corpus_texts
        if getattr(ctx, "default_calib", False) and size >= MULTILINGUAL_VOCAB:
            raise StepNotApplicableError(
                f"vocab: this model's vocabulary has {size:,} tokens (multilingual-sized) and the calibration text is "
                "slimformer's English default, which would drop every other language: give text of the languages "
                "the model will read (--calib FILE, or vocab(corpus=PATH))")
    # by default none with keep (a size), nor on a multilingual-sized vocabulary, whose first ids mix languages: Gemma
    # 3's first 16,384 added 0.25% coverage of English text for 11 MB and left perplexity as it was (README)
    common = cfg.common if cfg.common is not None else (
        0 if cfg.keep is not None or size >= MULTILINGUAL_VOCAB else COMMON_TOKENS)
    if getattr(model, "head", None) == "causal-lm":  # the tied table is the output layer too
        return prune_lm_vocab(model.net, model.tokenizer, texts, cfg.keep, cfg.fallback, common)
    return prune_vocab(model.encoder, model.tokenizer, texts, cfg.keep, cfg.fallback, common)

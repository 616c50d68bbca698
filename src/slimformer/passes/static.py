"""`static`: distill the encoder into one vector per token (Model2Vec, Tulkens & van Dongen 2024), optionally fitted
to the encoder's sentence embeddings on the calibration text (Tokenlearn, MinishLab 2025).

1. Token vectors from the model being compressed (the teacher): `tokens=alone` runs each kept token as
   `[CLS] tok [SEP]` and mean-pools the three states (model2vec); `tokens=context` averages the token's output state
   over its occurrences in the calibration text, and uses the alone vector for tokens the text never shows.
2. PCA (centered) to `dims`.
3. Zipf/SIF weighting, folded into the rows: w_t = a / (a + p_t) (Arora et al. 2017), p_t the token's frequency in
   the whole calibration text, so frequent tokens weigh little in the mean.
4. With `fit=M` minutes (or `steps=N`): the table is trained so that the mean of a sentence's token vectors points
   where the teacher's mean-pooled sentence embedding, projected by the same PCA, points (cosine loss, AdamW,
   linear decay), with distill's checkpoint/resume.

The model that comes out is a StaticModel (static_model.py); after `static` only `int8` may follow (recipe.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import Int8, Static
from ..errors import StepNotApplicableError
from ..model import main_output
from ..static_model import StaticModel
from .distill import _Checkpoint
from .int8_kernels import quantize_rows
from .vocab import VocabEmbedding, token_counts

CONTEXT_SENTENCES = 40_000  # calibration sentences the teacher reads (token states in context; the fit's targets)
CONTEXT_BATCH = 64
MAX_LENGTH = 128
SIF_A = 1e-3  # a in a / (a + p); STS-B dev, MiniLM, tokens=context: 80.91 (1e-3), 79.34 (1e-4: model2vec), 73.35 (1e-5)
FIT_LR = 1e-3
FIT_BATCH = 256
CHECKPOINT_SECONDS = 30.0


def kept_ids(model, teacher) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ids of the tokens that get their own vector (N,), mapping (V,) token id -> row, or None when all are kept).
    After `vocab`: its kept tokens (the rows of its VocabEmbedding) and its remap, so a dropped token falls back to
    its nearest kept token exactly as in the transformer."""
    emb = model.encoder.get_input_embeddings()
    if not isinstance(emb, VocabEmbedding):
        return torch.arange(emb.num_embeddings), None
    original = teacher.encoder.get_input_embeddings().weight  # (V, H) the unpruned table
    remap = emb.remap.long()  # (V,)
    own = (original == emb.embedding.weight[remap]).all(1)  # (V,) a kept token reads its own original row
    ids = torch.full((emb.num_embeddings,), -1, dtype=torch.long)
    for i in own.nonzero().flatten().tolist():
        if ids[remap[i]] < 0:
            ids[remap[i]] = i
    return ids[: emb.embedding.num_embeddings], remap


@torch.no_grad()
def alone_vectors(model, ids: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """[CLS] tok [SEP] through the encoder, mean of the three output states: (N, H)."""
    tok = model.tokenizer
    first = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    last = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    out = []
    for i in range(0, len(ids), batch):
        chunk = ids[i : i + batch, None]  # (b, 1)
        x = torch.cat([torch.full_like(chunk, first), chunk, torch.full_like(chunk, last)], 1)  # (b, 3)
        out.append(main_output(model.encoder(input_ids=x, attention_mask=torch.ones_like(x))).mean(1))
    return torch.cat(out)


@torch.no_grad()
def read_context(model, texts: list[str], vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher on calibration text: (sums (V, H) of each token's output states, counts (V,), sentences (S, H):
    the mean of each sentence's output states, special tokens included, as mean pooling reads them)."""
    special = torch.tensor(sorted(set(model.tokenizer.all_special_ids)))
    sums, counts, sentences = None, torch.zeros(vocab_size), []
    order = sorted(range(len(texts)), key=lambda j: len(texts[j]))  # similar lengths per batch: little padding
    for i in range(0, len(texts), CONTEXT_BATCH):
        b = dict(model.tokenizer([texts[j] for j in order[i : i + CONTEXT_BATCH]], padding=True, truncation=True,
                                 max_length=MAX_LENGTH, return_tensors="pt"))
        h = main_output(model.encoder(**b))  # (B, T, H)
        mask = b["attention_mask"].bool()  # (B, T)
        sentences.append((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
        take = mask & ~torch.isin(b["input_ids"], special)
        sums = torch.zeros(vocab_size, h.shape[-1]) if sums is None else sums
        sums.index_add_(0, b["input_ids"][take], h[take])
        counts.index_add_(0, b["input_ids"][take], torch.ones(int(take.sum())))
    return sums, counts, torch.cat(sentences)[torch.tensor(order).argsort()]  # back to the texts' order


def pca(x: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (H,), components (dims, H)) of the rows of x (N, H), largest variance first."""
    mu = x.mean(0)
    _, _, vt = torch.linalg.svd((x - mu).double(), full_matrices=False)
    return mu, vt[:dims].float()


def sif_weights(counts: torch.Tensor) -> torch.Tensor:
    """a / (a + p_t) per token (counts (V,) in the calibration text; an unseen token weighs 1)."""
    p = counts / counts.sum().clamp_min(1)
    return SIF_A / (SIF_A + p)


def fit_loss(table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over sentences of 1 - cos(mean of the sentence's rows, its target): table (N, D), ids (n,) rows,
    offsets (B,) where each sentence starts in ids, targets (B, D)."""
    pred = F.embedding_bag(ids, table, offsets, mode="mean")  # (B, D)
    return (1 - F.cosine_similarity(pred, targets, dim=-1)).mean()


def batch_of(token_rows: list[list[int]], idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (n,), offsets (B,)) of the sentences idx, for fit_loss (a sentence without tokens gets a zero vector)."""
    lens = [len(token_rows[i]) for i in idx]
    offsets = torch.tensor([0] + lens[:-1]).cumsum(0)
    return torch.tensor([t for i in idx for t in token_rows[i]], dtype=torch.long), offsets


def fit(table: torch.Tensor, token_rows: list[list[int]], targets: torch.Tensor, cfg: Static, ckpt: _Checkpoint
        ) -> tuple[torch.Tensor, dict]:
    """Train table (N, D) towards the targets (S, D) of the sentences token_rows (rows of each sentence)."""
    holder = SimpleNamespace(net=nn.Module())
    holder.net.weight = nn.Parameter(table.clone())
    opt = torch.optim.AdamW([holder.net.weight], lr=FIT_LR, weight_decay=0.0)
    done = ckpt.load(holder, opt) or {"step": 0, "elapsed": 0.0, "losses": []}
    step, elapsed, losses = done["step"], done["elapsed"], done["losses"]
    budget_s = cfg.fit * 60
    order = torch.randperm(len(token_rows), generator=torch.Generator().manual_seed(0)).tolist()
    start, start_elapsed, last_save = time.perf_counter(), elapsed, time.perf_counter()
    while (step < cfg.steps) if cfg.steps else (elapsed < budget_s):
        frac = step / cfg.steps if cfg.steps else elapsed / budget_s
        for g in opt.param_groups:
            g["lr"] = FIT_LR * max(0.0, 1.0 - frac)
        idx = [order[(step * FIT_BATCH + j) % len(order)] for j in range(FIT_BATCH)]
        ids, offsets = batch_of(token_rows, idx)
        loss = fit_loss(holder.net.weight, ids, offsets, targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(round(loss.item(), 7))
        elapsed = start_elapsed + time.perf_counter() - start
        if time.perf_counter() - last_save > CHECKPOINT_SECONDS:
            ckpt.save(holder, opt, {"step": step, "elapsed": elapsed, "losses": losses})
            last_save = time.perf_counter()
    ckpt.remove()
    k = max(1, min(20, len(losses) // 3))
    return holder.net.weight.detach(), {"steps": step, "seconds": round(elapsed, 1),
                                        "loss_first": round(sum(losses[:k]) / k, 6) if losses else None,
                                        "loss_last": round(sum(losses[-k:]) / k, 6) if losses else None}


@dataclass
class Basis:
    """What the table is built from: the kept tokens, their PCA'd vectors and the teacher on calibration text."""

    ids: torch.Tensor  # (N,) token id of each row
    mapping: torch.Tensor | None  # (V,) token id -> row, None when N == V
    table: torch.Tensor  # (N, D) PCA'd token vectors, before SIF weights
    mu: torch.Tensor  # (H,) PCA mean
    comp: torch.Tensor  # (D, H) PCA components
    texts: list[str]  # the calibration sentences the teacher read
    sentences: torch.Tensor | None  # (S, H) the teacher's mean-pooled sentences (None: not read)

    def targets(self, sentences: torch.Tensor) -> torch.Tensor:
        """Teacher sentence embeddings (S, H) in the table's basis (S, D): what fit trains the mean of rows to."""
        return (sentences - self.mu) @ self.comp.T

    def rows_of(self, tokenizer, texts: list[str]) -> list[list[int]]:
        """Each text's table rows (its tokens, no special tokens, as StaticModel reads them)."""
        rows = self.mapping if self.mapping is not None else torch.arange(len(self.ids))
        ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        return [rows[torch.tensor(t, dtype=torch.long)].tolist() for t in ids]


def basis(model, cfg: Static, ctx) -> Basis:
    if model.head is not None:
        raise StepNotApplicableError("static: a classifier's head reads token states a static table cannot give; "
                                     "static needs an embedder")
    ids, mapping = kept_ids(model, ctx.teacher)
    hidden = model.encoder.config.hidden_size
    if cfg.dims > min(hidden, len(ids)):
        raise StepNotApplicableError(f"static: dims={cfg.dims} exceeds the model's width {hidden} (or the "
                                     f"{len(ids)} kept tokens)")
    vocab_size = len(mapping) if mapping is not None else len(ids)
    texts = ctx.corpus_texts[:CONTEXT_SENTENCES]
    vectors = alone_vectors(model, ids)  # (N, H)
    sentences = None
    if cfg.tokens == "context" or cfg.fit or cfg.steps:
        sums, counts, sentences = read_context(model, texts, vocab_size)
        if cfg.tokens == "context":
            seen = counts[ids] > 0  # (N,)
            vectors[seen] = sums[ids][seen] / counts[ids][seen, None]
    mu, comp = pca(vectors, cfg.dims)
    return Basis(ids, mapping, (vectors - mu) @ comp.T, mu, comp, texts, sentences)


def static(model, cfg: Static, ctx) -> tuple[StaticModel, dict]:
    """The `static` step: model (a SlimModel) -> (a new StaticModel, the decisions for the manifest)."""
    b = basis(model, cfg, ctx)
    table, vocab_size = b.table, len(b.mapping) if b.mapping is not None else len(b.ids)
    if cfg.zipf:
        counts = torch.zeros(vocab_size)
        for t, c in token_counts(model.tokenizer, ctx.corpus_texts).items():
            counts[t] += c
        row_counts = counts if b.mapping is None else torch.zeros(len(b.ids)).index_add_(0, b.mapping, counts)
        table = table * sif_weights(row_counts)[:, None]
    decisions = {"dims": cfg.dims, "tokens": cfg.tokens, "kept_tokens": len(b.ids), "vocab_size": vocab_size,
                 "zipf": cfg.zipf, "context_sentences": len(b.texts) if b.sentences is not None else 0}
    if cfg.fit or cfg.steps:
        fingerprint = json.dumps([model.manifest["recipe"], len(b.texts), list(table.shape), cfg.fit, cfg.steps])
        table, decisions["fit"] = fit(table, b.rows_of(model.tokenizer, b.texts), b.targets(b.sentences), cfg,
                                      _Checkpoint(ctx.checkpoint_dir, fingerprint))
    manifest = {**model.manifest, "steps": list(model.manifest["steps"])}
    return StaticModel(table.contiguous(), model.tokenizer, b.mapping, None, manifest), decisions


def int8(model: StaticModel, cfg: Int8, ctx) -> dict:
    """`int8` after `static`: the table at 8 bits, one scale per row, stored as model2vec's per-token weights."""
    if model.embeddings.dtype != torch.float32:
        raise StepNotApplicableError("int8: the static table is already quantized")
    if cfg.embedding_bits != 8:
        raise StepNotApplicableError("int8: a static table is stored at 8 bits (model2vec and sentence-transformers "
                                     "read no 4-bit table); use embedding_bits=8")
    q, scale = quantize_rows(model.embeddings)  # (N, D) int8, (N,)
    model.embeddings = q
    model.weights = scale[model.mapping] if model.mapping is not None else scale  # (V,)
    return {"embeddings": ["table"], "bits": 8}

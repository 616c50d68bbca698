"""SlimModel: tokenizer + net (a Hugging Face model: a base encoder, or a task model whose head sits on one) +
pooling, with the manifest of what was done to it.

`model(**inputs)` is the net's own forward (same signature, same outputs as the model it came from: `.logits` for a
classifier, `.last_hidden_state` for a base encoder); `model.encode(texts)` works like sentence-transformers' encode,
`model.predict(texts or pairs)` like its CrossEncoder.predict (logits, no activation).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .arch import Adapter, adapter_for, head_of, model_type_of
from .errors import PoolingError, UnsupportedArchitectureError
from .runtime.heap import keep_freed_memory
from .vision import IMAGE, load_pixels

keep_freed_memory()  # before any forward: big activations come from a kept heap, not fresh mmaps (runtime/heap.py)
POOLING_MODES = ("mean", "cls", "max")


def main_output(out) -> torch.Tensor:
    """The main tensor of a model's output, whatever its type: an encoder's token states (B, T, H), a task head's
    logits ((B, C) or (B, T, C))."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0]


Inputs = list[str] | list[tuple[str, str]]  # sentences, or sentence pairs (a cross-encoder's input)


class SentenceEncoder:
    """encode(), predict() and tokenize(), shared by SlimModel and the exported models (runtime/export.py): a
    subclass has `tokenizer` and `max_seq_length`, and supplies embed_batch(tokenized batch) -> (B, H) sentence
    embeddings and, if it has a classification head, logits_batch(tokenized batch) -> (B, C) or (B, T, C) logits."""

    tokenizer: Any
    max_seq_length: int

    def tokenize(self, texts: Inputs) -> dict[str, torch.Tensor]:
        """Sentences, or (first, second) pairs tokenized as pairs (token_type_ids mark the second sentence); an image
        model's images (file paths or PIL images) through its image processor: {"pixel_values": (B, C, H, W)}."""
        if getattr(self, "modality", "text") == IMAGE:
            return {"pixel_values": load_pixels(texts, self.tokenizer)}
        pairs = bool(texts) and not isinstance(texts[0], str)
        args = (list(t[0] for t in texts), list(t[1] for t in texts)) if pairs else (list(texts),)
        return dict(self.tokenizer(*args, padding=True, truncation=True, max_length=self.max_seq_length,
                                   return_tensors="pt"))

    def embed_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def logits_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise UnsupportedArchitectureError("predict needs a classification head; this model is an embedder "
                                           "(use encode)")

    @torch.inference_mode()
    def predict(self, inputs: Inputs, batch_size: int = 32) -> np.ndarray | list[np.ndarray]:
        """Logits like sentence-transformers' CrossEncoder.predict without activation: (N, C) for a sequence
        classifier; for a token classifier a list of N (T_i, C) arrays, one row per real token (special tokens
        included). `inputs`: sentences, or (first, second) pairs, or an image classifier's images (file paths or PIL
        images). Longest first, padded per batch, in input order."""
        items = list(inputs)
        text = getattr(self, "modality", "text") != IMAGE  # images: one size, in input order
        order = np.argsort([-sum(map(len, (t,) if isinstance(t, str) else t)) if text else 0 for t in items],
                           kind="stable")
        out: list = [None] * len(items)
        for i in range(0, len(items), batch_size):
            idx = order[i : i + batch_size]
            batch = self.tokenize([items[j] for j in idx])
            logits = self.logits_batch(batch).float()  # (B, C) or (B, T, C)
            for row, j in enumerate(idx):
                if logits.dim() == 3:
                    out[j] = logits[row][batch["attention_mask"][row].bool()].numpy()  # (T_j, C)
                else:
                    out[j] = logits[row].numpy()  # (C,)
        if out and out[0].ndim == 2:
            return out
        return np.stack(out) if out else np.empty((0, 0), dtype=np.float32)

    @torch.inference_mode()
    def encode(self, sentences: str | list[str], batch_size: int = 32, show_progress_bar: bool = False,
               convert_to_numpy: bool = True, convert_to_tensor: bool = False,
               normalize_embeddings: bool | None = None) -> np.ndarray | torch.Tensor:
        """Sentence embeddings, (N, H) (or (H,) for one string). Like sentence-transformers: longest first, padded
        per batch, returned in input order. `normalize_embeddings` L2-normalizes on top of the model's own setting."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        # sentence-transformers' order, ties included (numpy's default sort): the same batches, so an int8 export
        # (ORT: one activation scale per batch) gives the same embeddings in both (other batches: cosine ~0.99)
        order = np.argsort([-len(t) for t in texts])
        chunks = range(0, len(texts), batch_size)
        if show_progress_bar:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="encode", unit="batch")
        out = [self.embed_batch(self.tokenize([texts[j] for j in order[i : i + batch_size]])) for i in chunks]
        emb = torch.cat(out) if out else torch.empty(0, 0)
        emb = emb[torch.from_numpy(np.argsort(order))]  # back to input order
        return encode_output(emb, single, convert_to_numpy, convert_to_tensor, normalize_embeddings)


def encode_output(emb: torch.Tensor, single: bool, convert_to_numpy: bool, convert_to_tensor: bool,
                  normalize_embeddings: bool | None) -> np.ndarray | torch.Tensor:
    """(N, H) embeddings in input order -> what encode returns, as sentence-transformers does: normalized on request,
    (H,) for one string, a tensor or an array."""
    if normalize_embeddings:
        emb = F.normalize(emb, p=2, dim=-1)
    if single:
        emb = emb[0]
    if convert_to_tensor or not convert_to_numpy:
        return emb
    return emb.numpy()


class SlimModel(SentenceEncoder, nn.Module):
    def __init__(self, net: nn.Module, tokenizer, pooling: str = "mean", normalize: bool = False,
                 max_seq_length: int = 256, manifest: dict | None = None):
        super().__init__()
        if pooling not in POOLING_MODES:
            raise PoolingError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        self.net = net.eval()  # the whole model as loaded: a task model (encoder + head) or the base encoder
        self.tokenizer = tokenizer
        self.pooling, self.normalize, self.max_seq_length = pooling, normalize, max_seq_length
        # what was done to this model: {"source", "recipe", "steps": [{"step", ...decisions}]}; io.py adds the rest
        self.manifest: dict[str, Any] = manifest if manifest is not None else {"source": None, "recipe": "",
                                                                                "steps": []}

    @property
    def encoder(self) -> nn.Module:
        """The base encoder inside `net` (every pass works on it; adapter paths are relative to it); `net` itself
        when it is the base model or a plain torch module."""
        return getattr(self.net, "base_model", self.net)

    @property
    def head(self) -> str | None:
        """None (an embedder), "sequence-classification", "token-classification", "image-classification" or
        "causal-lm"."""
        return None if self.encoder is self.net else head_of([type(self.net).__name__])

    @property
    def config(self):
        return self.net.config  # a task model's config: the encoder's plus id2label / num_labels

    @property
    def model_type(self) -> str:
        return model_type_of(self.encoder)

    @property
    def adapter(self) -> Adapter:
        return adapter_for(self.model_type)

    @property
    def modality(self) -> str:
        """"text" (input_ids, attention_mask; `tokenizer` is a tokenizer) or "image" (pixel_values (B, C, H, W);
        `tokenizer` holds the image processor, or None for a model built in code)."""
        return self.adapter.modality

    def forward(self, *args, **kwargs):
        frozen = self.__dict__.get("frozen")  # set by the `freeze` step (passes/freeze.py); not a submodule
        if frozen is not None and frozen.handles(args, kwargs):
            return frozen(**kwargs)
        return self.net(*args, **kwargs)

    def clone(self) -> "SlimModel":
        """A deep copy sharing only the (immutable) tokenizer."""
        new = copy.copy(self)
        new._modules = {"net": copy.deepcopy(self.net)}
        new.manifest = copy.deepcopy(self.manifest)
        new.__dict__["frozen"] = None  # a traced graph holds the old weights; the copy runs eager
        return new

    def pool(self, token_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, H) token states -> (B, H) sentence embeddings, ignoring padded positions. attention_mask None:
        every position is real (an image's patches; "cls" is then its CLS token)."""
        if attention_mask is None:
            attention_mask = torch.ones(token_states.shape[:2], dtype=torch.long)  # (B, T)
        mask = attention_mask.unsqueeze(-1).to(token_states.dtype)  # (B, T, 1)
        if self.pooling == "cls":
            out = token_states[:, 0]
        elif self.pooling == "max":
            out = token_states.masked_fill(mask == 0, float("-inf")).amax(1)
        else:
            out = (token_states * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(out, p=2, dim=-1) if self.normalize else out

    def embed_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A tokenized batch (or {"pixel_values": (B, C, H, W)}) -> (B, H) pooled sentence (image) embeddings,
        through the frozen graph when there is one; a task model's encoder pooled (its head's output is no sentence
        embedding)."""
        out = self(**batch) if self.head is None else self.encoder(**batch)
        return self.pool(main_output(out), batch.get("attention_mask"))

    def logits_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A tokenized batch -> the head's logits, (B, C) or (B, T, C), through the frozen graph when there is one."""
        if self.head is None:
            return super().logits_batch(batch)
        return self(**batch).logits

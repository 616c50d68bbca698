"""SlimModel: tokenizer + encoder (a Hugging Face base model) + pooling, with the manifest of what was done to it.

`model(**inputs)` is the encoder's own forward (same signature, same outputs as the model it came from);
`model.encode(texts)` works like sentence-transformers' encode.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .arch import Adapter, adapter_for, model_type_of
from .errors import PoolingError

POOLING_MODES = ("mean", "cls", "max")


def main_output(out) -> torch.Tensor:
    """The token states of an encoder's output, whatever its type: (B, T, H)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0]


class SentenceEncoder:
    """encode() and tokenize(), shared by SlimModel and the exported models (runtime/export.py): a subclass has
    `tokenizer` and `max_seq_length`, and supplies embed_batch(tokenized batch) -> (B, H) sentence embeddings."""

    tokenizer: Any
    max_seq_length: int

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_length,
                                   return_tensors="pt"))

    def embed_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

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
        if normalize_embeddings:
            emb = F.normalize(emb, p=2, dim=-1)
        if single:
            emb = emb[0]
        if convert_to_tensor or not convert_to_numpy:
            return emb
        return emb.numpy()


class SlimModel(SentenceEncoder, nn.Module):
    def __init__(self, encoder: nn.Module, tokenizer, pooling: str = "mean", normalize: bool = False,
                 max_seq_length: int = 256, manifest: dict | None = None):
        super().__init__()
        if pooling not in POOLING_MODES:
            raise PoolingError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        self.pooling, self.normalize, self.max_seq_length = pooling, normalize, max_seq_length
        # what was done to this model: {"source", "recipe", "steps": [{"step", ...decisions}]}; io.py adds the rest
        self.manifest: dict[str, Any] = manifest if manifest is not None else {"source": None, "recipe": "",
                                                                                "steps": []}

    @property
    def config(self):
        return self.encoder.config

    @property
    def model_type(self) -> str:
        return model_type_of(self.encoder)

    @property
    def adapter(self) -> Adapter:
        return adapter_for(self.model_type)

    def forward(self, *args, **kwargs):
        frozen = self.__dict__.get("frozen")  # set by the `freeze` step (passes/freeze.py); not a submodule
        if frozen is not None and frozen.handles(args, kwargs):
            return frozen(**kwargs)
        return self.encoder(*args, **kwargs)

    def clone(self) -> "SlimModel":
        """A deep copy sharing only the (immutable) tokenizer."""
        new = copy.copy(self)
        new._modules = {"encoder": copy.deepcopy(self.encoder)}
        new.manifest = copy.deepcopy(self.manifest)
        new.__dict__["frozen"] = None  # a traced graph holds the old weights; the copy runs eager
        return new

    def pool(self, token_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) token states -> (B, H) sentence embeddings, ignoring padded positions."""
        mask = attention_mask.unsqueeze(-1).to(token_states.dtype)  # (B, T, 1)
        if self.pooling == "cls":
            out = token_states[:, 0]
        elif self.pooling == "max":
            out = token_states.masked_fill(mask == 0, float("-inf")).amax(1)
        else:
            out = (token_states * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(out, p=2, dim=-1) if self.normalize else out

    def embed_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A tokenized batch -> (B, H) pooled sentence embeddings, through the frozen graph when there is one."""
        return self.pool(main_output(self(**batch)), batch["attention_mask"])

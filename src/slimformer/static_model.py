"""StaticModel: a sentence embedding without a transformer. tokenize -> gather one vector per token -> mean ->
normalize (Model2Vec, MinishLab 2024; sentence-transformers' StaticEmbedding). `passes/static.py` builds one.

The table is stored the way model2vec stores a (vocabulary-quantized) model, which sentence-transformers'
StaticEmbedding also reads, so one folder serves slimformer, sentence-transformers (modules.json) and model2vec:

    model.safetensors  embeddings (N, D) float32, or int8 after `int8`
                       mapping    (V,) int64   token id -> row (only when N != V: a `vocab`-pruned table)
                       weights    (V,) float32 per-token factor (only after `int8`: the row's scale)
    vector(id) = embeddings[mapping[id]] * weights[id]

Zipf/SIF weights are folded into the rows, so the sentence vector is a plain mean of the token vectors.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import WeightsError
from .folder import MANIFEST, atomic_folder, manifest_fields
from .model import SentenceEncoder, encode_output

WEIGHTS = "model.safetensors"
MAX_TOKENS = 512  # tokens read per sentence (model2vec's default); a mean needs no position table
FLAT_CHUNK = 4096  # sentences tokenized at once by encode


class StaticModel(SentenceEncoder, nn.Module):
    """One vector per token. forward(input_ids (B, T), attention_mask (B, T)) -> (B, D) sentence vectors: the work
    `bench` times (ids in, vectors out); encode(texts) adds the tokenizer (no special tokens, as model2vec)."""

    def __init__(self, embeddings: torch.Tensor, tokenizer, mapping: torch.Tensor | None = None,
                 weights: torch.Tensor | None = None, manifest: dict | None = None, normalize: bool = True):
        super().__init__()
        self.register_buffer("embeddings", embeddings)  # (N, D) float32 or int8
        self.register_buffer("mapping", mapping)  # (V,) int64 or None (N == V)
        self.register_buffer("weights", weights)  # (V,) float32 or None
        self.tokenizer, self.normalize, self.max_seq_length = tokenizer, normalize, MAX_TOKENS
        self.pooling, self.head = "mean", None  # what evaluate() and the reports read
        self.manifest = manifest if manifest is not None else {"source": None, "recipe": "", "steps": []}

    @property
    def encoder(self) -> nn.Module:
        return self  # what bench times: this module's forward

    @property
    def dims(self) -> int:
        return self.embeddings.shape[1]

    @property
    def vocab_size(self) -> int:
        return len(self.mapping) if self.mapping is not None else self.embeddings.shape[0]

    def n_params(self) -> int:
        return self.embeddings.numel()

    def clone(self) -> "StaticModel":
        import copy

        copied = [None if t is None else t.clone() for t in (self.embeddings, self.mapping, self.weights)]
        return StaticModel(copied[0], self.tokenizer, copied[1], copied[2], copy.deepcopy(self.manifest),
                           self.normalize)

    def table(self) -> torch.Tensor:
        """The full (V, D) float32 table: every token id's vector."""
        return self.vectors(torch.arange(self.vocab_size))

    def vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (n,) -> their vectors (n, D) float32: one gather from the float table (V, D). An int8 or
        `vocab`-mapped table is expanded once, in memory (V x D x 4 bytes: 31 MB for MiniLM at 256 dims), since
        per-call mapping and dequantizing made encode ~15% slower; the folder keeps the small table."""
        if self.mapping is None and self.weights is None:
            return self.embeddings[ids].float()
        key = tuple((t.data_ptr(), t._version) if t is not None else None
                    for t in (self.embeddings, self.mapping, self.weights))  # any of the three changed: expand again
        cached = self.__dict__.get("_expanded")
        if cached is None or cached[0] != key:
            everything = torch.arange(self.vocab_size)
            rows = self.embeddings[self.mapping if self.mapping is not None else everything].float()  # (V, D)
            cached = (key, rows * self.weights[:, None] if self.weights is not None else rows)
            self.__dict__["_expanded"] = cached
        return cached[1][ids]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **unused) -> torch.Tensor:
        # token_type_ids and the like are discarded: a static vector does not depend on position or segment
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        real = attention_mask.bool()  # (B, T)
        return self.mean_of(input_ids[real], real.sum(1))  # real tokens only: padding never enters the sum

    def mean_of(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The sentences' token ids one after another (n,) and each sentence's count (B,) -> (B, D) vectors."""
        rows = self.vectors(ids)  # (n, D)
        sentence = torch.repeat_interleave(torch.arange(len(lengths)), lengths)  # (n,) row -> sentence
        out = torch.zeros(len(lengths), self.dims).index_add_(0, sentence, rows)  # (B, D)
        out = out / lengths.unsqueeze(1).clamp_min(1)
        return F.normalize(out, dim=-1) if self.normalize else out

    @torch.inference_mode()
    def encode(self, sentences: str | list[str], batch_size: int = 32, show_progress_bar: bool = False,
               convert_to_numpy: bool = True, convert_to_tensor: bool = False,
               normalize_embeddings: bool | None = None) -> np.ndarray | torch.Tensor:
        """SentenceEncoder.encode's result without its padded batches: at this speed the tokenizer is most of the
        time, and its padded tensors (the transformers wrapper) cost about as much as the tokenization itself, so the
        Rust tokenizer's ids go straight to a flat gather (no padding: batch_size does not change the result)."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        fast, out = self.fast_tokenizer(), []
        for i in range(0, len(texts), FLAT_CHUNK):  # bounded memory for big corpora
            ids = [e.ids[: self.max_seq_length] for e in fast.encode_batch_fast(texts[i : i + FLAT_CHUNK],
                                                                               add_special_tokens=False)]
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64)  # (n,)
            lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))  # (B,)
            out.append(self.mean_of(torch.from_numpy(flat), torch.from_numpy(lengths)))
        emb = torch.cat(out) if out else torch.empty(0, self.dims)
        return encode_output(emb, single, convert_to_numpy, convert_to_tensor, normalize_embeddings)

    def fast_tokenizer(self):
        """A private copy of the Rust tokenizer with padding and truncation off (the transformers wrapper leaves its
        last call's settings on the shared one)."""
        fast = self.__dict__.get("_fast")
        if fast is None:
            from tokenizers import Tokenizer

            fast = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
            fast.no_padding()
            fast.no_truncation()
            self.__dict__["_fast"] = fast
        return fast

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if texts and not isinstance(texts[0], str):
            raise TypeError("a static model encodes sentences, not pairs")
        return dict(self.tokenizer(list(texts), add_special_tokens=False, padding=True, truncation=True,
                                   max_length=self.max_seq_length, return_tensors="pt",
                                   return_token_type_ids=False))

    def embed_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["input_ids"], batch["attention_mask"])

    # ------------------------------------------------------------------------------------------- save / load

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"embeddings": self.embeddings.contiguous()}
        if self.mapping is not None:
            out["mapping"] = self.mapping.contiguous()
        if self.weights is not None:
            out["weights"] = self.weights.contiguous()
        return out

    def save(self, out_dir: str | os.PathLike, force: bool = False, extra_files: dict[str, str] | None = None) -> Path:
        """slimformer.json + the model2vec/sentence-transformers files (module docstring), atomically."""
        out = Path(out_dir).resolve()
        with atomic_folder(out, force, source=self.manifest.get("source")) as tmp:
            save_file(self.tensors(), tmp / WEIGHTS, metadata={"format": "pt"})
            manifest = {**manifest_fields(self), "static": {"dims": self.dims, "vocab_size": self.vocab_size,
                                                            "dtype": str(self.embeddings.dtype).split(".")[-1]}}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
            self.tokenizer.save_pretrained(tmp)  # tokenizer.json among them: what the other two read
            # model2vec's config; sentence-transformers' modules: the table in this folder, then Normalize
            (tmp / "config.json").write_text(json.dumps({
                "model_type": "model2vec", "architectures": ["StaticModel"], "tokenizer_name": self.manifest.get(
                    "source"), "apply_pca": self.dims, "hidden_dim": self.dims, "seq_length": self.max_seq_length,
                "normalize": self.normalize, "embedding_dtype": str(self.embeddings.dtype).split(".")[-1],
                **({"vocabulary_quantization": len(self.embeddings)} if self.mapping is not None else {})}, indent=1))
            modules = [{"idx": 0, "name": "0", "path": ".", "type": "sentence_transformers.models.StaticEmbedding"}]
            if self.normalize:
                (tmp / "1_Normalize").mkdir()
                modules.append({"idx": 1, "name": "1", "path": "1_Normalize",
                                "type": "sentence_transformers.models.Normalize"})
            (tmp / "modules.json").write_text(json.dumps(modules, indent=1))
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StaticModel":
        """A folder this class saved, or one model2vec saved (config.json says model_type "model2vec")."""
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        path = Path(path)
        try:
            t = load_file(path / WEIGHTS)
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"{path / WEIGHTS}: not a readable safetensors file "
                               f"({str(e).splitlines()[0]})") from None
        if "embeddings" not in t:
            raise WeightsError(f"{path / WEIGHTS}: no 'embeddings' table for a static model")
        if (path / MANIFEST).is_file():
            manifest = json.loads((path / MANIFEST).read_text())
            kept = {k: manifest.get(k) for k in ("source", "recipe", "steps")}
            normalize = manifest["pooling"]["normalize"]
        else:  # model2vec's own folder
            kept = {"source": str(path.resolve()), "recipe": "", "steps": []}
            normalize = bool(json.loads((path / "config.json").read_text()).get("normalize", True))
        tokenizer = AutoTokenizer.from_pretrained(path) if (path / MANIFEST).is_file() else \
            PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
        if tokenizer.pad_token is None:  # model2vec's tokenizer.json names none; padding is masked out anyway
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)
        embeddings = t["embeddings"] if t["embeddings"].dtype == torch.int8 else t["embeddings"].float()
        return cls(embeddings, tokenizer, t.get("mapping"), t.get("weights"), kept, normalize)

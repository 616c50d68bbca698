"""An export folder served as the model it holds, with what slimformer calls on the torch model: an encoder's or
classifier's ExportedModel (encode / predict), a causal LM's (ExportedCausalLM), Whisper's (ExportedSpeech);
loaded by `slimformer.load(EXPORT)` (load_export)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..arch import CAUSAL_LM, SPEECH_SEQ2SEQ
from ..errors import SlimformerError, UnsupportedArchitectureError
from ..folder import FORMAT, MANIFEST
from ..model import SentenceEncoder
from ..speech import SPEECH
from ..vision import IMAGE
from . import causal, layout, onnx, whisper
from .export import GRAPH_INPUTS, RUNTIMES


def graph_inputs(input_ids, attention_mask, token_type_ids=None,
                 names: tuple[str, ...] | list[str] = GRAPH_INPUTS) -> dict[str, np.ndarray]:
    """The feed of a graph whose inputs are `names`, (B, T) int64 each, from tensors or arrays; token_type_ids
    not given are zeros (one segment, as the tokenizer makes them for a single sentence)."""
    given = {"input_ids": input_ids, "attention_mask": attention_mask,
             "token_type_ids": np.zeros_like(np.asarray(input_ids)) if token_type_ids is None else token_type_ids}
    return {n: np.asarray(given[n], dtype=np.int64) for n in names}


class ExportedEncoder:
    """A runtime session as a callable encoder, what bench times: enc(input_ids=..., attention_mask=...) -> the
    graph's outputs as torch tensors: (token states (B, T, H), sentence embedding (B, H)), or a classifier's
    (logits,); size_mb and n_params of its files."""

    def __init__(self, session):
        self.session = session  # onnx.OrtSession or openvino.OpenVinoSession

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None, **unused):
        del unused  # anything else a tokenizer returns: the graph has no input for it
        if pixel_values is not None:  # an image model's graph: pixel_values (B, C, H, W) float32 alone
            feed = {"pixel_values": np.asarray(pixel_values, dtype=np.float32)}
        else:
            feed = graph_inputs(input_ids, attention_mask, token_type_ids, self.session.input_names)
        return tuple(torch.from_numpy(o) for o in self.session.run(feed))

    def size_mb(self) -> float:
        return self.session.size_mb()

    def n_params(self) -> int:
        return self.session.n_params()


def read_manifest(folder: Path) -> dict:
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("runtime") not in RUNTIMES:
        raise SlimformerError(f"{folder}: not an ONNX Runtime or OpenVINO export")
    if manifest.get("format") != FORMAT:
        raise SlimformerError(f"{folder / MANIFEST}: unsupported manifest format {manifest.get('format')}")
    return manifest


def session(folder: Path, runtime: str, name: str = "model"):
    """The export's graph `name` in its runtime: onnx.OrtSession or openvino.OpenVinoSession."""
    graph = layout.graph_file(folder, runtime, name)  # this layout's, or the one before it
    if runtime == "openvino":
        from . import openvino

        return openvino.OpenVinoSession(graph)
    return onnx.OrtSession(graph)


def load_export(folder: str | os.PathLike):
    """An export folder as the model it serves: ExportedModel, ExportedCausalLM or ExportedSpeech."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.get("head") == CAUSAL_LM:
        return ExportedCausalLM(folder, manifest)
    if manifest.get("head") == SPEECH_SEQ2SEQ:
        return ExportedSpeech(folder, manifest)
    return ExportedModel(folder)


class ExportedCausalLM:
    """A causal LM's export, served as slimformer serves the torch model: model(**batch).logits (perplexity),
    model.net (prefill, generate), tokenizer, manifest; head "causal-lm"."""

    head, modality = CAUSAL_LM, "text"

    def __init__(self, folder: Path, manifest: dict):
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        self.manifest = manifest
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.config = AutoConfig.from_pretrained(folder)
        gen = GenerationConfig.from_pretrained(folder) if (folder / "generation_config.json").is_file() else None
        eos = getattr(gen, "eos_token_id", None) or self.config.eos_token_id
        self.max_seq_length = self.manifest["pooling"]["max_seq_length"]
        self.net = causal.CausalSession(session(folder, manifest["runtime"]), manifest["kv_cache"],
                                        [eos] if isinstance(eos, int) else list(eos or []))
        self.encoder = self.net  # what bench times: model(**inputs), logits at every position
        kept = folder / causal.KEPT_FILE
        self.net.kept_tokens = torch.tensor(json.loads(kept.read_text())) if kept.is_file() else None

    def __call__(self, **batch):
        return self.net(**batch)


class ExportedSpeech:
    """Whisper's export as slimformer serves the torch model: transcribe(model, clips), eval --task wer, bench
    (encoder ms, real-time factor); `net` is whisper.SpeechSession."""

    head, modality = SPEECH_SEQ2SEQ, SPEECH

    def __init__(self, folder: Path, manifest: dict):
        from transformers import AutoConfig

        from ..speech import SpeechProcessor

        self.manifest, self.tokenizer = manifest, SpeechProcessor.from_pretrained(folder)
        sessions = {name: session(folder, manifest["runtime"], name) for name in whisper.GRAPHS}
        self.net = whisper.SpeechSession(sessions, manifest["kv_cache"], AutoConfig.from_pretrained(folder))
        self.encoder = self.net


class ExportedModel(SentenceEncoder):
    """An exported model (ONNX Runtime or OpenVINO, as its manifest says) with SlimModel's encode(); pooling happens
    inside the graph."""

    def __init__(self, folder: str | os.PathLike):
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        folder = Path(folder)
        self.manifest = manifest = read_manifest(folder)
        self.head = manifest.get("head")  # absent in exports written before heads were kept: an embedder
        self.encoder = ExportedEncoder(session(folder, manifest["runtime"]))
        image = self.encoder.session.input_names == ["pixel_values"]
        self.modality = IMAGE if image else "text"  # vision.is_image reads it
        self.tokenizer = AutoTokenizer.from_pretrained(folder) if not image else (
            AutoImageProcessor.from_pretrained(folder) if (folder / "preprocessor_config.json").is_file() else None)
        # config.json (this layout) tells a classifier's labels (id2label), as the SlimModel's config does
        self.config = AutoConfig.from_pretrained(folder) if (folder / "config.json").is_file() else None
        p = manifest["pooling"]
        self.pooling, self.normalize, self.max_seq_length = p["mode"], p["normalize"], p["max_seq_length"]

    def embed_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.head is not None:
            raise UnsupportedArchitectureError("encode: this export holds a classifier's logits graph (use predict)")
        return self.encoder(**batch)[1]  # (B, H): pooled (and normalized) inside the graph

    def logits_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.head is None:
            return super().logits_batch(batch)
        return self.encoder(**batch)[0]  # (B, C) or (B, T, C)

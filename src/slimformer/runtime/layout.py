"""The export folder, laid out the way sentence-transformers (`backend="onnx"` / `"openvino"`) and optimum's
ORTModelForFeatureExtraction / optimum-intel's OVModelForFeatureExtraction load a model, so they serve it without
slimformer:

    EXPORT/
      config.json                    the Hugging Face config of the compressed model (optimum reads model_type)
      onnx/model.onnx                or openvino/openvino_model.xml + .bin: the graph, fed by its input names
      modules.json                   Transformer -> Pooling (-> Normalize): how sentence-transformers pools
      sentence_bert_config.json      max_seq_length
      1_Pooling/config.json          the pooling mode, in the keys both sentence-transformers 5 and 6 read
      2_Normalize/                   only when the model normalizes
      tokenizer files, slimformer.json
      a causal LM: generation_config.json, and kept_tokens.json after `vocab`; no sentence-transformers modules
      Whisper: onnx/encoder_model.onnx + onnx/decoder_model.onnx (or openvino/openvino_*.xml), its preprocessor

Exports written before this layout hold model.onnx / model.xml at the top; graph_file still finds them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ..arch import CAUSAL_LM, config_of
from ..errors import ModelNotFoundError
from ..passes.structure import ffn_per_layer, hidden_size
from ..passes.vocab import kept_tokens
from ..vision import is_image
from .causal import KEPT_FILE

GRAPH_FILES = {"onnxruntime": "onnx/model.onnx", "openvino": "openvino/openvino_model.xml"}
LEGACY_FILES = {"onnxruntime": "model.onnx", "openvino": "model.xml"}  # the layout before sentence-transformers'

POOLING_KEYS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens"}


def graph_name(runtime: str, name: str = "model") -> str:
    """Where graph `name` goes: "model" (the one graph of most exports) as GRAPH_FILES says; a model of several
    graphs (Whisper: encoder_model, decoder_model) under the same folder, as optimum names them."""
    if name == "model":
        return GRAPH_FILES[runtime]
    return f"onnx/{name}.onnx" if runtime == "onnxruntime" else f"openvino/openvino_{name}.xml"


def graph_file(folder: Path, runtime: str, name: str = "model") -> Path:
    """The graph `name` of an export, in the current layout or (the one graph) the old one."""
    for file in (graph_name(runtime, name), LEGACY_FILES[runtime] if name == "model" else None):
        if file is not None and (folder / file).is_file():
            return folder / file
    raise ModelNotFoundError(f"{folder}: no {graph_name(runtime, name)} (a {runtime} export without its graph)")


def write(folder: Path, model) -> None:
    """Everything but the graph and slimformer.json: config.json, the tokenizer files, sentence-transformers'
    modules. `model`: the SlimModel that was exported."""
    if model.tokenizer is not None:  # an image model built in code has no image processor
        model.tokenizer.save_pretrained(folder)
    if config_of(model.encoder) is not None:  # a plain torch encoder has no Hugging Face config to write
        hf_config(model).save_pretrained(folder)
    if model.head == CAUSAL_LM:  # generate's eos / pad ids; a pruned vocabulary's ids (perplexity's <unk> rule)
        model.net.generation_config.save_pretrained(folder)
        if (kept := kept_tokens(model.net)) is not None:
            (folder / KEPT_FILE).write_text(json.dumps(kept.tolist()))
    if model.head is not None or is_image(model):  # a classifier: config.json (architectures, id2label) is what
        return  # optimum's classes read; an image model: sentence-transformers has no image modules to describe
    write_sentence_transformers(folder, model.pooling, model.normalize, model.max_seq_length,
                                hidden_size(model.encoder, model.adapter))


def hf_config(model):
    """The encoder's config with the widths the compressed model really has where every layer agrees:
    num_hidden_layers (already kept by the structure record) and the FFN width. The head count stays the
    original's: a BERT config has no head size of its own (hidden_size / num_attention_heads), so 6 heads of 32
    in a 384-wide model cannot be written as num_attention_heads=6; the per-layer counts are in slimformer_heads.
    No loader of the graph reads the widths: optimum takes model_type from it, sentence-transformers the hidden
    size (unchanged by pruning), and the graph carries each layer's head count itself."""
    config = copy.deepcopy(model.net.config)  # a classifier's: with architectures and id2label
    ffn = ffn_per_layer(model.encoder, model.adapter)
    if ffn and len(set(ffn)) == 1:
        setattr(config, model.adapter.ffn_key, ffn[0])
    return config


def write_sentence_transformers(folder: Path, pooling: str, normalize: bool, max_seq_length: int, dim: int) -> None:
    """modules.json and the files of its modules; the Transformer module is the folder itself (path "")."""
    kinds = ["Transformer", "Pooling"] + (["Normalize"] if normalize else [])
    paths = ["", "1_Pooling", "2_Normalize"]
    modules = [{"idx": i, "name": str(i), "path": paths[i], "type": f"sentence_transformers.models.{kind}"}
               for i, kind in enumerate(kinds)]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2))
    (folder / "1_Pooling").mkdir()
    pool = {"word_embedding_dimension": dim, **{key: mode == pooling for mode, key in POOLING_KEYS.items()},
            "pooling_mode_mean_sqrt_len_tokens": False}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pool, indent=2))
    if normalize:
        (folder / "2_Normalize").mkdir()

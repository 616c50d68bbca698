"""Architecture adapters as data (after TextPruner): where each role lives, as attribute paths.

Paths of q/k/v/o, ffn_in, ffn_out and attn are relative to one block of `layers`; `layers` and `word_embeddings`
are relative to the encoder (the Hugging Face base model, or a plain torch module). No pass hard-codes a path: it
asks the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Adapter:
    name: str
    layers: str  # the nn.ModuleList of blocks
    q: str
    k: str
    v: str
    o: str
    ffn_in: str  # hidden -> intermediate
    ffn_out: str  # intermediate -> hidden
    attn: str  # the module holding the per-layer head count attributes
    heads_attrs: tuple[str, ...]  # attributes of `attn` that hold the number of heads
    width_attrs: tuple[str, ...]  # attributes of `attn` that hold heads * head_size
    word_embeddings: str | None
    heads_key: str  # config key of the head count
    ffn_key: str  # config key of the intermediate size
    layers_key: str  # config key of the number of layers
    hidden_key: str  # config key of the hidden size
    o_in_attn: bool  # the output projection o lives inside the `attn` module (so a 0-head layer keeps its bias there)
    shared_head_bias: bool = False  # one (B, heads, T, T) position bias, computed once, is passed to every layer
    modality: str = "text"  # what the net takes: "text" (input_ids, attention_mask) or "image" (pixel_values)
    ffn_gate: str | None = None  # a gated FFN's second input projection (GeGLU: down(act(gate x) * up x)), or None
    kv_heads_key: str | None = None  # grouped-query attention: config key of the number of key/value heads
    head_dim_key: str | None = None  # config key of the head width, where it is not hidden / heads
    kv_groups_attr: str | None = None  # attribute of `attn`: query heads per key/value head (repeat_kv reads it)
    record: str = "slimformer"  # prefix of the config keys the structure record writes (one per stack of a model)
    float_modules: tuple[str, ...] = ()  # name suffixes int8 leaves alone (read as raw tensors by their owner)
    min_heads: int = 0  # heads every attending layer keeps (a decoder's KV cache, which positions are read off)
    tokens_key: str | None = None  # config key of the fixed length the stack runs at (FLOPs are counted there)

    def roles(self) -> dict[str, str]:
        return {"q": self.q, "k": self.k, "v": self.v, "o": self.o, "ffn_in": self.ffn_in, "ffn_out": self.ffn_out,
            **({"ffn_gate": self.ffn_gate} if self.ffn_gate else {})}


_BERT = Adapter(
    name="bert",
    layers="encoder.layer",
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    o="attention.output.dense",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
    attn="attention.self",
    heads_attrs=("num_attention_heads",),
    width_attrs=("all_head_size",),
    word_embeddings="embeddings.word_embeddings",
    heads_key="num_attention_heads",
    ffn_key="intermediate_size",
    layers_key="num_hidden_layers",
    hidden_key="hidden_size",
    o_in_attn=False,
)

# model_types (config.json) whose Hugging Face base model has the BERT module layout above: checked on a tiny random
# model of each (prune + int8 + save/load, tests/test_robust.py). MiniLM checkpoints are "bert". Families that match
# the paths but need other inputs (layoutlm: boxes, xmod: a language id) or attend differently (big_bird, nystromformer,
# convbert) are not listed.
BERT_LAYOUT = ("bert", "camembert", "data2vec-text", "electra", "ernie", "megatron-bert", "roberta",
               "roberta-prelayernorm", "xlm-roberta", "xlm-roberta-xl")

INTERNAL = "torch"  # the adapter of a plain torch nn.TransformerEncoder (no config.json, so no real model_type)

# Vision transformers (transformers 5.x layout): ViT and DeiT blocks are `layers.N` of the base model, CLIP's vision
# tower's `encoder.layers.N`; both hold q/k/v/o projections inside the attention module, which reshapes with
# view(B, T, -1, head_dim), so no head-count attribute needs updating after slicing. Their input is pixel_values
# (B, C, H, W); no attention mask (every patch is real) and no token vocabulary. DINOv2 has the same paths but sets
# its FFN width by a float `mlp_ratio` (no integer config key to record a narrowed width in), so it is not listed.
_VIT = dict(q="attention.q_proj", k="attention.k_proj", v="attention.v_proj", o="attention.o_proj",
            ffn_in="mlp.fc1", ffn_out="mlp.fc2", attn="attention", heads_attrs=("num_attention_heads",),
            width_attrs=(), word_embeddings=None, heads_key="num_attention_heads", ffn_key="intermediate_size",
            layers_key="num_hidden_layers", hidden_key="hidden_size", o_in_attn=True, modality="image")
VISION_ADAPTERS = {
    "vit": Adapter(name="vit", layers="layers", **_VIT),
    "deit": Adapter(name="deit", layers="layers", **_VIT),
    "clip_vision_model": Adapter(name="clip_vision_model", layers="encoder.layers", **{
        **_VIT, "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
        "o": "self_attn.out_proj", "attn": "self_attn", "heads_attrs": ("num_heads",)}),
}

# Whisper (speech, encoder-decoder): paths relative to WhisperModel (the base model). Three stacks of blocks: the
# encoder's self-attention + FFN (the adapter of model_type "whisper", what single-stack code sees), the decoder's
# self-attention + FFN, and the decoder's cross-attention over the encoder's states. Each records its own widths
# (`record`): they share one config. WhisperAttention reshapes k/v with its `num_heads`, so that is kept in step. The
# encoder reads its sinusoidal positions' `.weight` directly: never quantized.
_WHISPER = dict(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.out_proj",
                ffn_in="fc1", ffn_out="fc2", attn="self_attn", heads_attrs=("num_heads",), width_attrs=(),
                hidden_key="d_model", o_in_attn=True, modality="speech", float_modules=("embed_positions",))
WHISPER_ENCODER = Adapter(name="whisper", layers="encoder.layers", word_embeddings=None,
                          heads_key="encoder_attention_heads", ffn_key="encoder_ffn_dim", layers_key="encoder_layers",
                          tokens_key="max_source_positions", **_WHISPER)
WHISPER_DECODER = Adapter(name="whisper_decoder", layers="decoder.layers", word_embeddings="decoder.embed_tokens",
                          heads_key="decoder_attention_heads", ffn_key="decoder_ffn_dim", layers_key="decoder_layers",
                          record="slimformer_decoder", min_heads=1, **_WHISPER)
_CROSS = {**_WHISPER, "q": "encoder_attn.q_proj", "k": "encoder_attn.k_proj", "v": "encoder_attn.v_proj",
          "o": "encoder_attn.out_proj", "attn": "encoder_attn"}
WHISPER_CROSS = Adapter(name="whisper_cross", layers="decoder.layers", word_embeddings="decoder.embed_tokens",
                        heads_key="decoder_attention_heads", ffn_key="decoder_ffn_dim", layers_key="decoder_layers",
                        record="slimformer_cross", **_CROSS)
# model_type -> every stack of blocks, encoder first; models not listed have one (their ADAPTERS row)
STACKS: dict[str, tuple[Adapter, ...]] = {"whisper": (WHISPER_ENCODER, WHISPER_DECODER, WHISPER_CROSS)}
# the stack `layers` drops from, where it is not the model's own adapter: Whisper's decoder layers run once per
# generated token (Distil-Whisper keeps the encoder and drops decoder layers)
LAYER_STACK: dict[str, Adapter] = {"whisper": WHISPER_DECODER}

# model_type -> adapter
ADAPTERS: dict[str, Adapter] = {
    **VISION_ADAPTERS,
    "whisper": WHISPER_ENCODER,
    **{model_type: _BERT for model_type in BERT_LAYOUT},
    "mpnet": Adapter(
        name="mpnet",
        layers="encoder.layer",
        q="attention.attn.q",
        k="attention.attn.k",
        v="attention.attn.v",
        o="attention.attn.o",
        ffn_in="intermediate.dense",
        ffn_out="output.dense",
        attn="attention.attn",
        heads_attrs=("num_attention_heads",),
        width_attrs=("all_head_size",),
        word_embeddings="embeddings.word_embeddings",
        heads_key="num_attention_heads",
        ffn_key="intermediate_size",
        layers_key="num_hidden_layers",
        hidden_key="hidden_size",
        o_in_attn=True,
        shared_head_bias=True,
    ),
    "distilbert": Adapter(
        name="distilbert",
        layers="transformer.layer",
        q="attention.q_lin",
        k="attention.k_lin",
        v="attention.v_lin",
        o="attention.out_lin",
        ffn_in="ffn.lin1",
        ffn_out="ffn.lin2",
        attn="attention",
        heads_attrs=("n_heads",),
        width_attrs=(),
        word_embeddings="embeddings.word_embeddings",
        heads_key="n_heads",
        ffn_key="hidden_dim",
        layers_key="n_layers",
        hidden_key="dim",
        o_in_attn=True,
    ),
    # Gemma 3 decoder (the text model inside Gemma3ForCausalLM): grouped-query attention (4 query heads share 1
    # key/value head in the 270M), head width 256 != hidden / heads, GeGLU FFN (gate and up both hidden -> ffn)
    "gemma3_text": Adapter(
        name="gemma3_text",
        layers="layers",
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        o="self_attn.o_proj",
        ffn_in="mlp.up_proj",
        ffn_out="mlp.down_proj",
        attn="self_attn",
        heads_attrs=(),
        width_attrs=(),
        word_embeddings="embed_tokens",
        heads_key="num_attention_heads",
        ffn_key="intermediate_size",
        layers_key="num_hidden_layers",
        hidden_key="hidden_size",
        o_in_attn=True,
        ffn_gate="mlp.gate_proj",
        kv_heads_key="num_key_value_heads",
        head_dim_key="head_dim",
        kv_groups_attr="num_key_value_groups",
    ),
    # plain torch nn.TransformerEncoder after `mha.make_quantizable` swapped its attention for QuantizableMHA
    INTERNAL: Adapter(
        name="torch",
        layers="layers",
        q="self_attn.q",
        k="self_attn.k",
        v="self_attn.v",
        o="self_attn.out_proj",
        ffn_in="linear1",
        ffn_out="linear2",
        attn="self_attn",
        heads_attrs=("num_heads",),
        width_attrs=("inner_dim",),
        word_embeddings=None,
        heads_key="nhead",
        ffn_key="dim_feedforward",
        layers_key="num_layers",
        hidden_key="d_model",
        o_in_attn=True,
    ),
}


# Task heads kept on the encoder, by the class-name suffix of config.json `architectures` (io.py builds each with
# its transformers Auto class; passes still work on the encoder, the head is compressed with it).
HEADS: dict[str, str] = {
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
    "ForImageClassification": "image-classification",  # ViT / DeiT: logits (B, C) from the CLS token
}
CAUSAL_LM = "causal-lm"
# decoder language models, by full class name: only those whose decoder an adapter above describes (an encoder run
# as a decoder, BertForCausalLM / BertLMHeadModel, is not one of them)
CAUSAL_LMS = ("Gemma3ForCausalLM",)
SPEECH_SEQ2SEQ = "speech-seq2seq"  # an encoder-decoder transcriber: input_features in, token logits out
SPEECH_MODELS = ("WhisperForConditionalGeneration",)
# not task heads: the bare encoder or a pre-training objective, so the base model is what is kept (BertLMHeadModel
# ends in "Model" but is a causal language model: not a base model)
NOT_HEADS = ("Model", "ForMaskedLM", "ForPreTraining")


def head_of(architectures: list[str] | None) -> str | None:
    """The task head a config's `architectures` names (None: a base model, or no architectures given); any other
    architecture (ForQuestionAnswering, ForCausalLM, ...) is an UnsupportedArchitectureError, never a silent
    fallback to the base model."""
    heads = set()
    for name in architectures or []:
        head = (CAUSAL_LM if name in CAUSAL_LMS else SPEECH_SEQ2SEQ if name in SPEECH_MODELS
                else next((h for s, h in HEADS.items() if name.endswith(s)), None))
        if head is None and (not name.endswith(NOT_HEADS) or name.endswith("LMHeadModel")):
            raise UnsupportedArchitectureError(
                f"unsupported architecture '{name}' (heads: {', '.join(f'*{s}' for s in HEADS)}; "
                f"or a base model: *{', *'.join(NOT_HEADS)}; causal LMs: {', '.join(CAUSAL_LMS)})")
        heads.add(head)
    if len(heads) > 1:
        raise UnsupportedArchitectureError(f"config.json names several architectures: {', '.join(architectures)}")
    return heads.pop() if heads else None


def model_types() -> list[str]:
    """The `model_type`s of config.json that load (what the unsupported-architecture error lists)."""
    return sorted(t for t in ADAPTERS if t != INTERNAL)


def model_type_of(encoder: nn.Module) -> str:
    config = getattr(encoder, "config", None)
    if config is not None and hasattr(config, "model_type"):
        return config.model_type
    if isinstance(encoder, nn.TransformerEncoder):
        return INTERNAL
    return type(encoder).__name__


def adapter_for(model_type: str) -> Adapter:
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"unsupported architecture '{model_type}' (supported model_types: {', '.join(model_types())})"
        ) from None


def stacks(model_type: str) -> tuple[Adapter, ...]:
    """Every stack of blocks the structure passes narrow, each with its adapter (paths relative to the base model)."""
    return STACKS.get(model_type, (adapter_for(model_type),))


def blocks(encoder: nn.Module, adapter: Adapter) -> list[nn.Module]:
    return list(encoder.get_submodule(adapter.layers))


def config_of(encoder: nn.Module) -> dict | None:
    """The HF config as an attribute holder, or None for a plain torch module."""
    return getattr(encoder, "config", None)


def head_size(encoder: nn.Module, adapter: Adapter) -> int:
    """Width of one head: constant through pruning (heads are dropped whole; the config keeps the original count)."""
    cfg = config_of(encoder)
    if cfg is not None and adapter.head_dim_key and getattr(cfg, adapter.head_dim_key, None):
        return int(getattr(cfg, adapter.head_dim_key))
    if cfg is not None:
        return getattr(cfg, adapter.hidden_key) // getattr(cfg, adapter.heads_key)
    for block in blocks(encoder, adapter):
        attn = block.get_submodule(adapter.attn)
        if hasattr(attn, "head_dim"):
            return int(attn.head_dim)
    raise UnsupportedArchitectureError(
        "cannot tell the head size of a plain torch encoder whose every attention block was removed")

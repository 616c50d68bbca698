"""Each adapter row of arch.py resolves on a tiny randomly initialized model of its family: its paths exist and hold
Linears of the expected shapes, and its attribute and config names are the ones the installed library uses."""

import pytest
import torch
from torch import nn

from slimformer.arch import ADAPTERS, BERT_LAYOUT, adapter_for, blocks, config_of, head_size, model_type_of
from slimformer.errors import UnsupportedArchitectureError
from slimformer.mha import make_quantizable

H, HEADS, FFN, LAYERS, VOCAB = 32, 4, 64, 2, 100
HF = dict(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN,
          max_position_embeddings=64)
# model_type -> transformers config kwargs; None: a plain torch nn.TransformerEncoder
TINY = {**{t: HF for t in BERT_LAYOUT}, "mpnet": HF,
        "distilbert": dict(vocab_size=VOCAB, dim=H, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN,
                           max_position_embeddings=64),
        "torch": None,
        # a decoder: grouped-query attention off here (as many key/value heads as heads) so every role has H x H
        "gemma3_text": dict(HF, num_key_value_heads=HEADS, head_dim=H // HEADS, layer_types=None)}
VISION = dict(hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN, image_size=16,
              patch_size=4)
TINY.update({t: VISION for t in ("vit", "deit", "clip_vision_model")})  # pixel_values in: tests/test_vision.py
# speech (encoder-decoder): the row is the encoder's stack; tests/test_whisper.py covers the decoder's two
TINY["whisper"] = dict(vocab_size=VOCAB, d_model=H, encoder_layers=LAYERS, decoder_layers=LAYERS,
                       encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
                       decoder_ffn_dim=FFN, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                       decoder_start_token_id=1)


def tiny(model_type: str) -> nn.Module:
    torch.manual_seed(0)
    if TINY[model_type] is None:
        layer = nn.TransformerEncoderLayer(H, HEADS, FFN, dropout=0.0, batch_first=True)
        encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        make_quantizable(encoder)  # the torch row describes the encoder after this swap
        return encoder.eval()
    from transformers import AutoConfig, AutoModel

    return AutoModel.from_config(AutoConfig.for_model(model_type, **TINY[model_type])).eval()


def test_every_adapter_row_has_a_tiny_model_here():
    assert set(TINY) == set(ADAPTERS)


@pytest.mark.parametrize("model_type", sorted(ADAPTERS))
def test_adapter_row_resolves_on_its_family(model_type):
    encoder = tiny(model_type)
    assert model_type_of(encoder) == model_type
    adapter = adapter_for(model_type)
    assert len(blocks(encoder, adapter)) == LAYERS
    assert head_size(encoder, adapter) == H // HEADS
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "o": (H, H), "ffn_in": (FFN, H), "ffn_out": (H, FFN),
              "ffn_gate": (FFN, H)}
    for block in blocks(encoder, adapter):
        for role, path in adapter.roles().items():
            m = block.get_submodule(path)
            assert isinstance(m, nn.Linear), (role, type(m))
            assert tuple(m.weight.shape) == shapes[role], role  # (out, in)
        attn = block.get_submodule(adapter.attn)
        assert all(getattr(attn, a) == HEADS for a in adapter.heads_attrs)
        assert all(getattr(attn, a) == H for a in adapter.width_attrs)
        assert adapter.o.startswith(adapter.attn + ".") == adapter.o_in_attn
    if adapter.word_embeddings is not None:
        emb = encoder.get_submodule(adapter.word_embeddings)
        assert isinstance(emb, nn.Embedding) and emb.num_embeddings == VOCAB
    cfg = config_of(encoder)
    if cfg is not None:  # the config keys that slicing updates and loading reads
        values = {adapter.heads_key: HEADS, adapter.ffn_key: FFN, adapter.layers_key: LAYERS, adapter.hidden_key: H}
        assert {k: getattr(cfg, k) for k in values} == values


def test_unknown_model_type_names_the_supported_ones():
    with pytest.raises(UnsupportedArchitectureError) as err:
        adapter_for("gpt2")
    message = str(err.value)
    assert "'gpt2'" in message and "\n" not in message
    for known in ("bert", "distilbert", "mpnet", "xlm-roberta"):
        assert known in message


def test_head_size_of_a_headless_torch_encoder_is_a_user_error():
    from slimformer.passes.structure import slice_heads

    encoder = tiny("torch")
    slice_heads(encoder, ADAPTERS["torch"], [[]] * LAYERS)  # no attention module with a head_dim is left
    with pytest.raises(UnsupportedArchitectureError, match="head size"):
        head_size(encoder, ADAPTERS["torch"])

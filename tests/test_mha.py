import pytest
import torch
from torch import nn

from slimformer.mha import QuantizableMHA, make_quantizable


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_equals_multihead_attention(batch_first, need_weights):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    ours = QuantizableMHA.from_mha(mha).eval()
    B, T = 3, 7
    x = torch.randn(B, T, 32) if batch_first else torch.randn(T, B, 32)
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[0, 5:] = True
    attn = torch.randn(T, T)
    ref_y, ref_w = mha(x, x, x, key_padding_mask=pad, attn_mask=attn, need_weights=need_weights)
    y, w = ours(x, x, x, key_padding_mask=pad, attn_mask=attn, need_weights=need_weights)
    torch.testing.assert_close(y, ref_y, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=1e-5)
    else:
        assert w is None and ref_w is None


def test_causal_and_bool_mask():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    ours = QuantizableMHA.from_mha(mha)
    x = torch.randn(2, 5, 16)
    mask = nn.Transformer.generate_square_subsequent_mask(5).isinf()
    torch.testing.assert_close(ours(x, x, x, attn_mask=mask, need_weights=False)[0],
                               mha(x, x, x, attn_mask=mask, need_weights=False)[0], atol=1e-5, rtol=1e-5)


def test_swap_inside_transformer_encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(2, 6, 32)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    ref = model(x, src_key_padding_mask=pad)
    assert make_quantizable(model) == ["layers.0.self_attn", "layers.1.self_attn"]
    out = model(x, src_key_padding_mask=pad)
    keep = ~pad  # padded positions are undefined in the fused fast path
    torch.testing.assert_close(out[keep], ref[keep], atol=1e-5, rtol=1e-5)

import numpy as np
import pytest
import torch

import slimformer
from slimformer.errors import BudgetError
from slimformer.passes.fnet import FourierMixer, fourier_mix


def test_fourier_mixer_equals_numpy_fft():
    torch.manual_seed(0)
    x = torch.randn(3, 11, 16)
    ours = FourierMixer(16)(x)[0].numpy()
    oracle = np.fft.fft2(x.double().numpy(), axes=(-2, -1)).real
    np.testing.assert_allclose(ours, oracle, atol=1e-4, rtol=1e-5)


def test_padding_does_not_leak():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 8)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 5:] = False
    out = fourier_mix(x, valid)
    alone = fourier_mix(x[1:, :5], None)
    torch.testing.assert_close(out[1, :5], alone[0], atol=1e-5, rtol=1e-5)
    assert (out[1, 5:] == 0).all()
    left = torch.zeros(1, 9, dtype=torch.bool)
    left[0, 4:] = True  # left padding: the same sentence, shifted
    x_left = torch.zeros(1, 9, 8)
    x_left[0, 4:] = x[1, :5]
    torch.testing.assert_close(fourier_mix(x_left, left)[0, 4:], alone[0], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def fnet_tiny(tiny_dir, sentences):
    return slimformer.compress(slimformer.load(tiny_dir), "fnet(layers=all)", calib=sentences)


def test_structure_shrinks(tiny, fnet_tiny):
    enc = fnet_tiny.encoder
    assert all(isinstance(layer.attention.self, FourierMixer) for layer in enc.encoder.layer)
    assert all(isinstance(layer.attention.output.dense, torch.nn.Identity) for layer in enc.encoder.layer)
    n_before = sum(p.numel() for p in tiny.encoder.parameters())
    n_after = sum(p.numel() for p in enc.parameters())
    assert n_before - n_after == 2 * 4 * (64 * 64 + 64)  # q, k, v and o gone from both layers


def test_sentence_embeds_the_same_alone_and_in_a_padded_batch(fnet_tiny, sentences):
    short = min(sentences, key=len)
    alone = fnet_tiny.encode([short])[0]
    batch = fnet_tiny.encode([max(sentences, key=len), short, sentences[3]], batch_size=3)[1]
    np.testing.assert_allclose(batch, alone, atol=1e-5)


def test_round_trip_and_layer_choice(tiny_dir, fnet_tiny, sentences, tmp_path):
    back = slimformer.load(slimformer.save(fnet_tiny, tmp_path / "f"))
    np.testing.assert_array_equal(back.encode(sentences[:5]), fnet_tiny.encode(sentences[:5]))
    one = slimformer.compress(slimformer.load(tiny_dir), "fnet(layers=1)", calib=sentences)
    chosen = one.manifest["steps"][0]["fnet_layers"]
    assert len(chosen) == 1
    kinds = [isinstance(layer.attention.self, FourierMixer) for layer in one.encoder.encoder.layer]
    assert kinds.count(True) == 1 and kinds.index(True) == chosen[0]
    with pytest.raises(BudgetError, match="cannot mix 3 layers"):
        slimformer.compress(slimformer.load(tiny_dir), "fnet(layers=3)", calib=sentences)

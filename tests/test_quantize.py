import numpy as np
import pytest
import torch
from torch import nn

import slimformer
from slimformer.configs import Int8
from slimformer.measure.bench import size_mb
from slimformer.passes.calib import Calibration
from slimformer.passes import int8_kernels
from slimformer.passes.quantize import QuantizedEmbedding, Int8Linear, _smoothing, int8


def cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


@pytest.fixture(scope="module")
def minilm_int8(minilm):
    return slimformer.compress(minilm, "int8")


def test_structure_changed(minilm, minilm_int8):
    enc = minilm_int8.encoder
    assert not any(isinstance(m, nn.Linear) for m in enc.modules())  # attention q/k/v/o included
    n_int8 = sum(isinstance(m, Int8Linear) for m in enc.modules())
    assert n_int8 == sum(isinstance(m, nn.Linear) for m in minilm.encoder.modules())
    assert isinstance(enc.embeddings.word_embeddings, QuantizedEmbedding)
    assert isinstance(enc.embeddings.position_embeddings, QuantizedEmbedding)
    assert enc.embeddings.word_embeddings.weight.dtype == torch.int8
    assert size_mb(minilm.encoder) / size_mb(enc) > 3.5
    assert isinstance(minilm.encoder.embeddings.word_embeddings, nn.Embedding)  # the input was not touched


def test_outputs_close_on_real_sentences(minilm, minilm_int8, sentences):
    cos = cosines(minilm.encode(sentences), minilm_int8.encode(sentences))
    assert cos.mean() > 0.995 and cos.min() > 0.98, (cos.mean(), cos.min())


def test_int8_linear_rows_are_independent(kernel):
    """Per-token scales: a row's output does not depend on what the other rows of the batch hold, with every kernel:
    bit-identical where the matmul is integer, within fp32 rounding where it is a float GEMM (blocked by M)."""
    torch.manual_seed(0)
    qlin = Int8Linear.from_linear(nn.Linear(64, 32), smooth=torch.rand(64) + 0.5)
    int8_kernels.set_kernel(qlin, kernel)
    x = torch.randn(6, 64)
    x[0] *= 100  # a loud batch-mate: with one scale per tensor it would crush the others' resolution
    full = qlin(x)
    for i in range(6):
        if kernel in ("intmm", "fbgemm"):
            assert torch.equal(full[i], qlin(x[i : i + 1])[0])
        else:
            torch.testing.assert_close(full[i], qlin(x[i : i + 1])[0], rtol=1e-6, atol=1e-5)


def test_embedding_independent_of_batch_mates(minilm_int8, sentences):
    """End to end, the only coupling left is fp32 noise (~1e-7, from padded attention shapes) that now and then
    tips one activation across an int8 rounding boundary. torch.ao's per-tensor scales move the same embedding by
    1 - cos ~ 3e-2 here; ours must stay within 1e-3 of cosine 1."""
    longest = max(sentences, key=len)
    shorts = sorted(sentences, key=len)[:4]
    alone = minilm_int8.encode(shorts, batch_size=1)
    mixed = minilm_int8.encode([longest, *shorts], batch_size=5)[1:]  # padded to the longest
    assert cosines(alone, mixed).min() > 1 - 1e-3
    np.testing.assert_allclose(mixed, alone, atol=5e-3)


@pytest.mark.parametrize("kernel, top", [("intmm", 127), ("fp32", 127), ("fbgemm", 63)])
def test_identity_on_the_int8_grid(kernel, top):
    """Weights and inputs that int8 represents exactly give exactly the float result: activations on a grid of
    2 * top + 1 levels per token (fbgemm's are 7-bit: 127 levels), every row reaching +-top (w8's re-rounded
    weights have another grid)."""
    torch.manual_seed(0)
    lin = nn.Linear(48, 20)
    scale = torch.rand(20) + 0.5
    q = torch.randint(-127, 128, (20, 48)).float()
    q[:, 0] = 127  # each row reaches the full range, so its scale is exactly `scale`
    with torch.no_grad():
        lin.weight.copy_(q * scale[:, None])
    x = torch.randint(-top, top + 1, (5, 48)).float()
    x[:, 0], x[:2, 1] = top, -top  # per-token scale 1; both ends of the grid
    ref = (x.double() @ (q * scale[:, None]).double().T + lin.bias.detach().double()).numpy()  # exact in fp64
    qlin = Int8Linear.from_linear(lin)
    int8_kernels.set_kernel(qlin, kernel)
    out = qlin(x).double().numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())  # fp32 rounding only


@pytest.mark.parametrize("kernel, tol", [("intmm", 0.01), ("fbgemm", 0.02)])
def test_smoothing_tames_activation_outliers(kernel, tol):
    """A few loud input channels (as after LayerNorm in BERTs) crush per-token resolution; SmoothQuant's migration
    into the weights must win the accuracy back (kernels that quantize activations; fbgemm has 7 bits of them)."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(16, 64)
    x[:, [3, 40]] *= 60  # outlier channels
    ref = lin(x).detach()
    s = _smoothing(x.abs().amax(0), lin, 0.5)
    err = {}
    for k, sm in (("plain", None), ("smooth", s)):
        qlin = Int8Linear.from_linear(lin, sm)
        int8_kernels.set_kernel(qlin, kernel)
        err[k] = float((qlin(x) - ref).norm() / ref.norm())
    assert err["smooth"] < err["plain"] / 2, err
    assert err["smooth"] < tol, err


@pytest.mark.parametrize("bits, levels", [(8, 127), (4, 7)])
def test_quantized_embedding_rows(bits, levels):
    emb = nn.Embedding(50, 16)
    q = QuantizedEmbedding.from_embedding(emb, bits)
    assert q.weight.numel() == 50 * 16 * bits // 8  # really stored in `bits` per weight
    ids = torch.tensor([[0, 3, 49], [7, 7, 1]])
    ref = emb(ids).detach()
    out = q(ids)
    assert out.shape == ref.shape
    half_step = emb.weight.abs().amax(1)[ids].unsqueeze(-1) / (2 * levels)
    assert ((out - ref).abs() <= half_step + 1e-6).all()


@pytest.mark.parametrize("bits, levels", [(8, 127), (4, 7)])
def test_identity_for_embeddings_on_the_grid(bits, levels):
    emb = nn.Embedding(6, 4)
    with torch.no_grad():  # each row: integers up to `levels` times a row scale
        emb.weight.copy_(torch.tensor([[levels, -levels, 3, 0]] * 6) * torch.arange(1, 7)[:, None] / 10)
    q = QuantizedEmbedding.from_embedding(emb, bits)
    torch.testing.assert_close(q(torch.arange(6)), emb.weight.detach(), atol=1e-6, rtol=1e-6)


def test_plain_torch_transformer_quantizes(sentences):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(3, 10, 32)
    ref = model(x).detach()
    calib = Calibration([{"src": torch.randn(4, 10, 32)}])
    model, decisions = int8(model, Int8(), calib)
    assert decisions["quantized"] == 12  # (q, k, v, out_proj, linear1, linear2) x 2 layers
    assert not any(isinstance(m, (nn.Linear, nn.MultiheadAttention)) for m in model.modules())
    out = model(x)
    assert (out - ref).norm() / ref.norm() < 0.05


def test_sensitive_linears_kept_in_fp32(tiny, sentences):
    calib = Calibration.from_texts(tiny.tokenizer, sentences[:16], 8)
    _, decisions = int8(tiny.encoder, Int8(fp32=2), calib)
    assert len(decisions["fp32_kept"]) == 2
    for fqn in decisions["fp32_kept"]:
        assert type(tiny.encoder.get_submodule(fqn)) is nn.Linear


def test_a_layer_pruned_to_nothing_quantizes_round_trips_and_exports(tiny, sentences, tmp_path):
    """A block whose heads and neurons were all pruned keeps Linear(0, H)s (their output is their bias): `int8` with
    its calibrated smoothing leaves them as they are and quantizes the rest (it used to fail on their empty input)."""
    from slimformer.passes import structure as S
    from slimformer.runtime.export import export

    S.slice_heads(tiny.encoder, tiny.adapter, [[], [0, 1, 2, 3]])
    S.slice_ffn(tiny.encoder, tiny.adapter, [[], list(range(128))])
    small = slimformer.compress(tiny, "int8", calib=sentences[:16])
    for fqn in ("encoder.layer.0.attention.output.dense", "encoder.layer.0.output.dense"):
        assert tiny.encoder.get_submodule(fqn).in_features == 0
        assert type(small.encoder.get_submodule(fqn)) is nn.Linear
    layer1 = small.encoder.encoder.layer[1]
    assert isinstance(layer1.attention.output.dense, Int8Linear) and isinstance(layer1.output.dense, Int8Linear)
    cos = cosines(tiny.encode(sentences), small.encode(sentences))
    assert cos.min() > 0.99, cos.min()
    back = slimformer.load(slimformer.save(small, tmp_path / "int8"))
    np.testing.assert_array_equal(back.encode(sentences), small.encode(sentences))
    served = slimformer.load(export(back, tmp_path / "ort"))  # ORT's int8: one activation scale per tensor
    assert cosines(served.encode(sentences), small.encode(sentences)).mean() > 0.98

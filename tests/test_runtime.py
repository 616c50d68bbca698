"""ONNX Runtime export: embeddings match the torch model; every method's output exports or fails clearly."""

import numpy as np
import pytest

import slimformer
from slimformer.runtime.export import export
from slimformer.runtime.served import ExportedModel

pytest.importorskip("onnxruntime")


def cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_fp32_export_matches_torch(minilm, sentences, tmp_path):
    path = export(minilm, tmp_path / "fp32", int8=False)
    ort_model = slimformer.load(path)
    assert isinstance(ort_model, ExportedModel)
    np.testing.assert_allclose(ort_model.encode(sentences[:16]), minilm.encode(sentences[:16]), atol=1e-5)


def test_torch_and_exported_models_share_one_encode_loop(tiny, sentences, tmp_path):
    """Both models' encode() (sorted by length, padded per batch, put back in order) against each backend's own
    forward on one sentence at a time (no padding), pooled here by hand for torch."""
    import torch

    from slimformer.runtime.served import graph_inputs

    ort_model = slimformer.load(export(tiny, tmp_path / "fp32", int8=False))
    texts = sentences[:7]
    alone = [tiny.tokenizer([t], return_tensors="pt") for t in texts]
    session = ort_model.encoder.session
    with torch.inference_mode():
        by_hand = {"torch": [tiny.encoder(**x).last_hidden_state[0].mean(0).numpy() for x in alone],
                   "ort": [session.run(graph_inputs(**x, names=session.input_names))[1][0] for x in alone]}
    for name, m in (("torch", tiny), ("ort", ort_model)):
        np.testing.assert_allclose(m.encode(texts, batch_size=3, show_progress_bar=True), np.stack(by_hand[name]),
                                   atol=1e-5, err_msg=name)
        one = m.encode(texts[2], convert_to_tensor=True)
        assert isinstance(one, torch.Tensor) and one.shape == (64,)
        np.testing.assert_allclose(np.linalg.norm(m.encode(texts, normalize_embeddings=True), axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(ort_model.encode(texts, batch_size=4), tiny.encode(texts, batch_size=4), atol=1e-5)


def test_int8_export_of_a_compressed_model(minilm, sentences, tmp_path):
    small = slimformer.compress(minilm, "prune(flops=0.7)+int8", calib=sentences)
    ort_model = slimformer.load(export(small, tmp_path / "int8"))
    c = cos(ort_model.encode(sentences), small.encode(sentences))
    assert c.mean() > 0.98 and c.min() > 0.93, (c.mean(), c.min())  # ORT's int8 uses one scale per tensor
    assert ort_model.encoder.size_mb() < 30


@pytest.mark.parametrize("recipe", ["heads(keep=1)+ffn(keep=0.5)", "lowrank(rank=8)", "vocab", "layers(keep=1)"])
def test_each_method_exports(tiny, sentences, tmp_path, recipe, monkeypatch):
    from slimformer.passes import lowrank

    monkeypatch.setattr(lowrank, "fastest_rank", lambda m, n: 10**6)  # tiny layers: factorize anyway
    small = slimformer.compress(tiny, recipe, calib=sentences)
    ort_model = slimformer.load(export(small, tmp_path / "m", int8=False))
    np.testing.assert_allclose(ort_model.encode(sentences[:8]), small.encode(sentences[:8]), atol=1e-4)


def test_zero_head_layer_exports(tiny, sentences, tmp_path):
    from slimformer.passes import structure as S

    S.slice_heads(tiny.encoder, tiny.adapter, [[0], []])
    ort_model = slimformer.load(export(tiny, tmp_path / "z", int8=False))
    np.testing.assert_allclose(ort_model.encode(sentences[:4]), tiny.encode(sentences[:4]), atol=1e-4)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_zero_head_layer_exports_to_each_runtime(tiny, sentences, tmp_path, runtime, float_tol):
    """A layer with every head pruned: its attention output projection has no inputs left, (N, 0). OpenVINO refused
    the (N, 0) weight as a scalar MatMul operand; the export writes it as its bias broadcast (BiasOnly)."""
    if runtime == "openvino":
        pytest.importorskip("openvino")
        pytest.importorskip("nncf")
    from slimformer.passes import structure as S

    S.slice_heads(tiny.encoder, tiny.adapter, [[0, 1], []])
    assert tiny.encoder.encoder.layer[1].attention.output.dense.in_features == 0
    back = slimformer.load(export(tiny, tmp_path / "z", int8=False, runtime=runtime))
    np.testing.assert_allclose(back.encode(sentences[:4]), tiny.encode(sentences[:4]), atol=float_tol(back))


def test_layers_with_different_head_counts_still_fuse_attention(tiny, sentences, tmp_path):
    import onnx

    from slimformer.passes import structure as S

    S.slice_heads(tiny.encoder, tiny.adapter, [[0, 2, 3], [1]])  # 3 heads, then 1
    path = export(tiny, tmp_path / "h", int8=False)
    ops = [n.op_type for n in onnx.load(str(path / "onnx" / "model.onnx")).graph.node]
    assert ops.count("Attention") == 2  # ORT's fused kernel, one per layer, each with its own head count
    np.testing.assert_allclose(slimformer.load(path).encode(sentences[:8]), tiny.encode(sentences[:8]), atol=1e-4)


def test_fnet_exports_with_its_fourier_mixing_as_matmuls(tiny, sentences, tmp_path):
    small = slimformer.compress(tiny, "fnet(layers=1)", calib=sentences)
    fp32 = slimformer.load(export(small, tmp_path / "f", int8=False))
    # padded batches of mixed lengths: each sentence mixed at its own length in the graph too
    np.testing.assert_allclose(fp32.encode(sentences[:9], batch_size=9), small.encode(sentences[:9]), atol=1e-4)
    int8 = slimformer.load(export(small, tmp_path / "q"))
    c = cos(int8.encode(sentences), small.encode(sentences))
    assert c.mean() > 0.98, c.mean()


def test_openvino_peer_matches_the_original(tiny, sentences, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from slimformer.measure.peers import openvino_peer

    ov = openvino_peer(tiny, tmp_path / "ov")
    c = cos(ov.encode(sentences[:8]), tiny.encode(sentences[:8]))
    assert c.min() > 0.99, c  # int8 weights per channel, float activations
    assert 0 < ov.encoder.size_mb() < 0.5 * tiny.encoder.get_input_embeddings().weight.nbytes / 1e6 + 1


def test_openvino_export_of_a_narrowed_model(tiny, sentences, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    small = slimformer.compress(tiny, "heads(keep=0.5)+ffn(keep=0.5)+int8", calib=sentences)
    back = slimformer.load(export(small, tmp_path / "ov", runtime="openvino"))
    assert back.manifest["runtime"] == "openvino" and (tmp_path / "ov" / "openvino" / "openvino_model.xml").is_file()
    c = cos(back.encode(sentences), small.encode(sentences))
    assert c.mean() > 0.99 and c.min() > 0.97, (c.mean(), c.min())  # int8 weights, float activations


def test_openvino_missing_or_bad_runtime_is_one_clear_line(tiny, tmp_path, monkeypatch):
    import builtins

    from slimformer.errors import SlimformerError

    with pytest.raises(SlimformerError, match="runtime must be one of"):
        export(tiny, tmp_path / "x", runtime="tensorrt")
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name in ("openvino", "nncf"):
            raise ImportError(name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(SlimformerError, match=r"pip install 'slimformer\[openvino\]'"):
        export(tiny, tmp_path / "y", runtime="openvino")
    assert not (tmp_path / "y").exists()


def test_linears_the_recipe_kept_in_fp32_stay_fp32_in_ort(tiny, sentences, tmp_path):
    import onnx

    from slimformer.runtime.export import float_linears
    from slimformer.runtime.onnx import quantize

    assert float_linears(tiny) == []  # never quantized: ORT quantizes every MatMul, like the peer
    small = slimformer.compress(tiny, "int8(fp32=2)", calib=sentences)
    kept = float_linears(small)
    assert len(kept) == 2
    floats = slimformer.compress(tiny, "int8(fp32=1, float_act=2)", calib=sentences)
    assert sorted(float_linears(floats)) == sorted(floats.manifest["steps"][0]["fp32_kept"] +
                                                   floats.manifest["steps"][0]["float_act"])  # 1 + 2: float in ORT
    assert len(float_linears(floats)) == 3
    fp32 = export(small, tmp_path / "f", int8=False)
    quantize(fp32 / "onnx" / "model.onnx", tmp_path / "q.onnx", ["encoder.layer.1.output.dense"])
    left = [n.name for n in onnx.load(str(tmp_path / "q.onnx")).graph.node if n.op_type == "MatMul"]
    assert left == ["/net/encoder/layer.1/output/dense/MatMul"]

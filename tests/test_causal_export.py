"""A causal LM's export with its KV cache (runtime/causal.py), on the tiny Gemma of test_gemma.py: the ONNX Runtime
graph gives the torch model's logits, greedy tokens (left padding, past the sliding window) and perplexity, after
narrowing, layer drop, vocabulary pruning and int8 too."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

import slimformer
from slimformer.measure.lm import document_nll, perplexity
from slimformer.passes.quantize import Int8Linear
from slimformer.runtime.causal import KEEP
from slimformer.runtime.served import ExportedCausalLM
from slimformer.runtime.export import export

from test_gemma import gemma, gemma_dir, pruned  # noqa: F401  (fixtures)


def _batch(model, texts, side):
    return dict(model.tokenizer(texts, padding=True, return_tensors="pt", padding_side=side,
                                return_token_type_ids=False))


def _check(model, texts, tmp_path, int8=False, atol=1e-4):
    """Export `model`, load it back, and compare with torch: logits at every real position, the prefill's last
    position, greedy tokens from a left-padded batch, perplexity. Returns the export."""
    out = slimformer.load(export(model, tmp_path / "export", int8=int8))
    assert isinstance(out, ExportedCausalLM) and out.head == "causal-lm"
    right = _batch(model, texts, "right")
    with torch.inference_mode():
        a = model(**right).logits  # (B, T, V)
    b = out(**right).logits
    real, finite = right["attention_mask"].bool(), torch.isfinite(a)
    assert b.shape == a.shape and torch.equal(torch.isinf(a), torch.isinf(b))  # a pruned vocabulary's -inf kept
    assert (a - b)[real][finite[real]].abs().max() < atol
    last = out.net(**right, logits_to_keep=1).logits  # (B, 1, V): what generate's first step computes
    assert last.shape == (len(texts), 1, a.shape[-1]) and torch.allclose(last[:, 0], b[:, -1], atol=1e-5)
    left = _batch(model, texts, "left")
    with torch.inference_mode():
        want = model.net.generate(**left, max_new_tokens=12, do_sample=False)  # 12 steps: past the window of 4
    assert torch.equal(out.net.generate(**left, max_new_tokens=12), want)
    got = out.net.generate(**left, max_new_tokens=3, min_new_tokens=3)
    assert got.shape == (len(texts), left["input_ids"].shape[1] + 3)
    ppl = perplexity(*document_nll(model, texts)), perplexity(*document_nll(out, texts))
    assert ppl[1] == pytest.approx(ppl[0], rel=10 * atol)
    return out


def test_export_serves_logits_tokens_and_perplexity_as_torch(gemma, sentences, tmp_path):
    out = _check(gemma, sentences[:5], tmp_path)
    manifest = json.loads((tmp_path / "export" / "slimformer.json").read_text())
    assert manifest["head"] == "causal-lm" and manifest["kv_cache"] == [[2, 16]] * 4  # 2 key/value heads of 16
    folder = tmp_path / "export"
    assert (folder / "generation_config.json").is_file() and not (folder / "modules.json").exists()
    # the graph's interface, as optimum names a decoder's: logits_to_keep may be left out (every position)
    session = ort.InferenceSession(str(folder / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"] and KEEP not in names
    assert names[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
    ids = np.array([[5, 6, 7]], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(3)[None],
            **{n: np.zeros((1, 2, 0, 16), np.float32) for n in names[3:]}}
    logits, k0 = session.run(["logits", "present.0.key"], feed)
    assert logits.shape == (1, 3, gemma.config.vocab_size) and k0.shape == (1, 2, 3, 16)
    assert out.net.size_mb() > 0


def test_export_of_a_narrowed_layer_dropped_decoder(gemma, sentences, tmp_path):
    small = slimformer.compress(gemma, "layers(keep=3)+heads(keep=0.5)+ffn(keep=0.5)", calib=sentences[:40])
    _check(small, sentences[:5], tmp_path)
    kv = json.loads((tmp_path / "export" / "slimformer.json").read_text())["kv_cache"]
    assert len(kv) == 3


def test_export_of_a_pruned_vocabulary_keeps_its_ids(pruned, sentences, tmp_path):
    """Calibration text (every token kept) and other sentences (some scored as <unk>, from kept_tokens.json)."""
    out = _check(pruned, sentences[:3] + sentences[60:63], tmp_path)
    assert torch.equal(out.net.kept_tokens, pruned.net.get_output_embeddings().remap)


def test_export_of_int8_in_onnx_runtime(gemma, sentences, tmp_path):
    """ORT's own int8 (per channel) on the Linears slimformer's int8 quantized: near the torch int8 model."""
    q = slimformer.compress(gemma, "int8", calib=sentences[:40])
    out = slimformer.load(export(q, tmp_path / "export"))
    right = _batch(q, sentences[:5], "right")
    with torch.inference_mode():
        a, ref = q(**right).logits, gemma(**right).logits
    b = out(**right).logits
    real = right["attention_mask"].bool()
    err = lambda x: ((x - ref)[real].norm() / ref[real].norm()).item()  # noqa: E731
    # ORT's activations: one uint8 scale per tensor, coarser than slimformer's per-token int8
    assert err(b) < 0.1 and err(b) < 4 * err(a)
    import onnx

    ops = [n.op_type for n in onnx.load(str(tmp_path / "export" / "onnx" / "model.onnx")).graph.node]
    int8_act = [m for m in q.net.modules() if isinstance(m, Int8Linear) and not m.float_act]
    assert ops.count("MatMulInteger") == len(int8_act) > 0  # float_act Linears stay float MatMuls
    assert "ort-int8-per-channel" in json.loads((tmp_path / "export" / "slimformer.json").read_text())["export"]


def test_export_to_openvino(gemma, sentences, tmp_path):
    """The same graph in OpenVINO (logits_to_keep stays a required input there): logits close to torch's with and
    without the cache (OpenVINO computes in bf16 on CPUs that have it, so a random tiny model's greedy tokens may
    flip: they are not compared)."""
    pytest.importorskip("openvino")
    out = slimformer.load(export(gemma, tmp_path / "export", runtime="openvino"))
    right = _batch(gemma, sentences[:4], "right")
    with torch.inference_mode():
        a = gemma(**right).logits  # (B, T, V)
    assert (a - out(**right).logits)[right["attention_mask"].bool()].abs().max() < 0.1
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0)).numpy()  # no padding
    with torch.inference_mode():
        want = gemma(input_ids=torch.from_numpy(ids)).logits  # (2, 9, V)
    logits, past = out.net._run(ids[:, :5], np.ones((2, 5), np.int64), None, 0)  # the prompt, then 4 cached steps
    for t in range(5, 9):
        step, past = out.net._run(ids[:, t : t + 1], np.ones((2, t + 1), np.int64), past, 1)
        assert np.abs(step[:, -1] - want[:, t].numpy()).max() < 0.1

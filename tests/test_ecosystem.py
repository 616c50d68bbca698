"""Exports load in sentence-transformers and optimum: the folder layout, the graph served by plain ONNX Runtime and
pooled by sentence-transformers' own modules, and (where the optional packages are installed: `make ecosystem`)
SentenceTransformer(backend="onnx" / "openvino") and optimum's model classes against slimformer's encode()."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch

import slimformer
from slimformer.runtime.export import export
from slimformer.runtime.served import ExportedModel

pytest.importorskip("onnxruntime")


def cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture
def narrowed(tiny):
    """The tiny BERT with 2 of 4 heads and half its FFN in each layer, normalized like MiniLM."""
    from slimformer.passes import structure as S

    S.slice_heads(tiny.encoder, tiny.adapter, [[0, 1], [1, 3]])
    S.slice_ffn(tiny.encoder, tiny.adapter, [list(range(64)), list(range(32, 96))])
    tiny.normalize = True
    return tiny


def test_layout_is_what_sentence_transformers_and_optimum_read(narrowed, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    out = export(narrowed, tmp_path / "e")
    names = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert {"config.json", "onnx/model.onnx", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json",
            "2_Normalize", "tokenizer.json", "slimformer.json"} <= names
    assert not {n for n in names if n.endswith(".onnx")} - {"onnx/model.onnx"}  # one graph: no intermediates left
    modules = json.loads((out / "modules.json").read_text())
    assert [(m["path"], m["type"].rsplit(".", 1)[1]) for m in modules] == [
        ("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    pool = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pool["word_embedding_dimension"] == 64 and pool["pooling_mode_mean_tokens"]
    assert not pool["pooling_mode_cls_token"] and not pool["pooling_mode_max_tokens"]
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == narrowed.max_seq_length
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "bert" and config.hidden_size == 64 and config.num_hidden_layers == 2
    assert config.intermediate_size == 64  # the real, pruned FFN width (every layer kept 64 of 128)
    assert config.num_attention_heads == 4 and config.slimformer_heads == [2, 2]  # head size stays 64 / 4
    assert AutoTokenizer.from_pretrained(out).model_input_names == narrowed.tokenizer.model_input_names
    assert json.loads((out / "slimformer.json").read_text())["runtime"] == "onnxruntime"


def test_a_model_that_does_not_normalize_has_no_normalize_module(tiny, tmp_path):
    from slimformer.passes import structure as S

    S.slice_ffn(tiny.encoder, tiny.adapter, [list(range(60)), list(range(70))])
    out = export(tiny, tmp_path / "e", int8=False)
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"]
    assert not (out / "2_Normalize").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == 128 and config["slimformer_ffn"] == [60, 70]  # widths differ: per layer


def test_plain_onnxruntime_and_sentence_transformers_pooling_give_slimformers_embeddings(narrowed, sentences,
                                                                                          tmp_path):
    """What sentence-transformers' ONNX backend does, without optimum: the tokenizer's output fed by the graph's
    input names, last_hidden_state pooled by the Pooling and Normalize modules read from the folder."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    st_models = pytest.importorskip("sentence_transformers.models")
    out = export(slimformer.compress(narrowed, "int8", calib=sentences), tmp_path / "e")
    session = ort.InferenceSession(str(out / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state", "sentence_embedding"]
    texts = sentences[:12]
    batch = dict(AutoTokenizer.from_pretrained(out)(texts, padding=True, truncation=True, return_tensors="np"))
    states, emb = session.run(None, {i.name: batch[i.name] for i in session.get_inputs()})
    features = {"token_embeddings": torch.from_numpy(states),  # (B, T, H)
                "attention_mask": torch.from_numpy(batch["attention_mask"])}
    pooled = st_models.Normalize()(st_models.Pooling.load(str(out / "1_Pooling"))(features))["sentence_embedding"]
    np.testing.assert_allclose(pooled.numpy(), emb, atol=1e-5)  # the graph's own pooling is sentence-transformers'
    mine = slimformer.load(out)
    assert isinstance(mine, ExportedModel)
    np.testing.assert_allclose(mine.encode(texts, batch_size=len(texts)), emb, atol=1e-5)
    assert (c := cos(mine.encode(texts), narrowed.encode(texts))).min() > 0.95, c  # int8 vs float: same model


def test_token_type_ids_reach_the_graph(tiny, tmp_path):
    """Sentence pairs: segment 1 has its own embedding, so feeding zeros instead would change the output."""
    out = export(tiny, tmp_path / "e", int8=False)
    pair = tiny.tokenizer(["a question about cats"], ["an answer about dogs"], return_tensors="pt")
    assert pair["token_type_ids"].max() == 1
    with torch.inference_mode():
        ref = tiny.encoder(**pair).last_hidden_state
    enc = slimformer.load(out).encoder
    np.testing.assert_allclose(enc(**pair)[0], ref, atol=1e-4)
    assert (enc(pair["input_ids"], pair["attention_mask"])[0] - ref).abs().max() > 1e-2


def test_without_token_type_ids_the_graph_takes_two_inputs(tiny, sentences, tmp_path):
    model = tiny.clone()
    model.tokenizer = copy.deepcopy(tiny.tokenizer)
    model.tokenizer.model_input_names = ["input_ids", "attention_mask"]  # as RoBERTa's and MPNet's tokenizers
    out = export(model, tmp_path / "e", int8=False)
    mine = slimformer.load(out)
    assert mine.encoder.session.input_names == ["input_ids", "attention_mask"]
    np.testing.assert_allclose(mine.encode(sentences[:6]), tiny.encode(sentences[:6]), atol=1e-5)


def test_exports_in_the_old_layout_still_load(tiny, sentences, tmp_path):
    out = export(tiny, tmp_path / "e", int8=False)
    new = slimformer.load(out).encode(sentences[:6])
    (out / "onnx" / "model.onnx").rename(out / "model.onnx")  # where exports before this layout kept the graph
    shutil.rmtree(out / "onnx")
    np.testing.assert_array_equal(slimformer.load(out).encode(sentences[:6]), new)


# ---------------------------------------------------------------- with optimum installed (make ecosystem)

def test_sentence_transformers_onnx_backend_and_optimum(narrowed, sentences, tmp_path):
    optimum_ort = pytest.importorskip("optimum.onnxruntime")
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    out = export(slimformer.compress(narrowed, "int8", calib=sentences), tmp_path / "e")
    mine = slimformer.load(out).encode(sentences)
    theirs = SentenceTransformer(str(out), backend="onnx", device="cpu").encode(sentences)
    # the same batches (encode sorts as sentence-transformers does), so even ORT's per-batch int8 scales agree
    assert theirs.shape == mine.shape and cos(theirs, mine).min() > 1 - 1e-5, cos(theirs, mine).min()
    batch = AutoTokenizer.from_pretrained(out)(sentences[:8], padding=True, return_tensors="pt")
    ref = slimformer.load(out).encoder(**batch)[0].numpy()
    for io_binding in (False, True):  # io binding sizes its output buffers from the graph's axis names
        ort_model = optimum_ort.ORTModelForFeatureExtraction.from_pretrained(str(out), use_io_binding=io_binding)
        np.testing.assert_allclose(ort_model(**batch).last_hidden_state.numpy(), ref, atol=1e-5)


def test_sentence_transformers_openvino_backend_and_optimum_intel(narrowed, sentences, tmp_path):
    pytest.importorskip("nncf")
    optimum_ov = pytest.importorskip("optimum.intel")
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    out = export(narrowed, tmp_path / "e", runtime="openvino")
    assert (out / "openvino" / "openvino_model.xml").is_file() and (out / "openvino" / "openvino_model.bin").is_file()
    mine = slimformer.load(out).encode(sentences)
    theirs = SentenceTransformer(str(out), backend="openvino", device="cpu").encode(sentences)
    assert cos(theirs, mine).min() > 1 - 1e-5, cos(theirs, mine).min()
    # optimum-intel looks for its IR at the top unless told the subfolder (config.json: the top one)
    ov_model = optimum_ov.OVModelForFeatureExtraction.from_pretrained(str(out), subfolder="openvino")
    batch = AutoTokenizer.from_pretrained(out)(sentences[:8], padding=True, return_tensors="pt")
    np.testing.assert_allclose(ov_model(**batch).last_hidden_state.numpy(),
                               slimformer.load(out).encoder(**batch)[0].numpy(), atol=1e-4)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_classifier_export_loads_in_optimum_and_as_a_cross_encoder(runtime, minilm, sentences, tmp_path):
    """A 3-label pair classifier exported: optimum's *ModelForSequenceClassification and sentence-transformers'
    CrossEncoder (same backend) give slimformer's logits for sentence pairs, without slimformer."""
    import transformers

    if runtime == "onnxruntime":
        ours = pytest.importorskip("optimum.onnxruntime").ORTModelForSequenceClassification
        backend, where = "onnx", {}
    else:
        pytest.importorskip("nncf")
        ours = pytest.importorskip("optimum.intel").OVModelForSequenceClassification
        backend, where = "openvino", {"subfolder": "openvino"}  # optimum-intel looks at the top unless told
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=128, num_labels=3, initializer_range=0.1)
    transformers.BertForSequenceClassification(cfg).eval().save_pretrained(tmp_path / "cls")
    minilm.tokenizer.save_pretrained(tmp_path / "cls")
    out = export(slimformer.load(tmp_path / "cls"), tmp_path / "e", int8=False, runtime=runtime)
    pairs = list(zip(sentences[0:16:2], sentences[1:16:2]))
    mine = slimformer.load(out).predict(pairs)
    assert mine.shape == (8, 3)
    batch = transformers.AutoTokenizer.from_pretrained(out)([a for a, _ in pairs], [b for _, b in pairs],
                                                            padding=True, return_tensors="pt")
    np.testing.assert_allclose(ours.from_pretrained(str(out), **where)(**batch).logits.numpy(), mine, atol=1e-4)
    cross = CrossEncoder(str(out), backend=backend, device="cpu")
    np.testing.assert_allclose(cross.predict(pairs, activation_fn=torch.nn.Identity()), mine, atol=1e-4)

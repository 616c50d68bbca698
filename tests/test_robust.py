"""A user's model and machine: half-precision and sharded checkpoints, every BERT-layout family, bad files as one
line, no data folder (the shipped calibration corpus), the vocabulary-coverage check, and `bench --peers --base`."""

import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import slimformer
from slimformer import api
from slimformer.arch import BERT_LAYOUT, adapter_for, blocks
from slimformer.data import SHIPPED_CORPUS, calibration_texts, default_calibration, read_lines, shipped_corpus
from slimformer.errors import (CoverageWarning, DataFormatError, ModelNotFoundError, SlimformerError,
                               StepNotApplicableError, UnsupportedArchitectureError, WeightsError)
from slimformer.passes import int8_kernels
from slimformer.passes import structure as S
from slimformer.passes.quantize import Int8Linear


@pytest.fixture
def cli(capsys, monkeypatch):
    """The CLI's main() in this process (no start-up cost): (exit code, stdout, stderr)."""
    from slimformer import cli as cli_module

    def call(*args):
        monkeypatch.setattr(sys, "argv", ["slimformer", *args])
        with pytest.raises(SystemExit) as done:
            cli_module.main()
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, done.value.code or 0, out, err)

    return call


def one_error_line(p) -> str:
    assert p.returncode != 0
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


def save_tiny(path, tokenizer, model_type="bert", dtype=torch.float32, seed=0, **kwargs):
    """A tiny random Hugging Face encoder folder with MiniLM's tokenizer; returns the fp32 model it holds."""
    from transformers import AutoConfig, AutoModel

    cfg = dict(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=96, max_position_embeddings=130)
    cfg.update(kwargs)
    torch.manual_seed(seed)
    model = AutoModel.from_config(AutoConfig.for_model(model_type, **cfg)).eval()
    model.to(dtype).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model.float()


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# ------------------------------------------------------------------------------------------------ checkpoints

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoint_loads_as_fp32(minilm, sentences, tmp_path, dtype):
    """transformers 5 keeps a checkpoint's dtype; encode() crashed on bf16 ("unsupported ScalarType BFloat16")."""
    ref = save_tiny(tmp_path / "fp32", minilm.tokenizer)
    save_tiny(tmp_path / "half", minilm.tokenizer, dtype=dtype)
    half = slimformer.load(tmp_path / "half")
    assert {p.dtype for p in half.encoder.parameters()} == {torch.float32}
    for (name, p), (_, q) in zip(half.encoder.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q.to(dtype).float()), name  # the checkpoint's values, widened exactly
    out = half.encode(sentences[:16])
    assert out.dtype == np.float32
    full = slimformer.load(tmp_path / "fp32").encode(sentences[:16])
    assert cosines(out, full).min() > 0.999  # the half copy differs from fp32 by weight rounding only
    assert not np.allclose(out, full, atol=1e-7)  # and it really is the rounded copy


def test_sharded_checkpoint_loads(minilm, sentences, tmp_path):
    model = save_tiny(tmp_path / "one", minilm.tokenizer)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="500KB")
    minilm.tokenizer.save_pretrained(tmp_path / "sharded")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (tmp_path / "sharded" / "model.safetensors").exists()
    got = slimformer.load(tmp_path / "sharded").encode(sentences[:8])
    np.testing.assert_array_equal(got, slimformer.load(tmp_path / "one").encode(sentences[:8]))


def test_a_truncated_shard_is_named(minilm, tmp_path):
    model = save_tiny(tmp_path / "one", minilm.tokenizer)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="500KB")
    minilm.tokenizer.save_pretrained(tmp_path / "sharded")
    shard = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=re.escape(f"{shard}: not a readable safetensors file")):
        slimformer.load(tmp_path / "sharded")


@pytest.mark.parametrize("where", ["hf", "slimformer"])
@pytest.mark.parametrize("damage", ["truncated", "not safetensors"])
def test_corrupt_weights_are_one_line_naming_the_file(tiny, tiny_dir, tmp_path, cli, where, damage):
    import shutil

    folder = tmp_path / where
    if where == "hf":
        shutil.copytree(tiny_dir, folder)
    else:
        slimformer.save(tiny, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"<html>not found</html>")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        slimformer.load(folder)
    line = one_error_line(cli("bench", str(folder), "--runs", "1"))
    assert f"{weights}: not a readable safetensors file" in line


def test_slimformer_folder_whose_weights_do_not_fit_its_manifest(tiny, minilm, tmp_path):
    from safetensors.torch import save_file

    out = slimformer.save(tiny, tmp_path / "t")
    save_file({"x": torch.zeros(2)}, out / "model.safetensors")
    with pytest.raises(WeightsError, match="does not fit"):
        slimformer.load(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="weights file not found"):
        slimformer.load(out)


# ------------------------------------------------------------------------------------------------ families

@pytest.mark.parametrize("model_type", BERT_LAYOUT)
def test_bert_layout_family_slices_as_it_masks(minilm, sentences, tmp_path, model_type):
    """The BERT adapter describes this family: physically sliced heads and neurons compute what zero masks compute."""
    save_tiny(tmp_path / model_type, minilm.tokenizer, model_type)
    model = slimformer.load(tmp_path / model_type)  # through the HF folder: the architecture check passes
    enc, adapter = model.encoder, model.adapter
    keep_heads, keep_neurons = [[1, 3], [0]], [list(range(0, 96, 2)), [4, 50, 95]]
    head_mask, neuron_mask = torch.zeros(2, 4), torch.zeros(2, 96)
    for layer in range(2):
        head_mask[layer, keep_heads[layer]] = 1
        neuron_mask[layer, keep_neurons[layer]] = 1
    batch = model.tokenize(sentences[:12])
    with torch.inference_mode(), S.unit_masks(enc, adapter, head_mask, neuron_mask):
        masked = model(**batch)[0]
    S.slice_heads(enc, adapter, keep_heads)
    S.slice_ffn(enc, adapter, keep_neurons)
    with torch.inference_mode():
        torch.testing.assert_close(model(**batch)[0], masked, atol=1e-5, rtol=1e-5)
    assert S.heads_per_layer(enc, adapter) == [2, 1] and S.ffn_per_layer(enc, adapter) == [48, 3]


@pytest.mark.parametrize("model_type", BERT_LAYOUT)
def test_bert_layout_family_prune_and_int8(minilm, sentences, tmp_path, model_type, monkeypatch):
    monkeypatch.setenv(int8_kernels.ENV, "fbgemm")  # the int8 arithmetic itself, not the per-shape kernel timing
    save_tiny(tmp_path / "in", minilm.tokenizer, model_type)
    model = slimformer.load(tmp_path / "in")
    assert model.model_type == model_type
    pruned = slimformer.compress(model, "prune(flops=0.8)", calib=sentences[:64])  # 2 batches: fit, held-out
    assert pruned.manifest["steps"][0]["flops_fraction"] <= 0.8
    assert sum(p.numel() for p in pruned.encoder.parameters()) < sum(p.numel() for p in model.encoder.parameters())
    small = slimformer.compress(pruned, "int8", calib=sentences[:24])
    assert small.manifest["recipe"] == "prune(flops=0.8)+int8"
    ffn = [b.get_submodule(getattr(small.adapter, role)) for b in blocks(small.encoder, small.adapter)
           for role in ("ffn_in", "ffn_out")]
    assert len(ffn) == 4 and all(isinstance(m, Int8Linear) for m in ffn)
    texts = sentences[:24]
    assert cosines(small.encode(texts), pruned.encode(texts)).min() > 0.99  # int8 on top of the narrowed model
    back = slimformer.load(slimformer.save(small, tmp_path / "out"))
    np.testing.assert_array_equal(back.encode(texts), small.encode(texts))


def test_unsupported_architecture_lists_real_model_types_only(minilm, tmp_path, cli):
    with pytest.raises(UnsupportedArchitectureError) as err:
        adapter_for("gpt2")
    listed = str(err.value).split("supported model_types: ")[1].rstrip(")").split(", ")
    assert "torch" not in listed and {"bert", "camembert", "distilbert", "mpnet", "xlm-roberta"} <= set(listed)
    assert adapter_for("torch").name == "torch"  # the internal row for plain nn.TransformerEncoder stays

    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=100)).save_pretrained(tmp_path / "gpt2")
    line = one_error_line(cli("bench", str(tmp_path / "gpt2")))
    assert "unsupported architecture 'gpt2'" in line and "camembert" in line


# ------------------------------------------------------------------------------------------------ calibration text

@pytest.fixture(params=["empty", "whitespace", "not utf-8", "a folder"])
def bad_calib(request, tmp_path):
    path = tmp_path / "calib.txt"
    if request.param == "a folder":
        path.mkdir()
    elif request.param == "not utf-8":
        path.write_bytes(b"caf\xe9 au lait\n\xff\xfe\n")
    else:
        path.write_text("" if request.param == "empty" else "  \n\t\n\n")
    return path


def test_bad_calibration_file_is_one_line_naming_it(bad_calib, tiny_dir, tmp_path, cli):
    with pytest.raises(DataFormatError, match=re.escape(str(bad_calib))):
        calibration_texts(path=bad_calib)
    with pytest.raises(DataFormatError, match=re.escape(str(bad_calib))):  # vocab(corpus=...) reads the same way
        slimformer.compress(slimformer.load(tiny_dir), [slimformer.Vocab(corpus=str(bad_calib))], calib=["a b c d"])
    line = one_error_line(cli("compress", str(tiny_dir), "--recipe", "int8", "-o", str(tmp_path / "o"),
                              "--calib", str(bad_calib), "--task", "none"))
    assert str(bad_calib) in line
    assert not (tmp_path / "o").exists()


def test_shipped_corpus_is_small_diverse_licensed_and_packaged():
    lines = read_lines(SHIPPED_CORPUS)
    assert 3000 <= len(lines) == len(set(lines)) and SHIPPED_CORPUS.stat().st_size < 500_000
    notice = (SHIPPED_CORPUS.parent / "NOTICE.md").read_text()
    assert "CC BY-SA 4.0" in notice and "UD_English-EWT" in notice
    # the genres the notice names are really there: a question, a review-like and a requirement sentence
    assert any(s.endswith("?") for s in lines) and any(" shall " in s for s in lines)
    pyproject = (SHIPPED_CORPUS.parents[3] / "pyproject.toml").read_text()
    assert '"corpus/calibration.txt", "corpus/NOTICE.md"' in pyproject


def test_default_calibration_without_a_data_folder_is_the_shipped_corpus(monkeypatch, tmp_path):
    assert len(default_calibration()) > 20_000  # the data folder's STS-B + SST-2 train while it is there
    monkeypatch.setenv("SLIMFORMER_DATA", str(tmp_path))  # an empty data folder
    assert default_calibration() == read_lines(SHIPPED_CORPUS)
    monkeypatch.setenv("SLIMFORMER_DATA", str(tmp_path / "missing"))
    assert sorted(calibration_texts(None)) == sorted(read_lines(SHIPPED_CORPUS))  # shuffled, all of it


def test_default_text_adds_the_shipped_corpus_but_not_its_held_out_part():
    import random

    old = default_calibration()  # STS-B + SST-2 train: the data folder is there
    random.Random(0).shuffle(old)
    texts = calibration_texts(None)
    assert texts[: len(old)] == old and calibration_texts(512) == old[:512]  # the calibration sample is unchanged
    added, held = texts[len(old):], set(shipped_corpus(held_out=True))
    assert len(held) == 998 and not held & set(texts)  # the risk report's other text stays unseen
    assert set(added) == set(shipped_corpus()) - set(old) and len(added) > 3000
    assert len(shipped_corpus()) + len(held) == len(read_lines(SHIPPED_CORPUS))


def test_compress_works_with_an_empty_data_folder(tiny_dir, tmp_path, cli, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("SLIMFORMER_DATA", str(tmp_path / "data"))
    monkeypatch.setenv(int8_kernels.ENV, "fbgemm")
    monkeypatch.setattr(api, "CALIB_SENTENCES", 64)  # a sample of the default text: seconds, not minutes
    p = cli("compress", str(tiny_dir), "--recipe", "prune(flops=0.8)+int8", "--task", "none", "--runs", "1",
            "-o", str(tmp_path / "out"))
    assert p.returncode == 0, p.stderr
    steps = json.loads((tmp_path / "out" / "slimformer.json").read_text())["steps"]
    assert [s["step"] for s in steps] == ["prune", "int8"] and steps[0]["flops_fraction"] <= 0.8


# ------------------------------------------------------------------------------------------------ vocab coverage

def test_vocab_warns_when_the_text_covers_little_of_the_vocabulary(tiny, sentences):
    with pytest.warns(CoverageWarning, match=r"uses [\d,]+ of the 30,522 tokens"):
        small = slimformer.compress(tiny, "vocab", calib=sentences[:20])
    assert small.manifest["steps"][0]["coverage"] < 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        big = slimformer.compress(tiny, "vocab", calib=read_lines(SHIPPED_CORPUS))  # 34% of MiniLM's vocabulary
    assert big.manifest["steps"][0]["coverage"] > 0.3


def test_vocab_refuses_the_default_text_on_a_multilingual_sized_vocabulary(minilm, sentences, tmp_path):
    save_tiny(tmp_path / "multi", minilm.tokenizer, vocab_size=120_000, hidden_size=16, intermediate_size=32)
    model = slimformer.load(tmp_path / "multi")
    with pytest.raises(StepNotApplicableError, match="120,000 tokens \\(multilingual-sized\\)"):
        slimformer.compress(model, "vocab")
    with pytest.warns(CoverageWarning):  # text given: the user's choice, with the warning
        given = slimformer.compress(model, "vocab", calib=sentences)
    # the text's few hundred tokens of 120,000: a multilingual-sized vocabulary's first ids are not kept by default
    assert given.encoder.get_input_embeddings().embedding.num_embeddings < 1000
    assert given.manifest["steps"][0]["common"] == 0
    corpus = tmp_path / "mine.txt"
    corpus.write_text("\n".join(sentences))
    with pytest.warns(CoverageWarning):
        slimformer.compress(model, [slimformer.Vocab(corpus=str(corpus))])


def test_cli_prints_the_coverage_warning_as_one_line(tiny_dir, sentences, tmp_path, cli):
    calib = tmp_path / "few.txt"
    calib.write_text("\n".join(sentences[:10]))
    p = cli("compress", str(tiny_dir), "--recipe", "vocab", "--calib", str(calib), "--task", "none", "--runs", "1",
            "-o", str(tmp_path / "out"))
    assert p.returncode == 0, p.stderr
    warned = [line for line in p.stderr.splitlines() if line.startswith("warning: vocab: the calibration text")]
    assert len(warned) == 1 and "--calib" in warned[0]


# ------------------------------------------------------------------------------------------------ bench --peers --base

def test_peers_base_defaults_to_the_original_the_manifests_name(tiny, tiny_dir, tmp_path):
    from slimformer.measure.peers import base_of

    a = slimformer.save(tiny, tmp_path / "a")
    b = slimformer.save(tiny, tmp_path / "b")
    assert base_of([str(a), str(b)]) == str(tiny_dir.resolve())
    assert base_of([str(a)], base="other") == "other"
    assert base_of([]) is None  # the embedded default
    manifest = json.loads((b / "slimformer.json").read_text())
    (b / "slimformer.json").write_text(json.dumps({**manifest, "source": str(tmp_path / "gone")}))
    with pytest.raises(SlimformerError, match="different originals"):
        base_of([str(a), str(b)])
    with pytest.raises(ModelNotFoundError, match="is not on this machine; give it with --base"):
        base_of([str(b)])


def test_two_folders_of_one_recipe_and_runtime_get_two_rows(tmp_path):
    from types import SimpleNamespace

    from slimformer.measure.peers import folder_label

    model, onnx = SimpleNamespace(manifest={"recipe": "int8"}), SimpleNamespace(manifest={"recipe": "int8",
                                                                                          "runtime": "onnxruntime"})
    rows = {folder_label(model, tmp_path / "pick", prefix="slimformer "): model}
    assert list(rows) == ["slimformer int8 [torch]"]
    assert folder_label(onnx, tmp_path / "pick", rows, "slimformer ") == "slimformer int8 [ORT]"
    assert folder_label(model, tmp_path / "mine", rows, "slimformer ") == "slimformer int8 [torch] (mine)"
    assert folder_label(SimpleNamespace(manifest={}), "models/x") == "models/x [torch]"  # the original: its path


@pytest.mark.parametrize("option", ["--base", "--task"])
def test_bench_options_of_peers_alone_are_one_line_errors(tiny_dir, cli, option):
    assert f"{option} goes with --peers" in one_error_line(cli("bench", str(tiny_dir), option, "stsb-dev"))


def test_bench_peers_builds_every_peer_row_from_the_base(minilm, tiny, tmp_path, cli, monkeypatch):
    """The plumbing, with the measurement replaced by each model's parameter count and source."""
    from slimformer.measure import peers
    from slimformer.measure.bench import n_params

    def fake_compare(models, recipes, task, runs, **kwargs):
        return {"rows": [{"name": name, "params": n_params(m.encoder) if isinstance(m, slimformer.SlimModel) else None,
                          "source": m.manifest.get("source")} for name, m in models.items()]}, models

    monkeypatch.setattr(peers, "compare", fake_compare)
    monkeypatch.setattr(peers, "throughput", lambda encode, texts: 1.0)
    monkeypatch.setattr(peers, "plot", lambda result, path: None)
    monkeypatch.setattr(peers, "markdown", lambda result: "")
    three = save_tiny(tmp_path / "three", minilm.tokenizer, num_hidden_layers=3, seed=3)
    candidate = slimformer.save(slimformer.compress(tiny, "int8", calib=["a short sentence here"] * 8),
                                tmp_path / "cand")  # from the 2-layer tiny model: --base wins over its manifest
    p = cli("bench", "--peers", "--base", str(tmp_path / "three"), str(candidate), "--json", "--out-dir",
            str(tmp_path / "peers"))
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json.loads(p.stdout)["rows"]}
    assert rows["torch fp32 eager (original)"]["params"] == sum(t.numel() for t in three.parameters())
    assert sum(t.numel() for t in three.parameters()) != n_params(tiny.encoder)
    peer_rows = [r for name, r in rows.items() if not name.startswith("slimformer")]
    assert len(peer_rows) >= 4 and {r["source"] for r in peer_rows} == {str((tmp_path / "three").resolve())}
    assert [r["source"] for name, r in rows.items() if name.startswith("slimformer")] == [tiny.manifest["source"]]


def test_bench_peers_keeps_two_folders_of_one_recipe_apart(tiny, tmp_path, cli, monkeypatch):
    """A search's pick and the hand-made model it matched share recipe and runtime: both rows stay in the table."""
    from slimformer.measure import peers

    monkeypatch.setattr(peers, "compare", lambda models, *a, **k: ({"rows": [{"name": n} for n in models]}, models))
    monkeypatch.setattr(peers, "throughput", lambda encode, texts: 1.0)
    monkeypatch.setattr(peers, "plot", lambda result, path: None)
    monkeypatch.setattr(peers, "markdown", lambda result: "")
    small = slimformer.compress(tiny, "int8", calib=["a short sentence here"] * 8)
    a, b = slimformer.save(small, tmp_path / "a"), slimformer.save(small, tmp_path / "b")
    p = cli("bench", "--peers", str(a), str(b), "--json", "--out-dir", str(tmp_path / "peers"))
    assert p.returncode == 0, p.stderr
    names = [r["name"] for r in json.loads(p.stdout)["rows"] if r["name"].startswith("slimformer")]
    assert names == ["slimformer int8 [torch]", "slimformer int8 [torch] (b)"]


@pytest.mark.slow
def test_bench_peers_base_end_to_end(minilm, tmp_path, cli, monkeypatch):
    """Issue 13's acceptance: `bench --peers --base THREE_LAYER_MODEL` shows its parameter count in the fp32 row."""
    three = save_tiny(tmp_path / "three", minilm.tokenizer, num_hidden_layers=3, seed=3)
    monkeypatch.setenv(int8_kernels.ENV, "fbgemm")
    p = cli("bench", "--peers", "--base", str(tmp_path / "three"), "--runs", "1", "--json", "--out-dir",
            str(tmp_path / "peers"))
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)["rows"]
    assert rows[0]["name"] == "torch fp32 eager (original)"
    assert rows[0]["params"] == sum(t.numel() for t in three.parameters())

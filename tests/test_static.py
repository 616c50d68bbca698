import numpy as np
import pytest
import torch

import slimformer
from slimformer.errors import RecipeError, StepNotApplicableError
from slimformer.passes import Context
from slimformer.passes import static as S
from slimformer.static_model import StaticModel


def random_static(tokenizer, dims=8, kept=500, int8=False, seed=0):
    """A StaticModel with a random table of `kept` rows, a mapping of every token onto them and per-token weights."""
    g = torch.Generator().manual_seed(seed)
    v = tokenizer.vocab_size
    table = torch.randn(kept, dims, generator=g)
    mapping = torch.randint(0, kept, (v,), generator=g)
    weights = torch.rand(v, generator=g) + 0.5
    if int8:
        table = (table * 40).round().clamp(-127, 127).to(torch.int8)
    return StaticModel(table, tokenizer, mapping, weights)


@pytest.fixture(scope="module")
def static_tiny(tiny_dir, sentences):
    return slimformer.compress(slimformer.load(tiny_dir), "static(dims=16)", calib=sentences)


@pytest.mark.parametrize("int8", [False, True])
def test_gather_and_mean_equal_a_direct_numpy_computation(minilm, sentences, int8):
    m = random_static(minilm.tokenizer, int8=int8)
    table, mapping, weights = m.embeddings.float().numpy(), m.mapping.numpy(), m.weights.numpy()
    got = m.encode(sentences + [""], batch_size=7)
    for s, row in zip(sentences + [""], got):
        ids = np.array(minilm.tokenizer(s, add_special_tokens=False)["input_ids"], dtype=np.int64)
        if len(ids) == 0:
            assert not row.any()  # an empty sentence is the zero vector, not nan
            continue
        v = (table[mapping[ids]] * weights[ids, None]).mean(0)
        np.testing.assert_allclose(row, v / np.linalg.norm(v), atol=1e-6)


def test_padding_never_changes_a_sentence_vector(minilm, sentences):
    m = random_static(minilm.tokenizer)
    alone = np.stack([m.encode(s) for s in sentences[:10]])
    batched = m.encode(sentences[:10] + ["a much longer sentence " * 20], batch_size=64)[:10]
    np.testing.assert_array_equal(alone, batched)
    b = m.tokenize(sentences[:4])
    padded = {k: torch.cat([v, torch.zeros(v.shape[0], 9, dtype=v.dtype)], 1) for k, v in b.items()}
    padded["input_ids"][:, -9:] = 1234  # whatever sits under the padding
    assert torch.equal(m(**b), m(**padded))


def test_pca_keeps_the_stated_dims_and_all_dims_keep_the_geometry(tiny, sentences, static_tiny):
    assert static_tiny.embeddings.shape == (tiny.tokenizer.vocab_size, 16)
    assert static_tiny.encode(sentences[:3]).shape == (3, 16)
    assert static_tiny.n_params() < tiny.net.embeddings.word_embeddings.weight.numel()
    # all 64 dims, no weights: PCA is a rotation of the centered vectors, so distances between tokens are unchanged
    ctx = Context(None, teacher=tiny, corpus_texts=sentences)
    b = S.basis(tiny, slimformer.Static(dims=64, zipf=False, tokens="alone"), ctx)
    some = torch.arange(0, tiny.tokenizer.vocab_size, 997)
    original = S.alone_vectors(tiny, some)
    exact = "donot_use_mm_for_euclid_dist"
    torch.testing.assert_close(torch.cdist(b.table[some], b.table[some], compute_mode=exact),
                               torch.cdist(original, original, compute_mode=exact), atol=1e-4, rtol=1e-4)
    with pytest.raises(StepNotApplicableError, match="dims=65"):
        slimformer.compress(tiny, "static(dims=65, tokens=alone)", calib=sentences)


@pytest.mark.filterwarnings("ignore::slimformer.errors.CoverageWarning")  # 80 sentences: few tokens kept
def test_a_token_outside_the_kept_vocabulary_falls_back_as_vocab_does(tiny, sentences):
    pruned = slimformer.compress(tiny, "vocab", calib=sentences)
    m = slimformer.compress(tiny, "vocab+static(dims=16)", calib=sentences)
    remap = pruned.encoder.get_input_embeddings().remap.long()
    assert torch.equal(m.mapping, remap)  # the same row (its nearest kept token's) for every token
    assert m.embeddings.shape[0] == pruned.manifest["steps"][0]["kept_tokens"] < tiny.tokenizer.vocab_size
    unseen = tiny.tokenizer.convert_tokens_to_ids("zeppelin")
    assert not any("zeppelin" in s.lower() for s in sentences) and remap[unseen] != unseen
    row = m.embeddings[remap[unseen]]  # its nearest kept token's row, as in the pruned transformer
    np.testing.assert_allclose(m.encode("zeppelin"), (row / row.norm()).numpy(), atol=1e-6)


@pytest.mark.parametrize("recipe", ["static(dims=16, tokens=alone)", "static(dims=16, tokens=alone)+int8"])
def test_save_then_load_is_bit_identical(tiny, sentences, tmp_path, recipe):
    m = slimformer.compress(tiny, recipe, calib=sentences)
    back = slimformer.load(slimformer.save(m, tmp_path / "s"))
    assert isinstance(back, StaticModel)
    for k, v in m.tensors().items():
        assert torch.equal(v, back.tensors()[k]) and v.dtype == back.tensors()[k].dtype, k
    np.testing.assert_array_equal(m.encode(sentences), back.encode(sentences))
    assert back.manifest["recipe"] == recipe


def test_int8_stores_the_table_at_8_bits_within_tolerance(static_tiny, sentences):
    q = slimformer.compress(static_tiny, "int8", calib=sentences)
    assert q.embeddings.dtype == torch.int8 and q.weights.shape == (static_tiny.vocab_size,)
    from slimformer.measure.bench import size_mb

    # 1 byte a weight plus one fp32 scale per token id (model2vec's per-token weights), against 4 bytes a weight
    assert size_mb(q) == pytest.approx((q.embeddings.numel() + 4 * q.vocab_size) / 1e6)
    assert size_mb(q) < 0.32 * size_mb(static_tiny)
    cos = (q.encode(sentences) * static_tiny.encode(sentences)).sum(1)
    assert cos.min() > 0.999
    with pytest.raises(StepNotApplicableError, match="already quantized"):
        slimformer.compress(q, "int8", calib=sentences)


def test_the_sentence_transformers_load_gives_the_same_vectors(tiny, sentences, tmp_path, static_tiny):
    from sentence_transformers import SentenceTransformer

    for name, m in [("fp32", static_tiny), ("int8", slimformer.compress(static_tiny, "int8", calib=sentences))]:
        st = SentenceTransformer(str(slimformer.save(m, tmp_path / name)), device="cpu")
        assert type(st[0]).__name__ == "StaticEmbedding"
        np.testing.assert_allclose(st.encode(sentences), m.encode(sentences), atol=1e-6, err_msg=name)


def held_out_loss(tiny, model, sentences, held):
    """fit's own loss (1 - cos to the teacher's sentence embedding in the table's basis) on sentences not trained on."""
    b = S.basis(tiny, slimformer.Static(dims=16, steps=1), Context(None, teacher=tiny, corpus_texts=sentences))
    _, _, teacher = S.read_context(tiny, held, tiny.tokenizer.vocab_size)
    rows = b.rows_of(tiny.tokenizer, held)
    ids, offsets = S.batch_of(rows, list(range(len(held))))
    return float(S.fit_loss(model.embeddings, ids, offsets, b.targets(teacher)))


def test_fit_reduces_the_cosine_loss_on_held_out_text(tiny, sentences):
    train, held = sentences[:60], sentences[60:]
    before = slimformer.compress(tiny, "static(dims=16)", calib=train)
    after = slimformer.compress(tiny, "static(dims=16, steps=40)", calib=train)
    assert held_out_loss(tiny, after, train, held) < 0.95 * held_out_loss(tiny, before, train, held)
    fit = after.manifest["steps"][-1]["fit"]
    assert fit["steps"] == 40 and fit["loss_last"] < fit["loss_first"]


def test_fit_resumes_after_a_kill(tiny, sentences, tmp_path, monkeypatch):
    recipe = "static(dims=16, steps=6)"
    whole = slimformer.compress(tiny, recipe, calib=sentences)
    monkeypatch.setattr(S, "CHECKPOINT_SECONDS", 0.0)  # checkpoint after every step
    calls, real = {"n": 0}, S.fit_loss

    def dying(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the process dies in step 4
        return real(*args)

    monkeypatch.setattr(S, "fit_loss", dying)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        slimformer.compress(tiny, recipe, calib=sentences, checkpoint_dir=ckpt)
    assert (ckpt / "progress.json").is_file()
    monkeypatch.setattr(S, "fit_loss", real)
    resumed = slimformer.compress(tiny, recipe, calib=sentences, checkpoint_dir=ckpt)
    assert resumed.manifest["steps"][-1]["fit"]["steps"] == 6 and not ckpt.exists()
    torch.testing.assert_close(resumed.embeddings, whole.embeddings, atol=1e-6, rtol=1e-5)


def test_only_int8_may_follow_static(tiny, static_tiny, sentences):
    with pytest.raises(RecipeError, match="fit="):
        slimformer.compress(tiny, "static+distill(steps=2)")
    with pytest.raises(RecipeError, match="cannot follow 'static'"):
        slimformer.compress(tiny, "static+int8+freeze")
    with pytest.raises(RecipeError, match="fit= .* or steps="):
        slimformer.Static(fit=1, steps=3)
    with pytest.raises(StepNotApplicableError, match="static embedding table"):
        slimformer.compress(static_tiny, "heads(keep=0.5)", calib=sentences)


def test_eval_and_bench_measure_a_static_model(static_tiny):
    from slimformer.measure.report import bench_model
    from slimformer.measure.tasks import evaluate

    assert 0 < evaluate(static_tiny, "stsb-dev").n
    out = bench_model(static_tiny, runs=1)
    assert set(out["latency_ms"]) == {"1x16", "8x128", "32x32"} and out["params"] == static_tiny.embeddings.numel()


def test_a_model2vec_folder_loads_as_a_static_model(static_tiny, sentences, tmp_path):
    """model2vec writes the same files less slimformer.json: load serves it (model2vec's peer row in bench)."""
    path = slimformer.save(slimformer.compress(static_tiny, "int8", calib=sentences), tmp_path / "m2v")
    ours = slimformer.load(path).encode(sentences)
    (path / "slimformer.json").unlink()
    m = slimformer.load(path)
    assert isinstance(m, StaticModel) and m.manifest["recipe"] == ""
    np.testing.assert_allclose(m.encode(sentences), ours, atol=1e-6)


def test_the_teacher_sentences_come_back_in_the_texts_order(tiny, sentences):
    texts = sentences[:40]  # read in length order, in batches: each row must still be its own sentence's mean state
    _, counts, got = S.read_context(tiny, texts, tiny.tokenizer.vocab_size)
    for i in (0, 7, 33):
        b = tiny.tokenize([texts[i]])
        with torch.no_grad():
            ref = tiny.encoder(**b).last_hidden_state[0].mean(0)
        torch.testing.assert_close(got[i], ref, atol=1e-5, rtol=1e-4)
    real = sum(len(tiny.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert counts.sum() == real  # every real token counted once, no special token


def test_encode_without_padding_equals_the_padded_batches(minilm, sentences):
    """encode reads the Rust tokenizer's ids straight into a flat gather: the same vectors as the padded
    tokenize -> forward path, truncation at max_seq_length included, whatever the shared tokenizer was last set to."""
    m = random_static(minilm.tokenizer)
    m.max_seq_length = 12
    texts = sentences + ["a much longer sentence " * 20, ""]
    minilm.tokenizer(["pad me", "and me too please"], padding="max_length", max_length=40)  # leaves padding on
    b = m.tokenize(texts)
    assert b["attention_mask"].sum(1).max() == 12  # the long ones are truncated in both paths
    torch.testing.assert_close(m.encode(texts, convert_to_tensor=True), m(**b), atol=1e-6, rtol=0)

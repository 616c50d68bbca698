"""A decoder LM (Gemma 3, tiny random config): loading as a causal LM, every pass it supports (structure shrinks,
identity exact, slicing equal to masking, save -> load equal, int8 close), grouped-query heads, perplexity."""

import copy
import functools
import json

import numpy as np
import pytest
import torch

import slimformer
from slimformer.errors import BudgetError, SlimformerError
from slimformer.measure.lm import document_nll, lm_speeds, perplexity
from slimformer.measure.tasks import check_task, default_task, evaluate, result_interval
from slimformer.passes.calib import lm_kl, lm_reference
from slimformer.passes.structure import slice_ffn, slice_heads

HS = 16  # head width: != hidden / heads (64 / 4), as in Gemma 3 (640 / 4 != 256)


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory, minilm):
    """4 layers (sliding, full, sliding, full; window 4), 4 query heads on 2 key/value heads, GeGLU FFN 96, with
    MiniLM's tokenizer (its vocabulary sets the model's)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=64, intermediate_size=96,
                           num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=HS,
                           max_position_embeddings=256, sliding_window=4,
                           layer_types=["sliding_attention", "full_attention"] * 2)
    path = tmp_path_factory.mktemp("gemma") / "tiny-gemma"
    Gemma3ForCausalLM(cfg).eval().save_pretrained(path)
    minilm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def gemma(gemma_dir):
    return slimformer.load(gemma_dir)


@pytest.fixture(scope="module")
def batch(minilm, sentences):
    return dict(minilm.tokenizer(sentences[:6], padding=True, return_tensors="pt", padding_side="right"))


@torch.inference_mode()
def logits(model, batch):
    return model(**batch).logits


def reload(model, tmp_path):
    return slimformer.load(slimformer.save(model, tmp_path / "out"))


def test_loads_as_causal_lm(gemma):
    from slimformer.arch import head_of
    from slimformer.errors import UnsupportedArchitectureError

    assert gemma.head == "causal-lm" and type(gemma.net).__name__ == "Gemma3ForCausalLM"
    assert type(gemma.encoder).__name__ == "Gemma3TextModel" and gemma.adapter.name == "gemma3_text"
    assert default_task(gemma) == "ppl"
    for name in ("BertForCausalLM", "BertLMHeadModel", "LlamaForCausalLM"):  # no adapter knows their decoder
        with pytest.raises(UnsupportedArchitectureError, match=name):
            head_of([name])


def _zero_columns(model, role: str, drop: dict[int, list[int]]):
    """The oracle of slicing: a copy whose `role` Linear (o or ffn_out) has the input columns of dropped units set
    to 0, so they contribute nothing: {layer: column indices}."""
    ref = model.clone()
    for l, cols in drop.items():
        lin = ref.encoder.layers[l].get_submodule(getattr(ref.adapter, role))
        with torch.no_grad():
            lin.weight[:, cols] = 0
    return ref


def test_ffn_slices_gate_and_up_together(gemma, batch, tmp_path):
    keep = [list(range(0, 96, 2)), list(range(96)), list(range(10)), list(range(50, 96))]
    oracle = _zero_columns(gemma, "ffn_out", {l: sorted(set(range(96)) - set(k)) for l, k in enumerate(keep)})
    small = gemma.clone()
    slice_ffn(small.encoder, small.adapter, keep)
    mlp = small.encoder.layers[0].mlp
    assert mlp.gate_proj.out_features == mlp.up_proj.out_features == mlp.down_proj.in_features == 48
    assert torch.allclose(logits(small, batch), logits(oracle, batch), atol=1e-5)
    assert torch.equal(logits(reload(small, tmp_path), batch), logits(small, batch))


def test_a_narrowed_model_loads_with_its_token_table_tied_once(gemma, batch, tmp_path):
    small = gemma.clone()
    slice_ffn(small.encoder, small.adapter, [list(range(48))] * 4)
    back = reload(small, tmp_path)
    assert back.net.lm_head.weight is back.net.get_input_embeddings().weight  # one table, as transformers ties it
    assert torch.equal(logits(back, batch), logits(small, batch))


def test_ffn_pass_and_identity(gemma, batch, sentences):
    same = slimformer.compress(gemma, "ffn(keep=1.0)", calib=sentences[:8])
    assert torch.allclose(logits(same, batch), logits(gemma, batch), atol=1e-6)
    half = slimformer.compress(gemma, "ffn(keep=0.5)", calib=sentences[:8])
    assert sum(half.manifest["steps"][0]["ffn_per_layer"]) == 2 * 96
    n = sum(p.numel() for p in half.net.parameters())
    assert n == sum(p.numel() for p in gemma.net.parameters()) - 3 * 2 * 96 * 64  # gate, up, down


def test_a_projection_without_a_bias_is_compensated_in_its_weights(gemma, batch, sentences, monkeypatch):
    """Gemma's output projections have no bias: compensation's regression has no constant, and a dropped copy of a
    kept FFN neuron still goes exactly (DAMP = 0: no ridge)."""
    import slimformer.passes.compensate as C
    from slimformer.passes.calib import Calibration
    from slimformer.passes.prune import narrow

    neuron = 5
    mlp = gemma.encoder.layers[0].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[neuron], mlp.up_proj.weight[neuron] = mlp.gate_proj.weight[0], mlp.up_proj.weight[0]
    ref = logits(gemma, batch)
    calib = Calibration.from_texts(gemma.tokenizer, sentences[8:40], batch_size=8)
    moments = C.input_moments(gemma, gemma.adapter, calib)
    assert moments[(0, "ffn_out")].shape == (97, 97)
    monkeypatch.setattr(C, "DAMP", 0.0)
    m = gemma.clone()
    narrow(m, gemma, calib, [list(range(4))] * 4, [[n for n in range(96) if n != neuron]] + [list(range(96))] * 3,
           tune=False, moments=moments)
    assert m.encoder.layers[0].mlp.down_proj.in_features == 95 and m.encoder.layers[0].mlp.down_proj.bias is None
    torch.testing.assert_close(logits(m, batch), ref, atol=1e-4, rtol=1e-4)


def test_grouped_query_heads(gemma, batch, tmp_path):
    """4 query heads on 2 key/value heads: group 0 = heads 0, 1; group 1 = heads 2, 3. Dropping a whole group drops
    its key/value head; dropping query heads keeps both key/value heads; uneven groups are refused."""
    keep = [[2, 3], [0, 2], [0, 1, 2, 3], []]
    cols = {l: [h * HS + i for h in range(4) if h not in k for i in range(HS)] for l, k in enumerate(keep)}
    oracle = _zero_columns(gemma, "o", cols)
    small = gemma.clone()
    slice_heads(small.encoder, small.adapter, keep)
    a0, a1 = small.encoder.layers[0].self_attn, small.encoder.layers[1].self_attn
    assert (a0.k_proj.out_features, a0.q_proj.out_features, a0.num_key_value_groups) == (HS, 2 * HS, 2)
    assert (a1.k_proj.out_features, a1.q_proj.out_features, a1.num_key_value_groups) == (2 * HS, 2 * HS, 1)
    assert not hasattr(small.encoder.layers[3].self_attn, "q_proj")  # no heads: no attention compute
    assert torch.allclose(logits(small, batch), logits(oracle, batch), atol=1e-5)
    back = reload(small, tmp_path)
    assert back.encoder.layers[0].self_attn.num_key_value_groups == 2
    assert torch.equal(logits(back, batch), logits(small, batch))
    with pytest.raises(BudgetError, match="same number of query heads"):
        slice_heads(gemma.clone().encoder, gemma.adapter, [[0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]])


def test_heads_pass_keeps_groups_even(gemma, batch, sentences, tmp_path):
    same = slimformer.compress(gemma, "heads(keep=4)", calib=sentences[:8])
    assert torch.allclose(logits(same, batch), logits(gemma, batch), atol=1e-6)
    small = slimformer.compress(gemma, "heads(keep=2)", calib=sentences[:8])
    for layer, kept in zip(small.encoder.layers, small.manifest["steps"][0]["kept_heads"]):
        assert sorted(h // 2 for h in kept) == [0, 1]  # one query head of each group
        assert layer.self_attn.k_proj.out_features == 2 * HS and layer.self_attn.num_key_value_groups == 1
    assert torch.equal(logits(reload(small, tmp_path), batch), logits(small, batch))
    few = slimformer.compress(gemma, "heads(keep=0.2)", calib=sentences[:8])  # 3 of 16 heads by importance
    assert min(few.manifest["steps"][0]["heads_per_layer"]) >= 1  # no layer without attention: the cache needs it
    ids = batch["input_ids"][:1, :8]
    assert torch.equal(_greedy(few.net, ids), _greedy(few.net, ids, cache=False))


@torch.inference_mode()
def _greedy(net, ids, n=6, cache=True):
    return net.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                        do_sample=False, use_cache=cache)


def test_layer_drop_keeps_the_kv_cache_right(gemma, batch, sentences, tmp_path):
    small = slimformer.compress(gemma, "layers(keep=2)", calib=sentences[:8])
    kept = small.manifest["steps"][0]["kept_layers"]
    assert len(small.encoder.layers) == small.config.num_hidden_layers == 2
    assert small.config.layer_types == [gemma.config.layer_types[i] for i in kept]
    assert [b.self_attn.layer_idx for b in small.encoder.layers] == [0, 1]  # the cache's slots
    ids = batch["input_ids"][:1, :8]
    assert torch.equal(_greedy(small.net, ids), _greedy(small.net, ids, cache=False))
    back = reload(small, tmp_path)
    assert back.config.layer_types == small.config.layer_types
    assert torch.equal(logits(back, batch), logits(small, batch))
    assert torch.equal(_greedy(back.net, ids), _greedy(small.net, ids))


def test_int8_close_and_ranked_by_next_token_kl(gemma, batch, sentences, tmp_path):
    ref = logits(gemma, batch)
    q = slimformer.compress(gemma, "int8", calib=sentences[:8])
    assert type(q.encoder.embed_tokens).__name__ == "QuantizedEmbedding"  # the scaled token table too
    assert q.encoder.embed_tokens.embed_scale == pytest.approx(64**0.5)
    out = logits(q, batch)
    assert float((out - ref).norm() / ref.norm()) < 0.05
    kl = lm_kl(out, lm_reference(ref))[batch["attention_mask"].bool()]
    assert 0 < float(kl.mean()) < 0.05
    kept = slimformer.compress(gemma, "int8(fp32=2)", calib=sentences[:8])
    names = kept.manifest["steps"][0]["fp32_kept"]
    assert len(names) == 2 and all(type(kept.net.get_submodule(n)) is torch.nn.Linear for n in names)
    assert torch.equal(logits(reload(kept, tmp_path), batch), logits(kept, batch))


def test_lm_kl_is_zero_for_itself_and_positive_otherwise():
    z = torch.randn(2, 5, 300)
    assert float(lm_kl(z, lm_reference(z)).abs().max()) < 1e-5
    assert float(lm_kl(z + torch.randn_like(z), lm_reference(z)).min()) > 0


def test_perplexity_task(gemma, sentences, tmp_path, embedder=None):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(sentences[:10]) + "\n")
    r = evaluate(gemma, f"ppl:{path}")
    # oracle: each document alone, no padding, mean next-token cross-entropy over all tokens
    nll, n = 0.0, 0
    with torch.inference_mode():
        for s in sentences[:10]:
            ids = gemma.tokenizer(s, return_tensors="pt")["input_ids"]
            z = gemma(input_ids=ids).logits[0, :-1]
            nll += float(torch.nn.functional.cross_entropy(z, ids[0, 1:], reduction="sum"))
            n += ids.shape[1] - 1
    assert r.metric == "perplexity" and r.n == 10 and r.extra["tokens"] == n
    assert r.value == pytest.approx(np.exp(nll / n), rel=1e-4)
    assert result_interval(r, r) == (0.0, 0.0)
    assert check_task("ppl", gemma) == "ppl"
    with pytest.raises(SlimformerError, match="perplexity"):
        check_task("stsb", gemma)


def test_perplexity_refuses_an_embedder(tiny):
    with pytest.raises(SlimformerError, match="perplexity"):
        check_task("ppl", tiny)


def test_perplexity_pools_documents_by_tokens():
    assert perplexity(np.array([2.0, 4.0]), np.array([1, 3])) == pytest.approx(np.exp(6 / 4))


def test_bench_reports_prefill_and_decode(gemma, monkeypatch):
    from slimformer.measure import lm

    monkeypatch.setattr(lm, "PREFILL_SHAPES", ((1, 8), (2, 8)))  # the keys follow the shapes; small ones are quick
    monkeypatch.setattr(lm, "DECODE_TOKENS", 4)
    out = lm_speeds({"m": gemma}, runs=1)["m"]
    assert set(out["prefill_ms"]) == {"1x8", "2x8"} and all(v > 0 for v in out["prefill_ms"].values())
    assert out["decode_tokens_per_s"] > 0


def test_document_nll_batches_like_one_at_a_time(gemma, sentences):
    docs = sentences[:7]
    a, ta = document_nll(gemma, docs, batch_size=3)
    b, tb = document_nll(gemma, docs, batch_size=1)
    assert np.array_equal(ta, tb) and np.allclose(a, b, rtol=1e-4)


def test_tied_token_table_counts_once(gemma):
    from slimformer.measure.bench import n_params, size_mb

    state = gemma.net.state_dict()
    table = state["lm_head.weight"]
    assert table.data_ptr() == state["model.embed_tokens.weight"].data_ptr()  # tied: one tensor, two names
    assert n_params(gemma.net) == sum(v.numel() for v in state.values()) - table.numel()
    assert size_mb(gemma.net) == pytest.approx((sum(v.nbytes for v in state.values()) - table.nbytes) / 1e6)


def test_fnet_is_refused_for_a_causal_lm(gemma, sentences):
    from slimformer.errors import StepNotApplicableError

    with pytest.raises(StepNotApplicableError, match="causal LM"):
        slimformer.compress(gemma, "fnet(layers=1)", calib=sentences[:8])


def test_lowrank_factorizes_gate_up_and_down(gemma, batch, sentences, tmp_path, monkeypatch):
    from slimformer.passes import lowrank

    monkeypatch.setattr(lowrank, "fastest_rank", lambda m, n: 10**6)  # tiny shapes are never faster factorized
    small = slimformer.compress(gemma, "lowrank(ratio=0.5)", calib=sentences[:8])
    ranks = small.manifest["steps"][0]["ranks"]
    assert any(n.endswith("mlp.gate_proj") for n in ranks) and any(n.endswith("mlp.up_proj") for n in ranks)
    assert sum(p.numel() for p in small.net.parameters()) < sum(p.numel() for p in gemma.net.parameters())
    assert torch.equal(logits(reload(small, tmp_path), batch), logits(small, batch))


# ------------------------------------------------------------------------------------- vocabulary of a decoder LM

def _ids(model, texts):
    return {t for row in model.tokenizer(texts)["input_ids"] for t in row}


@pytest.fixture(scope="module")
def pruned(gemma_dir, sentences):
    """The tiny Gemma with its tied table cut to the tokens of 60 sentences (plus the special and generate ids; not
    the tokenizer's most common ids: common=0)."""
    from slimformer.errors import CoverageWarning

    with pytest.warns(CoverageWarning, match="uses"):  # a few hundred of MiniLM's 30,522 tokens
        return slimformer.compress(slimformer.load(gemma_dir), "vocab(common=0)", calib=sentences[:60])


def test_vocab_keeps_the_common_tokens_of_a_decoder_too(gemma, pruned, sentences):
    from slimformer.passes.vocab import COMMON_TOKENS

    default = slimformer.compress(gemma, "vocab", calib=sentences[:60])
    kept = set(default.net.get_output_embeddings().remap.tolist())
    assert kept == set(range(COMMON_TOKENS)) | set(pruned.net.get_output_embeddings().remap.tolist())


def test_vocab_cuts_the_tied_table_and_lm_head_together(gemma, pruned, batch):
    from slimformer.passes.vocab import VocabEmbedding, VocabHead

    emb, head = pruned.net.get_input_embeddings(), pruned.net.get_output_embeddings()
    assert isinstance(emb, VocabEmbedding) and isinstance(head, VocabHead)
    assert head.proj.weight is emb.embedding.weight  # still one table, as the original ties them
    n, V = pruned.manifest["steps"][0]["kept_tokens"], gemma.config.vocab_size
    assert 80 < n < V / 100 and emb.embed_scale == pytest.approx(64**0.5)
    assert sum(p.numel() for p in pruned.net.parameters()) == \
        sum(p.numel() for p in gemma.net.parameters()) - (V - n) * 64
    kept = head.remap
    assert {0, 1, 2, gemma.tokenizer.unk_token_id} <= set(kept.tolist())  # pad, eos, bos (generate's ids), unk
    assert _ids(gemma, [gemma.tokenizer.decode(r) for r in batch["input_ids"][:1]]) <= set(kept.tolist())
    # the batch's sentences are calibration text: every token kept, so the kept logits are the original's
    a, b = logits(gemma, batch), logits(pruned, batch)
    assert b.shape == a.shape  # (B, T, V): ids stay the tokenizer's
    assert torch.allclose(b[..., kept], a[..., kept], atol=1e-5)
    dropped = torch.ones(V, dtype=torch.bool)
    dropped[kept] = False
    assert torch.isinf(b[..., dropped]).all() and (b[..., dropped] < 0).all()


def test_vocab_generate_equals_the_original_restricted_to_kept_tokens(gemma, pruned, batch):
    """Greedy tokens of the pruned model = the original's with every dropped token masked out of its choice."""
    from transformers import LogitsProcessor, LogitsProcessorList

    kept = pruned.net.get_output_embeddings().remap

    class KeepOnly(LogitsProcessor):
        def __call__(self, input_ids, scores):
            out = torch.full_like(scores, float("-inf"))
            out[:, kept] = scores[:, kept]
            return out

    ids = batch["input_ids"][:1, :8]
    with torch.inference_mode():
        ref = gemma.net.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                 min_new_tokens=8, do_sample=False, logits_processor=LogitsProcessorList([KeepOnly()]))
    out = _greedy(pruned.net, ids, n=8)
    assert torch.equal(out, ref)
    assert set(out[0, 8:].tolist()) <= set(kept.tolist())
    assert torch.equal(out, _greedy(pruned.net, ids, n=8, cache=False))


def test_vocab_save_load_keeps_one_table(pruned, batch, tmp_path):
    from slimformer.measure.bench import n_params, size_mb

    back = reload(pruned, tmp_path)
    assert back.net.get_output_embeddings().proj.weight is back.net.get_input_embeddings().embedding.weight
    assert torch.equal(logits(back, batch), logits(pruned, batch))
    assert n_params(back.net) == n_params(pruned.net) == sum(p.numel() for p in pruned.net.parameters())
    assert size_mb(back.net) == pytest.approx(size_mb(pruned.net))
    ids = batch["input_ids"][:1, :8]
    assert torch.equal(_greedy(back.net, ids), _greedy(pruned.net, ids))


def test_vocab_then_int8_and_keep_k(gemma, batch, sentences, tmp_path):
    q = slimformer.compress(gemma, "vocab(keep=60)+int8", calib=sentences[:60])
    head = q.net.get_output_embeddings()
    assert head.num_kept == 60 and type(head.proj).__name__ == "Int8Linear"
    assert type(q.net.get_input_embeddings().embedding).__name__ == "QuantizedEmbedding"
    out, kept = logits(q, batch), head.remap
    ref = logits(slimformer.compress(gemma, "vocab(keep=60)", calib=sentences[:60]), batch)[..., kept]
    assert float((out[..., kept] - ref).norm() / ref.norm()) < 0.05  # int8's error, as without vocab
    assert torch.equal(logits(reload(q, tmp_path), batch), out)


def test_vocab_perplexity_scores_dropped_tokens_as_unk(pruned, sentences, tmp_path):
    """Held-out text with tokens outside the kept vocabulary: perplexity over the original tokenization, each dropped
    token scored at the pruned model's <unk> probability; coverage is the kept share of the predicted tokens."""
    docs = sentences[60:80]
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(docs) + "\n")
    r = evaluate(pruned, f"ppl:{path}")
    kept = set(pruned.net.get_output_embeddings().remap.tolist())
    unk = pruned.tokenizer.unk_token_id
    nll, n, hit = 0.0, 0, 0
    with torch.inference_mode():
        for s in docs:
            ids = pruned.tokenizer(s, return_tensors="pt")["input_ids"]
            logp = torch.log_softmax(pruned(input_ids=ids).logits[0, :-1], -1)  # (T-1, V)
            for t, tok in enumerate(ids[0, 1:].tolist()):
                nll -= float(logp[t, tok if tok in kept else unk])
                hit += tok in kept
                n += 1
    assert 0.5 < hit / n < 1  # the held-out text has dropped tokens, and most are kept
    assert r.extra["coverage"] == pytest.approx(hit / n, abs=1e-4) and r.extra["tokens"] == n
    assert np.isfinite(r.value) and r.value == pytest.approx(np.exp(nll / n), rel=1e-4)


def test_distill_runs_on_a_decoder(gemma, batch, sentences):
    """distill (hidden states + next-token KL) trains a narrowed decoder and a vocabulary-pruned one (its KL over the
    kept tokens: finite though the dropped ones are -inf)."""
    small = slimformer.compress(gemma, "layers(keep=3)", calib=sentences[:16])
    before = float(torch.nn.functional.mse_loss(logits(small, batch), logits(gemma, batch)))
    trained = slimformer.compress(gemma, "layers(keep=3)+distill(steps=12, batch_size=8, lr=1e-3)",
                                  calib=sentences[:16])
    step = trained.manifest["steps"][-1]
    assert step["steps"] == 12 and np.isfinite(step["loss_last"]) and step["loss_last"] < step["loss_first"]
    assert float(torch.nn.functional.mse_loss(logits(trained, batch), logits(gemma, batch))) < before
    v = slimformer.compress(gemma, "vocab+distill(steps=3)", calib=sentences[:16])
    assert all(np.isfinite(v.manifest["steps"][-1][k]) for k in ("loss_first", "loss_last"))
    assert v.manifest["steps"][-1]["batch_size"] == 8  # a causal LM's default: vocabulary-wide logits
    assert v.manifest["steps"][-1]["lr"] == 3e-5 and step["lr"] == 1e-3  # a causal LM's default rate; the recipe's
    assert v.net.get_output_embeddings().proj.weight is v.net.get_input_embeddings().embedding.weight


def test_distill_computes_a_decoders_logits_at_its_real_tokens_only(gemma, batch, sentences):
    """A causal LM's distillation loss runs lm_head on the real tokens only (a padded batch: the padding's
    vocabulary-wide rows are never computed) and equals the loss from the net's own forward over every position,
    the padding dropped after; a vocabulary-pruned student (KL over its kept tokens) too."""
    from slimformer.passes import distill as D

    real = batch["attention_mask"].bool()
    assert not real.all()  # padded
    for recipe in ("layers(keep=3)", "vocab+layers(keep=3)"):
        student = slimformer.compress(gemma, recipe, calib=sentences[:16])
        lmap, rows = D.layer_map(student, gemma), []
        hooks = [m.net.get_output_embeddings().register_forward_hook(lambda mod, args, out: rows.append(args[0].shape))
                 for m in (student, gemma)]
        with torch.no_grad():
            got = D.loss_fn(student, gemma, batch, lmap)
        for h in hooks:
            h.remove()
        assert rows == [(int(real.sum()), 64)] * 2  # teacher and student: (N real tokens, hidden)
        with torch.no_grad():
            t, s = (m.net(**batch, output_hidden_states=True) for m in (gemma, student))
        kept = D.kept_tokens(student.net)
        s_logits, t_logits = (s.logits, t.logits) if kept is None else (s.logits[..., kept], t.logits[..., kept])
        pooled = [m.pool(o.hidden_states[-1], batch["attention_mask"]) for m, o in ((student, s), (gemma, t))]
        want = ((1 - torch.cosine_similarity(*pooled, dim=-1)).mean()
                + D.states_loss(s.hidden_states[1:], t.hidden_states[1:], lmap, real)
                + D.logit_kl(s_logits, t_logits, real, 2.0))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_distill_of_a_tied_decoder_resumes_from_its_checkpoint(gemma, sentences, tmp_path, monkeypatch):
    """The checkpoint of a model whose token table and lm_head share one tensor (safetensors refuses shared storage)
    saves, and a run killed mid-way resumes to the uninterrupted run's weights, the tie kept."""
    from slimformer.passes import distill as D

    recipe = "layers(keep=3)+distill(steps=4, lr=1e-3)"
    whole = slimformer.compress(gemma, recipe, calib=sentences[:16])
    monkeypatch.setattr(D, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every step
    monkeypatch.setattr(D, "SAVE_SHARE", 0)
    real_loss, calls = D.loss_fn, []

    def dying_loss(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # dies in step 3, after two checkpoints
        return real_loss(*args)

    monkeypatch.setattr(D, "loss_fn", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        slimformer.compress(gemma, recipe, calib=sentences[:16], checkpoint_dir=tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "progress.json").read_text())["step"] == 2
    monkeypatch.setattr(D, "loss_fn", real_loss)
    resumed = slimformer.compress(gemma, recipe, calib=sentences[:16], checkpoint_dir=tmp_path / "ckpt")
    assert resumed.net.get_output_embeddings().weight is resumed.net.get_input_embeddings().weight
    for (k, a), b in zip(whole.net.state_dict().items(), resumed.net.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=k)


# ------------------------------------------------------------------------------------------------- bench of an LM

def test_prefill_is_time_to_first_token(gemma, monkeypatch):
    """prefill_ms times the forward generate runs first: the last position's logits only (logits_to_keep=1)."""
    from slimformer.measure import lm

    seen = []
    forward = type(gemma.net).forward

    def spy(self, *a, **kw):
        out = forward(self, *a, **kw)
        seen.append(tuple(out.logits.shape))
        return out

    monkeypatch.setattr(type(gemma.net), "forward", spy)
    monkeypatch.setattr(lm, "PREFILL_SHAPES", ((2, 8),))
    monkeypatch.setattr(lm, "DECODE_TOKENS", 2)
    lm_speeds({"m": gemma}, runs=1)
    assert (2, 1, gemma.config.vocab_size) in seen and (2, 8, gemma.config.vocab_size) not in seen


@pytest.mark.slow
def test_measure_and_peers_run_on_a_causal_lm(gemma, pruned, sentences, tmp_path, monkeypatch):
    from slimformer.measure import bench, lm, report
    from slimformer.measure.peers import peer_models
    from slimformer.measure.report import markdown, measure
    from slimformer.measure.tasks import inference_fn

    monkeypatch.setattr(lm, "PREFILL_SHAPES", ((1, 8), (8, 128)))  # the table's column is 8x128
    monkeypatch.setattr(lm, "DECODE_TOKENS", 2)
    monkeypatch.setattr(report, "SHAPE_KEYS", ["1x16"])  # one standard shape: the LM columns are under test
    monkeypatch.setattr(report, "bench", functools.partial(bench.bench, shapes=((1, 16),)))
    skipped = {}
    peers = peer_models(gemma, tmp_path, skipped)
    assert {"torch fp32 eager (original)", "torch.ao dynamic int8", "ORT fp32", "ORT optimized + int8 per-channel"
            } <= set(peers) and not skipped  # ORT serves the decoder with its KV cache (runtime/causal.py)
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(sentences[40:46]) + "\n")
    nll, n = inference_fn(gemma)(sentences[40:46], batch_size=32)  # document scoring, PPL_BATCH a forward
    assert nll.shape == (6,) and (n > 0).all()
    result = measure({**peers, "vocab": pruned}, f"ppl:{path}", runs=1, throughput_texts=sentences[40:46])
    result["skipped"] = skipped
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["vocab"]["prefill_ms"]["8x128"] > 0 and rows["vocab"]["decode_tokens_per_s"] > 0
    assert rows["torch.ao dynamic int8"]["sentences_per_s"] > 0 and "prefill_speedup" in rows["vocab"]
    assert rows["torch.ao dynamic int8"][f"ppl:{path}"] < 2 * rows["torch fp32 eager (original)"][f"ppl:{path}"]
    assert rows["ORT fp32"][f"ppl:{path}"] == pytest.approx(rows["torch fp32 eager (original)"][f"ppl:{path}"],
                                                           rel=1e-3)
    assert rows["ORT fp32"]["prefill_ms"]["8x128"] > 0 and rows["ORT fp32"]["decode_tokens_per_s"] > 0
    assert "prefill speedup 8x128" in markdown(result)


def test_structure_after_vocab(gemma, pruned, batch, sentences):
    """Narrowing a vocabulary-pruned decoder: its dropped tokens' -inf logits leave importance and the KL that
    chooses finite (same choice as narrowing first: identity when everything is kept)."""
    from slimformer.passes.calib import Calibration, output_distance, sentence_output
    from slimformer.passes.prune import importance

    cal = Calibration.from_texts(pruned.tokenizer, sentences[60:68], batch_size=8)  # tokens outside the kept ones
    with torch.no_grad():
        ref = [sentence_output(gemma, b) for b in cal.batches]  # the original's top-K: dropped tokens among them
    assert np.isfinite(output_distance(pruned, cal, ref))
    for scores in importance(pruned.clone(), cal):
        assert not torch.isnan(scores).any()
    same = slimformer.compress(pruned, "ffn(keep=1.0)", calib=sentences[:8])
    assert torch.equal(logits(same, batch), logits(pruned, batch))
    small = slimformer.compress(pruned, "prune(flops=0.6)", calib=sentences[:16])
    step = small.manifest["steps"][-1]
    assert sum(step["ffn_per_layer"]) < 4 * 96 and small.manifest["recipe"] == "vocab(common=0)+prune(flops=0.6)"
    kept = small.net.get_output_embeddings().remap
    assert torch.isfinite(logits(small, batch)[..., kept]).all()


def test_int8_float_act_layers_keep_float_activations_and_survive_save(gemma, batch, sentences, tmp_path,
                                                                       monkeypatch):
    from slimformer.passes.int8_kernels import FLOAT_ACT, Int8Linear

    monkeypatch.setenv("SLIMFORMER_INT8_KERNEL", "intmm")  # every other layer quantizes its activations
    q = slimformer.compress(gemma, "int8(float_act=3)", calib=sentences[:8])
    names = q.manifest["steps"][0]["float_act"]
    assert len(names) == 3
    for fqn, m in q.net.named_modules():
        if isinstance(m, Int8Linear):
            assert m.float_act == (fqn in names)
            assert (m.kernel in FLOAT_ACT) == (fqn in names)  # intmm forced: fp32 for the float_act layers
    original = dict(gemma.net.named_modules())
    for fqn in names:  # quantized from the original weights, unsmoothed: int8 rounding error only
        m, w = q.net.get_submodule(fqn), original[fqn].weight
        assert m.inv_smooth is None
        err = (m.weight.float() * m.weight_scale[:, None] - w).abs().max(1).values  # (N,)
        assert bool((err <= m.weight_scale * 0.5 + 1e-7).all())
    back = reload(q, tmp_path)
    assert [f for f, m in back.net.named_modules() if getattr(m, "float_act", False)] == sorted(names, key=[
        f for f, _ in q.net.named_modules()].index)
    assert torch.equal(logits(back, batch), logits(q, batch))


def test_int8_float_act_ranks_by_input_noise_and_auto_keeps_the_kl_budget(gemma, batch, sentences, monkeypatch):
    """float_act=N: the N noisiest inputs. auto: int8 activations for the layers of least KL (each alone) per FLOP,
    as many as keep the budget; the rest float."""
    from slimformer.configs import Int8
    from slimformer.passes import quantize
    from slimformer.passes.calib import Calibration

    monkeypatch.setenv("SLIMFORMER_INT8_KERNEL", "intmm")
    q = slimformer.compress(gemma, "int8(float_act=0)", calib=sentences[:8])
    assert q.manifest["steps"][0]["float_act"] == []
    calib = Calibration.from_texts(q.tokenizer, sentences[:8], batch_size=4)
    noise = quantize.input_noise(q.net, calib)
    assert len(noise) == sum(isinstance(m, quantize.Int8Linear) for m in q.net.modules())
    assert quantize.float_act_layers(q.net, Int8(float_act=4), calib, None) == sorted(
        noise, key=noise.__getitem__, reverse=True)[:4]
    ref = lm_reference(logits(gemma, batch))
    mask = batch["attention_mask"].bool()

    def kl() -> float:  # nats per real token
        return float(lm_kl(logits(q, batch), ref)[mask].mean())

    def kl_with(int8_act) -> float:
        for fqn in noise:
            quantize.int8_kernels.set_kernel(q.net.get_submodule(fqn), "intmm" if fqn in int8_act else "fp32")
        return kl()

    weights_only, all_int8 = kl_with(()), kl_with(noise)
    assert all_int8 > weights_only > 0
    monkeypatch.setattr(quantize, "ACT_KL", (all_int8 - weights_only) / 2)  # a budget some layers must meet
    chosen = quantize.float_act_layers(q.net, Int8(), calib, kl)
    assert 0 < len(chosen) < len(noise)
    size = {f: q.net.get_submodule(f).in_features * q.net.get_submodule(f).out_features for f in noise}
    cheap = sorted(noise, key=lambda f: max(kl_with({f}) - weights_only, 0.0) / size[f])
    n = len(noise) - len(chosen)
    assert set(chosen) == set(cheap[n:])  # the costliest per FLOP keep float activations
    assert kl_with(cheap[:n]) <= weights_only + quantize.ACT_KL < kl_with(cheap[: n + 1])  # as many int8 as fit
    assert quantize.float_act_layers(q.net, Int8(), calib, None) == []  # auto without a KL: none (embedders)


def test_int8_float_act_auto_does_not_trust_float_kernels_chosen_here(gemma, batch, sentences, monkeypatch):
    """Kernels are chosen again at every load: a process that picked float kernels everywhere (no activation noise
    to see) must still mark the layers that int8 activations (fbgemm's, the coarsest) would push over the budget,
    and leave its own kernels as they were."""
    from slimformer.configs import Int8
    from slimformer.passes import quantize
    from slimformer.passes.calib import Calibration

    monkeypatch.delenv("SLIMFORMER_INT8_KERNEL", raising=False)
    q = slimformer.compress(gemma, "int8(float_act=0)", calib=sentences[:8])
    calib = Calibration.from_texts(q.tokenizer, sentences[:8], batch_size=4)
    lins = [m for m in q.net.modules() if isinstance(m, quantize.Int8Linear)]
    ref, mask = lm_reference(logits(gemma, batch)), batch["attention_mask"].bool()

    def kl() -> float:
        return float(lm_kl(logits(q, batch), ref)[mask].mean())

    def kl_all(spec: str) -> float:
        for m in lins:
            quantize.int8_kernels.set_kernel(m, spec)
        return kl()

    weights_only, coarse = kl_all("fp32"), kl_all("fbgemm")
    assert coarse > weights_only
    monkeypatch.setattr(quantize, "ACT_KL", (coarse - weights_only) / 2)
    kl_all("fp32")  # what this process "chose"
    assert quantize.float_act_layers(q.net, Int8(), calib, kl)  # some layers marked all the same
    assert {m.kernel for m in lins} == {"fp32"}


def test_int8_float_act_is_checked(gemma, tiny, sentences):
    from slimformer.errors import RecipeError

    with pytest.raises(RecipeError, match="float_act must be auto or an integer >= 0"):
        slimformer.compress(gemma, "int8(float_act=some)", calib=sentences[:8])
    assert slimformer.compress(tiny, "int8", calib=sentences[:8]).manifest["steps"][0]["float_act"] == []

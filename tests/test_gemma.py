"""A decoder LM (Gemma 3, tiny random config): loading as a causal LM, every pass it supports (structure shrinks,
identity exact, slicing equal to masking, save -> load equal, int8 close), grouped-query heads, perplexity."""

import copy

import numpy as np
import pytest
import torch

import slimformer
from slimformer.errors import BudgetError, SlimformerError
from slimformer.measure.lm import document_nll, lm_speed, perplexity
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


def test_ffn_pass_and_identity(gemma, batch, sentences):
    same = slimformer.compress(gemma, "ffn(keep=1.0)", calib=sentences[:8])
    assert torch.allclose(logits(same, batch), logits(gemma, batch), atol=1e-6)
    half = slimformer.compress(gemma, "ffn(keep=0.5)", calib=sentences[:8])
    assert sum(half.manifest["steps"][0]["ffn_per_layer"]) == 2 * 96
    n = sum(p.numel() for p in half.net.parameters())
    assert n == sum(p.numel() for p in gemma.net.parameters()) - 3 * 2 * 96 * 64  # gate, up, down


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
    out = lm_speed(gemma, runs=1)
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

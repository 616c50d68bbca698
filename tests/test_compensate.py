"""Compensation of pruned units (passes/compensate.py): a dropped unit, regressed on the kept ones, is folded into
its output projection."""

import pytest
import torch

import slimformer
from slimformer.arch import blocks
from slimformer.passes import Context
from slimformer.passes import structure as S
from slimformer.passes.calib import Calibration, fit_text
from slimformer.passes.compensate import REGRESSION_SENTENCES, input_moments
from slimformer.passes.prune import narrow
from test_prune import FAMILIES, states, tiny_hf

HEAD, NEURON = 1, 5  # in layer 0: made constant, or copies of head 0 and neuron 0, below; then dropped


def constant_units(model) -> None:
    """Layer 0's head HEAD and FFN neuron NEURON give the same value at every token: the head's value rows are zero
    with a bias, so its context (attention weights summing to 1 over values) is that bias; the neuron's input row is
    zero with bias 1, so its activation is act(1)."""
    block = blocks(model.encoder, model.adapter)[0]
    hs = S.head_size(model.encoder, model.adapter)
    v, up = block.get_submodule(model.adapter.v), block.get_submodule(model.adapter.ffn_in)
    with torch.no_grad():
        v.weight[HEAD * hs : (HEAD + 1) * hs] = 0
        v.bias[HEAD * hs : (HEAD + 1) * hs] = torch.linspace(-1, 1, hs)
        up.weight[NEURON] = 0
        up.bias[NEURON] = 1.0


def narrowed(model, sentences, compensated: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(states of `model` with layer 0's head HEAD and neuron NEURON dropped, the original's states) on real
    sentences; calibrated on others. Checks that the structure really shrank and that the manifest says so."""
    batch = model.tokenize(sentences[:16])
    heads, ffn = S.heads_per_layer(model.encoder, model.adapter), S.ffn_per_layer(model.encoder, model.adapter)
    keep_heads = [[h for h in range(heads[0]) if h != HEAD], list(range(heads[1]))]
    keep_neurons = [[n for n in range(ffn[0]) if n != NEURON], list(range(ffn[1]))]
    calib = Calibration.from_texts(model.tokenizer, sentences[16:64], batch_size=8)
    m = model.clone()
    moments = input_moments(m, m.adapter, calib) if compensated else None
    decisions = narrow(m, model, calib, keep_heads, keep_neurons, tune=False, moments=moments)
    assert decisions["compensated"] is compensated
    assert S.heads_per_layer(m.encoder, m.adapter)[0] == heads[0] - 1
    assert S.ffn_per_layer(m.encoder, m.adapter)[0] == ffn[0] - 1
    return states(m, batch), states(model, batch)


@pytest.mark.parametrize("family", FAMILIES)
def test_dropping_constant_units_is_exact_with_compensation(family, sentences):
    model = tiny_hf(family)
    constant_units(model)
    on, ref = narrowed(model, sentences, True)
    off, _ = narrowed(model, sentences, False)
    torch.testing.assert_close(on, ref, atol=2e-5, rtol=2e-5)
    assert (off - ref).abs().max() > 1e-2  # without it the dropped constants are missing


def duplicate_units(model) -> None:
    """Layer 0's head HEAD and FFN neuron NEURON copy head 0 and neuron 0: the same query, key and value rows (so the
    same context at every token) and the same input row (so the same activation)."""
    block = blocks(model.encoder, model.adapter)[0]
    hs = S.head_size(model.encoder, model.adapter)
    with torch.no_grad():
        for role in ("q", "k", "v"):
            lin = block.get_submodule(getattr(model.adapter, role))
            lin.weight[HEAD * hs : (HEAD + 1) * hs] = lin.weight[:hs]
            lin.bias[HEAD * hs : (HEAD + 1) * hs] = lin.bias[:hs]
        up = block.get_submodule(model.adapter.ffn_in)
        up.weight[NEURON], up.bias[NEURON] = up.weight[0], up.bias[0]


def test_a_dropped_copy_of_a_kept_unit_goes_exactly_without_the_ridge(sentences, monkeypatch):
    """A dropped unit equal to a kept one is regressed onto it (coefficient 1): exact with DAMP = 0; the default
    ridge shrinks the coefficient a little, still far closer than without compensation."""
    import slimformer.passes.compensate as C

    model = tiny_hf("bert")
    duplicate_units(model)
    off, ref = narrowed(model, sentences, False)
    on = narrowed(model, sentences, True)[0]
    monkeypatch.setattr(C, "DAMP", 0.0)
    exact = narrowed(model, sentences, True)[0]
    err = {k: float((v - ref).abs().max()) for k, v in (("exact", exact), ("on", on), ("off", off))}
    assert err["exact"] < 1e-4, err
    assert err["on"] < err["off"] / 3, err


def test_moments_are_those_of_the_projection_inputs_on_real_tokens(minilm, sentences):
    """E_w[z z^T] of z = (a, 1), a the FFN output projection's input, each token weighted by 1 / |y|^2 of the
    projection's output: checked against the activations themselves."""
    calib = Calibration.from_texts(minilm.tokenizer, sentences[:32])
    moments = input_moments(minilm, minilm.adapter, calib)
    assert set(moments) == {(i, r) for i in range(6) for r in ("o", "ffn_out")}
    a, y = [], []
    block = blocks(minilm.encoder, minilm.adapter)[0].get_submodule(minilm.adapter.ffn_out)
    handle = block.register_forward_hook(lambda _m, args, out: a.append(args[0]) or y.append(out))  # None
    try:
        with torch.no_grad():
            for b in calib.batches:
                minilm.net(**b)
    finally:
        handle.remove()
    x = torch.cat([t[b["attention_mask"].bool()] for t, b in zip(a, calib.batches)]).double()  # (tokens, 1536)
    w = 1 / torch.cat([t[b["attention_mask"].bool()] for t, b in zip(y, calib.batches)]).double().pow(2).sum(1)
    assert w.max() > 10 * w.min()  # the weights matter: MiniLM's first FFN writes far more on some tokens
    z = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    got = moments[(0, "ffn_out")]
    assert got.shape == (1537, 1537) and got.dtype == torch.float64
    torch.testing.assert_close(got, (z * w[:, None]).T @ z / w.sum(), atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def half_flops(minilm):
    """MiniLM narrowed to half the FLOPs at an exchange rate of 2.0, chosen on the fit half of 64 sentences of the
    default text (mostly short SST-2 phrases): (those 64 then 480 more sentences, the 64 as a calibration sample, its
    fit half, (keep_heads, keep_neurons), candidate -> its fidelity on the sample's held-out half)."""
    from slimformer.data import calibration_texts
    from slimformer.passes.prune import choose_by_flops, fidelity_of, importance

    texts = calibration_texts(544)
    calib = Calibration.from_texts(minilm.tokenizer, texts[:64], batch_size=16)
    fit, held = calib.split()
    enc, ad = minilm.encoder, minilm.adapter
    fisher_h, fisher_n = importance(minilm, fit)
    keep = choose_by_flops(fisher_h * 2.0, fisher_n, 0.5, S.hidden_size(enc, ad), S.head_size(enc, ad), 2,
                           S.flops_tokens(enc, ad))
    return texts, calib, fit, keep, fidelity_of(minilm, held)


def test_massive_activations_do_not_rule_the_fit(minilm, half_flops):
    """At half the FLOPs, with the heads an exchange rate of 2.0 keeps, compensation keeps the narrowed model closer
    to the original on held-out sentences than plain narrowing does. Unweighted moments failed this (held-out fidelity
    0.15 against 0.76 on these 64 sentences of the default text, mostly short SST-2 phrases): a few [CLS] / [SEP]
    tokens with huge FFN outputs ruled the fit."""
    _, _, fit, keep, score = half_flops
    moments = input_moments(minilm, minilm.adapter, fit)
    fidelity = {}
    for on in (False, True):
        m = minilm.clone()
        narrow(m, minilm, fit, *keep, tune=False, moments=moments if on else None)
        fidelity[on] = score(m)
    assert fidelity[True] > fidelity[False] + 0.02, fidelity


def test_a_recipe_option_on_by_default_recorded_in_the_manifest(tiny, sentences):
    on = slimformer.compress(tiny, "prune(flops=0.7)", calib=sentences)
    off = slimformer.compress(tiny, "prune(flops=0.7, compensate=false)", calib=sentences)
    assert on.manifest["steps"][0]["compensated"] is True and off.manifest["steps"][0]["compensated"] is False
    o_on = blocks(on.encoder, on.adapter)[0].get_submodule(on.adapter.ffn_out).bias
    o_off = blocks(off.encoder, off.adapter)[0].get_submodule(off.adapter.ffn_out).bias
    assert not torch.equal(o_on, o_off)


def test_more_text_makes_a_fit_that_holds_on_other_sentences(minilm, half_flops):
    """At half the FLOPs, the regression over the fit half (32 sentences) and 480 more sentences of the calibration
    text keeps the narrowed model closer to the original on held-out sentences than over the fit half alone: with
    up to 1,536 regressors a few hundred tokens overfit (ridge or not)."""
    texts, calib, fit, keep, score = half_flops
    fidelity = {}
    for n in (64, 544):
        m = minilm.clone()
        text = fit_text(m, Context(calib, teacher=minilm, corpus_texts=texts[:n]), REGRESSION_SENTENCES)
        narrow(m, minilm, fit, *keep, tune=False, moments=input_moments(m, m.adapter, text))
        fidelity[n] = score(m)
    assert fidelity[544] > fidelity[64] + 0.03, fidelity  # 0.90 against 0.81 here

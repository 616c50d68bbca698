"""Bias compensation of pruned units (passes/compensate.py): a dropped unit's constant part goes into the bias."""

import pytest
import torch

import slimformer
from slimformer.arch import blocks
from slimformer.passes import structure as S
from slimformer.passes.calib import Calibration
from slimformer.passes.compensate import constant_parts
from slimformer.passes.prune import narrow
from test_prune import FAMILIES, states, tiny_hf

HEAD, NEURON = 1, 5  # in layer 0: made constant below, then dropped


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


@pytest.mark.parametrize("family", FAMILIES)
def test_dropping_constant_units_is_exact_with_compensation(family, sentences):
    model = tiny_hf(family)
    constant_units(model)
    batch = model.tokenize(sentences[:16])
    ref = states(model, batch)
    heads, ffn = S.heads_per_layer(model.encoder, model.adapter), S.ffn_per_layer(model.encoder, model.adapter)
    keep_heads = [[h for h in range(heads[0]) if h != HEAD], list(range(heads[1]))]
    keep_neurons = [[n for n in range(ffn[0]) if n != NEURON], list(range(ffn[1]))]
    calib = Calibration.from_texts(model.tokenizer, sentences[16:48], batch_size=8)
    out = {}
    for compensated in (True, False):
        m = model.clone()
        parts = constant_parts(m, m.adapter, calib) if compensated else None
        decisions = narrow(m, model, calib, keep_heads, keep_neurons, tune=False, parts=parts)
        assert decisions["compensated"] is compensated
        assert S.heads_per_layer(m.encoder, m.adapter)[0] == heads[0] - 1  # the structure really shrank
        assert S.ffn_per_layer(m.encoder, m.adapter)[0] == ffn[0] - 1
        out[compensated] = states(m, batch)
    torch.testing.assert_close(out[True], ref, atol=2e-5, rtol=2e-5)
    assert (out[False] - ref).abs().max() > 1e-2  # without it the dropped constants are missing


def test_constant_parts_shrink_a_unit_that_fires_on_few_tokens(minilm, sentences):
    """c_j = E[a]^3 / E[a^2] is E[a] for a constant unit and much less than E[a] for one whose mass sits on a few
    tokens: checked against the activations themselves on real sentences."""
    calib = Calibration.from_texts(minilm.tokenizer, sentences[:32])
    parts = constant_parts(minilm, minilm.adapter, calib)
    assert set(parts) == {(i, r) for i in range(6) for r in ("o", "ffn_out")}
    a = []
    block = blocks(minilm.encoder, minilm.adapter)[0].get_submodule(minilm.adapter.ffn_out)
    handle = block.register_forward_pre_hook(lambda _m, args: a.append(args[0]))
    try:
        with torch.no_grad():
            for b in calib.batches:
                minilm.net(**b)
    finally:
        handle.remove()
    x = torch.cat([t[b["attention_mask"].bool()] for t, b in zip(a, calib.batches)]).double()  # (tokens, 1536)
    mean, second = x.mean(0), (x * x).mean(0)
    torch.testing.assert_close(parts[(0, "ffn_out")].double(), mean ** 3 / second, atol=1e-5, rtol=1e-4)
    assert (parts[(0, "ffn_out")].abs() <= mean.abs() + 1e-6).all()  # never more than the mean


def test_a_recipe_option_off_by_default_recorded_in_the_manifest(tiny, sentences):
    on = slimformer.compress(tiny, "prune(flops=0.7, compensate=true)", calib=sentences)
    off = slimformer.compress(tiny, "prune(flops=0.7)", calib=sentences)
    assert on.manifest["steps"][0]["compensated"] is True and off.manifest["steps"][0]["compensated"] is False
    o_on = blocks(on.encoder, on.adapter)[0].get_submodule(on.adapter.ffn_out).bias
    o_off = blocks(off.encoder, off.adapter)[0].get_submodule(off.adapter.ffn_out).bias
    assert not torch.equal(o_on, o_off)

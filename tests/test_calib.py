"""Calibration text and the measurements passes take on it (passes/calib.py), on the tiny random BERT."""

from types import SimpleNamespace

import pytest
import torch

from slimformer.passes import Context
from slimformer.passes.calib import (Calibration, activation_absmax, fit_text, output_error, outputs,
                                     squared_gradients)


@pytest.fixture
def calib(tiny, sentences):
    return Calibration.from_texts(tiny.tokenizer, sentences[:20], batch_size=4)


def test_from_texts_batches_by_length_and_split_halves(tiny, sentences, calib):
    assert len(calib.batches) == 5 and sum(len(b["input_ids"]) for b in calib.batches) == 20
    real = [int(b["attention_mask"].sum(1).max()) for b in calib.batches]
    assert real == sorted(real)  # sorted by length: little padding per batch
    fit, held = calib.split()
    assert fit.batches == calib.batches[0::2] and held.batches == calib.batches[1::2]  # same tensors, no copies
    assert len(fit.batches) + len(held.batches) == len(calib.batches)


def test_output_error_is_relative_squared_error():
    torch.manual_seed(0)
    ref = [torch.randn(2, 3, 4), torch.randn(1, 5, 4)]
    assert output_error(ref, [r.clone() for r in ref]) == 0.0
    assert output_error(ref, [2 * r for r in ref]) == pytest.approx(1.0, rel=1e-6)
    assert output_error(ref, [torch.zeros_like(r) for r in ref]) == pytest.approx(1.0, rel=1e-6)
    assert output_error(ref, [1.1 * r for r in ref]) == pytest.approx(0.01, rel=1e-4)


def test_outputs_of_a_model_against_itself(tiny, calib):
    out = outputs(tiny, calib)
    assert [o.shape[:2] for o in out] == [b["input_ids"].shape for b in calib.batches]
    assert output_error(out, outputs(tiny, calib)) == 0.0


def test_activation_absmax_equals_the_max_over_hidden_states(tiny, calib):
    """The input of layer l's query is the hidden state entering layer l, which HF returns itself."""
    names = {f"net.encoder.layer.{l}.attention.self.query" for l in range(2)}
    stats = activation_absmax(tiny, calib, names)
    assert set(stats) == names
    with torch.inference_mode():
        states = [tiny.encoder(**b, output_hidden_states=True).hidden_states for b in calib.batches]
    for l in range(2):
        expected = torch.stack([s[l].abs().amax((0, 1)) for s in states]).amax(0)  # (H,), padding included
        torch.testing.assert_close(stats[f"net.encoder.layer.{l}.attention.self.query"], expected,
                                   rtol=0, atol=1e-6)
    assert all(not m._forward_pre_hooks for m in tiny.modules())  # its hooks are gone


def test_squared_gradients_shapes_sign_and_seed(tiny, calib):
    layer = tiny.encoder.encoder.layer[0]
    tensors = [layer.attention.self.query.weight, layer.output.dense.bias, tiny.encoder.pooler.dense.weight]
    a = squared_gradients(tiny, calib, tensors, seed=0)
    assert [x.shape for x in a] == [t.shape for t in tensors]
    assert all((x >= 0).all() for x in a) and (a[0] > 0).any() and (a[1] > 0).all()
    assert not a[2].any()  # mean pooling never reads BERT's pooler: no gradient, zeros
    b = squared_gradients(tiny, calib, tensors, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # deterministic for a seed
    c = squared_gradients(tiny, calib, tensors, seed=1)
    assert not torch.allclose(a[0], c[0])  # a different projection r


def test_squared_gradients_ignore_padding_and_batching(tiny, sentences):
    """One backward per sentence at its own length: one padded batch gives what one batch per sentence gives."""
    texts = [sentences[0], sentences[1] + " " + sentences[2]]  # different lengths: the first is padded together
    together = Calibration([dict(tiny.tokenizer(texts, padding=True, return_tensors="pt"))])
    apart = Calibration([dict(tiny.tokenizer([t], return_tensors="pt")) for t in texts])
    assert together.batches[0]["attention_mask"].sum(1).min() < together.batches[0]["input_ids"].shape[1]
    weight = tiny.encoder.encoder.layer[1].intermediate.dense.weight
    (x,), (y,) = squared_gradients(tiny, together, [weight]), squared_gradients(tiny, apart, [weight])
    torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-9)


def test_split_of_one_batch_keeps_both_halves(minilm, sentences):
    """Up to 32 sentences make one batch: the split takes its even and odd rows, so prune's held-out half exists."""
    from slimformer.passes.calib import Calibration

    fit, held = Calibration.from_texts(minilm.tokenizer, sentences[:5]).split()
    assert [b["input_ids"].shape[0] for b in fit.batches] == [3]
    assert [b["input_ids"].shape[0] for b in held.batches] == [2]


def test_fit_text_reads_the_text_after_the_sample(tiny, sentences):
    """The fit half of the calibration sample, then the calibration text after the sample, up to n sentences in
    all; never the sample's held-out half (it scores prune's trials). Without more text, or for a causal LM, the fit
    half alone."""
    sample = Calibration.from_texts(tiny.tokenizer, sentences[:32], batch_size=8)  # 4 batches: fit 16, held 16
    fit, held = sample.split()
    text = fit_text(tiny, Context(sample, teacher=tiny, corpus_texts=sentences), 40)
    assert len(text.batches) == 3 and all(a is b for a, b in zip(text.batches, fit.batches))  # fit's 2, then 24
    assert sum(len(b["input_ids"]) for b in text.batches) == 40
    more = Calibration.from_texts(tiny.tokenizer, sentences[32:56]).batches[0]
    assert all(torch.equal(text.batches[2][k], more[k]) for k in more)
    held_rows = {tuple(r.tolist()) for b in held.batches for r in b["input_ids"]}
    assert not held_rows & {tuple(r.tolist()) for b in text.batches for r in b["input_ids"]}
    lm = SimpleNamespace(head="causal-lm", tokenizer=tiny.tokenizer)
    for model, texts in ((tiny, sentences[:32]), (lm, sentences), (tiny, None)):
        alone = fit_text(model, Context(sample, teacher=tiny, corpus_texts=texts), 40).batches
        assert len(alone) == 2 and all(a is b for a, b in zip(alone, fit.batches))

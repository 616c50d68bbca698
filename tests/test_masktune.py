"""Mask tuning (passes/masktune.py) on the tiny random BERT pruned hard: the tuned scales lower the layer-wise error
they are fitted to, and folding them into the weights computes what the mask hooks compute."""

import pytest
import torch

from slimformer.arch import blocks
from slimformer.passes.calib import Calibration
from slimformer.passes.masktune import fold_masks, tune_masks
from slimformer.passes.prune import narrow
from slimformer.passes.structure import unit_masks
from slimformer.surgery import hooks

KEEP_HEADS = [[1], [2]]  # of 4 per layer
KEEP_NEURONS = [list(range(0, 128, 8)), list(range(3, 128, 8))]  # 16 of 128 per layer


@pytest.fixture
def calib(tiny, sentences):
    return Calibration.from_texts(tiny.tokenizer, sentences[:32], batch_size=8)


def zero_one_masks() -> tuple[torch.Tensor, torch.Tensor]:
    head_mask, neuron_mask = torch.zeros(2, 4), torch.zeros(2, 128)
    for l in range(2):
        head_mask[l, KEEP_HEADS[l]] = 1.0
        neuron_mask[l, KEEP_NEURONS[l]] = 1.0
    return head_mask, neuron_mask


@torch.inference_mode()
def pre_norm_sums(model, calib) -> list[torch.Tensor]:
    """What tune_masks fits, per layer l and sublayer: residual + sublayer output before its LayerNorm, real tokens
    only, (N, H) each, in the order [attention of layer 0, FFN of layer 0, attention of layer 1, ...]."""
    adapter = model.adapter
    got = {}

    def keep_in(key):
        return lambda _m, args, out: got.setdefault(key, []).append(args[0])

    def keep_out(key):
        return lambda _m, args, out: got.setdefault(key, []).append(out)

    post = []
    for l, block in enumerate(blocks(model.encoder, adapter)):
        post += [(block.get_submodule(adapter.q), keep_in((l, "attn", "residual"))),
                 (block.get_submodule(adapter.o), keep_out((l, "attn", "out"))),
                 (block.get_submodule(adapter.ffn_in), keep_in((l, "ffn", "residual"))),
                 (block.get_submodule(adapter.ffn_out), keep_out((l, "ffn", "out")))]
    with hooks(post=post):
        for b in calib.batches:
            model(**b)
    real = [b["attention_mask"].reshape(-1).bool() for b in calib.batches]

    def tokens(key):
        return torch.cat([x.reshape(-1, x.shape[-1])[m] for x, m in zip(got[key], real)]).double()

    return [tokens((l, s, "residual")) + tokens((l, s, "out")) for l in range(2) for s in ("attn", "ffn")]


def errors(model, teacher, calib, head_mask, neuron_mask) -> list[float]:
    """Relative squared error of each pre-LayerNorm sum against the unpruned teacher's."""
    ref = pre_norm_sums(teacher, calib)
    with unit_masks(model.encoder, model.adapter, head_mask, neuron_mask):
        got = pre_norm_sums(model, calib)
    return [float((g - r).pow(2).sum() / r.pow(2).sum()) for g, r in zip(got, ref)]


def test_tuned_masks_lower_the_error_they_fit(tiny, calib):
    teacher = tiny.clone()
    head_mask, neuron_mask = tune_masks(tiny, teacher, calib, KEEP_HEADS, KEEP_NEURONS)
    zero_one = zero_one_masks()
    # pruned units stay at 0; the kept ones are really rescaled
    assert torch.equal(head_mask == 0, zero_one[0] == 0) and torch.equal(neuron_mask == 0, zero_one[1] == 0)
    assert (head_mask[zero_one[0] == 1] - 1).abs().max() > 0.05
    assert (neuron_mask[zero_one[1] == 1] - 1).abs().max() > 0.05

    untuned = errors(tiny, teacher, calib, *zero_one)
    tuned = errors(tiny, teacher, calib, head_mask, neuron_mask)
    # no sublayer gets worse (layer 0's attention sees the same input either way, and there the ridge solution is
    # never worse than m = 1); in total the error drops (0.95x here: the ridge pulls hard towards 1, and a random
    # model's units are independent, so the kept ones can make up only a little of what the pruned ones did)
    assert all(t <= u * (1 + 1e-6) for t, u in zip(tuned, untuned)), (tuned, untuned)
    assert sum(tuned) < 0.97 * sum(untuned), (tuned, untuned)


def test_a_pruned_head_is_made_up_by_its_kept_twin(tiny, calib):
    """Head 0 of layer 0 made a copy of head 1, then pruned: least squares would scale head 1 by exactly 2 (zero
    error); the ridge towards 1 stops halfway (1 head kept: its damping equals its Gram), so m ~ 1.5."""
    att = tiny.encoder.encoder.layer[0].attention  # hs = 16
    with torch.no_grad():
        for lin in (att.self.query, att.self.key, att.self.value):
            lin.weight[:16], lin.bias[:16] = lin.weight[16:32], lin.bias[16:32]
        att.output.dense.weight[:, :16] = att.output.dense.weight[:, 16:32]
    teacher = tiny.clone()
    keep_heads, keep_neurons = [[1, 2, 3], [0, 1, 2, 3]], [list(range(128))] * 2
    head_mask, neuron_mask = tune_masks(tiny, teacher, calib, keep_heads, keep_neurons)
    assert head_mask[0, 1] == pytest.approx(1.5, abs=0.1)
    zero_one = torch.tensor([[0.0, 1, 1, 1], [1, 1, 1, 1]]), torch.ones(2, 128)
    untuned = errors(tiny, teacher, calib, *zero_one)
    tuned = errors(tiny, teacher, calib, head_mask, neuron_mask)
    assert tuned[0] < 0.3 * untuned[0] and sum(tuned) < 0.3 * sum(untuned), (tuned, untuned)


def test_folded_masks_compute_what_the_hooks_compute(tiny, calib):
    teacher = tiny.clone()
    head_mask, neuron_mask = tune_masks(tiny, teacher, calib, KEEP_HEADS, KEEP_NEURONS)
    batch = calib.batches[0]
    with torch.inference_mode(), unit_masks(tiny.encoder, tiny.adapter, head_mask, neuron_mask):
        hooked = tiny(**batch)[0]

    folded = tiny.clone()
    fold_masks(folded.encoder, folded.adapter, head_mask, neuron_mask)  # no hooks: the scales are in the weights
    with torch.inference_mode():
        torch.testing.assert_close(folded(**batch)[0], hooked, rtol=1e-5, atol=1e-5)

    # and so does the pass's whole path: tune, fold, slice
    sliced = tiny.clone()
    decisions = narrow(sliced, teacher, calib, KEEP_HEADS, KEEP_NEURONS, tune=True)
    assert decisions["heads_per_layer"] == [1, 1] and decisions["ffn_per_layer"] == [16, 16]
    assert decisions["mask_tuning"] is True
    with torch.inference_mode():
        torch.testing.assert_close(sliced(**batch)[0], hooked, rtol=1e-5, atol=1e-5)

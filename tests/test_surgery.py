"""The shared surgery primitives: keep (slices), replace_modules / set_module (swaps), hooks (temporary hooks)."""

import pytest
import torch
from torch import nn

from slimformer.surgery import hooks, keep, replace_modules, set_module


def linear(bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(5, 4, bias=bias)  # weight (4, 5)


@pytest.mark.parametrize("bias", [True, False])
def test_keep_rows_slices_weight_and_bias(bias):
    layer = linear(bias)
    new = keep(layer, torch.tensor([3, 1]), dim=0)  # unsorted on purpose: kept in the layer's own order
    assert (new.in_features, new.out_features) == (5, 2)
    assert torch.equal(new.weight, layer.weight[[1, 3]])
    if bias:
        assert torch.equal(new.bias, layer.bias[[1, 3]])
    else:
        assert new.bias is None
    x = torch.randn(7, 5)
    torch.testing.assert_close(new(x), layer(x)[:, [1, 3]], rtol=0, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_keep_columns_slices_weight_and_keeps_bias_whole(bias):
    layer = linear(bias)
    new = keep(layer, [4, 0, 2], dim=1)
    assert (new.in_features, new.out_features) == (3, 4)
    assert torch.equal(new.weight, layer.weight[:, [0, 2, 4]])
    if bias:
        assert torch.equal(new.bias, layer.bias)
    # dropping an input column is the same as zeroing that input
    x = torch.randn(7, 5)
    zeroed = x.clone()
    zeroed[:, [1, 3]] = 0
    torch.testing.assert_close(new(x[:, [0, 2, 4]]), layer(zeroed), rtol=0, atol=1e-6)


def test_keep_nothing_leaves_the_bias_as_the_output():
    layer = linear()
    new = keep(layer, torch.tensor([], dtype=torch.long), dim=1)  # what a layer with every head pruned keeps of o
    assert new.weight.shape == (4, 0)
    torch.testing.assert_close(new(torch.zeros(3, 0)), layer.bias.expand(3, 4), rtol=0, atol=0)


def test_keep_rejects_a_bad_dim():
    with pytest.raises(AssertionError, match="dim must be 0"):
        keep(linear(), [0], dim=2)


def tree() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1)))


def test_replace_modules_swaps_exactly_what_the_filter_selects():
    model = tree()
    seen = []

    def fn(m, fqn):
        seen.append(fqn)
        return nn.Identity()

    replaced = replace_modules(model, lambda m, fqn: isinstance(m, nn.Linear) and fqn != "2.1", fn)
    assert replaced == seen == ["0", "2.0"]
    assert isinstance(model[0], nn.Identity) and isinstance(model[2][0], nn.Identity)
    assert isinstance(model[1], nn.ReLU) and isinstance(model[2][1], nn.Linear)


def test_replace_modules_with_no_match_changes_nothing():
    model = tree()
    before = [type(m) for m in model.modules()]
    assert replace_modules(model, lambda m, fqn: False, lambda m, fqn: nn.Identity()) == []
    assert [type(m) for m in model.modules()] == before


def test_set_module_at_top_level_and_nested():
    model = tree()
    top, nested = nn.Tanh(), nn.Linear(3, 5)
    set_module(model, "1", top)
    set_module(model, "2.1", nested)
    assert model[1] is top and model.get_submodule("2.1") is nested


def test_hooks_run_inside_and_are_removed_after():
    layer = linear()
    calls = []
    x = torch.randn(2, 5)
    with hooks(pre=[(layer, lambda m, args: (args[0] * 0,))], post=[(layer, lambda m, a, out: calls.append(out))]):
        inside = layer(x)
    torch.testing.assert_close(inside, layer.bias.expand(2, 4), rtol=0, atol=0)  # the pre-hook zeroed the input
    assert len(calls) == 1
    layer(x)
    assert len(calls) == 1  # removed: not called again
    assert not layer._forward_pre_hooks and not layer._forward_hooks


def test_hooks_are_removed_even_when_the_body_raises():
    layer = linear()
    with pytest.raises(RuntimeError, match="boom"):
        with hooks(pre=[(layer, lambda m, args: None)], post=[(layer, lambda m, a, out: None)]):
            assert layer._forward_pre_hooks and layer._forward_hooks
            raise RuntimeError("boom")
    assert not layer._forward_pre_hooks and not layer._forward_hooks

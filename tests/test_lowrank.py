import numpy as np
import pytest
import torch
from torch import nn

import slimformer
from slimformer.configs import LowRank
from slimformer.errors import BudgetError
from slimformer.passes import lowrank as LR
from slimformer.passes.quantize import Int8Linear


def test_full_rank_reproduces_the_layer():
    torch.manual_seed(0)
    lin = nn.Linear(48, 32)
    x = torch.randn(5, 48)
    fact = LR.factorize(lin, 32)
    torch.testing.assert_close(fact(x), lin(x), atol=1e-5, rtol=1e-5)
    rows = torch.rand(32) + 0.1  # Fisher-weighted at full rank is exact too
    torch.testing.assert_close(LR.factorize(lin, 32, rows)(x), lin(x), atol=1e-5, rtol=1e-5)


def test_error_falls_monotonically_with_rank():
    torch.manual_seed(0)
    lin = nn.Linear(64, 40)
    errors = []
    for r in range(1, 41):
        f = LR.factorize(lin, r)
        errors.append(float((f.second.weight @ f.first.weight - lin.weight).detach().norm()))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-5


def test_fisher_weighting_moves_error_off_important_rows():
    torch.manual_seed(0)
    lin = nn.Linear(64, 40)
    rows = torch.ones(40)
    rows[:5] = 100.0  # five rows matter much more
    err = lambda f: (f.second.weight @ f.first.weight - lin.weight)[:5].norm()  # noqa: E731
    assert err(LR.factorize(lin, 8, rows)) < 0.5 * err(LR.factorize(lin, 8))


@pytest.mark.parametrize("rank", [0, 41])
def test_impossible_rank(rank):
    with pytest.raises(BudgetError, match="impossible"):
        LR.factorize(nn.Linear(64, 40), rank)


def test_budget_allocation_uses_spectra():
    # layer a: energy in few values; layer b: flat spectrum. A global budget gives b more rank.
    spectra = {"a": torch.tensor([10.0, 1, 0.5, 0.1] + [0.01] * 28), "b": torch.ones(32)}
    shapes = {"a": (32, 32), "b": (32, 32)}
    ranks = LR.allocate(spectra, shapes, LowRank(ratio=0.5), {"a": 16, "b": 16})
    assert ranks["b"] > ranks["a"] > 0 or ranks["b"] == 0  # b may hit its cap and stay dense
    used = sum(r * 64 for r in ranks.values() if r)
    assert used <= 0.5 * 2 * 32 * 32
    assert LR.allocate(spectra, shapes, LowRank(energy=0.9), {"a": 16, "b": 16})["a"] == 1


@pytest.fixture
def any_rank_is_fast(monkeypatch):
    """Tiny test matrices are never faster factorized; take the speed cap out to test the surgery itself."""
    monkeypatch.setattr(LR, "fastest_rank", lambda m, n: 10**6)


def test_tiny_layers_stay_dense_when_not_faster(tiny, sentences, monkeypatch):
    monkeypatch.setattr(LR, "fastest_rank", lambda m, n: 0)
    small = slimformer.compress(tiny, "lowrank(rank=8)", calib=sentences)
    assert not any(isinstance(m, LR.FactorizedLinear) for m in small.encoder.modules())
    assert len(small.manifest["steps"][0]["dense"]) == 12


def test_lowrank_pass_structure_int8_and_round_trip(tiny, sentences, tmp_path, any_rank_is_fast):
    small = slimformer.compress(tiny, "lowrank(rank=8)", calib=sentences)
    facts = [m for m in small.encoder.modules() if isinstance(m, LR.FactorizedLinear)]
    step = small.manifest["steps"][0]
    assert len(facts) == len(step["ranks"]) and all(f.rank == 8 for f in facts)
    assert len(facts) + len(step["dense"]) == 12  # 6 roles x 2 layers
    assert sum(p.numel() for p in small.encoder.parameters()) < sum(p.numel() for p in tiny.encoder.parameters())
    back = slimformer.load(slimformer.save(small, tmp_path / "lr"))
    np.testing.assert_array_equal(back.encode(sentences[:6]), small.encode(sentences[:6]))

    q = slimformer.compress(tiny, "lowrank(rank=8)+int8", calib=sentences)
    for f in (m for m in q.encoder.modules() if isinstance(m, LR.FactorizedLinear)):
        assert isinstance(f.first, Int8Linear) and isinstance(f.second, Int8Linear)
    back = slimformer.load(slimformer.save(q, tmp_path / "lrq"))
    np.testing.assert_array_equal(back.encode(sentences[:6]), q.encode(sentences[:6]))


def test_rank_too_large_for_the_model(tiny, sentences):
    with pytest.raises(BudgetError, match="rank 100 is larger"):
        slimformer.compress(tiny, "lowrank(rank=100)", calib=sentences)


def test_fisher_pass_runs(tiny, sentences, any_rank_is_fast):
    small = slimformer.compress(tiny, "lowrank(ratio=0.5, fisher=true)", calib=sentences[:16])
    assert small.manifest["steps"][0]["fisher"] is True

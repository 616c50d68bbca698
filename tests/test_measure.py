import numpy as np
from scipy.stats import spearmanr

from slimformer.data import read_stsb
from slimformer.measure.tasks import _spearman_rows, delta_interval


def _gold_and_cosines():
    """STS-B dev gold scores and a stand-in model's cosines: the gold plus noise (what a decent embedder gives)."""
    gold = np.array([p[2] for p in read_stsb("dev")[:400]])
    rng = np.random.default_rng(0)
    return gold, gold / 5 + rng.normal(0, 0.3, len(gold)), rng


def test_spearman_rows_match_scipy():
    gold, cos, rng = _gold_and_cosines()
    x = np.stack([cos, rng.permutation(cos), np.round(cos, 1)])  # ties too: rounded cosines
    y = np.stack([gold, gold, gold])
    want = [spearmanr(a, b).statistic * 100 for a, b in zip(x, y)]
    np.testing.assert_allclose(_spearman_rows(x, y), want, atol=1e-9)


def test_identical_models_have_a_zero_interval():
    gold, cos, _ = _gold_and_cosines()
    assert delta_interval(gold, cos, cos.copy()) == (0.0, 0.0)


def test_interval_tells_a_worse_model_from_rounding_noise():
    gold, cos, rng = _gold_and_cosines()
    point = lambda c: spearmanr(c, gold).statistic * 100
    nearly = cos + rng.normal(0, 1e-3, len(cos))  # what int8 rounding does: the interval is narrow and holds 0
    lo, hi = delta_interval(gold, cos, nearly)
    assert lo <= 0 <= hi and hi - lo < 1.0
    worse = cos + rng.normal(0, 0.5, len(cos))  # a clearly worse model: the whole interval lies below 0
    lo, hi = delta_interval(gold, cos, worse)
    assert lo <= point(worse) - point(cos) <= hi < 0

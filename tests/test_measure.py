import numpy as np
from scipy.stats import spearmanr

from slimformer.data import read_stsb
from slimformer.measure.tasks import spearman_rows, delta_interval


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
    np.testing.assert_allclose(spearman_rows(x, y), want, atol=1e-9)


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


def test_transfer_gap_interval_resamples_each_set_once_for_all_its_cells():
    """benchmarks/transfer.py's gap (mean OOD delta - mean ID delta): zero width where every cell equals the original,
    and around a clear loss out of distribution it holds the point gap and lies below 0."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from transfer import gap_interval

    gold, cos, rng = _gold_and_cosines()
    gold = {"a": gold[:200], "b": gold[200:]}
    ref = {"a": cos[:200], "b": cos[200:]}
    same = [{"scored": t, "kind": k, "pred": ref[t].copy()} for t, k in (("a", "ID"), ("b", "ID"), ("a", "OOD"))]
    assert gap_interval(gold, ref, same) == (0.0, 0.0)
    worse = {t: c + rng.normal(0, 0.5, len(c)) for t, c in ref.items()}
    cells = [{"scored": "a", "kind": "ID", "pred": ref["a"] + rng.normal(0, 1e-3, 200)},
             {"scored": "b", "kind": "OOD", "pred": worse["b"]}, {"scored": "a", "kind": "OOD", "pred": worse["a"]}]
    point = lambda t, c: (spearmanr(c, gold[t]).statistic - spearmanr(ref[t], gold[t]).statistic) * 100
    gap = np.mean([point(t, worse[t]) for t in "ab"]) - point("a", cells[0]["pred"])
    lo, hi = gap_interval(gold, ref, cells)
    assert lo <= gap <= hi < 0


def test_latency_runs_each_runner_in_blocks_in_shuffled_order():
    from slimformer.timing import BLOCK, latency_ms

    calls = []
    runners = {name: (lambda name: lambda x: calls.append(name))(name) for name in "abcd"}
    out = latency_ms(runners, dict.fromkeys(runners, 100), shapes=((1, 4),), runs=4 * BLOCK, warmup=1)
    assert set(out) == set("abcd") and all(set(v) == {"1x4"} for v in out.values())
    timed = calls[4:]  # after one warm-up call each
    blocks = [timed[i : i + BLOCK + 1] for i in range(0, len(timed), BLOCK + 1)]  # one untimed run + BLOCK timed
    assert len(blocks) == 4 * 4 and all(len(set(b)) == 1 for b in blocks)
    rounds = ["".join(b[0] for b in blocks[i : i + 4]) for i in range(0, 16, 4)]
    assert all(sorted(r) == list("abcd") for r in rounds) and len(set(rounds)) > 1  # every runner each round, reordered

"""Quality on real benchmarks: STS (Spearman of cosine x100), and how far two models' scores differ beyond what
resampling the benchmark's pairs moves (paired bootstrap)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import spearmanr

from ..data import read_sts_tsv, read_stsb
from ..errors import SlimformerError


@dataclass(frozen=True)
class TaskResult:
    task: str
    metric: str
    value: float
    n: int
    cosines: np.ndarray | None = field(default=None, repr=False, compare=False)  # (n,) per pair, for delta_interval


def sts_pairs(task: str) -> list[tuple[str, str, float]]:
    if task == "stsb":
        return read_stsb("test")
    if task == "stsb-dev":
        return read_stsb("dev")
    if task.startswith("sts:"):
        return read_sts_tsv(task[4:])
    raise SlimformerError(f"unknown task '{task}' (tasks: stsb, stsb-dev, sts:PATH)")


def pair_cosines(encode, pairs: list[tuple[str, str, float]], batch_size: int = 64) -> np.ndarray:
    """cosine(emb(s1), emb(s2)) of each pair: (n,). `encode(texts) -> (N, H) array`; each sentence encoded once."""
    unique = list(dict.fromkeys(s for a, b, _ in pairs for s in (a, b)))
    index = {s: i for i, s in enumerate(unique)}
    emb = np.asarray(encode(unique, batch_size=batch_size), dtype=np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    a = emb[[index[p[0]] for p in pairs]]
    b = emb[[index[p[1]] for p in pairs]]
    return (a * b).sum(1)


def evaluate(model, task: str = "stsb", batch_size: int = 64) -> TaskResult:
    """Spearman x100 between each pair's cosine and its gold score; the cosines come along for delta_interval."""
    pairs = sts_pairs(task)
    cos = pair_cosines(model.encode, pairs, batch_size)
    value = float(spearmanr(cos, [p[2] for p in pairs]).statistic * 100)
    return TaskResult(task, "spearman_cosine_x100", value, len(pairs), cos)


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman x100 of each row of x (R, n) with the same row of y (R, n): Pearson of ranks (ties averaged)."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(1, keepdims=True)
    ry -= ry.mean(1, keepdims=True)
    return 100 * (rx * ry).sum(1) / np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))


def delta_interval(gold, cos_a: np.ndarray, cos_b: np.ndarray, resamples: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float]:
    """Paired bootstrap interval of Spearman(b) - Spearman(a) (x100) on the same n pairs: both models are scored on
    one resample of the pairs at a time, so what the pairs share cancels. An interval that holds 0: the benchmark
    cannot tell the two apart."""
    gold = np.asarray(gold, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(gold), (resamples, len(gold)))  # (R, n)
    d = _spearman_rows(cos_b[idx], gold[idx]) - _spearman_rows(cos_a[idx], gold[idx])
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)

"""Quality on real benchmarks: STS (Spearman of cosine x100)."""

from __future__ import annotations

from dataclasses import dataclass

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


def sts_pairs(task: str) -> list[tuple[str, str, float]]:
    if task == "stsb":
        return read_stsb("test")
    if task == "stsb-dev":
        return read_stsb("dev")
    if task.startswith("sts:"):
        return read_sts_tsv(task[4:])
    raise SlimformerError(f"unknown task '{task}' (tasks: stsb, stsb-dev, sts:PATH)")


def spearman_of_cosine(encode, pairs: list[tuple[str, str, float]], batch_size: int = 64) -> float:
    """Spearman x100 between cosine(emb(s1), emb(s2)) and the gold score. `encode(texts) -> (N, H) array`."""
    unique = list(dict.fromkeys(s for a, b, _ in pairs for s in (a, b)))
    index = {s: i for i, s in enumerate(unique)}
    emb = np.asarray(encode(unique, batch_size=batch_size), dtype=np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    a = emb[[index[p[0]] for p in pairs]]
    b = emb[[index[p[1]] for p in pairs]]
    cos = (a * b).sum(1)
    return float(spearmanr(cos, [p[2] for p in pairs]).statistic * 100)


def evaluate(model, task: str = "stsb", batch_size: int = 64) -> TaskResult:
    pairs = sts_pairs(task)
    return TaskResult(task, "spearman_cosine_x100", spearman_of_cosine(model.encode, pairs, batch_size), len(pairs))

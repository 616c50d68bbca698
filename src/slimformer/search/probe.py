"""What a trial measures, inside its subprocess: quality on a slice of the task or on all of it, and the cost of
the candidate relative to the original timed in the same alternating loop (timing.latency_ms)."""

from __future__ import annotations

import time

import numpy as np
from scipy.stats import spearmanr

from ..measure.bench import size_mb, throughput
from ..measure.report import runnable
from ..measure.labels import gold_ids
from ..measure.tasks import (cls_examples, delta_interval, evaluate, inference_fn, pair_cosines, sts_pairs,
                             task_inputs, task_kind)
from ..timing import SHAPES, latency_ms
from .space import OBJECTIVES

SLICE = 256  # examples of the task a proxy quality is measured on
SLOW = 4.0  # a candidate this many times slower than the original in one call is timed by that call alone
THROUGHPUT_TEXTS = 256  # inputs of the task timed end to end for the throughput objective


def strided(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (task files are often grouped by genre: the first k would be one)."""
    return list(range(n)) if n <= k else [round(i * (n - 1) / (k - 1)) for i in range(k)]


def slice_score(model, task: str, k: int = SLICE, batch_size: int = 64) -> float:
    """The task's metric (x100) on k examples spread over its split: the no-training proxy of quality."""
    if task_kind(task) == "sts":
        pairs = sts_pairs(task)
        pairs = [pairs[i] for i in strided(len(pairs), k)]
        cos = pair_cosines(model.encode, pairs, batch_size)
        return float(spearmanr(cos, [p[2] for p in pairs]).statistic * 100)
    examples = cls_examples(task)
    examples = [examples[i] for i in strided(len(examples), k)]
    gold = gold_ids(task, [y for _, y in examples], model)
    pred = np.asarray(model.predict([x for x, _ in examples], batch_size=batch_size)).argmax(1)
    return float((pred == gold).mean() * 100)


def reference(model, task: str) -> dict:
    """The original's figures every trial is compared with: its full score (per example, for paired intervals),
    its slice score, and its re-measurement noise: how far the slice's score moves when scored again with another
    batch size (padding changes the float sums), the floor under any reachable --max-drop."""
    full = evaluate(model, task)
    sliced = slice_score(model, task)
    return {"task": full.task, "metric": full.metric, "value": full.value, "n": full.n,
            "per_example": full.per_example.tolist(), "gold": None if full.gold is None else full.gold.tolist(),
            "slice": sliced, "noise": abs(sliced - slice_score(model, task, batch_size=16)),
            "size_mb": size_mb(runnable(model))}


def other_fidelity(base, model, calib: str | None = None) -> float | None:
    """The compress report's transfer check (measure/fidelity.py): Spearman x100 of the candidate's pairwise
    similarities against the original's (a classifier: % equal classes) on text no pass fitted on, the shipped
    corpus's held-out news and Wikipedia. The task's drop says what the search budgeted; this, what may not transfer.
    None where there is no such text (a custom --calib that holds it all)."""
    from ..measure.fidelity import transfer_risk

    return transfer_risk(base, model, calib).get("other")


def full_quality(model, task: str, ref: dict) -> dict:
    """The score on the whole split and the 95% paired-bootstrap interval of its drop from the original's."""
    r = evaluate(model, task)
    lo, hi = delta_interval(ref["gold"], np.asarray(ref["per_example"]), r.per_example)  # of cand - original
    return {"quality": r.value, "drop": ref["value"] - r.value, "drop_95": [-hi, -lo]}


def _times(base, cand, shapes, runs: int) -> dict[str, dict[str, float]]:
    """{"original": {shape: ms}, "candidate": {...}} in one alternating loop; a candidate SLOW times slower than
    the original in one warm call is not worth the loop (far from the front): that one call is its time."""
    runners = {"original": (lambda m: lambda x: m(**x))(runnable(base)),
               "candidate": (lambda m: lambda x: m(**x))(runnable(cand))}
    vocab = {"original": base.tokenizer.vocab_size, "candidate": cand.tokenizer.vocab_size}
    once = latency_ms(runners, vocab, shapes, runs=1, warmup=1)
    if any(once["candidate"][k] > SLOW * once["original"][k] for k in once["original"]):
        return once
    return latency_ms(runners, vocab, shapes, runs=runs)


def cost(base, cand, objective: str, runs: int, task: str, all_shapes: bool) -> dict:
    """{"cost": candidate relative to the original (lower is better), and the figures behind it}. all_shapes: the
    latency at every shape the README reports (the full measurement), else at the objective's shape only."""
    t0 = time.perf_counter()
    out = {"size_mb": round(size_mb(runnable(cand)), 3)}
    shape = OBJECTIVES[objective]
    if shape is not None or all_shapes:
        shapes = SHAPES if all_shapes or shape is None else (shape,)
        times = _times(base, cand, shapes, runs)
        out["latency_ms"], out["original_ms"] = times["candidate"], times["original"]
    if objective == "size":
        out["cost"] = out["size_mb"] / size_mb(runnable(base))
    elif objective == "throughput":
        texts = task_inputs(task)
        texts = [texts[i] for i in strided(len(texts), THROUGHPUT_TEXTS)]
        base_tp, cand_tp = throughput(inference_fn(base), texts), throughput(inference_fn(cand), texts)
        out.update(sentences_per_s=round(cand_tp, 1), original_sentences_per_s=round(base_tp, 1),
                   cost=base_tp / cand_tp)
    else:
        key = f"{shape[0]}x{shape[1]}"
        out["cost"] = out["latency_ms"][key] / out["original_ms"][key]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out

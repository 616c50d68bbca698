"""What a trial measures, inside its subprocess: quality on a slice of the task or on all of it, as a drop from the
original's in the budget's unit (measure/budget.py), and the cost of the candidate relative to the original timed in the
same alternating loop: token batches (timing.latency_ms), or the family's own speed keys (a causal LM's prefill and
decoding, Whisper's encoder and real-time factor, an image model's images)."""

from __future__ import annotations

import time

import numpy as np
from scipy.stats import spearmanr

from ..measure.asr import utterance_errors, wer
from ..measure.bench import size_mb, throughput
from ..measure.budget import drop, drop_interval
from ..measure.labels import gold_ids
from ..measure.lm import PPL_BATCH, document_nll, lm_speeds, perplexity
from ..measure.report import runnable, speeds
from ..measure.tasks import (TaskResult, cls_examples, evaluate, inference_fn, pair_cosines, ppl_documents,
                             result_interval, sts_pairs, task_inputs, task_kind)
from ..speech import read_speech_tsv
from ..timing import SHAPES, latency_ms
from .space import OBJECTIVES, family_of

SLICE = 256  # examples of the task a proxy quality is measured on
SLICES = {"ppl": 128, "wer": 32}  # fewer where one costs more: a document's vocabulary-wide logits, a clip's decoding
SLOW = 4.0  # a candidate this many times slower than the original in one call is timed by that call alone
THROUGHPUT_TEXTS = 256  # inputs of the task timed end to end for the throughput objective


def strided(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (task files are often grouped by genre: the first k would be one)."""
    return list(range(n)) if n <= k else [round(i * (n - 1) / (k - 1)) for i in range(k)]


def slice_score(model, task: str, k: int | None = None, batch_size: int = 64) -> float:
    """The task's metric on k examples spread over its split (default SLICES, else SLICE): the no-training proxy of
    quality. A perplexity or WER slice runs batch_size / 8 documents or clips a forward."""
    kind = task_kind(task)
    k = k or SLICES.get(kind, SLICE)
    if kind == "sts":
        pairs = sts_pairs(task)
        pairs = [pairs[i] for i in strided(len(pairs), k)]
        cos = pair_cosines(model.encode, pairs, batch_size)
        return float(spearmanr(cos, [p[2] for p in pairs]).statistic * 100)
    if kind == "ppl":
        docs = ppl_documents(task)
        nll, tokens = document_nll(model, [docs[i] for i in strided(len(docs), k)],
                                   max(1, min(PPL_BATCH, batch_size // 8)))
        return perplexity(nll, tokens)
    if kind == "wer":
        clips, texts = read_speech_tsv(task[4:])
        idx = strided(len(clips), k)
        edits, words, _ = utterance_errors(model, [clips[i] for i in idx], [texts[i] for i in idx],
                                           max(1, batch_size // 8))
        return wer(edits, words)
    examples = cls_examples(task)
    examples = [examples[i] for i in strided(len(examples), k)]
    gold = gold_ids(task, [y for _, y in examples], model)
    pred = np.asarray(model.predict([x for x, _ in examples], batch_size=batch_size)).argmax(1)
    return float((pred == gold).mean() * 100)


def reference(model, task: str) -> dict:
    """The original's figures every trial is compared with: its full score (per example, for paired intervals),
    its slice score, and its re-measurement noise: how far the slice's score moves (as a drop: the budget's unit)
    when scored again with another batch size (padding changes the float sums), the floor under any reachable
    --max-drop."""
    full = evaluate(model, task)
    sliced = slice_score(model, task)
    return {"task": full.task, "metric": full.metric, "value": full.value, "n": full.n,
            "per_example": full.per_example.tolist(), "gold": None if full.gold is None else full.gold.tolist(),
            "slice": sliced, "noise": abs(drop(full.metric, sliced, slice_score(model, task, batch_size=16))),
            "size_mb": size_mb(runnable(model))}


def other_fidelity(base, model, calib: str | None = None) -> float | None:
    """The compress report's transfer check (measure/fidelity.py): Spearman x100 of the candidate's pairwise
    similarities against the original's (a classifier: % equal classes) on text no pass fitted on, the shipped
    corpus's held-out news and Wikipedia. The task's drop says what the search budgeted; this, what may not transfer.
    None where there is no such text (a custom --calib that holds it all), and for the other families (a causal LM,
    speech, images: their calibration is not the shipped corpus's kind of text, or not text)."""
    from ..measure.fidelity import transfer_risk

    return transfer_risk(base, model, calib).get("other") if family_of(base) == "text" else None


def full_quality(model, task: str, ref: dict) -> dict:
    """The score on the whole split, its drop from the original's and the 95% paired-bootstrap interval of it."""
    r = evaluate(model, task)
    gold = None if ref["gold"] is None else np.asarray(ref["gold"])
    base = TaskResult(ref["task"], ref["metric"], ref["value"], ref["n"], np.asarray(ref["per_example"]), gold)
    return {"quality": r.value, "drop": drop(r.metric, ref["value"], r.value),
            "drop_95": list(drop_interval(r.metric, ref["value"], *result_interval(base, r)))}


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


def own_speeds(base, cand, family: str, runs: int) -> dict[str, dict]:
    """{"original": {...}, "candidate": {...}}: the family's own speed keys, as `bench` reports them, both models
    timed in turns: a causal LM's prefill_ms and decode_tokens_per_s, Whisper's encoder_ms and rtf, an image
    model's latency_ms at one image and a batch."""
    models = {"original": base, "candidate": cand}
    if family == "causal-lm":  # report.speeds would also time its scoring forwards (token batches, every logit)
        return lm_speeds(models, runs)
    stats, own = speeds(models, runs)  # Whisper: its own keys; an image model: its images, as latency_ms
    return own or {n: {"latency_ms": s["latency_ms"]} for n, s in stats.items()}


def objective_time(figures: dict, objective: str) -> float:
    """What a family's objective compares (lower is faster), out of one model's own_speeds figures."""
    what, _, at = objective.partition("@")
    if what == "prefill":
        return figures["prefill_ms"][at]
    if what == "decode":
        return 1 / figures["decode_tokens_per_s"]
    if what == "encoder":
        return figures["encoder_ms"]["1x30s"]
    if what == "rtf":
        return figures["rtf"]
    return next(v for k, v in figures["latency_ms"].items() if k.split("x")[0] == at)  # images: latency@B


def cost(base, cand, objective: str, runs: int, task: str, all_shapes: bool) -> dict:
    """{"cost": candidate relative to the original (lower is better), and the figures behind it}. all_shapes: the
    latency at every shape the README reports (the full measurement), else at the objective's shape only (the other
    families: their own speed keys, all of them, unless the objective is size)."""
    t0 = time.perf_counter()
    out = {"size_mb": round(size_mb(runnable(cand)), 3)}
    family = family_of(base)
    if family != "text":
        if objective != "size" or all_shapes:
            own = own_speeds(base, cand, family, runs)
            out.update(own["candidate"], original_speeds=own["original"])
        out["cost"] = (out["size_mb"] / size_mb(runnable(base)) if objective == "size" else
                       objective_time(out, objective) / objective_time(out["original_speeds"], objective))
        out["seconds"] = round(time.perf_counter() - t0, 1)
        return out
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

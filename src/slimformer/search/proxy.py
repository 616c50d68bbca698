"""The cheap cost proxy a candidate meets before it is built: a per-layer cost table of the original, measured once
per search on this machine (torch eager fp32, at the objective's shape), and the cost it predicts from a recipe's
structure, scaled by factors the study learns from its own finished trials (int8, runtime).

Assumed: the cost is linear in the units a recipe removes,
    cost = rest + L x (layer + H x head + F x neuron)
(rest: embeddings and what runs outside the layers; layer: a layer's fixed part, its norms and residuals; head: one
attention head's projections and scores; neuron: one FFN neuron's two or three matrix rows/columns; L layers, H
heads and F neurons a layer). Four models are measured in one alternating loop (timing.latency_ms): the original,
the original without its last half of layers, with half the heads of every layer, with half the FFN of every layer
(halves, not single units: a difference of one layer of six drowned in this machine's timing noise); their
differences give the four costs. For the size objective the same four are weighed in MB instead (exact: size is
linear in the units). Where the table cannot see a step's effect it errs low (a vocabulary cut is taken to remove
the embeddings' whole cost, low rank its parameter share of the heads and neurons), so the proxy prunes only what is
clearly hopeless.

Torch-free at import, like space.py: the search's parent process predicts, the reference subprocess measures.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ..errors import SlimformerError
from ..recipe import parse
from .space import FAMILIES, OBJECTIVES, Candidate, family_of

TABLE_RUNS = 10  # timed runs of each of the four models: a proxy, not a benchmark


def table_key(objective: str) -> str:
    """What the table is measured in: ms at the objective's shape ("8x128" for throughput) or MB ("size")."""
    if objective == "size":
        return "size"
    if objective not in OBJECTIVES:  # another family's objective: no table is measured for it (measure_table)
        return objective
    b, t = OBJECTIVES[objective] or (8, 128)
    return f"{b}x{t}"


def measure_table(model, objective: str, runs: int = TABLE_RUNS) -> dict:
    """The original's cost split into rest / layer / head / neuron (module docstring), at `objective`'s shape."""
    from ..measure.bench import size_mb
    from ..measure.report import runnable
    from ..passes.structure import drop_layers, ffn_per_layer, heads_per_layer, slice_ffn, slice_heads
    from ..timing import latency_ms

    family = family_of(model)
    if family != "text":  # their costs are not token batches: prefill and decoding, audio, images
        raise SlimformerError(f"no latency table for {FAMILIES[family].what} yet: every candidate is built and "
                              "measured")
    enc, adapter = model.encoder, model.adapter
    heads, ffn = heads_per_layer(enc, adapter), ffn_per_layer(enc, adapter)
    n = len(heads)
    if n < 2 or min(heads) < 2 or min(ffn) < 2:
        raise SlimformerError(f"no latency table for a model of {n} layers, {min(heads, default=0)} heads and "
                              f"{min(ffn, default=0)} FFN neurons a layer (it needs 2 of each)")
    clones = {"original": model}
    for name, cut in (("layer", lambda e: drop_layers(e, adapter, list(range(n - n // 2)))),
                      ("heads", lambda e: slice_heads(e, adapter, [list(range(h // 2)) for h in heads])),
                      ("neurons", lambda e: slice_ffn(e, adapter, [list(range(f // 2)) for f in ffn]))):
        clones[name] = model.clone()
        cut(clones[name].encoder)
    key = table_key(objective)
    if key == "size":
        cost = {k: size_mb(runnable(m)) for k, m in clones.items()}
    else:
        b, t = map(int, key.split("x"))
        runners = {k: (lambda m: lambda x: m(**x))(runnable(m)) for k, m in clones.items()}
        vocab = {k: model.tokenizer.vocab_size for k in clones}
        cost = {k: v[key] for k, v in latency_ms(runners, vocab, ((b, t),), runs=runs, warmup=1).items()}
    full = cost["original"]
    floor = full * 1e-6  # timing noise can make a small difference negative: a unit never costs nothing
    per_layer = max((full - cost["layer"]) / (n // 2), floor)  # the last layers' cost, taken as every layer's
    head = max((full - cost["heads"]) / sum(h - h // 2 for h in heads), floor)  # one head's
    neuron = max((full - cost["neurons"]) / sum(f - f // 2 for f in ffn), floor)  # one neuron's
    h_mean, f_mean = sum(heads) / n, sum(ffn) / n
    return {"key": key, "unit": "MB" if key == "size" else "ms", "original": full, "layers": n, "heads": h_mean,
            "neurons": f_mean, "head": head, "neuron": neuron,
            "layer": max(per_layer - h_mean * head - f_mean * neuron, 0.0), "rest": max(full - n * per_layer, 0.0)}


def read_table(path: Path, model: str | None, objective: str) -> dict | None:
    """The table measured for this model and objective's key (or why it could not be), or None: measure it."""
    path = Path(path)
    if not path.is_file():
        return None
    table = json.loads(path.read_text())
    return table if (table.get("model"), table.get("key")) == (model, table_key(objective)) else None


def _count(keep: float | int, total: float) -> float:
    """A keep= argument (a fraction, or a count of `total`) as a fraction."""
    return keep if isinstance(keep, float) else min(1.0, keep / total)


def structure_cost(recipe: str | None, table: dict) -> float | None:
    """The cost of `recipe`'s structure relative to the original, predicted by the table at fp32 torch eager:
    layers kept, heads and neurons kept (prune(flops=F): the FLOPs fraction taken as both), Fourier layers
    without attention, low rank and vocabulary as the module docstring says. None: a recipe the table cannot
    predict (static embeddings replace the encoder)."""
    n, h, f = table["layers"], table["heads"], table["neurons"]
    layers, heads, neurons, fourier, rank, vocab = n, 1.0, 1.0, 0, 1.0, False
    for step in parse(recipe) if recipe else []:
        if step.step == "static":
            return None
        if step.step == "layers":
            layers = min(n, max(1, round(step.keep * n)) if isinstance(step.keep, float) else step.keep)
        elif step.step == "heads":
            heads *= _count(step.keep, h)
        elif step.step == "ffn":
            neurons *= _count(step.keep, f)
        elif step.step == "prune":
            heads, neurons = heads * step.flops, neurons * step.flops
        elif step.step == "fnet":
            fourier = layers if step.layers == "all" else min(step.layers, layers)
        elif step.step == "lowrank" and step.ratio is not None:
            rank = step.ratio
        elif step.step == "vocab":
            vocab = True
    cost = ((0.0 if vocab else table["rest"]) + layers * (table["layer"] + f * table["neuron"] * neurons * rank)
            + (layers - fourier) * h * table["head"] * heads * rank)
    original = table["rest"] + n * (table["layer"] + f * table["neuron"] + h * table["head"])
    return cost / original


def setting(cand: Candidate) -> str:
    """What the structure does not predict, a learned factor per value: int8 or not, and the runtime."""
    int8 = bool(cand.recipe) and any(s.step == "int8" for s in parse(cand.recipe))
    return f"{'int8' if int8 else 'fp32'}@{cand.runtime}"


def factors(finished: list[tuple[Candidate, float]], table: dict) -> dict[str, float]:
    """{setting: median of measured proxy cost / structure-predicted cost} over the study's finished trials
    (candidate, its measured proxy cost). Trials with a vocabulary cut are left out: their structure prediction
    errs low on purpose, their ratio would raise every other candidate's prediction."""
    ratios: dict[str, list[float]] = {}
    for cand, measured in finished:
        if cand.recipe and any(s.step == "vocab" for s in parse(cand.recipe)):
            continue
        predicted = structure_cost(cand.recipe, table)
        if predicted and math.isfinite(measured):
            ratios.setdefault(setting(cand), []).append(measured / predicted)
    return {k: statistics.median(v) for k, v in ratios.items()}


def predicted_cost(cand: Candidate, table: dict, learned: dict[str, float] | None = None) -> float | None:
    """The candidate's predicted cost relative to the original (the unit the trials measure): its structure's
    cost times the factor learned for its setting; a setting no trial has measured yet takes the smallest factor
    learned (the benefit of the doubt), 1.0 before any. None: no prediction (no table, or an unpredictable recipe)."""
    if table is None or "error" in table:
        return None
    structure = structure_cost(cand.recipe, table)
    if structure is None:
        return None
    learned = learned or {}
    return structure * learned.get(setting(cand), min(learned.values(), default=1.0))

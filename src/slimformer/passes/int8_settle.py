"""The int8 kernel choice checked on the whole model: the batch kernel among close rivals, by the model's own speed.

int8_kernels.measure() times each weight shape alone. Inside a model a kernel also pays for what surrounds its GEMM
(its input's quantization passes, fresh buffers, caches another op just filled), and alone that does not show: on an
AVX-512 VNNI CPU `intmm` and `fbgemm` timed within 5% of each other layer by layer while all-MiniLM-L6-v2 ran 11-17%
faster at 8x128 with `intmm` (README, "int8 on every CPU"). So where layers have rivals for their batch kernel (each
beating fp32 by MIN_GAIN at 1,024 rows, within RIVAL of the layer's best), a text model is timed at one batch of
1,024 tokens with each rival serving every layer it is a rival for, in turns; the fastest plan stays. Calls of up to
SMALL_ROWS tokens keep their kernel. Not for forced kernels, nor for speech, image or causal-LM models (no plain
batch of token ids to time them on; each keeps the per-layer choice).
"""

from __future__ import annotations

import statistics
import time

import torch

from ..speech import is_speech
from ..timing import example_inputs
from ..vision import is_image
from .calib import is_causal_lm
from .int8_kernels import MIN_GAIN, Int8Linear, ensure, forced, join, measure, paired_ratios, parse, summary

SHAPE = (8, 128)  # one batch of TIMING_TOKENS' 1,024 rows
# a rival's ratio to fp32 may be this much above the layer's best: timed alone, one layer's ratio moved that much
# between runs on the VNNI machine (intmm on a 384x384 layer: 0.33-0.42 of fp32), more than the 11-17% by which the
# whole model told intmm and fbgemm apart
RIVAL = 0.25
TURNS = 7  # timed forwards per plan, alternated (the first round, a warm-up, is not counted)
_SETTLED: dict[tuple, list[str]] = {}  # (layer specs and their per-layer choices, threads) -> the fastest plan


def rivals(lin: Int8Linear) -> list[str]:
    """The batch kernels that could serve `lin` as well as its own: each beats fp32 by MIN_GAIN at 1,024 rows and is
    within RIVAL of the best, by measure()'s paired ratios (its own choice among them)."""
    ratios = measure(lin)[1]
    best = min(r[1] for r in ratios.values())
    return [n for n, r in ratios.items() if n != "fp32" and r[1] * MIN_GAIN <= 1.0 and r[1] <= best * (1.0 + RIVAL)]


def forward_ms(model, inputs: dict) -> float:
    t0 = time.perf_counter()
    model(**inputs)
    return (time.perf_counter() - t0) * 1e3


@torch.inference_mode()
def settle(model) -> dict[str, int] | None:
    """Give `model`'s Int8Linears the batch kernels of the fastest plan (see the module docstring); returns the
    kernels as they then stand (int8_kernels.summary), or None where nothing was timed."""
    if forced() or is_speech(model) or is_image(model) or is_causal_lm(model):
        return None
    chosen = {m: m.__dict__["kernel"] for m in model.net.modules() if isinstance(m, Int8Linear) and not m.float_act}
    key = (tuple((tuple(m.spec().items()), spec) for m, spec in chosen.items()), torch.get_num_threads())
    if key in _SETTLED:  # like measure(): once per process, so a model saved and loaded runs the same kernels
        for m, spec in zip(chosen, _SETTLED[key]):
            ensure(m, spec)
        return summary(model.net)
    options = {m: rivals(m) for m in chosen}
    kernels = sorted(set().union(*options.values()))
    if len(kernels) < 2:
        return None
    # one plan per rival kernel, serving every layer it is a rival for: a mix of per-layer picks would be noise's
    plans = {k: {m: join(parse(spec)[0], k) if k in options[m] else spec for m, spec in chosen.items()}
             for k in kernels}
    inputs = example_inputs(*SHAPE, model.tokenizer.vocab_size)
    times: dict[str, list[float]] = {name: [] for name in plans}
    for turn in range(TURNS + 1):
        for name, plan in plans.items():
            for m, spec in plan.items():
                ensure(m, spec)  # untimed: a prepack per layer that switches
            model(**inputs)  # the new kernels' first call
            if turn:
                times[name].append(forward_ms(model, inputs))
    ratios = paired_ratios(times, base=kernels[0])  # each plan's time over the first plan's in the same turn
    fastest = min(plans, key=lambda name: statistics.median(ratios[name]))
    for m, spec in plans[fastest].items():
        ensure(m, spec)
    _SETTLED[key] = list(plans[fastest].values())
    return summary(model.net)

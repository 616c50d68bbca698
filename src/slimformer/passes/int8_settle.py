"""The int8 kernel choice checked on the whole model: each layer's kernel among close rivals, by the model's speed.

int8_kernels.measure() times each weight shape alone. Inside a model a kernel also pays for what surrounds its GEMM
(its input's quantization passes, fresh buffers, caches another op just filled), and alone that does not show: on an
AVX-512 VNNI CPU `intmm` and `fbgemm` timed within 5% of each other layer by layer while all-MiniLM-L6-v2 ran 11-17%
faster at 8x128 with `intmm` (README, "int8 on every CPU"). At 16 rows it is the weights: a layer timed alone keeps
its weights in cache, where in the model each call reads them afresh, so kernels with fewer weight bytes gain in the
model what they do not show alone (the same CPU: fp32 timed fastest alone on MiniLM's 384x384 layers at 16 tokens,
while the model with an int8 kernel there ran 1.48-1.64x faster than fp32 at 1x16 against 1.40x as measured).
So a text model is timed with each rival kernel serving every layer it is a rival for, in turns, and the fastest
plan stays: first the batch kernel (rivals: each beats fp32 by MIN_GAIN at 1,024 rows, within RIVAL of the layer's
best; timed at one batch of 1,024 tokens), then, with it fixed, the one-query kernel (rivals: within SMALL_RIVAL of
the layer's best at 16 rows, fp32 included; timed at one query of 16 and of 64 tokens, the geometric mean, so that
the kernel serves the range of calls up to SMALL_ROWS). An image model is timed at `bench`'s one image and batch of
8 (random pixels). Not for forced kernels, nor for speech or causal-LM models (their calls are not one forward of
one batch: each keeps the per-layer choice).
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from ..speech import is_speech
from ..timing import example_inputs
from ..vision import BENCH_IMAGES, is_image, pixel_shape, random_pixels
from .calib import is_causal_lm
from .int8_kernels import (MIN_GAIN, SMALL_ROWS, Int8Linear, ensure, forced, join, measure, paired_ratios, parse,
                           set_kernel, summary)

LARGE, SMALL = 1, 0  # the index of a kernel spec's part ("small/large") and of measure()'s ratios ([16, 1024 rows])
SHAPES = {LARGE: ((8, 128),), SMALL: ((1, 16), (1, 64))}  # what each race times a plan at (batch, tokens)
IMAGES = {LARGE: BENCH_IMAGES[-1:], SMALL: BENCH_IMAGES[:1]}  # an image model's: images per batch
# a rival's ratio to fp32 may be this much above the layer's best: timed alone, one layer's ratio moved that much
# between runs on the VNNI machine (intmm on a 384x384 layer: 0.33-0.42 of fp32), more than the 11-17% by which the
# whole model told intmm and fbgemm apart
RIVAL = 0.25
# at 16 rows: alone, fbgemm and fp16 timed 1.57x and 1.24x fp32's time on that 384x384 layer, and won in the model
SMALL_RIVAL = 1.0
TURNS = {LARGE: 7, SMALL: 9}  # timed forwards per plan and shape, alternated (after a warm-up round)
_SETTLED: dict[tuple, list[str]] = {}  # (layer specs and their per-layer choices, threads) -> the fastest plan


def rivals(lin: Int8Linear, side: int = LARGE) -> list[str]:
    """The kernels that could serve `lin`'s batch calls (side LARGE: each beats fp32 by MIN_GAIN at 1,024 rows and
    is within RIVAL of the best) or its one-query calls (SMALL: within SMALL_RIVAL of the best at 16 rows), by
    measure()'s paired ratios (its own choice among them)."""
    ratios = {n: r[side] for n, r in measure(lin)[1].items()}
    best = min(ratios.values())
    if side == SMALL:
        return [n for n, r in ratios.items() if r <= best * (1.0 + SMALL_RIVAL)]
    return [n for n, r in ratios.items() if n != "fp32" and r * MIN_GAIN <= 1.0 and r <= best * (1.0 + RIVAL)]


def forward_ms(model, inputs: dict) -> float:
    t0 = time.perf_counter()
    model(**inputs)
    return (time.perf_counter() - t0) * 1e3


def _image_rows(config) -> int:
    """Token rows of one image: its patches and the CLS token."""
    _, h, w = pixel_shape(config)
    p = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    return (h // p) * (w // p) + 1


def _with(spec: str, side: int, kernel: str) -> str:
    """`spec` ("small/large") with its part `side` replaced by `kernel`."""
    parts = list(parse(spec))
    parts[side] = kernel
    return join(*parts)


def _race(model, plans: dict[str, dict], side: int) -> str:
    """The plan ({layer: spec}) under which `model` runs fastest at SHAPES[side] (an image model: IMAGES[side]), by
    the median over turns of its time over the first plan's in the same turn (the geometric mean over the shapes)."""
    if is_image(model):
        inputs = [{"pixel_values": random_pixels(model.config, n)} for n in IMAGES[side]]  # (n, C, H, W)
    else:
        inputs = [example_inputs(b, t, model.tokenizer.vocab_size) for b, t in SHAPES[side]]
    times: dict[str, list[float]] = {name: [] for name in plans}
    for turn in range(TURNS[side] + 1):
        for name, plan in plans.items():
            for m, spec in plan.items():
                ensure(m, spec, keep=True)  # untimed: a prepack per layer, the first time it runs a kernel
            model(**inputs[0])  # the new kernels' first call
            if turn:  # a product over the shapes, so each shape's ratio counts alike
                times[name].append(math.prod(forward_ms(model, x) for x in inputs))
    ratios = paired_ratios(times, base=next(iter(plans)))
    return min(plans, key=lambda name: statistics.median(ratios[name]))


@torch.inference_mode()
def settle(model) -> dict[str, int] | None:
    """Give `model`'s Int8Linears the kernels of the fastest plans (see the module docstring); returns the kernels as
    they then stand (int8_kernels.summary), or None where nothing was timed."""
    if forced() or is_speech(model) or is_causal_lm(model):
        return None
    chosen = {m: m.__dict__["kernel"] for m in model.net.modules() if isinstance(m, Int8Linear) and not m.float_act}
    key = (tuple((tuple(m.spec().items()), spec) for m, spec in chosen.items()), torch.get_num_threads())
    if key in _SETTLED:  # like measure(): once per process, so a model saved and loaded runs the same kernels
        for m, spec in zip(chosen, _SETTLED[key]):
            ensure(m, spec)
        return summary(model.net)
    timed = False
    for side in (LARGE, SMALL):  # the batch kernel first: the one-query race then runs on the batch kernels settled
        if side == SMALL and is_image(model) and _image_rows(model.config) > SMALL_ROWS:
            continue  # one image is already a batch call (ViT-B/16 at 224 pixels: 197 rows): nothing to race
        options = {m: rivals(m, side) for m in chosen}
        kernels = sorted(set().union(*options.values()))
        if len(kernels) < 2:
            continue
        # one plan per rival kernel, serving every layer it is a rival for: a mix of per-layer picks would be noise's
        plans = {k: {m: _with(spec, side, k) if k in options[m] else spec for m, spec in chosen.items()}
                 for k in kernels}
        if side == SMALL:  # and the per-layer picks as they are: at 16 rows they mix kernels by weight shape
            plans = {"measured": dict(chosen)} | plans
        unique: dict[str, dict] = {}
        for name, plan in plans.items():  # e.g. the per-layer picks, where one kernel won every layer alone
            if plan not in unique.values():
                unique[name] = plan
        if len(unique) < 2:
            continue
        chosen = unique[_race(model, unique, side)]
        timed = True
    if not timed:
        return None
    for m, spec in chosen.items():
        set_kernel(m, spec)  # and the caches of the kernels the race left behind go
    _SETTLED[key] = list(chosen.values())
    return summary(model.net)

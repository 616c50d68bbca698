"""Timing primitives, shared by the passes that choose by measurement (low-rank speed cap, int8 kernels, freeze)
and by the benchmarks: the median of repeated calls, and several runners timed in one alternating loop.

Latency is the median of the forward at batch x seq over >= 20 runs after warm-up. Several models are timed in one
loop that alternates between them (blocks of back-to-back runs, in a shuffled order each round), so a slow spell of
this noisy machine hits all of them alike; compare them by ratio.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Callable

import torch

SHAPES = ((1, 16), (8, 128), (32, 32))  # (batch, seq): one short query, a long-document batch, a short-text batch


def interleaved_times(fns: dict[str, Callable[[], object]], reps: int = 9,
                      give_up_ms: float = 50.0) -> dict[str, list[float]]:
    """ms of each call of each fn, timed in turns (a, b, c, a, b, c, ...) so that a slow spell or the allocator's
    state hits all alike: the i-th times of two fns are a pair; a fn slower than give_up_ms per call stops after two
    timed calls."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(reps):
        for name, fn in fns.items():
            if len(times[name]) >= 2 and times[name][-1] > give_up_ms:
                continue
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def interleaved_ms(fns: dict[str, Callable[[], object]], reps: int = 9, give_up_ms: float = 50.0) -> dict[str, float]:
    """Median ms of each fn, timed in turns (interleaved_times)."""
    return {name: statistics.median(t) for name, t in interleaved_times(fns, reps, give_up_ms).items()}


def median_ms(fn: Callable[[], object], reps: int = 15, give_up_ms: float = float("inf")) -> float:
    """Median ms of fn() over `reps` calls after a warm-up call (interleaved_ms with one fn)."""
    return interleaved_ms({"fn": fn}, reps, give_up_ms)["fn"]


def example_inputs(batch: int, seq: int, vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fixed random token ids (above the special tokens) and a full attention mask: (batch, seq) each."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab_size // 2), vocab_size, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


BLOCK = 5  # timed runs of one runner back to back, after one untimed run
PAUSE_S = 0.05  # idle time before each block: other runtimes' worker threads stop spinning and go to sleep


def ticks(runs: int, shapes=SHAPES) -> int:
    """How many times latency_ms calls its progress callback."""
    return len(shapes) * -(-runs // BLOCK)


def latency_ms(runners: dict[str, Callable[[dict], object]], vocab_sizes: dict[str, int],
               shapes=SHAPES, runs: int = 20, warmup: int = 3, progress=None,
               make_inputs: dict[str, Callable[[int, int], dict]] | None = None) -> dict[str, dict[str, float]]:
    """Median ms per forward of each runner at each shape. Runners take turns in blocks of BLOCK back-to-back runs
    (steady state, as when serving), in a shuffled order each round, so a slow spell of the machine hits all alike.
    Each block starts after a pause and one untimed run: ORT, OpenVINO and torch's OpenMP keep their worker threads
    spinning after a call, and on two cores a runner that came right after another runtime's call ran slower (its
    threads fought the spinning ones), most visibly at 1x16. Inputs: example_inputs(batch, seq, its vocab size), or
    make_inputs[name](batch, seq) for runners that take no token ids (an image model's pixels)."""
    out: dict[str, dict[str, float]] = {name: {} for name in runners}
    rounds = -(-runs // BLOCK)
    make = make_inputs or {n: (lambda v: lambda b, t: example_inputs(b, t, v))(vocab_sizes[n]) for n in runners}
    with torch.inference_mode():
        for b, t in shapes:
            inputs = {name: make[name](b, t) for name in runners}
            for name, run in runners.items():
                for _ in range(warmup):
                    run(inputs[name])
            times: dict[str, list[float]] = {name: [] for name in runners}
            rng = random.Random(0)
            for _ in range(rounds):
                for name in rng.sample(list(runners), len(runners)):
                    run = runners[name]
                    time.sleep(PAUSE_S)
                    run(inputs[name])
                    for _ in range(BLOCK):
                        t0 = time.perf_counter()
                        run(inputs[name])
                        times[name].append((time.perf_counter() - t0) * 1e3)
                if progress is not None:
                    progress()
            for name in runners:
                out[name][f"{b}x{t}"] = round(statistics.median(times[name]), 3)
    return out

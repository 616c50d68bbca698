"""Size, latency at fixed shapes, and the machine they were measured on.

Latency is the median of the encoder forward at batch x seq over >= 20 runs after warm-up. Several models are timed
in one loop that alternates between them (blocks of back-to-back runs, in a shuffled order each round), so a slow
spell of this noisy machine hits all of them alike; compare them by ratio.
"""

from __future__ import annotations

import platform
import random
import statistics
import time
from typing import Callable

import torch
from torch import nn

SHAPES = ((1, 16), (8, 128), (32, 32))  # (batch, seq): one short query, a long-document batch, a short-text batch
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_info() -> dict:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"model": name, "flags": [f for f in CPU_FLAGS if f in flags], "threads": torch.get_num_threads()}


def _nbytes(v) -> int:
    if isinstance(v, torch.Tensor):
        return v.int_repr().nbytes if v.is_quantized else v.nbytes
    if isinstance(v, (tuple, list)):
        return sum(_nbytes(x) for x in v)
    if hasattr(v, "__getstate__") and type(v).__name__.startswith("LinearPackedParams"):
        return _nbytes(v.__getstate__())
    if hasattr(v, "unpack"):  # torch.ao packed linear params (a torchbind object)
        return _nbytes(v.unpack())
    return 0


def size_mb(module: nn.Module) -> float:
    """Bytes of the saved weights (state_dict tensors as stored: int8 as 1 byte), in MB (1e6)."""
    if hasattr(module, "size_mb"):  # an ONNX Runtime session: its file
        return module.size_mb()
    return sum(_nbytes(v) for v in module.state_dict().values()) / 1e6


def _numel(v) -> int:
    if isinstance(v, torch.Tensor):
        return v.numel()
    if isinstance(v, (tuple, list)):
        return sum(_numel(x) for x in v)
    if hasattr(v, "unpack"):  # torch.ao packed linear params
        return _numel(v.unpack())
    return 0


def n_params(module: nn.Module) -> int:
    """Stored weight elements (parameters and weight buffers; an int8 weight counts like an fp32 one)."""
    if hasattr(module, "n_params"):
        return module.n_params()
    return sum(_numel(v) for k, v in module.state_dict().items()
               if not k.endswith(("_scale", "inv_smooth", "remap", "zero_point", "dtype")))


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
               shapes=SHAPES, runs: int = 20, warmup: int = 3, progress=None) -> dict[str, dict[str, float]]:
    """Median ms per forward of each runner at each shape. Runners take turns in blocks of BLOCK back-to-back runs
    (steady state, as when serving), in a shuffled order each round, so a slow spell of the machine hits all alike.
    Each block starts after a pause and one untimed run: ORT, OpenVINO and torch's OpenMP keep their worker threads
    spinning after a call, and on two cores a runner that came right after another runtime's call ran slower (its
    threads fought the spinning ones), most visibly at 1x16."""
    out: dict[str, dict[str, float]] = {name: {} for name in runners}
    rounds = -(-runs // BLOCK)
    with torch.inference_mode():
        for b, t in shapes:
            inputs = {name: example_inputs(b, t, vocab_sizes[name]) for name in runners}
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


def bench(models: dict[str, nn.Module], vocab_sizes: dict[str, int], shapes=SHAPES, runs: int = 20,
          progress=None) -> dict[str, dict]:
    """{name: {"size_mb", "params", "latency_ms": {"1x16", ...}}} for modules called as module(**inputs)."""
    lat = latency_ms({n: (lambda m: lambda x: m(**x))(m) for n, m in models.items()}, vocab_sizes, shapes, runs,
                     progress=progress)
    return {n: {"size_mb": round(size_mb(m), 2), "params": n_params(m), "latency_ms": lat[n]}
            for n, m in models.items()}


def throughput(encode, texts: list[str], batch_size: int = 32) -> float:
    """Sentences per second of encode(texts) end to end (tokenization, padding, pooling included)."""
    encode(texts[:batch_size], batch_size=batch_size)  # warm-up
    t0 = time.perf_counter()
    encode(texts, batch_size=batch_size)
    return len(texts) / (time.perf_counter() - t0)

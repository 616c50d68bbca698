"""Size, latency at fixed shapes (timed by timing.latency_ms: alternating, compare by ratio), corpus throughput,
and the machine they were measured on."""

from __future__ import annotations

import platform
import time

import torch
from torch import nn

from ..runtime import heap
from ..timing import SHAPES, latency_ms

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
    return {"model": name, "flags": [f for f in CPU_FLAGS if f in flags], "threads": torch.get_num_threads(),
            "freed_memory": heap.STATE}  # "kept" in the process, or the allocator's default (runtime/heap.py)


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


def _unshared(state: dict) -> dict:
    """The state dict without the second name of a tied tensor (a decoder's lm_head.weight is its token table)."""
    seen, out = set(), {}
    for k, v in state.items():
        key = (v.data_ptr(), v.shape) if isinstance(v, torch.Tensor) and not v.is_quantized else None
        if key is None or key not in seen:
            out[k] = v
        if key is not None:
            seen.add(key)
    return out


def size_mb(module: nn.Module) -> float:
    """Bytes of the saved weights (state_dict tensors as stored: int8 as 1 byte), in MB (1e6)."""
    if hasattr(module, "size_mb"):  # an ONNX Runtime session: its file
        return module.size_mb()
    return sum(_nbytes(v) for v in _unshared(module.state_dict()).values()) / 1e6


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
    return sum(_numel(v) for k, v in _unshared(module.state_dict()).items()
               if not k.endswith(("_scale", "inv_smooth", "remap", "zero_point", "dtype")))


def bench(models: dict[str, nn.Module], vocab_sizes: dict[str, int], shapes=SHAPES, runs: int = 20,
          progress=None, make_inputs: dict | None = None) -> dict[str, dict]:
    """{name: {"size_mb", "params", "latency_ms": {"1x16", ...}}} for modules called as module(**inputs)
    (timing.latency_ms's inputs: token ids, or make_inputs's)."""
    lat = latency_ms({n: (lambda m: lambda x: m(**x))(m) for n, m in models.items()}, vocab_sizes, shapes, runs,
                     progress=progress, make_inputs=make_inputs)
    return {n: {"size_mb": round(size_mb(m), 2), "params": n_params(m), "latency_ms": lat[n]}
            for n, m in models.items()}


def throughput(encode, texts: list[str], batch_size: int = 32) -> float:
    """Sentences per second of encode(texts) end to end (tokenization, padding, pooling included)."""
    encode(texts[:batch_size], batch_size=batch_size)  # warm-up
    t0 = time.perf_counter()
    encode(texts, batch_size=batch_size)
    return len(texts) / (time.perf_counter() - t0)

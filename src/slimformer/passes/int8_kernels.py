"""How an Int8Linear multiplies, chosen by measurement on the CPU that runs it.

The weights on disk are always the same (int8, one scale per output channel, optional SmoothQuant 1/s per input
channel); only the arithmetic at run time differs. No kernel is fast everywhere: `torch._int_mm` (oneDNN) is fast
with VNNI/AMX and ~20-30x slower than an fp32 matmul on AVX2-only CPUs, where fbgemm's int8 GEMM is the fast one.
So each weight shape class (K, N) is timed once per process at a one-query and a batch token count, and the fastest
kernel that is no slower than fp32 at either count serves every Linear of that class; none -> fp32 on the dequantized
weights (the size win stays on disk). SLIMFORMER_INT8_KERNEL=<name> forces one kernel for every Linear.

Kernels (each keeps one activation scale per token, so a row's output never depends on its batch-mates):
  intmm   q8(x) per token, torch._int_mm (int8 x int8 -> int32), rescale. Exact int32 accumulation.
  fbgemm  torch.ao's fbgemm dynamic int8 GEMM (per-channel weights). It picks one activation scale per *tensor*
          from the tensor's min/max, so each row is first scaled to max |x| = 127 and one constant row
          [127, -127, 0, ...] is appended: the tensor's range is then always [-127, 127], its scale a constant, and
          each row is quantized on its own. fbgemm's AVX2 path needs reduce_range (7-bit activations, against int16
          saturation), so activations get 127 levels per token instead of 255.
  w8      weight-only int8 (torch._weight_int8pack_mm): float activations, int8 weights.
  fp32    float matmul on the dequantized weights (x * 1/s folded in): the float model's speed and accuracy.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SlimformerError

ENV = "SLIMFORMER_INT8_KERNEL"
TIMING_TOKENS = (16, 1024)  # rows timed per shape class: one short query (1x16), a batch (8x128 or 32x32)
MIN_GAIN = 1.05  # a kernel must beat fp32 by this (geometric mean over TIMING_TOKENS) and not lose at either count


def _smoothed(lin, x: torch.Tensor) -> torch.Tensor:
    return x * lin.inv_smooth if lin.inv_smooth is not None else x  # (M, K)


def _intmm(lin, x: torch.Tensor) -> torch.Tensor:
    x = _smoothed(lin, x)
    amax = x.abs().amax(-1, keepdim=True).clamp_min_(1e-8)  # (M, 1)
    q = (x * (127.0 / amax)).round_().to(torch.int8)  # (M, K), |q| <= 127
    y = torch._int_mm(q, lin.weight.t()).float()  # (M, N) int32 -> float: exact up to 2^24
    y = y.mul_(amax * (1.0 / 127.0))
    return torch.addcmul(lin.bias, y, lin.weight_scale) if lin.bias is not None else y.mul_(lin.weight_scale)


def _prepare_fbgemm(lin) -> dict:
    w = lin.weight  # (N, K) int8, symmetric: zero point 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized tensors; the packed GEMM is what we use
        qw = torch._make_per_channel_quantized_tensor(w, lin.weight_scale.double(),
                                                      torch.zeros(len(w), dtype=torch.long), 0)
        packed = torch.ops.quantized.linear_prepack(qw, None)
    anchor = torch.zeros(1, lin.in_features)  # (1, K): pins the tensor's range to [-127, 127]
    anchor[0, 0], anchor[0, -1] = 127.0, -127.0
    return {"packed": packed, "anchor": anchor}


def _fbgemm(lin, x: torch.Tensor) -> torch.Tensor:
    x = _smoothed(lin, x)
    m = x.shape[0]
    amax = torch.linalg.vector_norm(x, float("inf"), -1, keepdim=True).clamp_min_(1e-8)  # (M, 1)
    buf = torch.empty(m + 1, x.shape[1])  # (M + 1, K): the rows scaled to max |x| = 127, then the anchor
    torch.mul(x, 127.0 / amax, out=buf[:m])
    buf[m:] = lin._kernel_anchor
    y = torch.ops.quantized.linear_dynamic(buf, lin._kernel_packed, True)[:m]  # (M, N), weight scales applied
    y = y * (amax * (1.0 / 127.0))
    return y.add_(lin.bias) if lin.bias is not None else y


def _prepare_w8(lin) -> dict:
    w = lin.weight.float() * lin.weight_scale[:, None]  # (N, K)
    if lin.inv_smooth is not None:
        w = w * lin.inv_smooth  # fold 1/s into the weights: no activation quantization to protect
    scale = w.abs().amax(1).clamp_min(1e-8) / 127.0
    return {"weight": torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous(), "scale": scale}


def _w8(lin, x: torch.Tensor) -> torch.Tensor:
    y = torch._weight_int8pack_mm(x.contiguous(), lin._kernel_weight, lin._kernel_scale)  # (M, N)
    return y.add_(lin.bias) if lin.bias is not None else y


def _prepare_fp32(lin) -> dict:
    w = lin.weight.float() * lin.weight_scale[:, None]  # (N, K) dequantized
    return {"weight": w * lin.inv_smooth if lin.inv_smooth is not None else w}


def _fp32(lin, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, lin._kernel_weight, lin.bias)


# name -> (prepare(lin) -> cache dict, forward(lin, x (M, K) float) -> (M, N))
KERNELS: dict[str, tuple[Callable, Callable]] = {
    "intmm": (lambda lin: {}, _intmm),
    "fbgemm": (_prepare_fbgemm, _fbgemm),
    "w8": (_prepare_w8, _w8),
    "fp32": (_prepare_fp32, _fp32),
}


def drop_cache(lin) -> None:
    for key in [k for k in lin.__dict__ if k.startswith("_kernel_")]:
        del lin.__dict__[key]


def set_kernel(lin, name: str) -> None:
    """Serve `lin` (an Int8Linear) with kernel `name`; its run-time cache is built now, from the stored weights.
    The cache lives in plain attributes `_kernel_<key>` (not buffers: never saved), where a trace finds them."""
    drop_cache(lin)
    for key, value in KERNELS[name][0](lin).items():
        lin.__dict__["_kernel_" + key] = value
    lin.__dict__["_kernel_ready"] = True
    lin.__dict__["kernel"] = name


def run(lin, x: torch.Tensor) -> torch.Tensor:
    """y (M, N) = lin(x (M, K)) with lin's kernel; a layer not given one yet gets the measured (or forced) choice."""
    if "_kernel_ready" not in lin.__dict__:
        set_kernel(lin, lin.__dict__.get("kernel") or forced() or measure(lin)[0])
    return KERNELS[lin.__dict__["kernel"]][1](lin, x)


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: w (R, C) -> (q int8 (R, C), scale (R,)) with w ~= q * scale[:, None]."""
    scale = w.abs().amax(1).clamp_min(1e-8) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale.float()


class Int8Linear(nn.Module):
    """y = x @ (Wq * s_w)^T + b with Wq int8 (N, K), computed by this CPU's kernel (module docstring); x smoothed by
    1/s (SmoothQuant) first when the weights were. Shapes: x (..., K) -> y (..., N)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, smooth: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))  # (N, K)
        self.register_buffer("weight_scale", torch.ones(out_features))  # (N,)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)  # (N,)
        # 1 / s_j of SmoothQuant, multiplied into x before quantization; absent when not smoothed
        self.register_buffer("inv_smooth", torch.ones(in_features) if smooth else None)  # (K,)

    def spec(self) -> dict:
        return dict(in_features=self.in_features, out_features=self.out_features,
                    bias=self.bias is not None, smooth=self.inv_smooth is not None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, lin: nn.Linear, smooth: torch.Tensor | None = None) -> "Int8Linear":
        new = cls(lin.in_features, lin.out_features, lin.bias is not None, smooth is not None)
        w = lin.weight.detach().float()
        if smooth is not None:
            w = w * smooth[None, :]  # W' = W diag(s): migrates the activation outliers into the weights
            new.inv_smooth.copy_(1.0 / smooth)
        new.weight, new.weight_scale = quantize_rows(w)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.detach())
        return new

    def _apply(self, fn, recurse=True):
        drop_cache(self)  # weights moved or cast: the cache is rebuilt at the next call
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        drop_cache(self)  # new weights: likewise
        return super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = run(self, x.reshape(-1, self.in_features).float())  # (M, K) -> (M, N)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"smooth={self.inv_smooth is not None}, kernel={self.__dict__.get('kernel')}")


# ------------------------------------------------------------------------------------------- choice by measurement

_CHOICE: dict[tuple, tuple[str, dict]] = {}  # (K, N, bias, smooth, threads) -> (kernel, {kernel: [ms per count]})


def _time_ms(fn, reps: int = 10) -> float:
    fn()
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = [first]
    for _ in range(reps if first < 0.05 else 1):  # a kernel 50 ms a call is out of the race: no more runs
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


@torch.inference_mode()
def measure(lin) -> tuple[str, dict]:
    """Time every kernel on a layer of lin's shape class at TIMING_TOKENS rows; the fastest that beats fp32."""
    key = (lin.in_features, lin.out_features, lin.bias is not None, lin.inv_smooth is not None,
           torch.get_num_threads())
    if key not in _CHOICE:
        probe = type(lin)(**lin.spec())  # a copy of the shape, not of the weights (random int8: same speed)
        probe.weight = torch.randint(-127, 128, probe.weight.shape, dtype=torch.int8)
        times: dict[str, list[float]] = {}
        for name in KERNELS:
            try:
                set_kernel(probe, name)
                times[name] = [_time_ms(lambda x=torch.randn(m, lin.in_features): run(probe, x))
                               for m in TIMING_TOKENS]
            except RuntimeError:  # a kernel this build or CPU lacks (e.g. no fbgemm on ARM)
                continue
        base = times["fp32"]

        def gain(name: str) -> float:
            ratios = [b / t for b, t in zip(base, times[name])]
            return 0.0 if min(ratios) < 1.0 else (ratios[0] * ratios[1]) ** 0.5

        best = max((n for n in times if n != "fp32"), key=gain, default="fp32")
        _CHOICE[key] = (best if gain(best) >= MIN_GAIN else "fp32", {n: [round(t, 4) for t in v]
                                                                     for n, v in times.items()})
    return _CHOICE[key]


def forced() -> str | None:
    name = os.environ.get(ENV, "auto").strip() or "auto"
    if name != "auto" and name not in KERNELS:
        raise SlimformerError(f"{ENV}={name}: unknown int8 kernel (kernels: auto, {', '.join(KERNELS)})")
    return None if name == "auto" else name


def choose(module: nn.Module, kernel: str | None = None) -> dict[str, int]:
    """Give every Int8Linear in `module` its kernel: `kernel`, else $SLIMFORMER_INT8_KERNEL, else the measured
    choice for its shape class. Returns {kernel: how many Linears run it} (empty without Int8Linears)."""
    if kernel is not None and kernel != "auto" and kernel not in KERNELS:
        raise SlimformerError(f"unknown int8 kernel '{kernel}' (kernels: auto, {', '.join(KERNELS)})")
    kernel = None if kernel == "auto" else kernel or forced()
    for m in module.modules():
        if isinstance(m, Int8Linear):
            set_kernel(m, kernel or measure(m)[0])
    return summary(module)

def summary(module: nn.Module) -> dict[str, int]:
    """{kernel: how many Int8Linears run it} as the model stands (a layer not run yet counts as its coming choice)."""
    counts: dict[str, int] = {}
    for m in module.modules():
        if isinstance(m, Int8Linear):
            name = m.__dict__.get("kernel") or forced() or measure(m)[0]
            counts[name] = counts.get(name, 0) + 1
    return counts

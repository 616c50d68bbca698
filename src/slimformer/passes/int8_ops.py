"""The int8 kernels an Int8Linear can run (int8_kernels.py chooses among them per CPU, by measurement).

Kernels (none couples a row to its batch-mates: activation scales, where there are any, are per token):
  intmm   q8(x) per token, torch._int_mm (int8 x int8 -> int32), rescale. Exact int32 accumulation.
  fbgemm  fbgemm's int8 GEMM (torch.ao's, per-channel weights), called with the activation scale given instead of
          the one per tensor it would pick: each row is first scaled to max |x| = 1 and quantized at scale 1/63 and
          zero point 64, so each row gets its own scale. 7-bit activations ([1, 127], fbgemm's AVX2 `reduce_range`
          range: a pair of u8 x s8 products must fit int16), so 127 levels per token instead of 255.
  w8      weight-only int8 (torch._weight_int8pack_mm): float activations, int8 weights.
  fp16    fbgemm's fp16-weight GEMM on the dequantized weights (fp32 activations, fp32 accumulation): one op and
          half the weight bytes of fp32, which is what a 16-token call is bound by.
  fp32    float matmul on the dequantized weights (x * 1/s folded in): the float model's speed and accuracy.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F


EAGER: dict[str, Callable] = {}  # name -> the Python body of each scripted function (the fallback; its test)


def _scripted(fn: Callable) -> Callable:
    """fn compiled by TorchScript, else fn itself. Why: eager PyTorch pays its Python argument parsing on each of the
    ~10 ops of a per-token int8 call (~50 us a Linear of all-MiniLM-L6-v2 at 16 tokens, an ad-hoc timing), about as
    much as the GEMM; a scripted body pays it once a call. TorchScript is deprecated: where it is gone, eager."""
    EAGER[fn.__name__] = fn
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice: the fallback below covers its removal
            return torch.jit.script(fn)
    except Exception:  # noqa: BLE001 - any failure to compile leaves the same arithmetic, eager
        return fn


@_scripted
def row_absmax(x: torch.Tensor) -> torch.Tensor:
    """max |x| per row, floored at 1e-8: (M, K) -> (M, 1). A few rows: abs().amax(), the fewest ops (eager pays per
    op); many: amax and amin, two reads of x and no |x| temporary (half the time of abs().amax() at 1024 rows)."""
    if x.size(0) <= 128:
        return x.abs().amax(-1, keepdim=True).clamp_min_(1e-8)
    return torch.maximum(x.amax(-1, keepdim=True), x.amin(-1, keepdim=True).neg_()).clamp_min_(1e-8)


@_scripted
def _intmm(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: Optional[torch.Tensor],
           inv_smooth: Optional[torch.Tensor], k: int, n: int) -> torch.Tensor:
    """x (..., K) -> (..., N): q8(x) per token, int8 x int8 -> int32, rescaled. weight (N, K) int8, weight_scale
    (N,), bias (N,), inv_smooth (K,)."""
    shape = list(x.shape)  # (..., K), as a list: -> (..., N) below
    x = x.reshape(-1, k).float()  # (M, K)
    if inv_smooth is not None:
        x = x * inv_smooth  # a fresh (M, K): scaled in place below
        amax = row_absmax(x)  # (M, 1)
        q = x.mul_(127.0 / amax).round_().to(torch.int8)  # |q| <= 127
    else:
        amax = row_absmax(x)
        q = torch.mul(x, 127.0 / amax).round_().to(torch.int8)
    # (M, N) int32 -> float (exact up to 2^24), then the token and channel scales and the bias in place: a mixed
    # int32 x float op, or a fresh output per step, cost 15-25% of the call at 1024 tokens (VNNI: the GEMM is cheap)
    y = torch._int_mm(q, weight.t()).float().mul_(amax * (1.0 / 127.0))
    y = torch.addcmul(bias, y, weight_scale, out=y) if bias is not None else y.mul_(weight_scale)
    shape[-1] = n
    return y.view(shape)


def _prepare_fbgemm(lin) -> dict:
    w = lin.weight  # (N, K) int8, symmetric: zero point 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized tensors; the packed GEMM is what we use
        qw = torch._make_per_channel_quantized_tensor(w, lin.weight_scale.double(),
                                                      torch.zeros(len(w), dtype=torch.long), 0)
        packed = torch.ops.quantized.linear_prepack(qw, None)
    k, n = lin.in_features, lin.out_features
    _fbgemm(torch.zeros(1, k), packed, None, None, k, n)  # weights another engine packed lack the op: fail here
    # the packed weights apart: a trace (freeze) finds a TorchScript object as a module's attribute, not in a tuple
    return {"packed": packed, "args": (lin.bias, lin.inv_smooth, k, n)}


@_scripted
def _fbgemm(x: torch.Tensor, packed: torch.classes.quantized.LinearPackedParamsBase, bias: Optional[torch.Tensor],
            inv_smooth: Optional[torch.Tensor], k: int, n: int) -> torch.Tensor:
    """x (..., K) -> (..., N). One fresh (M, K) buffer and no pass of fbgemm's own over x for a per-tensor range: at
    1024 tokens each extra pass or temporary costs about as much as the int8 gain (torch.ao's one-liner, one scale a
    tensor, has neither)."""
    shape = list(x.shape)  # (..., K), as a list: -> (..., N) below
    x = x.reshape(-1, k).float()  # (M, K)
    if inv_smooth is not None:
        x = x * inv_smooth  # a fresh (M, K): scaled in place below
        amax = row_absmax(x)  # (M, 1): each row to max |x| = 1 here, to 63 in fbgemm's quantization below
        xs = x.div_(amax)
    else:
        amax = row_absmax(x)
        xs = torch.div(x, amax)
    # (M, N): q = round(xs / (1/63)) + 64 in [1, 127], weight scales in; the 63 given as fbgemm's input scale instead
    # of a pass of ours over the row maxima: one op fewer a call (~3 us at 16 tokens, an ad-hoc timing, a hint)
    y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(xs, 1.0 / 63.0, 64, packed)
    y = torch.addcmul(bias, y, amax, out=y) if bias is not None else y.mul_(amax)  # in place
    shape[-1] = n
    return y.view(shape)


def _dequantized(lin) -> torch.Tensor:
    w = lin.weight.float() * lin.weight_scale[:, None]  # (N, K)
    return w * lin.inv_smooth if lin.inv_smooth is not None else w  # 1/s folded in: no activation quantization


def _prepare_w8(lin) -> dict:
    w = _dequantized(lin)
    scale = w.abs().amax(1).clamp_min(1e-8) / 127.0
    return {"weight": torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous(), "scale": scale}


def _w8(lin, x: torch.Tensor) -> torch.Tensor:
    shape, x = x.shape, x.reshape(-1, lin.in_features).float().contiguous()  # (M, K)
    y = torch._weight_int8pack_mm(x, lin._kernel_w8_weight, lin._kernel_w8_scale)  # (M, N)
    y = y.add_(lin.bias) if lin.bias is not None else y
    return y.view(*shape[:-1], lin.out_features)


@_scripted
def _fp16(x: torch.Tensor, packed: torch.classes.quantized.LinearPackedParamsBase) -> torch.Tensor:
    """x (..., K) -> (..., N), the bias packed in. Scripted for one reason: a `torch.ops` call from Python resolves
    the op per call (a 384x384 layer at 16 tokens: 54 us called from Python, 40 us from TorchScript, an ad-hoc
    timing, a hint); aten's own ops (`F.linear`, `_weight_int8pack_mm`) have bindings that do not."""
    return torch.ops.quantized.linear_dynamic_fp16(x.float(), packed)


def _fp32(lin, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, lin._kernel_fp32_weight, lin._kernel_fp32_bias)  # one op, as lean as nn.Linear


# name -> (prepare(lin) -> cache dict, forward(lin, x (..., K)) -> (..., N)). The scripted kernels' caches hold their
# arguments, the layer's buffers among them: reading them from the Module (its __getattr__) is Python per call too
KERNELS: dict[str, tuple[Callable, Callable]] = {
    "intmm": (lambda lin: {"args": (lin.weight, lin.weight_scale, lin.bias, lin.inv_smooth, lin.in_features,
                                     lin.out_features)}, lambda lin, x: _intmm(x, *lin._kernel_intmm_args)),
    "fbgemm": (_prepare_fbgemm, lambda lin, x: _fbgemm(x, lin._kernel_fbgemm_packed, *lin._kernel_fbgemm_args)),
    "w8": (_prepare_w8, _w8),
    "fp16": (lambda lin: {"packed": torch.ops.quantized.linear_prepack_fp16(_dequantized(lin), lin.bias)},
             lambda lin, x: _fp16(x, lin._kernel_fp16_packed)),
    "fp32": (lambda lin: {"weight": _dequantized(lin), "bias": lin.bias}, _fp32),
}
FLOAT_ACT = ("w8", "fp16", "fp32")  # the kernels that keep activations float: all a float_act layer may run

"""The int8 kernels an Int8Linear can run (int8_kernels.py chooses among them per CPU, by measurement).

Kernels (none couples a row to its batch-mates: activation scales, where there are any, are per token):
  intmm   q8(x) per token, torch._int_mm (int8 x int8 -> int32), rescale. Exact int32 accumulation.
  fbgemm  fbgemm's int8 GEMM (torch.ao's, per-channel weights), called with the activation scale given instead of
          the one per tensor it would pick: each row is first scaled to max |x| = 63 and quantized at scale 1 and
          zero point 64, so each row gets its own scale. 7-bit activations ([1, 127], fbgemm's AVX2 `reduce_range`
          range: a pair of u8 x s8 products must fit int16), so 127 levels per token instead of 255.
  w8      weight-only int8 (torch._weight_int8pack_mm): float activations, int8 weights.
  fp16    fbgemm's fp16-weight GEMM on the dequantized weights (fp32 activations, fp32 accumulation): one op and
          half the weight bytes of fp32, which is what a 16-token call is bound by.
  fp32    float matmul on the dequantized weights (x * 1/s folded in): the float model's speed and accuracy.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F


def _rows(x: torch.Tensor, k: int) -> torch.Tensor:
    return x.reshape(-1, k).float()  # (..., K) -> (M, K)


def row_absmax(x: torch.Tensor) -> torch.Tensor:
    """max |x| per row, floored at 1e-8: (M, K) -> (M, 1). A few rows: abs().amax(), the fewest ops (eager pays per
    op); many: amax and amin, two reads of x and no |x| temporary (half the time of abs().amax() at 1024 rows)."""
    if x.shape[0] <= 128:
        return x.abs().amax(-1, keepdim=True).clamp_min_(1e-8)
    return torch.maximum(x.amax(-1, keepdim=True), x.amin(-1, keepdim=True).neg_()).clamp_min_(1e-8)


def _intmm(lin, x: torch.Tensor) -> torch.Tensor:
    shape, x = x.shape, _rows(x, lin.in_features)
    smoothed = lin.inv_smooth is not None
    if smoothed:
        x = x * lin.inv_smooth  # a fresh (M, K): scaled in place below
    amax = row_absmax(x)  # (M, 1)
    q = (x.mul_(127.0 / amax) if smoothed else torch.mul(x, 127.0 / amax)).round_().to(torch.int8)  # |q| <= 127
    # (M, N) int32 -> float (exact up to 2^24), then the token and channel scales and the bias in place: a mixed
    # int32 x float op, or a fresh output per step, cost 15-25% of the call at 1024 tokens (VNNI: the GEMM is cheap)
    y = torch._int_mm(q, lin.weight.t()).float().mul_(amax * (1.0 / 127.0))
    y = torch.addcmul(lin.bias, y, lin.weight_scale, out=y) if lin.bias is not None else y.mul_(lin.weight_scale)
    return y.view(*shape[:-1], lin.out_features)


def _fbgemm_op(x, scale: float, zero_point: int, packed) -> torch.Tensor:
    """fbgemm's dynamic int8 linear with the activation's (per-tensor) quantization given: (M, K) -> (M, N) fp32."""
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x, scale, zero_point, packed)


def _prepare_fbgemm(lin) -> dict:
    w = lin.weight  # (N, K) int8, symmetric: zero point 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized tensors; the packed GEMM is what we use
        qw = torch._make_per_channel_quantized_tensor(w, lin.weight_scale.double(),
                                                      torch.zeros(len(w), dtype=torch.long), 0)
        packed = torch.ops.quantized.linear_prepack(qw, None)
    _fbgemm_op(torch.zeros(1, lin.in_features), 1.0, 64, packed)  # weights another engine packed lack it: fail here
    return {"packed": packed}


def _fbgemm(lin, x: torch.Tensor) -> torch.Tensor:
    # One fresh (M, K) buffer and no pass of fbgemm's own over x for a per-tensor range: at 1024 tokens each extra
    # pass or temporary costs about as much as the int8 gain (torch.ao's one-liner, one scale a tensor, has neither)
    shape, x = x.shape, _rows(x, lin.in_features)
    if lin.inv_smooth is not None:
        x = x * lin.inv_smooth  # a fresh (M, K): scaled in place below
    scale = row_absmax(x).mul_(1.0 / 63.0)  # (M, 1): each row to max |x| = 63, then q = round(x) + 64 in [1, 127]
    xs = x.div_(scale) if lin.inv_smooth is not None else torch.div(x, scale)
    y = _fbgemm_op(xs, 1.0, 64, lin._kernel_fbgemm_packed)  # (M, N): q = round(xs / 1.0) + 64, weight scales in
    y = torch.addcmul(lin.bias, y, scale, out=y) if lin.bias is not None else y.mul_(scale)  # (M, N), in place
    return y.view(*shape[:-1], lin.out_features)


def _dequantized(lin) -> torch.Tensor:
    w = lin.weight.float() * lin.weight_scale[:, None]  # (N, K)
    return w * lin.inv_smooth if lin.inv_smooth is not None else w  # 1/s folded in: no activation quantization


def _prepare_w8(lin) -> dict:
    w = _dequantized(lin)
    scale = w.abs().amax(1).clamp_min(1e-8) / 127.0
    return {"weight": torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous(), "scale": scale}


def _w8(lin, x: torch.Tensor) -> torch.Tensor:
    shape, x = x.shape, _rows(x, lin.in_features).contiguous()
    y = torch._weight_int8pack_mm(x, lin._kernel_w8_weight, lin._kernel_w8_scale)  # (M, N)
    y = y.add_(lin.bias) if lin.bias is not None else y
    return y.view(*shape[:-1], lin.out_features)


def _fp16(lin, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.quantized.linear_dynamic_fp16(x.float(), lin._kernel_fp16_packed)  # (..., N), bias packed in


def _fp32(lin, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, lin._kernel_fp32_weight, lin._kernel_fp32_bias)  # one op, as lean as nn.Linear


# name -> (prepare(lin) -> cache dict, forward(lin, x (..., K)) -> (..., N))
KERNELS: dict[str, tuple[Callable, Callable]] = {
    "intmm": (lambda lin: {}, _intmm),
    "fbgemm": (_prepare_fbgemm, _fbgemm),
    "w8": (_prepare_w8, _w8),
    "fp16": (lambda lin: {"packed": torch.ops.quantized.linear_prepack_fp16(_dequantized(lin), lin.bias)}, _fp16),
    "fp32": (lambda lin: {"weight": _dequantized(lin), "bias": lin.bias}, _fp32),
}
FLOAT_ACT = ("w8", "fp16", "fp32")  # the kernels that keep activations float: all a float_act layer may run

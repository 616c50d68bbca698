"""The int8 kernels an Int8Linear can run (int8_kernels.py chooses among them per CPU, by measurement).

Kernels (none couples a row to its batch-mates: activation scales, where there are any, are per token):
  intmm   q8(x) per token, torch._int_mm (int8 x int8 -> int32), rescale. Exact int32 accumulation.
  fbgemm  torch.ao's fbgemm dynamic int8 GEMM (per-channel weights). It picks one activation scale per *tensor*
          from the tensor's min/max, so each row is first scaled to max |x| = 127 and one constant row
          [128, 0, ..., 0, -128] is appended: the tensor's range is then always [-128, 128], its scale a constant,
          and each row is quantized on its own. fbgemm's AVX2 path needs reduce_range (7-bit activations, against int16
          saturation), so activations get 127 levels per token instead of 255.
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
    """max |x| per row, floored at 1e-8: (M, K) -> (M, 1). From amax and amin: two reads of x and no |x| temporary
    (half the time of abs().amax() at 1024 rows)."""
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


def _prepare_fbgemm(lin) -> dict:
    w = lin.weight  # (N, K) int8, symmetric: zero point 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized tensors; the packed GEMM is what we use
        qw = torch._make_per_channel_quantized_tensor(w, lin.weight_scale.double(),
                                                      torch.zeros(len(w), dtype=torch.long), 0)
        packed = torch.ops.quantized.linear_prepack(qw, None)
    # (K,): pins the tensor's range to [-128, 128], just outside every scaled row (max |x| = 127 up to rounding)
    anchor = torch.zeros(lin.in_features)
    anchor[0], anchor[-1] = 128.0, -128.0
    return {"packed": packed, "anchor": anchor}


def _fbgemm(lin, x: torch.Tensor) -> torch.Tensor:
    # Written for few passes over the activations and one fresh (M + 1, K) buffer: at 1024 tokens each extra
    # temporary costs page faults that can outweigh the int8 gain (torch.linalg.vector_norm(inf) was 10x amax+amin).
    shape, x = x.shape, _rows(x, lin.in_features)
    m = x.shape[0]
    buf = torch.empty(m + 1, lin.in_features)  # (M + 1, K): the rows scaled to max |x| = 127, then the anchor row
    xs = buf[:m]
    if lin.inv_smooth is not None:
        x = torch.mul(x, lin.inv_smooth, out=xs)
    scale = row_absmax(x).mul_(1.0 / 127.0)  # (M, 1)
    torch.div(x, scale, out=xs)  # in place when smoothed (x is xs), else the copy and the scaling in one pass
    buf[m] = lin._kernel_fbgemm_anchor
    y = torch.ops.quantized.linear_dynamic(buf, lin._kernel_fbgemm_packed, True)[:m]  # (M, N), weight scales in
    y = torch.addcmul(lin.bias, y, scale, out=y) if lin.bias is not None else y.mul_(scale)  # in place: one pass
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

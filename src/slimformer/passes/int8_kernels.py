"""How an Int8Linear multiplies, chosen by measurement on the CPU that runs it.

The weights on disk are always the same (int8, one scale per output channel, optional SmoothQuant 1/s per input
channel); only the arithmetic at run time differs. No kernel is fast everywhere: `torch._int_mm` (oneDNN) is fast
with VNNI/AMX and ~20-30x slower than an fp32 matmul on AVX2-only CPUs, where fbgemm's int8 GEMM is the fast one.
So each weight shape class (K, N) is timed once per process at a one-query and a batch token count, and at each count
the fastest kernel that beats fp32 serves every Linear of that class for calls of that size (up to SMALL_ROWS
tokens: the one-query kernel; above: the batch kernel), else fp32 on the dequantized weights (the size win stays on
disk). A choice reads "fp32/fbgemm" when the two differ. Eager PyTorch pays a few microseconds per op, which at 16
tokens can cost more than int8 saves (the per-token kernels' ops run as one TorchScript function for that reason); a
traced graph (`freeze`) pays none, so it is traced with the batch kernel.
SLIMFORMER_INT8_KERNEL=<name> (or <small>/<large>) forces the kernels of every Linear. A layer marked float_act (its
activations measured too sensitive to int8: quantize.py) races, and is forced onto, only FLOAT_ACT kernels (an
activation-quantizing one it is given runs as fp32).
The kernels themselves are in int8_ops.py.
"""

from __future__ import annotations

import contextlib
import os
import statistics

import torch
from torch import nn

from ..errors import KernelUnavailableError, SlimformerError
from ..timing import interleaved_times
from .int8_ops import FLOAT_ACT, KERNELS

ENV = "SLIMFORMER_INT8_KERNEL"
TIMING_TOKENS = (16, 1024)  # rows timed per shape class: one short query (1x16), a batch (8x128 or 32x32)
SMALL_ROWS = 128  # calls with up to this many rows (tokens in the batch) use the one-query kernel
MIN_GAIN = 1.05  # a kernel must beat fp32 by this at a count to serve calls of that size
OUT_OF_RACE = 3.0  # a kernel this many times slower than fp32 at 16 rows is not timed at 1024
REPS = {16: 61, 1024: 15}  # timed calls per kernel: kernels within 10% of each other need this many to settle
CLOSE = 0.1  # a ratio to fp32 within 10% of the MIN_GAIN bar is timed again (2 x REPS more turns) before it decides


def parse(spec: str, where: str = "int8 kernel") -> tuple[str, str]:
    """"fbgemm" -> (fbgemm, fbgemm); "fp32/fbgemm" -> (fp32 for small calls, fbgemm for large ones)."""
    small, _, large = spec.strip().partition("/")
    large = large or small
    for name in (small, large):
        if name not in KERNELS:
            raise SlimformerError(f"{where} '{spec}': unknown kernel '{name}' (kernels: auto, {', '.join(KERNELS)}, "
                                  "or SMALL/LARGE)")
    return small, large


def join(small: str, large: str) -> str:
    return small if small == large else f"{small}/{large}"


def restrict(lin, spec: str) -> str:
    """`spec` as `lin` may run it: a float_act layer runs fp32 where `spec` names an activation-quantizing kernel."""
    if not lin.float_act:
        return spec
    return join(*(name if name in FLOAT_ACT else "fp32" for name in parse(spec)))


def planned(lin) -> str:
    """The kernels `lin` runs, or will run at its first call: its own, else the forced ones, else the measured."""
    if lin.__dict__.get("kernel"):
        return lin.__dict__["kernel"]
    spec = forced()
    return restrict(lin, spec) if spec else measure(lin)[0]


def drop_cache(lin) -> None:
    for key in [k for k in lin.__dict__ if k.startswith("_kernel_")]:
        del lin.__dict__[key]


def set_kernel(lin, spec: str, keep: bool = False) -> None:
    """Serve `lin` (an Int8Linear) with `spec` ("name" or "small/large"); its run-time cache is built now, from the
    stored weights, in plain attributes `_kernel_<kernel>_<key>` (not buffers: never saved; a trace finds them).
    keep: other kernels' caches stay, and one already built is reused (a race switching back and forth; a prepack
    of all MiniLM's layers took up to 0.1 s)."""
    small, large = parse(spec)
    if not keep:
        drop_cache(lin)
    built = lin.__dict__.setdefault("_kernel_built", set())
    for name in dict.fromkeys((small, large)):
        if name in built:
            continue
        try:
            cache = KERNELS[name][0](lin)
        except RuntimeError as e:  # a kernel this build or CPU lacks (e.g. no fbgemm on ARM)
            raise KernelUnavailableError(f"int8 kernel '{name}' cannot run here: {str(e).splitlines()[0]}") from e
        for key, value in cache.items():
            lin.__dict__[f"_kernel_{name}_{key}"] = value
        built.add(name)
    lin.__dict__["_kernel_small"], lin.__dict__["_kernel_large"] = KERNELS[small][1], KERNELS[large][1]
    lin.__dict__["kernel"] = join(small, large)


def ensure(lin, spec: str, keep: bool = False) -> None:
    """set_kernel(lin, spec, keep) unless lin already runs spec with its cache built: a switch costs a prepack per
    layer."""
    if lin.__dict__.get("kernel") != spec or "_kernel_small" not in lin.__dict__:
        set_kernel(lin, spec, keep)


def available(name: str) -> bool:
    """Whether kernel `name` runs on this CPU and build (forcing one that does not is a one-line error)."""
    try:
        set_kernel(Int8Linear(64, 8), name)
        return True
    except KernelUnavailableError:
        return False


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: w (R, C) -> (q int8 (R, C), scale (R,)) with w ~= q * scale[:, None]."""
    scale = w.abs().amax(1).clamp_min(1e-8) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale.float()


class Int8Linear(nn.Module):
    """y = x @ (Wq * s_w)^T + b with Wq int8 (N, K), computed by this CPU's kernel (module docstring); x smoothed by
    1/s (SmoothQuant) first when the weights were. float_act: only kernels with float activations (FLOAT_ACT).
    Shapes: x (..., K) -> y (..., N)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, smooth: bool = False,
                 float_act: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.float_act = in_features, out_features, float_act
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))  # (N, K)
        self.register_buffer("weight_scale", torch.ones(out_features))  # (N,)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)  # (N,)
        # 1 / s_j of SmoothQuant, multiplied into x before quantization; absent when not smoothed
        self.register_buffer("inv_smooth", torch.ones(in_features) if smooth else None)  # (K,)

    def spec(self) -> dict:
        return dict(in_features=self.in_features, out_features=self.out_features,
                    bias=self.bias is not None, smooth=self.inv_smooth is not None,
                    **({"float_act": True} if self.float_act else {}))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, lin: nn.Linear, smooth: torch.Tensor | None = None, float_act: bool = False
                    ) -> "Int8Linear":
        new = cls(lin.in_features, lin.out_features, lin.bias is not None, smooth is not None, float_act)
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
        d = self.__dict__
        if "_kernel_small" not in d:  # not given a kernel yet, or deep-copied / moved: measured (or forced) now
            set_kernel(self, planned(self))
        kernel = d["_kernel_small"] if x.numel() <= SMALL_ROWS * self.in_features else d["_kernel_large"]
        if torch.is_grad_enabled():  # a call outside no_grad (HF style): int8 kernels have no backward, and the
            with torch.no_grad():  # fbgemm one writes into buffers (out=), which autograd refuses outright
                return kernel(self, x)
        return kernel(self, x)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"smooth={self.inv_smooth is not None}, float_act={self.float_act}, "
                f"kernel={self.__dict__.get('kernel')}")


# ------------------------------------------------------------------------------------------- choice by measurement

_CHOICE: dict[tuple, tuple[str, dict]] = {}  # (K, N, bias, smooth, float_act, threads) -> (kernel, {kernel: ratios})


def paired_ratios(times: dict[str, list[float]], base: str = "fp32") -> dict[str, list[float]]:
    """{kernel: its ms / base's ms in the same turn, per turn}: a slow spell of a loaded machine slows both calls of a
    turn, so it cancels in the ratio, where it would move one kernel's median and not another's."""
    return {n: [a / b for a, b in zip(t, times[base])] for n, t in times.items()}


@torch.inference_mode()
def measure(lin) -> tuple[str, dict]:
    """Time every kernel against fp32 on a layer of lin's shape class at TIMING_TOKENS rows, in turns; at each count
    the kernel with the lowest paired ratio to fp32 if it beats fp32 by MIN_GAIN (else fp32). A decision within
    CLOSE of the bar is timed again with more turns before it is made: on a busy machine one round flipped it.
    Returns the choice ("name" or "small/large") and {kernel: [paired ratio to fp32 per count]}."""
    key = (lin.in_features, lin.out_features, lin.bias is not None, lin.inv_smooth is not None, lin.float_act,
           torch.get_num_threads())
    if key not in _CHOICE:
        probes = {}
        # a copy of the shape, not of the weights (random int8: the same speed)
        for name in FLOAT_ACT if lin.float_act else KERNELS:
            probe = type(lin)(**lin.spec())
            probe.weight = torch.randint(-127, 128, probe.weight.shape, dtype=torch.int8)
            try:
                set_kernel(probe, name)
                probes[name] = probe
            except KernelUnavailableError:
                continue
        ratios: dict[str, list[float]] = {name: [] for name in probes}
        best = []
        for m in TIMING_TOKENS:
            x = torch.randn(m, lin.in_features)
            # hopeless at 16 rows: not worth seconds at 1024
            racing = [n for n in probes if not ratios[n] or ratios[n][0] <= OUT_OF_RACE]
            calls = {n: (lambda p: lambda: p(x))(probes[n]) for n in racing}
            turns = paired_ratios(interleaved_times(calls, reps=REPS[m]))
            r = {n: statistics.median(t) for n, t in turns.items()}

            def fastest() -> str:  # the best kernel other than fp32 (fp32 when it is the only one)
                return min(r, key=lambda n: (n == "fp32", r[n]))

            if fastest() != "fp32" and abs(r[fastest()] * MIN_GAIN - 1.0) < CLOSE:  # near the bar: more turns, pooled
                again = {n: calls[n] for n in calls if n == "fp32" or r[n] * MIN_GAIN < 1.0 + CLOSE}
                for n, t in paired_ratios(interleaved_times(again, reps=2 * REPS[m])).items():
                    r[n] = statistics.median(turns[n] + t)
            top = fastest()
            for name in probes:
                ratios[name].append(r.get(name, float("inf")))
            best.append(top if r[top] * MIN_GAIN <= 1.0 else "fp32")
        _CHOICE[key] = (join(*best), {n: [round(t, 4) for t in v] for n, v in ratios.items()})
    return _CHOICE[key]


def forced() -> str | None:
    spec = os.environ.get(ENV, "auto").strip() or "auto"
    if spec == "auto":
        return None
    parse(spec, where=ENV)
    return spec


def choose(module: nn.Module, kernel: str | None = None) -> dict[str, int]:
    """Give every Int8Linear in `module` its kernels: `kernel` ("name" or "small/large"), else
    $SLIMFORMER_INT8_KERNEL, else the measured choice for its shape class. Returns summary(module)."""
    kernel = None if kernel in (None, "auto") else kernel
    if kernel is not None:
        parse(kernel)
    kernel = kernel or forced()
    for m in module.modules():
        if isinstance(m, Int8Linear):
            set_kernel(m, restrict(m, kernel) if kernel else measure(m)[0])
    return summary(module)


@contextlib.contextmanager
def large_only(module: nn.Module):
    """While tracing: every Int8Linear runs its batch kernel at every size (a graph pays no per-op Python cost, and
    records one path); the kernels as chosen come back afterwards."""
    chosen = {m: m.__dict__.get("kernel") for m in module.modules() if isinstance(m, Int8Linear)}
    try:
        for m, spec in chosen.items():
            set_kernel(m, parse(planned(m))[1])
        yield
    finally:
        for m, spec in chosen.items():
            if spec is None:
                drop_cache(m)
                m.__dict__.pop("kernel", None)
            else:
                set_kernel(m, spec)


def summary(module: nn.Module) -> dict[str, int]:
    """{kernel: how many Int8Linears run it} as the model stands (a layer not run yet counts as its coming choice)."""
    counts: dict[str, int] = {}
    for m in module.modules():
        if isinstance(m, Int8Linear):
            name = planned(m)
            counts[name] = counts.get(name, 0) + 1
    return counts

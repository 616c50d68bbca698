"""Which ISA cap changes which kernel? One int8 GEMM, (128, 384) @ (384, 1536), by `torch._int_mm` (oneDNN) and by
fbgemm's dynamic int8 linear (torch.ao's, the `fbgemm` kernel), and the fp32 GEMM of the same shape, one thread,
timed in a fresh process under each cap (the caps are read at start-up).

    .venv/bin/python benchmarks/int_mm_caps.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2"}  # every library's own cap at once: the AVX2 stand-in int8_kernels.py --caps uses
CAPS = [{}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"ONEDNN_MAX_CPU_ISA": "SSE41"}, {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"},
        {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, {"ATEN_CPU_CAPABILITY": "avx2"}, {"ATEN_CPU_CAPABILITY": "default"}, AVX2]


def child() -> None:
    import torch

    from slimformer.measure.bench import cpu_info
    from slimformer.timing import median_ms

    torch.set_num_threads(1)
    a = torch.randint(-127, 128, (128, 384), dtype=torch.int8)
    b = torch.randint(-127, 128, (1536, 384), dtype=torch.int8).t()  # (384, 1536), column-major as Int8Linear's
    x, w = torch.randn(128, 384), torch.randn(1536, 384)
    qw = torch.quantize_per_channel(w, w.abs().amax(1).double() / 127, torch.zeros(1536, dtype=torch.long), 0,
                                    torch.qint8)
    packed = torch.ops.quantized.linear_prepack(qw, None)
    print(json.dumps({"int_mm_ms": median_ms(lambda: torch._int_mm(a, b), reps=7),
                      "fbgemm_ms": median_ms(lambda: torch.ops.quantized.linear_dynamic(x, packed, True), reps=21),
                      "fp32_ms": median_ms(lambda: torch.nn.functional.linear(x, w), reps=21),
                      "capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_info()}))


def main() -> None:
    print("| caps | ATen capability | _int_mm ms | fbgemm ms | fp32 ms | _int_mm / fp32 | fbgemm / fp32 |\n"
          "|---|---|---|---|---|---|---|")
    for caps in CAPS:
        out = subprocess.run([sys.executable, __file__, "--child"], env={**os.environ, **caps}, check=True,
                             capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        name = " ".join(f"{k}={v}" for k, v in caps.items()) or "none"
        print(f"| {name} | {r['capability']} | {r['int_mm_ms']:.2f} | {r['fbgemm_ms']:.2f} | {r['fp32_ms']:.2f} | "
              f"{r['int_mm_ms'] / r['fp32_ms']:.2f}x | {r['fbgemm_ms'] / r['fp32_ms']:.2f}x |")
    print(f"\n{r['cpu']['model']}, flags {'/'.join(r['cpu']['flags'])}")


if __name__ == "__main__":
    child() if "--child" in sys.argv else main()

"""The int8 kernel choice for each weight shape of all-MiniLM-L6-v2, made afresh ROUNDS times in this process (as a
load makes it): the choice and each kernel's paired ratio to fp32 at 16 / 1,024 tokens. Run it on an idle machine
and again with another process busy, to see how much the choice depends on the machine's state at load.

    python benchmarks/kernel_choice.py [ROUNDS]
"""

import sys
import time

import torch

from slimformer.passes import int8_kernels
from slimformer.passes.int8_kernels import Int8Linear

SHAPES = ((384, 384), (384, 1536), (1536, 384))  # (in, out): q/k/v/o, FFN in, FFN out

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 4
print(f"threads {torch.get_num_threads()}, ATen capability {torch.backends.cpu.get_cpu_capability()}")
for _ in range(rounds):
    int8_kernels._CHOICE.clear()  # a fresh choice, as in a new process
    t0, cells = time.perf_counter(), []
    for k, n in SHAPES:
        spec, ratios = int8_kernels.measure(Int8Linear(k, n, bias=True, smooth=True))
        cells.append(f"{k}x{n}: {spec:<12} " + " ".join(f"{name} {r[0]:.2f}/{r[1]:.2f}" for name, r in ratios.items()
                                                          if name in ("fbgemm", "fp16")))
    print(f"{time.perf_counter() - t0:4.1f} s | " + " | ".join(cells), flush=True)

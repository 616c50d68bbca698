"""Where eager `int8` spends its time against torch.ao's one-liner: the embedded all-MiniLM-L6-v2 under `int8` (the
kernels forced, or chosen on this CPU) and under torch.ao's dynamic int8, each profiled over the same forwards, in
turns (torch.profiler, CPU; ms per forward of the ops that take most of it). Run it on an idle machine.

    python benchmarks/int8_profile.py [--kernel intmm|fbgemm|...|auto] [--shape 8x128] [--forwards 5] [--top 8]
"""

import argparse
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

import slimformer
from slimformer.measure.bench import cpu_info
from slimformer.measure.peers import torch_ao_dynamic
from slimformer.passes import int8_kernels
from slimformer.timing import example_inputs

ap = argparse.ArgumentParser()
ap.add_argument("--kernel", default="intmm")
ap.add_argument("--shape", default="8x128")
ap.add_argument("--forwards", type=int, default=5)
ap.add_argument("--top", type=int, default=8)
args = ap.parse_args()
warnings.simplefilter("ignore")  # torch.ao's deprecation notices

base = slimformer.load()
small = slimformer.compress(base, "int8")
kernels = int8_kernels.choose(small.net, None if args.kernel == "auto" else args.kernel)
batch, seq = map(int, args.shape.split("x"))
inputs = example_inputs(batch, seq, base.tokenizer.vocab_size)
nets = {f"int8 {kernels}": small.net, "torch.ao one-liner": torch_ao_dynamic(base).net}
cpu = cpu_info()
print(f"{cpu['model']}, flags {'/'.join(cpu['flags'])}, {cpu['threads']} threads, {args.shape}, "
      f"{args.forwards} forwards per turn, 2 turns")
with torch.inference_mode():
    for turn in range(2):  # the second turn says how much the first one's figures move
        for name, net in nets.items():
            for _ in range(3):
                net(**inputs)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.forwards):
                    net(**inputs)
            ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            total = sum(e.self_cpu_time_total for e in ops) / 1e3 / args.forwards
            cells = ", ".join(f"{e.key} {e.self_cpu_time_total / 1e3 / args.forwards:.2f}" for e in ops[: args.top])
            print(f"turn {turn + 1} | {name}: {total:.1f} ms a forward | {cells}")

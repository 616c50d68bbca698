"""Each int8 kernel on this CPU: `int8` of the embedded all-MiniLM-L6-v2 forced onto every kernel in turn (and the
automatic choice, eager and traced by `freeze`, and each layer's choice timed alone, before the whole model settles
it), beside fp32 and torch.ao's one-liner: median ms at 1x16, 8x128, 32x32 (alternated, one run) and STS-B test.
`--caps` runs the same again in a child process under every library's AVX2 cap (oneDNN, fbgemm, MKL, ATen:
int_mm_caps.AVX2), to see how far those caps make an AVX-512 VNNI machine behave like an AVX2-only one.

    .venv/bin/python benchmarks/int8_kernels.py [--runs 20] [--caps] [--no-quality]

A kernel over SLOW x fp32 at 8x128 is timed with 2 runs outside the alternation, and its STS-B is not run (encoding
STS-B would take tens of minutes); the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

import slimformer
from slimformer.measure.bench import cpu_info
from slimformer.timing import SHAPES, example_inputs, latency_ms
from slimformer.measure.peers import torch_ao_dynamic
from slimformer.measure.tasks import evaluate
from slimformer.passes import freeze, int8_kernels

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from int_mm_caps import AVX2 as CAPS  # noqa: E402

SLOW = 4.0


def measure(runs: int, quality: bool) -> dict:
    base = slimformer.load()
    small = slimformer.compress(base, "int8")
    models = {"fp32 (original)": base, "torch.ao dynamic int8 one-liner": torch_ao_dynamic(base)}
    auto = int8_kernels.summary(small.encoder)
    models[f"int8, auto ({', '.join(f'{k} x{n}' for k, n in auto.items())})"] = small
    alone = small.clone()
    int8_kernels.choose(alone.encoder)  # each layer's kernels as timed alone, before the whole model settled them
    per_layer = int8_kernels.summary(alone.encoder)
    models[f"int8, per layer ({', '.join(f'{k} x{n}' for k, n in per_layer.items())})"] = alone
    frozen = small.clone()
    freeze.apply(frozen, "trace")  # traced with each Linear's batch kernel
    models["int8 + freeze (traced, batch kernels)"] = frozen
    for kernel in filter(int8_kernels.available, int8_kernels.KERNELS):  # those this CPU and build can run
        m = small.clone()
        int8_kernels.choose(m.encoder, kernel)
        models[f"int8, {kernel}"] = m
    vocab = {n: m.encoder.get_input_embeddings().num_embeddings for n, m in models.items()}
    runners = {n: (lambda m: lambda x: m(**x))(m) for n, m in models.items()}

    def once(name: str) -> float:  # one forward at 8x128 after one warm-up, ms
        x = example_inputs(8, 128, vocab[name])
        with torch.inference_mode():
            runners[name](x)
            t0 = time.perf_counter()
            runners[name](x)
        return (time.perf_counter() - t0) * 1e3

    probe = {n: once(n) for n in runners}
    slow = {n for n in runners if probe[n] > SLOW * probe["fp32 (original)"]}
    lat = latency_ms({n: r for n, r in runners.items() if n not in slow}, vocab, runs=runs)
    if slow:
        lat.update(latency_ms({n: runners[n] for n in slow}, vocab, runs=2, warmup=1))
    rows = []
    for name, m in models.items():
        row = {"name": name, "latency_ms": lat[name], "timed_runs": 2 if name in slow else runs}
        if quality and name not in slow:
            row["stsb"] = round(evaluate(m, "stsb").value, 2)
        rows.append(row)
    return {"cpu": cpu_info(), "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "env": {k: os.environ[k] for k in CAPS if k in os.environ}, "rows": rows}


def markdown(result: dict) -> str:
    cpu = result["cpu"]
    env = " ".join(f"{k}={v}" for k, v in result["env"].items()) or "no caps"
    lines = [f"{cpu['model']}, flags {'/'.join(cpu['flags'])}, {cpu['threads']} threads, ATen capability "
             f"{result['torch_capability']}, {env}", "",
             "| model | " + " | ".join(f"ms {b}x{t}" for b, t in SHAPES) + " | "
             + " | ".join(f"speedup {b}x{t}" for b, t in SHAPES) + " | STS-B |",
             "|---" * (2 * len(SHAPES) + 2) + "|"]
    ref = result["rows"][0]["latency_ms"]
    for r in result["rows"]:
        ms = r["latency_ms"]
        note = f" ({r['timed_runs']} runs)" if r["timed_runs"] == 2 else ""
        lines.append(f"| {r['name']}{note} | " + " | ".join(f"{ms[k]:.1f}" for k in ms) + " | "
                     + " | ".join(f"{ref[k] / ms[k]:.2f}x" for k in ms) + " | "
                     + (f"{r['stsb']:.2f}" if "stsb" in r else "not run") + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--caps", action="store_true", help="also run under every library's AVX2 cap")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the child's output
    args = ap.parse_args()
    result = measure(args.runs, not args.no_quality)
    if args.json:
        print(json.dumps(result))
        return
    print(markdown(result))
    if args.caps:
        child = [sys.executable, __file__, "--runs", str(args.runs), "--json"] + (["--no-quality"] * args.no_quality)
        out = subprocess.run(child, env={**os.environ, **CAPS}, check=True, capture_output=True, text=True).stdout
        print()
        print(markdown(json.loads(out.strip().splitlines()[-1])))


if __name__ == "__main__":
    main()

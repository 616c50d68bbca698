"""What keeping freed memory in the process (runtime/heap.py) buys: the same forwards in three fresh processes per
round, glibc's allocator as it comes (SLIMFORMER_MALLOC=default) and tuned by slimformer at import, alternated;
median ms of fp32, torch.ao's one-liner and `int8` (saved once, then loaded as a server would) at 8x128, 32x32 and
1x16 (15 alternated calls each, timing.interleaved_ms), and the minor page faults those calls and one warm-up each
took. Whether glibc adapts on its own depends
on the calls before (a compress in the same process warmed it here), so the serving flow is the one timed.

    .venv/bin/python benchmarks/heap.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

SHAPES = ((8, 128), (32, 32), (1, 16))


def child(folder: str) -> dict:
    import torch

    import slimformer
    from slimformer.measure.bench import cpu_info
    from slimformer.measure.peers import torch_ao_dynamic
    from slimformer.timing import example_inputs, interleaved_ms

    base = slimformer.load()
    models = {"fp32": base, "torch.ao int8": torch_ao_dynamic(base), "int8": slimformer.load(folder)}
    out = {"cpu": cpu_info()}
    for b, t in SHAPES:
        x = example_inputs(b, t, base.tokenizer.vocab_size)
        calls = {n: (lambda m: lambda: m(**x))(m) for n, m in models.items()}
        with torch.inference_mode():
            for call in calls.values():
                call()  # interleaved_ms warms each up once more, inside the counted span
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            ms = interleaved_ms(calls, reps=15, give_up_ms=float("inf"))
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        out[f"{b}x{t}"] = {"ms": {n: round(v, 1) for n, v in ms.items()}, "page_faults": faults}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)  # the int8 folder to load
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    import slimformer

    tmp = tempfile.TemporaryDirectory()
    folder = os.path.join(tmp.name, "int8")
    slimformer.save(slimformer.compress(slimformer.load(), "int8"), folder)
    rows = []
    for r in range(args.rounds):
        for mode in ("default", "kept"):
            env = {**os.environ, "SLIMFORMER_MALLOC": mode}
            res = subprocess.run([sys.executable, __file__, "--child", folder], env=env, check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            rows.append((r + 1, json.loads(res)))
    cpu = rows[0][1]["cpu"]
    print(f"{cpu['model']}, flags {'/'.join(cpu['flags'])}, {cpu['threads']} threads\n")
    names = list(rows[0][1]["8x128"]["ms"])
    print("| round | freed memory | " + " | ".join(f"{n} ms {b}x{t}" for b, t in SHAPES for n in names)
          + " | page faults 8x128 | page faults 32x32 |")
    print("|---" * (3 + len(SHAPES) * len(names) + 1) + "|")
    for r, res in rows:
        cells = [f"{res[f'{b}x{t}']['ms'][n]:.1f}" for b, t in SHAPES for n in names]
        print(f"| {r} | {res['cpu']['freed_memory']} | " + " | ".join(cells)
              + f" | {res['8x128']['page_faults']:,} | {res['32x32']['page_faults']:,} |")


if __name__ == "__main__":
    main()

"""Perplexity of Gemma 3 270M (models/gemma-3-270m, from `make gemma`) under slimformer recipes, on the held-out
default slice (SST-2 dev sentences, one document each): one JSON line per recipe with its perplexity, the paired
bootstrap 95% interval of its difference to fp32 (over documents), its size and the compression time; a vocabulary-
pruned model also gives the share of the text's predicted tokens it kept (coverage; the others are scored as the
pruned model's <unk>). Quality only: no timing (the lead measures speed on a quiet machine, benchmarks/gemma_speed.py).

    python benchmarks/gemma_quality.py [--out DIR] [MODEL [TASK [RECIPE ...]]]   (TASK: ppl, the default, or ppl:PATH)

--out DIR (or --save DIR): each compressed model is saved to DIR/<recipe as a folder name> (what gemma_speed.py
times), and fp32's per-document nll to DIR/reference.json, which later runs with the same model and task reuse.
"""

import json
import re
import sys
import time

import numpy as np
from pathlib import Path

import slimformer
from slimformer.measure.bench import n_params, size_mb
from slimformer.measure.tasks import TaskResult, evaluate, result_interval

args = sys.argv[1:]
out_dir = None
if args[:1] in (["--out"], ["--save"]):  # --save as whisper_quality.py spells it
    out_dir, args = Path(args[1]), args[2:]
model_dir = args[0] if len(args) > 0 else "models/gemma-3-270m"
task = args[1] if len(args) > 1 else "ppl"
recipes = args[2:] or ["int8(smooth=0)", "int8", "int8(fp32=18)", "ffn(keep=0.8)", "layers(keep=16)"]
base = slimformer.load(model_dir)
cache = out_dir / "reference.json" if out_dir is not None else None  # fp32's per-document nll, reused by later runs
key = [str(Path(model_dir).resolve()), task]
if cache is not None and cache.is_file() and json.loads(cache.read_text())["key"] == key:
    c = json.loads(cache.read_text())
    ref = TaskResult(task, "perplexity", c["value"], c["n"], np.array(c["nll"]), np.array(c["tokens"]),
                     {"tokens": int(sum(c["tokens"]))})
else:
    ref = evaluate(base, task)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "value": ref.value, "n": ref.n, "nll": ref.per_example.tolist(),
                                     "tokens": ref.gold.tolist()}))
print(json.dumps({"recipe": "fp32", "task": task, "ppl": round(ref.value, 2), "n": ref.n, "tokens": ref.extra["tokens"],
                  "size_mb": round(size_mb(base.net), 1), "params": n_params(base.net)}), flush=True)
for recipe in recipes:
    t0 = time.perf_counter()
    small = slimformer.compress(base, recipe)
    seconds = time.perf_counter() - t0
    r = evaluate(small, task)
    lo, hi = result_interval(ref, r)
    kept = next((s.get("fp32_kept") for s in small.manifest["steps"] if s.get("fp32_kept")), None)
    saved = {}
    if out_dir is not None:
        folder = out_dir / re.sub(r"[^A-Za-z0-9_.=-]+", "_", recipe).strip("_")
        saved = {"folder": str(slimformer.save(small, folder, force=True))}
    extra = {k: v for k, v in r.extra.items() if k != "tokens"}  # coverage, for a vocabulary-pruned model
    print(json.dumps({"recipe": recipe, "ppl": round(r.value, 2), "delta_95": [round(lo, 2), round(hi, 2)],
                      "size_mb": round(size_mb(small.net), 1), "params": n_params(small.net),
                      "compress_s": round(seconds), **extra, **({"fp32_kept": kept} if kept else {}), **saved}),
          flush=True)

"""Compress one model with several recipes and measure them all against the original in one alternating run.

Usage: .venv/bin/python benchmarks/recipes.py MODEL_DIR|default RECIPE [RECIPE ...]
e.g.   .venv/bin/python benchmarks/recipes.py models/all-mpnet-base-v2 int8 "prune(flops=0.5)" "vocab+prune(flops=0.5)+int8"
"""

import sys
import time

import slimformer
from slimformer.measure.report import markdown, measure, structure_md

model_dir, recipes = sys.argv[1], sys.argv[2:]
base = slimformer.load(None if model_dir == "default" else model_dir)
models = {"fp32": base}
for recipe in recipes:
    t0 = time.perf_counter()
    models[recipe] = slimformer.compress(base, recipe)
    print(f"{recipe}: compressed in {time.perf_counter() - t0:.0f} s", flush=True)
print(markdown(measure(models, "stsb")))
print("\n".join(filter(None, (structure_md(m.manifest["steps"], f"{n}, ") for n, m in models.items()))))

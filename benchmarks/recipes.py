"""Compress one model with several recipes and measure them all against the original in one alternating run.

Usage: .venv/bin/python benchmarks/recipes.py MODEL_DIR|default RECIPE [RECIPE ...]
e.g.   .venv/bin/python benchmarks/recipes.py models/all-mpnet-base-v2 int8 "prune(flops=0.5)" "vocab+prune(flops=0.5)+int8"
"""

import sys

import slimformer
from slimformer.measure.compare import compare
from slimformer.measure.report import markdown, structures_md

model_dir, recipes = sys.argv[1], sys.argv[2:]
base = slimformer.load(None if model_dir == "default" else model_dir)
result, models = compare({"fp32": base}, {r: r for r in recipes}, "stsb",
                         on_compressed=lambda r, m, s: print(f"{r}: compressed in {s:.0f} s", flush=True))
print(markdown(result))
print(structures_md(models))

"""Narrowing without training on the embedded default: STS-B and speed over FLOPs budgets, with and without mask
tuning, all models timed in one alternating loop against fp32. Usage: .venv/bin/python benchmarks/prune_curve.py"""

import sys

import slimformer
from slimformer.measure.compare import compare
from slimformer.measure.report import markdown

model_dir = sys.argv[1] if len(sys.argv) > 1 else None
base = slimformer.load(model_dir)
recipes = [f"prune(flops={flops}, tune={str(tune).lower()})" for flops in (0.9, 0.7, 0.5, 0.35)
           for tune in (False, True)]
result, _ = compare({"fp32": base}, {r: r for r in recipes}, "stsb",
                    on_compressed=lambda r, m, s: print(r, m.manifest["steps"][0]["heads_per_layer"], flush=True))
print(markdown(result))

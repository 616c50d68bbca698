"""FNet curve: Fourier mixing in N = 1..6 layers of the embedded default, each then distilled; which layers, speed,
STS-B, all rows measured against the original in one alternating run.

Usage: .venv/bin/python benchmarks/fnet_curve.py [DISTILL_ARGS|none] [N ...]
e.g.   .venv/bin/python benchmarks/fnet_curve.py "minutes=15, lr=0.001"          # the README's curve, ~100 min
       .venv/bin/python benchmarks/fnet_curve.py none                            # structure only: speed in minutes
       .venv/bin/python benchmarks/fnet_curve.py "steps=1300, lr=0.001, device=cuda" 1 2 3   # on a GPU
"""

import sys

import slimformer
from slimformer.measure.report import markdown, measure

distill = sys.argv[1] if len(sys.argv) > 1 else "minutes=15, lr=0.001"
layers = [int(n) for n in sys.argv[2:]] or [1, 2, 3, 4, 5, 6]
base = slimformer.load()
models = {"fp32": base}
for n in layers:
    recipe = f"fnet(layers={n})" + ("" if distill == "none" else f"+distill({distill})")
    m = slimformer.compress(base, recipe)
    chosen = m.manifest["steps"][0]["fnet_layers"]
    train = m.manifest["steps"][-1] if distill != "none" else {}
    print(f"{recipe}: layers {chosen}, {train.get('steps', 0)} steps", flush=True)
    models[f"N={n} layers {chosen}"] = m
print(markdown(measure(models, "stsb")))

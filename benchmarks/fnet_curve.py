"""FNet curve: Fourier mixing in N = 1..6 layers of the embedded default, each then distilled; which layers, speed,
STS-B, all rows measured against the original in one alternating run.

Usage: .venv/bin/python benchmarks/fnet_curve.py [DISTILL_ARGS|none] [N ...]
e.g.   .venv/bin/python benchmarks/fnet_curve.py "minutes=15, lr=0.001"          # the README's curve, ~100 min
       .venv/bin/python benchmarks/fnet_curve.py none                            # structure only: speed in minutes
       .venv/bin/python benchmarks/fnet_curve.py "steps=1300, lr=0.001, device=cuda" 1 2 3   # on a GPU
"""

import sys

import slimformer
from slimformer.measure.compare import compare
from slimformer.measure.report import markdown

distill = sys.argv[1] if len(sys.argv) > 1 else "minutes=15, lr=0.001"
layers = [int(n) for n in sys.argv[2:]] or [1, 2, 3, 4, 5, 6]
recipes = {f"N={n}": f"fnet(layers={n})" + ("" if distill == "none" else f"+distill({distill})") for n in layers}


def chosen(m):
    return m.manifest["steps"][0]["fnet_layers"]


def log(name, m, seconds):
    train = m.manifest["steps"][-1] if distill != "none" else {}
    print(f"{recipes[name]}: layers {chosen(m)}, {train.get('steps', 0)} steps", flush=True)


result, models = compare({"fp32": slimformer.load()}, recipes, "stsb", on_compressed=log)
for row in result["rows"][1:]:  # the row names the layers each N chose
    row["name"] += f" layers {chosen(models[row['name']])}"
print(markdown(result))

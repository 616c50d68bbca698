"""Quality of an original and of saved or exported folders of it on one task, each with its delta to the original and
the delta's 95% paired-bootstrap interval (any family: stsb, sst2, cls:PATH, ppl:PATH, wer:PATH). Quality only:
speed comes from `bench --peers`, gemma_speed.py or whisper_speed.py. Models are loaded one at a time.

    python benchmarks/folders_quality.py TASK MODEL FOLDER ...
    (MODEL: the original's folder; FOLDERs: `slimformer compress` / `export` outputs, torch or ONNX Runtime / OpenVINO)
"""

import json
import sys
from pathlib import Path

import slimformer
from slimformer.measure.bench import size_mb
from slimformer.measure.tasks import evaluate, result_interval

if len(sys.argv) < 4:
    raise SystemExit(__doc__)
task, paths = sys.argv[1], sys.argv[2:]
print("| model | served by | size MB | value | delta [95%] |")
print("|---|---|---|---|---|")
base, rows = None, []
for path in paths:
    model = slimformer.load(path)
    manifest = getattr(model, "manifest", {}) or {}
    result = evaluate(model, task)
    row = {"model": manifest.get("recipe") or Path(path).name, "path": path,
           "runtime": manifest.get("runtime") or "torch", "size_mb": round(size_mb(model.net), 1),
           "value": round(result.value, 2)}
    if base is None:
        base, cell = result, ""
    else:
        lo, hi = result_interval(base, result)
        row.update(delta=round(result.value - base.value, 2), interval=[round(lo, 2), round(hi, 2)])
        cell = f"{row['delta']:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    print(f"| {row['model']} | {row['runtime']} | {row['size_mb']} | {row['value']:.2f} | {cell} |", flush=True)
    rows.append(row)
    del model
print(json.dumps({"task": task, "metric": base.metric, "rows": rows}))

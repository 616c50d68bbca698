"""Word error rate of Whisper base (models/whisper-base, from `make whisper`) under slimformer recipes, on a
synthesized speech set (benchmarks/speech_set.py): one JSON line per recipe with its WER, the paired bootstrap 95%
interval of its difference to fp32 (over utterances, in points), its size, params and the compression time. Quality
only: no timing (the lead measures speed on a quiet machine). Calibration: CALIB, a TSV disjoint from the WER set.

    python benchmarks/whisper_quality.py [--save DIR] MODEL wer:WER_TSV CALIB_TSV [RECIPE ...]

--save DIR: each compressed model is saved to DIR/<recipe as a folder name> (for the lead to time later).
"""

import json
import re
import sys
import time
from pathlib import Path

import slimformer
from slimformer.measure.bench import n_params, size_mb
from slimformer.measure.tasks import evaluate, result_interval

args = sys.argv[1:]
save_dir = None
if args[:1] in (["--save"], ["--out"]):  # --out as gemma_quality.py spells it
    save_dir, args = Path(args[1]), args[2:]
model_dir, task, calib = args[:3]
recipes = args[3:] or ["int8"]
base = slimformer.load(model_dir)
ref = evaluate(base, task)
print(json.dumps({"recipe": "fp32", "task": task, "wer": round(ref.value, 2), "n": ref.n, "words": ref.extra["words"],
                  "size_mb": round(size_mb(base.net), 1), "params": n_params(base.net)}), flush=True)
for recipe in recipes:
    t0 = time.perf_counter()
    small = slimformer.compress(base, recipe, calib=calib)
    seconds = time.perf_counter() - t0
    r = evaluate(small, task)
    lo, hi = result_interval(ref, r)
    saved = {}
    if save_dir is not None:
        folder = save_dir / re.sub(r"[^A-Za-z0-9_.=-]+", "_", recipe).strip("_")
        saved = {"folder": str(slimformer.save(small, folder, force=True))}
    print(json.dumps({"recipe": recipe, "wer": round(r.value, 2), "delta_95": [round(lo, 2), round(hi, 2)],
                      "size_mb": round(size_mb(small.net), 1), "params": n_params(small.net),
                      "compress_s": round(seconds), "steps": small.manifest["steps"], **saved}), flush=True)

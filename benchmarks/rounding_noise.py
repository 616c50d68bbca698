"""How far int8 weight rounding alone moves STS-B: one model's float OpenVINO export with NNCF's int8 weight modes
(asymmetric = OpenVINO's default, symmetric; embeddings compressed or left float), each scored on STS-B test with its
paired-bootstrap interval against the float export. Differences this small are the floor below which two rows of the
peers table cannot be ranked by quality.

Usage: .venv/bin/python benchmarks/rounding_noise.py [MODEL_DIR|default]   (needs the extra: slimformer[openvino])
"""

import logging
import shutil
import sys
import tempfile
from pathlib import Path

import nncf
import openvino as ov

import slimformer
from slimformer.measure.tasks import delta_interval, evaluate, sts_pairs
from slimformer.runtime.export import export
from slimformer.runtime.served import ExportedModel
from slimformer.runtime.layout import GRAPH_FILES

XML_FILE = GRAPH_FILES["openvino"]
MODES = {
    "int8 asymmetric (default)": {},
    "int8 symmetric": {"mode": nncf.CompressWeightsMode.INT8_SYM},
    "int8 asymmetric, float embeddings": {"ignored_scope": nncf.IgnoredScope(patterns=[".*embeddings.*"])},
    "int8 symmetric, float embeddings": {"mode": nncf.CompressWeightsMode.INT8_SYM,
                                         "ignored_scope": nncf.IgnoredScope(patterns=[".*embeddings.*"])},
}

nncf.set_log_level(logging.ERROR)
arg = sys.argv[1] if len(sys.argv) > 1 else "default"
model = slimformer.load(None if arg == "default" else arg)
gold = [p[2] for p in sts_pairs("stsb")]
with tempfile.TemporaryDirectory() as tmp:
    fp32 = export(model, Path(tmp) / "fp32", int8=False, runtime="openvino")
    ref = evaluate(ExportedModel(fp32))
    print(f"| {arg} exported to OpenVINO | STS-B | delta [95%] |\n|---|---|---|\n| float weights | {ref.value:.2f} | |")
    for name, kw in MODES.items():
        out = Path(tmp) / "variant"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(fp32, out)
        ov.save_model(nncf.compress_weights(ov.Core().read_model(str(fp32 / XML_FILE)), **kw), str(out / XML_FILE),
                      compress_to_fp16=False)
        r = evaluate(ExportedModel(out))
        lo, hi = delta_interval(gold, ref.per_example, r.per_example)
        print(f"| {name} | {r.value:.2f} | {r.value - ref.value:+.2f} [{lo:+.2f}, {hi:+.2f}] |", flush=True)

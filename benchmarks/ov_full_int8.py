"""OpenVINO's two int8 schemes on one compressed classifier: int8 weights only (nncf.compress_weights, what
`export --openvino` writes; activations float) against full int8 (nncf.quantize, activations too, on 300 SST-2 train
sentences; the transformer preset and the default "performance" preset). SST-2 dev accuracy of each, then the
median latency at the three bench shapes, the variants alternated in one loop. Needs the openvino extra.

    python benchmarks/ov_full_int8.py CLASSIFIER_FOLDER   # e.g. the `prune(flops=0.8)+int8` folder of the README
"""

import logging
import sys
import tempfile
import time
from pathlib import Path

import nncf
import numpy as np
import openvino as ov
import torch

import slimformer
from slimformer.data import read_sst2
from slimformer.runtime import export as E

model = slimformer.load(sys.argv[1])
names = E.input_names(model)
calib = [s for s, _ in read_sst2("train")][:300]


def feeds(texts, bs=8):
    for i in range(0, len(texts), bs):
        b = model.tokenize(texts[i:i + bs])
        yield {n: b[n].numpy() for n in names}


core = ov.Core()
nncf.set_log_level(logging.WARNING)
with tempfile.TemporaryDirectory() as tmp:
    raw = Path(tmp) / "raw.onnx"
    E._to_onnx(model, raw)  # the float graph `export` converts
    variants = {"weights": nncf.compress_weights(core.read_model(str(raw))),
                "full (transformer)": nncf.quantize(core.read_model(str(raw)), nncf.Dataset(list(feeds(calib))),
                                                    model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib) // 8),
                "full (performance)": nncf.quantize(core.read_model(str(raw)), nncf.Dataset(list(feeds(calib))),
                                                    subset_size=len(calib) // 8)}
cfg = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
compiled = {k: core.compile_model(v, "CPU", cfg) for k, v in variants.items()}
dev = read_sst2("dev")
for k, c in compiled.items():
    right = 0
    for i in range(0, len(dev), 32):
        chunk = dev[i:i + 32]
        b = model.tokenize([s for s, _ in chunk])
        right += int((c({n: b[n].numpy() for n in names})[0].argmax(1) == np.array([y for _, y in chunk])).sum())
    print(f"{k}: SST-2 dev accuracy {100 * right / len(dev):.2f}", flush=True)
rng = np.random.default_rng(0)
for B, T in ((1, 16), (8, 128), (32, 32)):
    feed = {"input_ids": rng.integers(1000, 20000, (B, T)), "attention_mask": np.ones((B, T), np.int64),
            "token_type_ids": np.zeros((B, T), np.int64)}
    feed = {n: feed[n] for n in names}
    times = {k: [] for k in compiled}
    for c in compiled.values():
        c(feed)
    for _ in range(15):
        for k, c in compiled.items():
            t0 = time.perf_counter()
            c(feed)
            times[k].append(time.perf_counter() - t0)
    ms = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    print(f"{B}x{T}: " + ", ".join(f"{k} {v:.1f} ms ({ms['weights'] / v:.2f}x of weights-only)" for k, v in ms.items()),
          flush=True)

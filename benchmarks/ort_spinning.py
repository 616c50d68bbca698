"""ONNX Runtime with and without busy-waiting between calls, on one export, in the bench harness's alternating blocks:
why OrtSession keeps ORT's default (spinning on).

Usage: .venv/bin/python benchmarks/ort_spinning.py EXPORT_DIR   (an ONNX Runtime export: slimformer export ...)
"""

import sys
from pathlib import Path

import onnxruntime as ort
import torch
from transformers import AutoTokenizer

from slimformer.measure.bench import cpu_info
from slimformer.timing import latency_ms
from slimformer.runtime.served import graph_inputs
from slimformer.runtime.layout import graph_file


def session(path: Path, spinning: bool) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = torch.get_num_threads(), 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


path = graph_file(Path(sys.argv[1]), "onnxruntime")
runners = {name: (lambda s: lambda x: s.run(None, graph_inputs(**x, names=[i.name for i in s.get_inputs()])))(
    session(path, on)) for name, on in (("spinning (ORT default)", True), ("no spinning", False))}
vocab = AutoTokenizer.from_pretrained(sys.argv[1]).vocab_size
lat = latency_ms(runners, dict.fromkeys(runners, vocab), shapes=((1, 16), (8, 128)), runs=100)
m = cpu_info()
print(f"{sys.argv[1]} on {m['model']} ({', '.join(m['flags'])}), {m['threads']} threads; median ms")
for name, v in lat.items():
    print(f"{name:24s} " + "  ".join(f"{k} {ms:7.2f}" for k, ms in v.items()))

"""What users would pick instead, built from the same original model for side-by-side rows."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..model import SlimModel


def torch_ao_dynamic(model: SlimModel) -> SlimModel:
    """The torch one-liner: torch.ao.quantization.quantize_dynamic on every Linear (per-tensor activation scale,
    per-tensor weight scale). Deprecated in torch 2.13 but still what most users reach for first."""
    out = model.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out._modules["encoder"] = torch.ao.quantization.quantize_dynamic(out.encoder, {nn.Linear},
                                                                         dtype=torch.qint8)
    out.manifest["recipe"] = "torch.ao quantize_dynamic"
    return out


def ort_peer(model: SlimModel, folder, int8: bool):
    """The original model as ONNX Runtime serves it: exported, graph-optimized, and (int8) dynamically quantized
    with per-channel weights -- what users pick today instead of a compressed model."""
    from ..runtime.onnx import OrtModel, export

    return OrtModel(export(model, folder, int8=int8, force=True))


class OpenVinoEncoder:
    """An OpenVINO compiled model as a callable encoder: (input_ids, attention_mask) -> (token states, embedding)."""

    def __init__(self, ov_model, path):
        import openvino as ov

        self.path = path  # the saved IR (.xml; weights in the .bin beside it)
        config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = ov.Core().compile_model(ov_model, "CPU", config)

    def __call__(self, input_ids, attention_mask, **unused):
        import numpy as np

        out = self.compiled({"input_ids": np.asarray(input_ids, dtype=np.int64),
                             "attention_mask": np.asarray(attention_mask, dtype=np.int64)})
        return tuple(torch.from_numpy(out[i]) for i in range(2))

    def size_mb(self) -> float:
        return self.path.with_suffix(".bin").stat().st_size / 1e6

    def n_params(self) -> int:
        return 0  # not read back from the IR


def openvino_peer(model: SlimModel, folder):
    """OpenVINO's int8 route for transformers: the plain ONNX export converted by ov.convert_model, weights
    compressed to int8 by nncf.compress_weights (per channel; activations stay fp32). None when not installed."""
    try:
        import nncf
        import openvino as ov
    except ImportError:
        return None
    from ..runtime.onnx import OrtModel, export

    folder = export(model, folder, int8=False, optimize=False, force=True)  # standard ONNX ops only
    ov_model = nncf.compress_weights(ov.convert_model(folder / "model.onnx"))
    ov.save_model(ov_model, folder / "model.xml", compress_to_fp16=False)
    return OrtModel(folder, encoder=OpenVinoEncoder(ov_model, folder / "model.xml"))


class SentenceTransformersPeer:
    """sentence-transformers' own encode() on the original folder, for corpus throughput only."""

    def __init__(self, path: str):
        from sentence_transformers import SentenceTransformer

        self.st = SentenceTransformer(path, device="cpu")

    def encode(self, texts, batch_size: int = 32):
        return self.st.encode(texts, batch_size=batch_size, convert_to_numpy=True)


def peer_models(base: SlimModel, workdir) -> dict:
    """name -> model with encode() and .encoder/.tokenizer, in the order the table shows them."""
    from pathlib import Path

    work = Path(workdir)
    peers = {
        "torch fp32 eager (original)": base,
        "torch.ao dynamic int8": torch_ao_dynamic(base),
        "ORT fp32": ort_peer(base, work / "ort-fp32", int8=False),
        "ORT optimized + int8 per-channel": ort_peer(base, work / "ort-int8", int8=True),
    }
    ov = openvino_peer(base, work / "openvino")
    if ov is not None:  # an optional extra: pip install 'slimformer[peers]'
        peers["OpenVINO int8 weights (nncf)"] = ov
    return peers

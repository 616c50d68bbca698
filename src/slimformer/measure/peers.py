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
    from ..runtime.export import ExportedModel, export

    return ExportedModel(export(model, folder, int8=int8, force=True))


def openvino_peer(model: SlimModel, folder):
    """OpenVINO's int8 route for transformers: the ONNX export converted to IR, weights compressed to int8 by
    nncf.compress_weights (per channel; activations stay float). None when the optional extra is not installed."""
    from ..errors import SlimformerError
    from ..runtime import openvino
    from ..runtime.export import ExportedModel, export

    try:
        openvino.require()
    except SlimformerError:
        return None
    return ExportedModel(export(model, folder, runtime="openvino", force=True))


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
    if ov is not None:  # an optional extra: pip install 'slimformer[openvino]'
        peers["OpenVINO int8 weights (nncf)"] = ov
    return peers

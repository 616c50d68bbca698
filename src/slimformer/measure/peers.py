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

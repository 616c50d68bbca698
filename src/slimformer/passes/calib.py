"""Calibration text as model inputs, and the measurements passes take on it (activation ranges, outputs)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Calibration:
    """Batches of encoder inputs (forward kwargs), padded per batch; `texts` kept for passes that need words."""

    batches: list[dict[str, torch.Tensor]]
    texts: list[str] = field(default_factory=list)

    @classmethod
    def from_texts(cls, tokenizer, texts: list[str], batch_size: int = 32, max_length: int = 128) -> "Calibration":
        texts = sorted(texts, key=len)  # similar lengths per batch: less padding
        batches = [dict(tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                                  return_tensors="pt"))
                   for i in range(0, len(texts), batch_size)]
        return cls(batches, texts)

    def split(self) -> tuple["Calibration", "Calibration"]:
        """(fit, held-out): even and odd batches, so both halves span every sentence length (batches are sorted)."""
        return Calibration(self.batches[0::2], self.texts), Calibration(self.batches[1::2], self.texts)


def main_output(out) -> torch.Tensor:
    """The token states of an encoder's output, whatever its type: (B, T, H)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0]


@torch.inference_mode()
def outputs(model: nn.Module, calib: Calibration) -> list[torch.Tensor]:
    return [main_output(model(**b)) for b in calib.batches]


def output_error(ref: list[torch.Tensor], new: list[torch.Tensor]) -> float:
    """Relative squared error ||new - ref||^2 / ||ref||^2 over all batches."""
    num = sum(float((n - r).pow(2).sum()) for r, n in zip(ref, new))
    den = sum(float(r.pow(2).sum()) for r in ref)
    return num / max(den, 1e-12)


@torch.inference_mode()
def activation_absmax(model: nn.Module, calib: Calibration, names: set[str]) -> dict[str, torch.Tensor]:
    """max |x_j| over all calibration tokens of each input channel j of the named Linears: {fqn: (K,)}."""
    stats: dict[str, torch.Tensor] = {}

    def hook(fqn):
        def f(_module, args):
            a = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(0)
            stats[fqn] = a if fqn not in stats else torch.maximum(stats[fqn], a)
        return f

    handles = [m.register_forward_pre_hook(hook(fqn)) for fqn, m in model.named_modules() if fqn in names]
    try:
        for b in calib.batches:
            model(**b)
    finally:
        for h in handles:
            h.remove()
    return stats

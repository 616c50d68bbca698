"""Calibration text as model inputs, and the measurements passes take on it (activation ranges, outputs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..model import main_output
from ..surgery import hooks


@dataclass
class Calibration:
    """Batches of encoder inputs (forward kwargs), padded per batch."""

    batches: list[dict[str, torch.Tensor]]

    @classmethod
    def from_texts(cls, tokenizer, texts: list[str], batch_size: int = 32, max_length: int = 128) -> "Calibration":
        texts = sorted(texts, key=len)  # similar lengths per batch: less padding
        batches = [dict(tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                                  return_tensors="pt"))
                   for i in range(0, len(texts), batch_size)]
        return cls(batches)

    def split(self) -> tuple["Calibration", "Calibration"]:
        """(fit, held-out): even and odd batches, so both halves span every sentence length (batches are sorted)."""
        return Calibration(self.batches[0::2]), Calibration(self.batches[1::2])


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

    with hooks(pre=[(m, hook(fqn)) for fqn, m in model.named_modules() if fqn in names]):
        for b in calib.batches:
            model(**b)
    return stats


def pooled(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's sentence embeddings for one batch of inputs, through its own pooling: (B, H)."""
    return model.pool(main_output(model.encoder(**batch)), batch["attention_mask"])


@torch.no_grad()
def embedding_distance(model, calib: Calibration, reference: list[torch.Tensor]) -> float:
    """Sum over calibration sentences of 1 - cos(model's pooled embedding, the reference's): how far a changed
    model has moved. `reference`: one (B, H) tensor per batch, e.g. [pooled(original, b) for b in calib.batches]."""
    return sum(float((1 - torch.cosine_similarity(pooled(model, b), r)).sum())
               for b, r in zip(calib.batches, reference))


def squared_gradients(model, calib: Calibration, tensors: list[torch.Tensor], seed: int = 0,
                      progress=None) -> list[torch.Tensor]:
    """Label-free empirical Fisher: the sum over calibration sentences of the squared gradient of r . pooled(s)
    with respect to each tensor, r a fresh Gaussian vector per sentence, so that in expectation it is
    sum_d (d pooled_d / d t)^2, the Fisher of the embedding under a Gaussian model. One backward per sentence
    (cut to its own length): a Fisher is a sum of squares, which a batched gradient would mix. Same shapes as
    `tensors` (each must require grad)."""
    sums = [torch.zeros_like(t) for t in tensors]
    g = torch.Generator().manual_seed(seed)
    model.encoder.eval()
    with torch.enable_grad():
        for batch in calib.batches:
            for i in range(batch["input_ids"].shape[0]):
                n = int(batch["attention_mask"][i].sum())
                one = {k: v[i : i + 1, :n] for k, v in batch.items()}
                out = pooled(model, one)  # (1, H)
                grads = torch.autograd.grad((out * torch.randn(out.shape, generator=g)).sum(), tensors,
                                            allow_unused=True)
                for acc, gr in zip(sums, grads):
                    if gr is not None:  # a mask of a layer that has no such units
                        acc += gr.detach().pow(2)
            if progress:
                progress()
    return sums

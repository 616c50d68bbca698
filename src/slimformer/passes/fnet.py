"""FNet (Lee-Thorp et al. 2022, "FNet: Mixing Tokens with Fourier Transforms"): self-attention replaced by the real
part of a 2-D DFT, over the hidden dimension and then over the sequence. No weights: q/k/v (and o, which FNet does
not have) are removed, so the model really shrinks; `distill` then recovers quality.

Padding: a DFT over the sequence depends on the sequence length, so zero-padding a sentence would change its
mixing. Each sentence is mixed at its own length: the sequence DFT is a batched matmul with per-sentence DFT matrices
that are zero on padding (padded positions come out as zeros); so a sentence embeds the same alone and in a batch.
"""

from __future__ import annotations

import torch
from torch import nn

from ..arch import Adapter, blocks
from ..configs import FNet
from ..errors import BudgetError, StepNotApplicableError, UnsupportedArchitectureError
from ..surgery import set_module
from ..vision import not_for_images
from .calib import Calibration, output_distance, sentence_output


def token_validity(mask, batch: int, seq: int) -> torch.Tensor | None:
    """(B, T) bool of real tokens from whichever attention mask the architecture passes its attention module:
    None, (B, T) 1/0, or (B, 1, Tq, T) bool (True = attend) or additive float (0 = attend)."""
    if mask is None:
        return None
    if mask.dim() == 4:
        mask = mask[:, 0, 0, :]  # the first query ([CLS], always real) sees exactly the real keys
    if mask.dtype == torch.bool:
        return mask.expand(batch, seq)
    if mask.dim() == 2 and mask.min() >= 0 and mask.max() <= 1:
        return mask.bool()
    return (mask == 0).expand(batch, seq)


def dft_matrices(n: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of 2 pi p_j p_k / n over positions p (..., T) of length-n signals (n (..., 1)), zero wherever j or k
    is not valid: (..., T, T). The product is reduced mod n in integers first, so the angle stays exact."""
    prod = (pos[..., :, None] * pos[..., None, :]) % n[..., None]  # (..., T, T)
    angle = prod.double() * (2 * torch.pi / n[..., None].double())
    both = (valid[..., :, None] & valid[..., None, :]).double()
    return (angle.cos() * both).to(dtype), (angle.sin() * both).to(dtype)


def sequence_dft(valid: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sentence DFT matrices over the real tokens only: valid (B, T) -> cos, sin (B, T, T), with
    cos[b, j, k] = cos(2 pi p_j p_k / n_b) for real tokens j, k (p = position among the sentence's real tokens,
    n_b = its length) and 0 wherever j or k is padding. Works for right, left or holey padding alike."""
    return dft_matrices(valid.sum(1, keepdim=True), valid.long().cumsum(1) - 1, valid, dtype)


def hidden_dft(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of the DFT over the last dimension, (B, T, H) each. torch.fft does not export to
    ONNX: while exporting, the same DFT is two matmuls with the (H, H) cos / sin matrices."""
    if not torch.onnx.is_in_onnx_export():
        y = torch.fft.fft(x, dim=-1)
        return y.real, y.imag
    h = int(x.shape[-1])  # a constant in the graph (the model's width), so ORT folds the matrices into weights
    k = torch.arange(h)
    cos, sin = dft_matrices(torch.full((1,), h), k, torch.ones(h, dtype=torch.bool), x.dtype)
    return x @ cos, -(x @ sin)  # F = C - i S, symmetric


def fourier_mix(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Re(DFT_seq(DFT_hidden(x))) per sentence at its own length: x (B, T, H), valid (B, T) -> (B, T, H).

    With padding, the sequence DFT is a batched matmul with each sentence's own DFT matrix (zero on padding):
    Re(F_n Y) = C_n Re(Y) + S_n Im(Y) for F_n = C_n - i S_n. One bmm for the batch, no loop over lengths."""
    if valid is None:
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if bool(valid.all()) and not torch.onnx.is_in_onnx_export():
        return torch.fft.fft2(x, dim=(-2, -1)).real
    real, imag = hidden_dft(x)
    cos, sin = sequence_dft(valid, x.dtype)
    return cos @ real + sin @ imag


class FourierMixer(nn.Module):
    """Takes the place of an attention module: same call, (mixed, None) back; nothing to learn."""

    has_heads = False  # read by structure.has_attention: no heads to prune or mask

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size

    def spec(self) -> dict:
        return {"hidden_size": self.hidden_size}

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        del args  # position bias, cache, head mask: Fourier mixing has no heads and no positions to bias
        mask = kwargs.get("attention_mask", attention_mask)
        B, T, _ = hidden_states.shape
        return fourier_mix(hidden_states, token_validity(mask, B, T)), None


def to_fnet(encoder: nn.Module, adapter: Adapter, layer_ids: list[int]) -> None:
    """Swap the attention of the given blocks for FourierMixer; where o lived outside the attention module it
    becomes the identity (FNet adds the mixing output straight to the residual)."""
    if adapter.name == "torch":
        raise UnsupportedArchitectureError("fnet: plain torch encoders are not supported (Hugging Face models are)")
    all_blocks = blocks(encoder, adapter)
    hidden = all_blocks[0].get_submodule(adapter.ffn_in).in_features
    for i in layer_ids:
        set_module(all_blocks[i], adapter.attn, FourierMixer(hidden))
        if not adapter.o_in_attn:
            set_module(all_blocks[i], adapter.o, nn.Identity())
    cfg = getattr(encoder, "config", None)
    if cfg is not None:
        cfg.slimformer_fnet_layers = sorted(set(getattr(cfg, "slimformer_fnet_layers", None) or []) | set(layer_ids))


@torch.no_grad()
def rank_layers(model, calib: Calibration) -> list[int]:
    """Layers ordered by how little Fourier mixing in place of their attention (alone, untrained) moves the
    model's output (pooled embeddings, or a classifier's class distributions) on calibration text: the least
    disturbed first."""
    enc, adapter = model.encoder, model.adapter
    ref = [sentence_output(model, b) for b in calib.batches]
    damage = {}
    for i in range(len(blocks(enc, adapter))):
        trial = model.clone()
        to_fnet(trial.encoder, adapter, [i])
        damage[i] = output_distance(trial, calib, ref)
    return sorted(damage, key=damage.get)


def fnet(model, cfg: FNet, ctx) -> dict:
    not_for_images(model, "fnet", "Fourier mixing replaces attention over a text's token sequence; the patch "
                   "grid of an image is two-dimensional, which a 1-D DFT over patches ignores")
    if getattr(model, "head", None) == "causal-lm":  # a decoder's token t must not see tokens after t
        raise StepNotApplicableError("fnet: Fourier mixing reads every position, later ones too; a causal LM "
                                     "cannot use it")
    enc, adapter = model.encoder, model.adapter
    n_layers = len(blocks(enc, adapter))
    n = n_layers if cfg.layers == "all" else cfg.layers
    if n > n_layers:
        raise BudgetError(f"fnet: cannot mix {n} layers: the model has {n_layers}")
    chosen = list(range(n_layers)) if n == n_layers else sorted(rank_layers(model, ctx.calib.split()[1])[:n])
    to_fnet(enc, adapter, chosen)
    return {"fnet_layers": chosen}


def restore_fnet(encoder: nn.Module, adapter: Adapter) -> None:
    """At load: the Identity that replaced o is not a module the manifest can name; put it back from the config."""
    ids = getattr(getattr(encoder, "config", None), "slimformer_fnet_layers", None)
    if ids:
        to_fnet(encoder, adapter, ids)

"""Export of any compressed model to a serving runtime (ONNX Runtime or OpenVINO), and the exported model that serves
it with the same encode() as SlimModel.

Quantized torch modules do not export, so the model is first turned back into plain float modules (int8 weights
times their scales: the same grid ORT's per-channel quantization finds again) and exported to float ONNX with eager
attention (so ORT's transformer optimizer can fuse it). The runtime takes it from there: ORT optimizes the graph and
quantizes it dynamically to int8 with per-channel weights (onnx.py); OpenVINO converts it to IR with int8 weights
(openvino.py). The graph takes input_ids, attention_mask (and token_type_ids where the tokenizer makes them) and
returns the token states and the pooled (and, if the model does, normalized) sentence embedding; the folder around it
is laid out as sentence-transformers and optimum load it (layout.py).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..arch import CAUSAL_LM
from ..errors import SlimformerError
from ..folder import FORMAT, MANIFEST, atomic_folder, manifest_fields
from ..model import SlimModel
from ..passes.quantize import Int8Linear, QuantizedEmbedding
from ..surgery import replace_modules
from ..speech import SPEECH
from ..vision import is_image, random_pixels
from . import causal, layout, onnx, whisper

RUNTIMES = ("onnxruntime", "openvino")


class SmoothedLinear(nn.Module):
    """An Int8Linear's float form with its SmoothQuant scale kept as a Mul: x (..., K) -> lin(x * inv_smooth), lin
    holding W diag(s). ORT's dynamic int8 then quantizes the smoothed activations, whose outlier channels were moved
    into the weights, with its one scale per tensor."""

    def __init__(self, lin: nn.Linear, inv_smooth: torch.Tensor):
        super().__init__()
        self.in_features, self.out_features, self.lin = lin.in_features, lin.out_features, lin
        self.register_buffer("inv_smooth", inv_smooth.detach().clone())  # (K,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x * self.inv_smooth)


# Where an export keeps SmoothQuant's scales as Muls (by modality: the Linears whose path holds this). Measured
# with ORT's int8 (one activation scale per tensor), WER of Whisper base on 100 synthesized sentences, torch's own
# int8 in brackets: `int8` folded 18.83, kept everywhere 62.65, kept in the decoder 16.51 (15.43);
# `prune(flops=0.7)+distill+int8` 33.49, 13.12, 14.35 (13.58). all-MiniLM-L6-v2 STS-B: 81.99 folded, 81.47 kept.
KEEP_SMOOTH = {SPEECH: "decoder."}


@torch.no_grad()
def _dequantize_linear(q: Int8Linear, keep_smooth: bool = False) -> nn.Module:
    """Int8Linear -> the float Linear it computes: W = q * s_w / s (the SmoothQuant scale folded back), or with
    keep_smooth a SmoothedLinear (where that is better for ORT's int8: KEEP_SMOOTH)."""
    lin = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
    w = q.weight.float() * q.weight_scale[:, None]  # (N, K): W diag(s)
    smooth = q.inv_smooth is not None and keep_smooth
    if q.inv_smooth is not None and not smooth:
        w = w * q.inv_smooth[None, :]
    lin.weight.copy_(w)
    if q.bias is not None:
        lin.bias.copy_(q.bias)
    return SmoothedLinear(lin, q.inv_smooth) if smooth else lin


@torch.no_grad()
def _dequantize_embedding(q: QuantizedEmbedding) -> nn.Embedding:
    emb = nn.Embedding(q.num_embeddings, q.embedding_dim, padding_idx=q.padding_idx)
    emb.weight.copy_(q(torch.arange(q.num_embeddings)))
    return emb


class BiasOnly(nn.Module):
    """What a Linear with no inputs left computes (a layer whose heads were all pruned: its attention output
    projection is (N, 0)): its bias at every position. x (..., 0) -> (..., N). Exported as Expand of a constant,
    where a (N, 0) weight became a scalar MatMul operand that OpenVINO refuses."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.register_buffer("bias", lin.bias.detach().clone() if lin.bias is not None
                             else torch.zeros(lin.out_features))  # (N,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(*x.shape[:-1], self.bias.shape[0])


def float_copy(model: SlimModel, keep_smooth: str | None = None) -> SlimModel:
    """A copy of `model` made only of float torch modules (quantized ones dequantized), ready for export;
    the Int8Linears whose path holds `keep_smooth` keep their SmoothQuant scales as Muls (SmoothedLinear)."""
    out = model.clone()
    replace_modules(out.net, lambda m, _: isinstance(m, Int8Linear),
                    lambda m, path: _dequantize_linear(m, keep_smooth is not None and keep_smooth in path))
    replace_modules(out.net, lambda m, _: isinstance(m, QuantizedEmbedding),
                    lambda m, _: _dequantize_embedding(m))
    replace_modules(out.net, lambda m, _: isinstance(m, nn.Linear) and m.in_features == 0, lambda m, _: BiasOnly(m))
    return out


def float_linears(model: SlimModel) -> list[str]:
    """Linears that the recipe's int8 step kept in fp32 (`int8(fp32=N)`) or gave float activations (`float_act`: ORT's
    dynamic int8 would quantize them, so they stay float there): none when the model was never quantized."""
    mods = dict(model.net.named_modules())  # the head's Linears included
    if not any(isinstance(m, Int8Linear) for m in mods.values()):
        return []
    return [n for n, m in mods.items() if type(m) is nn.Linear or (isinstance(m, Int8Linear) and m.float_act)]


# The graph's outputs and their dynamic axes, in the order the sessions return them. last_hidden_state is what
# sentence-transformers and optimum pool (they feed and read tensors by name); a classifier's graph returns its
# `logits` instead, as optimum's ORTModelFor{Sequence,Token}Classification read them.
GRAPH_OUTPUTS = {"last_hidden_state": {0: "batch_size", 1: "sequence_length"}, "sentence_embedding": {0: "batch_size"}}
HEAD_OUTPUTS = {"sequence-classification": {"logits": {0: "batch_size"}},
                "token-classification": {"logits": {0: "batch_size", 1: "sequence_length"}},
                "image-classification": {"logits": {0: "batch_size"}}}


def graph_outputs(model) -> dict:
    """{output name: dynamic axes} of the graph `model` exports to."""
    return HEAD_OUTPUTS[model.head] if getattr(model, "head", None) else GRAPH_OUTPUTS
GRAPH_INPUTS = ("input_ids", "attention_mask")  # and token_type_ids where the tokenizer makes them


def input_names(model: SlimModel) -> list[str]:
    """input_ids, attention_mask, and token_type_ids when the tokenizer produces them and the encoder takes them
    (BERT: sentence-transformers passes the tokenizer's output, optimum feeds what the graph names); an image
    model's graph takes pixel_values (B, C, H, W) alone, as optimum's image models feed it."""
    if is_image(model):
        return ["pixel_values"]
    takes = inspect.signature(model.encoder.forward).parameters
    extra = [n for n in ("token_type_ids",) if n in model.tokenizer.model_input_names and n in takes]
    return [*GRAPH_INPUTS, *extra]


class _OnnxGraph(nn.Module):
    """What the ONNX graph computes: (input_ids, attention_mask[, token_type_ids]) -> (token states (B, T, H),
    sentence embedding (B, H)), or a classifier's (logits (B, C) or (B, T, C),); the inputs in the order of
    `names`."""

    def __init__(self, model: SlimModel, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs):
        feed = dict(zip(self.names, inputs))  # each (B, T), or pixel_values (B, C, H, W)
        if self.model.head is not None:
            return (self.model.net(**feed).logits,)
        states = self.model.encoder(**feed).last_hidden_state  # (B, T, H)
        return states, self.model.pool(states, feed.get("attention_mask"))  # (B, H); an image: no mask


def _eager(model: SlimModel) -> SlimModel:
    """sdpa exports to ONNX that ORT cannot fuse; eager attention exports to the pattern its fusions know."""
    cfg = getattr(model.encoder, "config", None)
    if cfg is not None and hasattr(cfg, "_attn_implementation"):
        cfg._attn_implementation = "eager"
    return model


def _to_onnx(model: SlimModel, path: Path) -> None:
    """The float model as standard-op ONNX, batch and sequence length dynamic."""
    names = input_names(model)
    graph = _OnnxGraph(_eager(float_copy(model)), names).eval()  # eval: a fresh wrapper starts in train mode
    if is_image(model):  # the image size is fixed by the position embeddings: only the batch is dynamic
        batch, axes = {"pixel_values": random_pixels(model.config, 2)}, {0: "batch_size"}
    else:
        batch, axes = model.tokenize(["an example sentence for tracing", "another"]), {0: "batch_size",
                                                                                       1: "sequence_length"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, tuple(batch[n] for n in names), str(path), input_names=names,
                          output_names=list(graph_outputs(model)),
                          dynamic_axes={**dict.fromkeys(names, axes),
                                        **graph_outputs(model)},
                          opset_version=17, dynamo=False)


def _raw_graphs(model: SlimModel, folder: Path, runtime: str) -> tuple[dict[str, Path], dict]:
    """The float ONNX graphs of `model` in `folder`, {layout name: path}, and what the manifest must add: a causal
    LM's graph takes and returns its KV cache (causal.py); Whisper has an encoder and a decoder graph (whisper.py)."""
    if getattr(model, "modality", "text") == SPEECH:
        shapes = whisper.to_onnx(float_copy(model, KEEP_SMOOTH[SPEECH]), folder)
        return {n: folder / f"{n}.onnx" for n in whisper.GRAPHS}, {"kv_cache": shapes}
    raw = folder / "raw.onnx"
    if getattr(model, "head", None) == CAUSAL_LM:
        return {"model": raw}, {"kv_cache": causal.to_onnx(float_copy(model), raw, runtime)}
    _to_onnx(model, raw)
    return {"model": raw}, {}


def _ort(raw: Path, dst: Path, model: SlimModel, int8: bool, optimize: bool) -> list[str]:
    """raw float ONNX -> dst, ORT-optimized and int8 as asked; the steps taken, for the manifest."""
    from ..passes.structure import heads_per_layer

    current, steps = raw, []
    if optimize:
        hidden = getattr(model.encoder.get_input_embeddings(), "embedding_dim", 0)
        current = onnx.optimize(current, raw.with_name("optimized.onnx"),
                                heads_per_layer(model.encoder, model.adapter), hidden)
        steps.append("ort-optimize")
    if int8:
        current = onnx.quantize(current, raw.with_name("int8.onnx"), float_linears(model))
        steps.append("ort-int8-per-channel")
    current.rename(dst)
    return steps


def export(model: SlimModel, out_dir: str | os.PathLike, int8: bool = True, optimize: bool = True,
           force: bool = False, runtime: str = "onnxruntime") -> Path:
    """Write out_dir as sentence-transformers and optimum load it (runtime/layout.py): onnx/model.onnx (ORT) or
    openvino/openvino_model.xml + .bin (OpenVINO), config.json, modules.json and its modules, the tokenizer files
    and slimformer.json; atomically. int8: ORT's per-channel dynamic quantization, or OpenVINO's int8 weights.
    A causal LM's graph takes and returns its KV cache (causal.py); Whisper gets two graphs (whisper.py)."""
    if runtime not in RUNTIMES:
        raise SlimformerError(f"export: runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "openvino":
        from . import openvino

        openvino.require()
    out = Path(out_dir).resolve()
    with atomic_folder(out, force, source=model.manifest.get("source")) as tmp:
        (tmp / "raw").mkdir()
        raws, extra = _raw_graphs(model, tmp / "raw", runtime)
        for name, raw in raws.items():
            dst = tmp / layout.graph_name(runtime, name)
            dst.parent.mkdir(exist_ok=True)
            if runtime == "openvino":  # OpenVINO reads standard ONNX ops, not ORT's fused ones
                openvino.convert(raw, dst, int8)
                steps = ["openvino-int8-weights" if int8 else "openvino-fp32"]
            else:  # ORT's transformer fusions are an encoder's (BERT's): not for graphs with a KV cache
                steps = _ort(raw, dst, model, int8, optimize and "kv_cache" not in extra)
        shutil.rmtree(tmp / "raw")  # the intermediate graphs
        manifest = {**manifest_fields(model), "head": model.head, "runtime": runtime, "export": steps, **extra}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        layout.write(tmp, model)
    return out

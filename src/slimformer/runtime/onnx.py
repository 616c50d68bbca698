"""ONNX Runtime export of any compressed model, and a backend that serves it with the same encode() as SlimModel.

Quantized torch modules do not export, so the model is first turned back into plain float modules (int8 weights
times their scales: the same grid ORT's per-channel quantization finds again), exported with eager attention (so
ORT's transformer optimizer can fuse it), optionally graph-optimized, then dynamically quantized to int8 in ONNX
with per-channel weights. The graph takes input_ids and attention_mask and returns the token states and the pooled
(and, if the model does, normalized) sentence embedding.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import OutputExistsError, SlimformerError
from ..model import SlimModel
from ..passes.quantize import Int8Linear, QuantizedEmbedding
from ..surgery import replace_modules

ONNX_FILE = "model.onnx"
MANIFEST = "slimformer.json"


@torch.no_grad()
def _dequantize_linear(q: Int8Linear) -> nn.Linear:
    """Int8Linear -> the float Linear it computes: W = q * s_w / s (the SmoothQuant scale folded back). Keeping
    the smoothing as an explicit Mul for ORT's int8 measured worse (STS-B 81.47 vs 81.99 folded)."""
    lin = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
    w = q.weight.float() * q.weight_scale[:, None]  # (N, K): W diag(s)
    if q.inv_smooth is not None:
        w = w * q.inv_smooth[None, :]
    lin.weight.copy_(w)
    if q.bias is not None:
        lin.bias.copy_(q.bias)
    return lin


@torch.no_grad()
def _dequantize_embedding(q: QuantizedEmbedding) -> nn.Embedding:
    emb = nn.Embedding(q.num_embeddings, q.embedding_dim, padding_idx=q.padding_idx)
    emb.weight.copy_(q(torch.arange(q.num_embeddings)))
    return emb


def float_copy(model: SlimModel) -> SlimModel:
    """A copy of `model` made only of float torch modules (quantized ones dequantized), ready for export."""
    out = model.clone()
    replace_modules(out.encoder, lambda m, _: isinstance(m, Int8Linear), lambda m, _: _dequantize_linear(m))
    replace_modules(out.encoder, lambda m, _: isinstance(m, QuantizedEmbedding),
                    lambda m, _: _dequantize_embedding(m))
    return out


class _Graph(nn.Module):
    """What the ONNX graph computes: (input_ids, attention_mask) -> (token states, sentence embedding)."""

    def __init__(self, model: SlimModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model.encoder(input_ids=input_ids, attention_mask=attention_mask)
        states = out.last_hidden_state  # (B, T, H)
        return states, self.model.pool(states, attention_mask)  # (B, H)


RUNTIMES = ("onnxruntime", "openvino")


def export(model: SlimModel, out_dir: str | os.PathLike, int8: bool = True, optimize: bool = True,
           force: bool = False, runtime: str = "onnxruntime") -> Path:
    """Write out_dir/{model.onnx (ORT) or model.xml + model.bin (OpenVINO), slimformer.json, tokenizer files},
    atomically. int8: ORT's per-channel dynamic quantization, or OpenVINO's int8 weights."""
    if runtime not in RUNTIMES:
        raise SlimformerError(f"export: runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "openvino":
        from . import openvino

        openvino.require()
    out = Path(out_dir).resolve()
    if out.exists() and not force:
        raise OutputExistsError(f"output exists: {out} (use --force to overwrite)")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        graph = _Graph(_eager(float_copy(model))).eval()  # eval: a fresh wrapper starts in train mode
        batch = model.tokenize(["an example sentence for tracing", "another"])
        raw = tmp / "raw.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (batch["input_ids"], batch["attention_mask"]), str(raw),
                              input_names=["input_ids", "attention_mask"],
                              output_names=["last_hidden_state", "sentence_embedding"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                            "last_hidden_state": {0: "batch", 1: "seq"},
                                            "sentence_embedding": {0: "batch"}},
                              opset_version=17, dynamo=False)
        steps = []
        if runtime == "openvino":  # OpenVINO reads standard ONNX ops, not ORT's fused ones
            openvino.convert(raw, tmp / openvino.XML_FILE, int8)
            steps.append("openvino-int8-weights" if int8 else "openvino-fp32")
        else:
            current = raw
            if optimize:
                current = _optimize(current, tmp / "optimized.onnx", model)
                steps.append("ort-optimize")
            if int8:
                current = _quantize(current, tmp / "int8.onnx", float_linears(model))
                steps.append("ort-int8-per-channel")
            current.rename(tmp / ONNX_FILE)
        for f in tmp.glob("*.onnx"):
            if f.name != ONNX_FILE:
                f.unlink()
        manifest = {"format": 1, "runtime": runtime, "source": model.manifest.get("source"),
                    "recipe": model.manifest.get("recipe", ""), "steps": model.manifest.get("steps", []),
                    "export": steps, "pooling": {"mode": model.pooling, "normalize": model.normalize,
                                                 "max_seq_length": model.max_seq_length}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        model.tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _eager(model: SlimModel) -> SlimModel:
    """sdpa exports to ONNX that ORT cannot fuse; eager attention exports to the pattern its fusions know."""
    cfg = getattr(model.encoder, "config", None)
    if cfg is not None and hasattr(cfg, "_attn_implementation"):
        cfg._attn_implementation = "eager"
    return model


def _explicit_heads(path: Path) -> None:
    """Hugging Face reshapes q/k/v with view(B, T, -1, head_size); ORT's Attention fusion reads the head count from
    that shape and gives up on -1 unless one count is given for the whole graph. A narrowed model keeps a different
    number of heads per layer, so write each layer's count (its q/k/v MatMul width / head_size) into the shape."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnxruntime.transformers.onnx_model import OnnxModel

    graph = OnnxModel(onnx.load(str(path)))
    for node in graph.model.graph.node:
        concat, src = graph.get_parent(node, 1), graph.get_parent(node, 0)
        if node.op_type != "Reshape" or concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            continue
        matmul = src if src is not None and src.op_type == "MatMul" else next(
            (p for p in graph.get_parents(src) if p.op_type == "MatMul"), None) if src is not None else None
        weight = graph.get_initializer(matmul.input[1]) if matmul is not None else None  # (in, heads * head_size)
        heads, head_size = graph.get_constant_value(concat.input[2]), graph.get_constant_value(concat.input[3])
        if weight is None or heads is None or head_size is None or int(np.ravel(heads)[0]) != -1:
            continue
        name = f"{concat.name}/heads"
        count = weight.dims[1] // int(np.ravel(head_size)[0])
        graph.add_initializer(numpy_helper.from_array(np.array([count], dtype=np.int64), name))
        concat.input[2] = name
    onnx.save(graph.model, str(path))


def _optimize(src: Path, dst: Path, model: SlimModel) -> Path:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from ..passes.structure import heads_per_layer

    heads = heads_per_layer(model.encoder, model.adapter)
    uniform = len(set(heads)) == 1 and heads[0] > 0
    if not uniform:
        _explicit_heads(src)  # then ORT's Attention fusion detects each layer's head count on its own
    hidden = model.encoder.get_input_embeddings()
    hidden = getattr(hidden, "embedding_dim", 0)
    logging.disable(logging.WARNING)  # ORT's fusion logs a warning per narrowed layer (its width != hidden)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = optimize_model(str(src), model_type="bert", num_heads=heads[0] if uniform else 0,
                                 hidden_size=hidden if uniform else 0, optimization_options=FusionOptions("bert"))
    finally:
        logging.disable(logging.NOTSET)
    opt.save_model_to_file(str(dst))
    return dst


def float_linears(model: SlimModel) -> list[str]:
    """Linears that the recipe's int8 step kept in fp32 (`int8(fp32=N)`): none when the model was never quantized."""
    mods = dict(model.encoder.named_modules())
    if not any(isinstance(m, Int8Linear) for m in mods.values()):
        return []
    return [n for n, m in mods.items() if type(m) is nn.Linear]


def _quantize(src: Path, dst: Path, keep_fp32: list[str]) -> Path:
    """ORT dynamic int8, per channel, except the MatMuls of the Linears the recipe kept in fp32 (q/k/v inside a fused
    Attention node have no MatMul of their own left: only o and the FFN Linears can stay fp32 after fusion)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # torch.onnx names a node by its module path, list indices joined with a dot: /encoder/layer.0/output/dense/MatMul
    paths = [re.sub(r"/(\d+)(?=/)", r".\1", f"/{name.replace('.', '/')}/") for name in keep_fp32]
    exclude = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node
               if n.op_type == "MatMul" and any(p in n.name for p in paths)]
    logging.disable(logging.WARNING)  # "failed to infer data type" for computed tensors (FNet's DFT): harmless
    try:
        # DefaultTensorType: without it ORT cannot type some weights of an exported BERT (FIELD-NOTES)
        quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        logging.disable(logging.NOTSET)
    return dst


def graph_inputs(input_ids, attention_mask) -> dict[str, np.ndarray]:
    """The exported graph's feed, (B, T) int64 each, from tensors or arrays."""
    return {"input_ids": np.asarray(input_ids, dtype=np.int64),
            "attention_mask": np.asarray(attention_mask, dtype=np.int64)}


class OrtEncoder:
    """The session as a callable encoder: enc(input_ids=..., attention_mask=...) -> (token states, embedding)."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        # ORT's default busy-waiting between calls stays on: without it, MiniLM int8 took 1.30 instead of 0.68 ms at
        # 1x16 here (benchmarks/ort_spinning.py). measure.bench pauses between runtimes so spinning slows no neighbour.
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.path = path

    def __call__(self, input_ids, attention_mask, **unused):
        del unused  # token_type_ids: the exported graph uses its default
        states, emb = self.session.run(None, graph_inputs(input_ids, attention_mask))
        return torch.from_numpy(states), torch.from_numpy(emb)

    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6

    def n_params(self) -> int:
        import onnx

        return sum(int(np.prod(t.dims)) for t in onnx.load(str(self.path), load_external_data=False).graph.initializer)


class OrtModel:
    """An exported model (ONNX Runtime or OpenVINO, as its manifest says) with SlimModel's encode(); pooling happens
    inside the graph."""

    def __init__(self, folder: Path):
        from transformers import AutoTokenizer

        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("runtime") not in RUNTIMES:
            raise SlimformerError(f"{folder}: not an ONNX Runtime or OpenVINO export")
        self.manifest = manifest
        if manifest["runtime"] == "openvino":
            from .openvino import XML_FILE, OpenVinoEncoder

            self.encoder = OpenVinoEncoder(folder / XML_FILE)
        else:
            self.encoder = OrtEncoder(folder / ONNX_FILE)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        p = manifest["pooling"]
        self.pooling, self.normalize, self.max_seq_length = p["mode"], p["normalize"], p["max_seq_length"]

    def tokenize(self, texts):
        return dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_length,
                                   return_tensors="np"))

    def encode(self, sentences, batch_size: int = 32, show_progress_bar: bool = False, convert_to_numpy=True,
               convert_to_tensor=False, normalize_embeddings=None):
        del show_progress_bar
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = [self.encoder(**self.tokenize([texts[j] for j in order[i : i + batch_size]]))[1]
               for i in range(0, len(texts), batch_size)]
        emb = torch.cat(out)[torch.from_numpy(np.argsort(order))] if out else torch.empty(0, 0)
        if normalize_embeddings:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        emb = emb[0] if single else emb
        return emb if (convert_to_tensor or not convert_to_numpy) else emb.numpy()

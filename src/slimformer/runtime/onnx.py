"""ONNX Runtime: its transformer graph optimizer, its per-channel dynamic int8 quantization, and a session that
serves the result. ONNX files in, ONNX files out; the export driver that calls these is runtime/export.py."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import torch


def _explicit_heads(path: Path) -> None:
    """Hugging Face reshapes q/k/v with view(B, T, -1, head_size); ORT's Attention fusion reads the head count from
    that shape and gives up on -1 unless one count is given for the whole graph. A narrowed model keeps a different
    number of heads per layer, so write each layer's count (its q/k/v MatMul width / head_size) into the shape."""
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


def optimize(src: Path, dst: Path, heads: list[int], hidden: int) -> Path:
    """ORT's BERT fusions (Attention, LayerNorm, Gelu...). heads: each layer's head count; hidden: the model width."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    uniform = len(set(heads)) == 1 and heads[0] > 0
    if not uniform:
        _explicit_heads(src)  # then ORT's Attention fusion detects each layer's head count on its own
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


def quantize(src: Path, dst: Path, keep_fp32: list[str]) -> Path:
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
        # DefaultTensorType: without it ORT cannot type some weights of an exported BERT
        quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        logging.disable(logging.NOTSET)
    return dst


class OrtSession:
    """An ONNX file in ONNX Runtime on the CPU: run(feed) -> [token states (B, T, H), embedding (B, H)] arrays."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: a causal LM's optional logits_to_keep draws a warning per session
        # ORT's default busy-waiting between calls stays on: without it, MiniLM int8 took 1.30 instead of 0.68 ms at
        # 1x16 here (benchmarks/ort_spinning.py). measure.bench pauses between runtimes so spinning slows no neighbour.
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.path = path
        self.input_names = [i.name for i in self.session.get_inputs()]  # what run's feed holds
        self.precision = "f32"  # ORT's CPU kernels compute float ops in fp32

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feed)

    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6

    def n_params(self) -> int:
        import onnx

        return sum(int(np.prod(t.dims)) for t in onnx.load(str(self.path), load_external_data=False).graph.initializer)

"""OpenVINO as a serving runtime: the plain ONNX export converted to OpenVINO IR (openvino_model.xml + .bin), weights
compressed to int8 per output channel by NNCF (activations stay float: fp32, or bf16 where the CPU has AVX512-BF16 or
AMX, OpenVINO's default there; quality stays the float model's within rounding). Optional
extra: pip install 'slimformer[openvino]'. On AVX-512 CPUs its float kernels with int8 weights were the fastest
peer at large batches here (README, peers table)."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import SlimformerError


def require():
    try:
        import nncf
        import openvino as ov
    except ImportError as e:
        raise SlimformerError("OpenVINO export needs the optional extra: pip install 'slimformer[openvino]' "
                              f"({e.name} is missing)") from None
    return ov, nncf


def convert(onnx_path: Path, xml_path: Path, int8: bool) -> None:
    """ONNX (standard ops only: no ORT fusions) -> OpenVINO IR, int8 weights unless int8=False."""
    ov, nncf = require()
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:  # OpConversionFailure and friends: pages of frontend log; the first line names the op
        lines = str(e).splitlines() or [type(e).__name__]
        first = next((ln.strip() for ln in lines if "failed for" in ln), lines[0].strip())
        raise SlimformerError(f"OpenVINO could not convert the graph: {first}") from None
    if int8:
        # NNCF logs statistics and draws a progress bar on stdout, which `bench --json` keeps for its JSON
        nncf.set_log_level(logging.WARNING)
        with contextlib.redirect_stdout(sys.stderr):
            model = nncf.compress_weights(model)  # INT8_ASYM, one scale per output channel
    ov.save_model(model, str(xml_path), compress_to_fp16=False)


class OpenVinoSession:
    """A compiled IR on the CPU: run(feed) -> (token states (B, T, H), embedding (B, H)) arrays."""

    def __init__(self, path: Path, threads: int | None = None):
        ov, _ = require()
        self.path = path
        config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        # what run's feed holds: the graph's own input names. An input can carry several, and any_name may be an
        # internal one (CLIP's pixel_values came out as '/net/embeddings/Cast_output_0'): a name with no '/' is the
        # graph's
        self.input_names = [next((n for n in sorted(i.get_names()) if "/" not in n), i.any_name)
                            for i in self.compiled.inputs]
        # what the float ops compute in: "bf16" on CPUs with AVX512-BF16 or AMX (OpenVINO's default there), else "f32"
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs in its order: (token states, sentence embedding), or a classifier's (logits,)."""
        out = self.compiled(feed)
        return [out[i] for i in range(len(self.compiled.outputs))]

    def size_mb(self) -> float:
        return self.path.with_suffix(".bin").stat().st_size / 1e6

    def n_params(self) -> int:
        return 0  # the IR does not say how many weights it holds without unpacking them

"""`freeze`: serve a compressed model through the fastest runtime that gives the same outputs, chosen by measurement
on this CPU: plain eager PyTorch, or TorchScript (jit.trace, then jit.freeze, which folds the weights into the graph
as constants and drops Python dispatch). The choice goes into the manifest and load re-traces (no pickled graph).

Not a candidate: torch.compile. FIELD-NOTES measured it at 1.19-1.37x for fp32 here, but it needs a C++ toolchain at
run time, compiles for ~24 s per new shape, and has no CPU kernel for our per-token int8 matmul to fuse into.

A trace records one path through Python control flow (Hugging Face builds its attention mask with data-dependent
branches), so the graph is traced on a padded batch and accepted only if it reproduces eager outputs on padded and
unpadded batches of several shapes; otherwise eager is kept.
"""

from __future__ import annotations

import inspect
import math
import warnings

import torch
from torch import nn

from ..model import main_output
from ..timing import latency_ms
from ..vision import not_for_images
from . import int8_kernels

TIME_SHAPES = ((1, 16), (8, 128))  # the latency that matters for serving one query, and a batch
GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # the graph's inputs, in this order
MIN_GAIN = 1.05  # a runtime must be this much faster (geometric mean over TIME_SHAPES) to replace eager
ATOL = 1e-4  # largest |traced - eager| allowed in the token states


class _Graph(nn.Module):
    """(input_ids, attention_mask[, token_type_ids]) -> the net's output tensors in field order: (last_hidden_state
    (B, T, H), pooler_output (B, H)) or (last_hidden_state,) of an encoder, (logits (B, C) or (B, T, C),) of a task
    model. token_type_ids (B, T) is an input where the tokenizer makes it: a cross-encoder's pairs need it."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return tuple(self.net(input_ids=input_ids, attention_mask=attention_mask, **types, return_dict=True).values())


class Frozen:
    """A traced net behind the net's own call: inputs it was traced for go to the graph, anything else (hidden
    states asked for, positional arguments, non-zero token types to a graph traced without them) to the eager net."""

    def __init__(self, net: nn.Module, example: dict[str, torch.Tensor]):
        graph = _Graph(net).eval()  # eval: a fresh wrapper starts in train mode
        self.with_types = "token_type_ids" in example
        inputs = tuple(example[k] for k in GRAPH_INPUTS if k in example)
        # int8 layers are traced with their batch kernel: in a graph, per-op overhead no longer favours fp32 at 16
        # tokens (int8_kernels); eager calls that fall back to the net keep the kernels as chosen
        with torch.no_grad(), warnings.catch_warnings(), int8_kernels.large_only(net):
            warnings.simplefilter("ignore")  # TracerWarnings about Python branches: checked against eager below
            out = net(**example, return_dict=True)
            self.output_type, self.names = type(out), tuple(out.keys())  # e.g. ("logits",) for a task model
            traced = torch.jit.trace(graph, inputs, check_trace=False)
            self.graph = torch.jit.freeze(traced.eval())

    def handles(self, args, kwargs) -> bool:
        if args or not {"input_ids", "attention_mask"} <= kwargs.keys() or not set(kwargs) <= set(GRAPH_INPUTS):
            return False
        types = kwargs.get("token_type_ids")
        return self.with_types or types is None or not bool(types.any())

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        if not self.with_types:  # all zeros (handles() checked): the net's default
            return self.output_type(**dict(zip(self.names, self.graph(input_ids, attention_mask))))
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # what the net assumes when it is not given
        return self.output_type(**dict(zip(self.names, self.graph(input_ids, attention_mask, token_type_ids))))


def takes_types(model) -> bool:
    """Whether the tokenizer makes token_type_ids for this net (BERT does; RoBERTa's and MPNet's tokenizers do not)."""
    names = getattr(model.tokenizer, "model_input_names", ())
    return "token_type_ids" in names and "token_type_ids" in inspect.signature(model.net.forward).parameters


def trace_example(model) -> dict[str, torch.Tensor]:
    """A padded batch of two sentences: the trace must keep the masking path (and the token types, where the
    tokenizer makes them, as a graph input)."""
    batch = model.tokenize(["an example sentence to trace the encoder with padding", "short"])
    keep = GRAPH_INPUTS if takes_types(model) else GRAPH_INPUTS[:2]
    return {k: batch[k] for k in keep if k in batch}


@torch.no_grad()
def max_error(frozen: Frozen, model, batches: list[dict]) -> float:
    """Largest |traced - eager| of the main output (token states, or a head's logits) over the real tokens (or
    the sentences) of each batch."""
    err = 0.0
    for b in batches:
        inputs = {k: b[k] for k in GRAPH_INPUTS if k in b and (k != "token_type_ids" or frozen.with_types)}
        real = b["attention_mask"].bool()  # (B, T)
        ref, got = main_output(model.net(**inputs)), main_output(frozen(**inputs))  # (B, T, D) or (B, C)
        if ref.dim() == 3:
            ref, got = ref[real], got[real]
        err = max(err, float((got - ref).abs().max()))
    return err


def check_batches(model, sentences: list[str]) -> list[dict]:
    """Padded and unpadded batches of 1, 3 and 8 real sentences, so a baked-in shape or branch shows; and 4 pairs
    where the graph takes token types (segment 1 marked)."""
    batches = [model.tokenize(sentences[:1]), model.tokenize(sentences[1:4]), model.tokenize(sentences[4:12])]
    if takes_types(model):
        batches.append(model.tokenize(list(zip(sentences[:4], sentences[4:8]))))
    return batches


def apply(model, runtime: str) -> None:
    """Make `model` (a SlimModel) serve through `runtime` ("eager" or "trace")."""
    model.__dict__["frozen"] = Frozen(model.net, trace_example(model)) if runtime == "trace" else None


def freeze(model, cfg, ctx, runs: int = 10) -> dict:
    not_for_images(model, "freeze", "the traced graph takes input_ids and attention_mask; export an image model "
                   "to ONNX instead")
    sentences = getattr(ctx, "corpus_texts", None) or []
    if len(sentences) < 12:
        sentences = (sentences + ["a sentence to check the traced graph against eager", "another, shorter one"] * 6)
    frozen = Frozen(model.net, trace_example(model))
    with int8_kernels.large_only(model.net):  # the trace's own kernels: a small eager call may run another one
        err = max_error(frozen, model, check_batches(model, sentences))
    vocab = model.encoder.get_input_embeddings().num_embeddings
    runners = {"eager": lambda x: model.net(**x), "trace": lambda x: frozen(**x)}
    lat = latency_ms(runners, {k: vocab for k in runners}, shapes=TIME_SHAPES, runs=runs)
    gain = math.prod(lat["eager"][k] / lat["trace"][k] for k in lat["eager"]) ** (1 / len(TIME_SHAPES))
    runtime = "trace" if err <= ATOL and gain >= MIN_GAIN else "eager"
    model.__dict__["frozen"] = frozen if runtime == "trace" else None
    return {"runtime": runtime, "latency_ms": lat, "max_error": err}

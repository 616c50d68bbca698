"""A causal LM's export with its KV cache (ONNX Runtime or OpenVINO), and the session that runs it as slimformer
calls a torch causal LM: perplexity (logits at every position), prefill and greedy generation (served.py wraps it).

The graph is named as optimum's decoder graphs are (one graph for the prompt and for each new token):
  inputs   input_ids (B, T), attention_mask (B, P+T), position_ids (B, T),
           past_key_values.{i}.key / .value (B, kv_heads_i, P, head_dim_i) per layer i (P = 0 for the prompt),
           logits_to_keep () int64, optional (a default of 0 is stored in the graph: every position)
  outputs  logits (B, T or logits_to_keep, V), present.{i}.key / .value (B, kv_heads_i, P+T, head_dim_i)
logits_to_keep=1 is what generate's first step needs (the last position only): a 262k-token vocabulary's logits at
every prompt position would cost the prompt's forward again. The masks are made in the graph from attention_mask
(padding), the cache index (causal) and, for sliding-window layers, the window; the model runs eager attention on
them. A layer-dropped, narrowed, low-rank or vocabulary-pruned decoder exports the same way (each layer's cache shape
is its own; a pruned vocabulary's logits are -inf at the dropped ids, as in torch)."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

KEEP = "logits_to_keep"
KEPT_FILE = "kept_tokens.json"  # a vocabulary-pruned model's predictable ids: perplexity scores the rest as <unk>


def cache_names(kind: str, layers: int, part: str = "") -> list[str]:
    """optimum's names of a KV cache's tensors, key then value per layer: kind.{i}[.part].key / .value (kind:
    past_key_values or present; part: Whisper's decoder or encoder)."""
    return [f"{kind}.{i}{'.' + part if part else ''}.{kv}" for i in range(layers) for kv in ("key", "value")]


def empty_cache(shapes: list[list[int]], batch: int) -> list[np.ndarray]:
    """A KV cache with no position yet, key then value per layer: (B, heads_i, 0, head_dim_i) each (cache_shapes)."""
    return [np.zeros((batch, h, 0, d), np.float32) for h, d in shapes for _ in range(2)]


def cache_index(t: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cache index of each of T queries (the last T of S positions) (T,), and of each key (S,)."""
    return torch.arange(t) + (s - t), torch.arange(s)


def additive(allowed: torch.Tensor) -> torch.Tensor:
    """A boolean mask as eager attention adds it to its scores: 0 where allowed, the float32 minimum elsewhere."""
    return torch.where(allowed, torch.zeros(()), torch.tensor(torch.finfo(torch.float32).min))


def cache_shapes(net: nn.Module) -> list[list[int]]:
    """[kv_heads, head_dim] of each layer's KV cache, from its k_proj width (a narrowed layer keeps its own)."""
    layers = net.get_decoder().layers
    return [[a.k_proj.out_features // a.head_dim, a.head_dim] for a in (layer.self_attn for layer in layers)]


class CausalGraph(nn.Module):
    """What the graph computes (module docstring); `net` is a float Hugging Face causal LM with eager attention."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        cfg = net.config
        self.types = list(cfg.layer_types[: cfg.num_hidden_layers]) if getattr(cfg, "layer_types", None) else \
            ["full_attention"] * cfg.num_hidden_layers
        self.window = getattr(cfg, "sliding_window", None)
        self.softcap = getattr(cfg, "final_logit_softcapping", None)

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep, *past):
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2])))
        t = input_ids.shape[1]
        q, k = cache_index(t, attention_mask.shape[1])
        seen = (k[None, :] <= q[:, None])[None, None] & attention_mask[:, None, None, :].bool()  # (B, 1, T, S)
        masks = {"full_attention": additive(seen)}
        if self.window is not None:  # a sliding layer also sees only the last `window` keys
            masks["sliding_attention"] = additive(seen & (q[:, None] - k[None, :] < self.window))
        out = self.net.get_decoder()(input_ids=input_ids, attention_mask=masks, position_ids=position_ids,
                                     cache=cache, use_cache=True)
        h = out.last_hidden_state  # (B, T, H)
        keep = torch.where(logits_to_keep > 0, logits_to_keep, t)
        logits = self.net.get_output_embeddings()(h[:, t - keep:])  # (B, keep, V)
        if self.softcap is not None:  # as the model's own head does (Gemma 2): tanh-capped logits
            logits = torch.tanh(logits / self.softcap) * self.softcap
        present = [x for layer in out.cache.layers for x in (layer.keys, layer.values)]
        return (logits, *present)


def to_onnx(model, path: Path, runtime: str) -> list[list[int]]:
    """The float causal LM `model` (export.float_copy's) as ONNX at `path`, for `runtime`; returns cache_shapes."""
    import onnx
    from onnx import numpy_helper

    net = model.net
    net.config._attn_implementation = "eager"  # masks as additive tensors, the pattern ORT and OpenVINO know
    graph, shapes = CausalGraph(net).eval(), cache_shapes(net)
    b, p, t = 2, 3, 5  # a trace with a cache: the prompt (P = 0) runs the same graph
    ids = torch.randint(0, model.tokenizer.vocab_size, (b, t))
    past = [torch.zeros(b, h, p, d) for h, d in shapes for _ in range(2)]
    feed = (ids, torch.ones(b, p + t, dtype=torch.long), torch.arange(p, p + t).repeat(b, 1), torch.tensor(0), *past)
    n = len(shapes)
    batch = {0: "batch_size"}
    axes = {"input_ids": {**batch, 1: "sequence_length"}, "attention_mask": {**batch, 1: "total_sequence_length"},
            "position_ids": {**batch, 1: "sequence_length"}, "logits": {**batch, 1: "sequence_length"},
            **{name: {**batch, 2: "past_sequence_length"} for name in cache_names("past_key_values", n)},
            **{name: {**batch, 2: "total_sequence_length"} for name in cache_names("present", n)}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, feed, str(path), input_names=["input_ids", "attention_mask", "position_ids", KEEP,
                                                                *cache_names("past_key_values", n)],
                          output_names=["logits", *cache_names("present", n)], dynamic_axes=axes, opset_version=17,
                          dynamo=False)
    if runtime == "onnxruntime":
        # logits_to_keep becomes optional in ORT (an initializer of an input's name is its default: 0, every
        # position), so a runtime that feeds only optimum's inputs gets the logits it expects. OpenVINO would fold
        # such an input into a constant: its graph keeps it required (slimformer always feeds it).
        proto = onnx.load(str(path))
        proto.graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int64), KEEP))
        onnx.save(proto, str(path))
    return shapes


class CausalSession:
    """The exported graph as the parts of a transformers causal LM slimformer calls: net(input_ids, attention_mask,
    logits_to_keep=0) -> .logits (B, T, V) and net.generate(...) (greedy, with the KV cache); size_mb, n_params."""

    def __init__(self, session, shapes: list[list[int]], eos: list[int]):
        self.session, self.shapes, self.eos = session, shapes, eos
        self.past_names = cache_names("past_key_values", len(shapes))  # the feed's cache names, every step

    def _run(self, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray] | None, keep: int):
        b, t = ids.shape
        past = empty_cache(self.shapes, b) if past is None else past  # the prompt: an empty cache
        pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)[:, -t:]  # left padding: positions count real tokens only
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, KEEP: np.array(keep, np.int64),
                **dict(zip(self.past_names, past))}
        out = self.session.run(feed)
        return out[0], out[1:]

    def __call__(self, input_ids=None, attention_mask=None, logits_to_keep: int = 0, **unused):
        del unused  # use_cache and the like: the graph always returns its cache
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        logits, _ = self._run(ids, mask, None, logits_to_keep)
        return SimpleNamespace(logits=torch.from_numpy(logits))

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20, min_new_tokens: int = 0,
                 do_sample: bool = False, **unused) -> torch.Tensor:
        """Greedy decoding, one token a step from the cache: (B, T) -> (B, T + new). As transformers: eos cannot
        come before min_new_tokens; a row that ended is padded with eos; it stops when every row has ended."""
        from ..errors import SlimformerError

        del unused
        if do_sample:
            raise SlimformerError("generate: an exported causal LM decodes greedily (do_sample=False)")
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        out, done, past, step = [ids], np.zeros(len(ids), dtype=bool), None, ids
        for i in range(max_new_tokens):
            logits, past = self._run(step, mask, past, 1)
            if i < min_new_tokens and self.eos:
                logits[:, -1, self.eos] = -np.inf
            nxt = logits[:, -1].argmax(-1)  # (B,)
            if self.eos:
                nxt = np.where(done, self.eos[0], nxt)
                done |= np.isin(nxt, self.eos)
            out.append(nxt[:, None])
            if done.all():
                break
            step, mask = nxt[:, None], np.concatenate([mask, np.ones((len(ids), 1), np.int64)], 1)
        return torch.from_numpy(np.concatenate(out, 1))

    def size_mb(self) -> float:
        return self.session.size_mb()

    def n_params(self) -> int:
        return self.session.n_params()

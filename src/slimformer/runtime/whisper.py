"""A speech model's export (Whisper: ONNX Runtime or OpenVINO): two graphs, and the exported model that serves them
as slimformer serves the torch model (transcribe, `eval --task wer`, `bench`'s encoder and real-time factor).

  encoder   input_features (B, mels, frames) -> last_hidden_state (B, S, D) and every decoder layer's cross-attention
            keys and values, present.{i}.encoder.key / .value (B, heads_i, S, head_dim): computed once per clip,
            here, rather than in the decoder graph (one copy of those projections, no branch on the first step)
  decoder   input_ids (B, T), past_key_values.{i}.decoder.key / .value (B, heads_i, P, head_dim) (P = 0 for the
            prompt) and .encoder.key / .value (the encoder graph's) -> logits (B, T, V) and present.{i}.decoder.key
            / .value (B, heads_i, P+T, head_dim)
The decoder's causal mask is made in the graph from the cache length (every clip of a batch decodes in step: no
padding). Narrowed, layer-dropped and int8 models export alike (each layer's cache shape is its own)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .causal import additive, cache_index, cache_names, cache_shapes, empty_cache

GRAPHS = ("encoder_model", "decoder_model")  # onnx/NAME.onnx, or openvino/NAME.xml + .bin


def _heads(x: torch.Tensor, d: int) -> torch.Tensor:
    return x.view(x.shape[0], x.shape[1], -1, d).transpose(1, 2)  # (B, S, H*d) -> (B, H, S, d)


class EncoderGraph(nn.Module):
    """input_features (B, mels, frames) -> (last_hidden_state (B, S, D), per decoder layer its cross-attention
    key and value (B, heads, S, head_dim)), what the decoder's cross-attention would compute on its first step."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.encoder = net.get_encoder()
        self.cross = nn.ModuleList(layer.encoder_attn for layer in net.get_decoder().layers)

    def forward(self, input_features):
        h = self.encoder(input_features=input_features).last_hidden_state  # (B, S, D)
        return (h, *[_heads(proj(h), a.head_dim) for a in self.cross for proj in (a.k_proj, a.v_proj)])


class DecoderGraph(nn.Module):
    """(input_ids (B, T), own past keys and values per layer, then the encoder graph's) -> (logits (B, T, V), own
    present keys and values per layer): one decoder step, or the prompt with an empty own cache."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.layers = net, len(net.get_decoder().layers)

    def forward(self, input_ids, *past):
        from transformers import DynamicCache, EncoderDecoderCache

        own, cross = past[: 2 * self.layers], past[2 * self.layers:]
        cache = EncoderDecoderCache(DynamicCache(ddp_cache_data=list(zip(own[0::2], own[1::2]))),
                                    DynamicCache(ddp_cache_data=list(zip(cross[0::2], cross[1::2]))))
        t = input_ids.shape[1]
        q, k = cache_index(t, own[0].shape[2] + t)
        mask = additive(k[None, :] <= q[:, None])  # (T, P+T)
        states = cross[0].transpose(1, 2).flatten(2)  # (B, S, H*d): only marks the layers' cross-attention
        out = self.net.get_decoder()(input_ids=input_ids, attention_mask=mask[None, None], position_ids=q[None],
                                     encoder_hidden_states=states, cache=cache, use_cache=True)
        logits = self.net.get_output_embeddings()(out.last_hidden_state)  # (B, T, V)
        return (logits, *[x for layer in out.cache.self_attention_cache.layers for x in (layer.keys, layer.values)])


def to_onnx(model, folder: Path) -> list[list[int]]:
    """The float Whisper `model` (export.float_copy's) as folder/encoder_model.onnx and folder/decoder_model.onnx;
    returns [heads, head dim] of each decoder layer's self-attention cache."""
    net = model.net
    net.config._attn_implementation = "eager"
    shapes = cache_shapes(net)  # the decoder's self-attention cache, as a causal LM's
    n, cfg, b = len(shapes), net.config, 2
    feats = torch.randn(b, cfg.num_mel_bins, 2 * cfg.max_source_positions)  # (B, mels, frames): frames fixed
    batch = {0: "batch_size"}
    cross_out = cache_names("present", n, "encoder")
    encoder = EncoderGraph(net).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, (feats,), str(folder / "encoder_model.onnx"),
                          input_names=["input_features"], output_names=["last_hidden_state", *cross_out],
                          dynamic_axes={name: batch for name in ["input_features", "last_hidden_state", *cross_out]},
                          opset_version=17, dynamo=False)
        cross = encoder(feats)[1:]
        own = [torch.zeros(b, h, 3, d) for h, d in shapes for _ in range(2)]  # a trace with a cache of 3 tokens
        ids = torch.randint(0, cfg.vocab_size, (b, 2))
        own_in, own_out = cache_names("past_key_values", n, "decoder"), cache_names("present", n, "decoder")
        cross_in = cache_names("past_key_values", n, "encoder")
        torch.onnx.export(DecoderGraph(net).eval(), (ids, *own, *cross), str(folder / "decoder_model.onnx"),
                          input_names=["input_ids", *own_in, *cross_in],
                          output_names=["logits", *own_out],
                          dynamic_axes={"input_ids": {**batch, 1: "sequence_length"},
                                        "logits": {**batch, 1: "sequence_length"},
                                        **{x: {**batch, 2: "past_sequence_length"} for x in own_in},
                                        **{x: batch for x in cross_in},
                                        **{x: {**batch, 2: "total_sequence_length"} for x in own_out}},
                          opset_version=17, dynamo=False)
    return shapes


class _Encoder:
    """net.get_encoder() of an export: enc(input_features=...) runs the encoder graph (what bench times)."""

    def __init__(self, session):
        self.session = session

    def __call__(self, input_features):
        return self.session.run({"input_features": np.asarray(input_features, dtype=np.float32)})


class SpeechSession:
    """The two graphs as the parts of a Whisper model that speech.greedy_ids and bench call: config,
    get_encoder()(input_features=...), decoder_steps(features) -> step(ids (B, T)) -> next-token logits (B, V) with
    the KV cache kept between steps; size_mb, n_params."""

    def __init__(self, sessions: dict, shapes: list[list[int]], config):
        self.encoder, self.decoder, self.shapes, self.config = sessions[GRAPHS[0]], sessions[GRAPHS[1]], shapes, config

    def get_encoder(self) -> _Encoder:
        return _Encoder(self.encoder)

    def decoder_steps(self, features):
        cross = self.get_encoder()(input_features=features)[1:]  # every layer's cross-attention keys and values
        n = len(self.shapes)
        state = {"own": empty_cache(self.shapes, len(features))}
        fixed = dict(zip(cache_names("past_key_values", n, "encoder"), cross))
        own_names = cache_names("past_key_values", n, "decoder")

        def step(ids) -> torch.Tensor:
            out = self.decoder.run({"input_ids": np.asarray(ids, dtype=np.int64), **fixed,
                                    **dict(zip(own_names, state["own"]))})
            state["own"] = out[1:]
            return torch.from_numpy(out[0][:, -1]).float()  # (B, V)

        return step

    def size_mb(self) -> float:
        return self.encoder.size_mb() + self.decoder.size_mb()

    def n_params(self) -> int:
        return self.encoder.n_params() + self.decoder.n_params()

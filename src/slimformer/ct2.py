"""CTranslate2 Whisper checkpoints -> Hugging Face `WhisperForConditionalGeneration` weights.

CTranslate2's model.bin (python/ctranslate2/specs/model_spec.py `_serialize`; read by src/models/model.cc): little
endian; uint32 binary version, string spec name, uint32 spec revision, uint32 variable count, then per variable: string
name, uint8 rank, rank x uint32 shape, uint8 dtype id (float32, int8, int16, int32, float16, bfloat16), uint32 byte
count, the bytes; then uint32 alias count and (alias, target) string pairs. A string is uint16 length (NUL included),
the UTF-8 bytes and a NUL. An int8-quantized weight `.../weight` comes with `.../weight_scale` (one float per row,
q = round(w * scale)).

Names are ctranslate2's converters/transformers.py (WhisperLoader, BartLoader) in reverse: self-attention's
`linear_0` is q, k, v fused by rows (k has no bias in Whisper: its fused bias rows are zeros), `linear_1` the output;
cross-attention's `linear_0` is q, `linear_1` k and v fused, `linear_2` the output; layer norms are gamma / beta.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import torch

from .errors import WeightsError

DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")  # ctranslate2's dtype ids, in order
SPEC = "WhisperSpec"


def read_model_bin(path: str | Path) -> tuple[str, int, dict[str, np.ndarray], dict[str, str]]:
    """(spec name, spec revision, {name: array}, {alias: name}) of a CTranslate2 model.bin. The converter stores
    equal variables once and names the others as aliases of it (tied embeddings; at random init every zero bias
    and unit gamma): aliases are resolved into the dict too. bfloat16 arrays come back as float32 (numpy has no
    bfloat16)."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        if pos + struct.calcsize(fmt) > len(data):
            raise WeightsError(f"{path}: truncated CTranslate2 model.bin (at byte {pos} of {len(data)})")
        value = struct.unpack_from("<" + fmt, data, pos)[0]
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        value = data[pos : pos + n - 1].decode("utf-8")
        pos += n
        return value

    version = take("I")
    if version < 5:  # the name/revision header came with version 5
        raise WeightsError(f"{path}: CTranslate2 binary version {version} is not read here (5 or later)")
    spec, revision = string(), take("I")
    variables = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype, nbytes = DTYPES[take("B")], take("I")
        raw = data[pos : pos + nbytes]
        pos += nbytes
        if dtype == "bfloat16":  # the high half of a float32
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, np.dtype(dtype))
        variables[name] = arr.reshape(shape)
    aliases = {}
    for _ in range(take("I")):
        alias = string()
        aliases[alias] = string()
    for alias, target in aliases.items():
        if target in variables:
            variables.setdefault(alias, variables[target])
    return spec, revision, variables, aliases


def _weight(variables: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """A variable as float32; an int8 weight dequantized with its per-row scale."""
    arr = variables[name]
    scale = variables.get(name + "_scale")
    if arr.dtype == np.int8 and scale is not None:  # (N, ...) int8, (N,) scale: w = q / scale
        scale = np.asarray(scale, np.float32).reshape(-1, *[1] * (arr.ndim - 1))
        return torch.from_numpy(arr.astype(np.float32) / scale)
    return torch.from_numpy(arr.astype(np.float32))


def tied(variables: dict[str, np.ndarray]) -> bool:
    """Whether the output projection is the token table (absent, or an alias of it: the same array)."""
    proj = variables.get("decoder/projection/weight")
    return proj is None or proj is variables["decoder/embeddings/weight"]


def _count(variables: dict, prefix: str) -> int:
    """How many blocks a stack has: its names `prefix/layer_N/...` (not `prefix/layer_norm/...`)."""
    return len({k.split("/")[1] for k in variables if re.match(prefix + r"/layer_\d+/", k)})


def whisper_config_kwargs(variables: dict[str, np.ndarray], ct2_config: dict, special: dict[str, int]) -> dict:
    """WhisperConfig keyword arguments read off the weights' shapes and ctranslate2's config.json. `special`: the
    ids of <|endoftext|> and <|startoftranscript|> (from the tokenizer)."""
    vocab, d_model = variables["decoder/embeddings/weight"].shape
    eot, sot = special["<|endoftext|>"], special["<|startoftranscript|>"]
    return dict(
        vocab_size=int(vocab), d_model=int(d_model), num_mel_bins=int(variables["encoder/conv1/weight"].shape[1]),
        encoder_layers=_count(variables, "encoder"), decoder_layers=_count(variables, "decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]),
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        tie_word_embeddings=tied(variables), architectures=[
            "WhisperForConditionalGeneration"])


def _linear(out: dict, hf: str, w: torch.Tensor, b: torch.Tensor | None) -> None:
    out[hf + ".weight"] = w
    if b is not None:
        out[hf + ".bias"] = b


def whisper_state_dict(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """{WhisperForConditionalGeneration parameter name: float32 tensor} from a WhisperSpec's variables."""
    v = lambda name: _weight(variables, name)  # noqa: E731
    out: dict[str, torch.Tensor] = {}
    d = variables["decoder/embeddings/weight"].shape[1]
    for side in ("encoder", "decoder"):
        hf = f"model.{side}"
        out[f"{hf}.embed_positions.weight"] = v(f"{side}/position_encodings/encodings")
        out[f"{hf}.layer_norm.weight"], out[f"{hf}.layer_norm.bias"] = v(f"{side}/layer_norm/gamma"), v(
            f"{side}/layer_norm/beta")
        for i in range(_count(variables, side)):
            ct, layer = f"{side}/layer_{i}", f"{hf}.layers.{i}"
            sa = f"{ct}/self_attention"
            w, b = v(f"{sa}/linear_0/weight"), v(f"{sa}/linear_0/bias")  # (3D, D), (3D,): q, k, v
            for j, role in enumerate(("q", "k", "v")):
                _linear(out, f"{layer}.self_attn.{role}_proj", w[j * d : (j + 1) * d],
                        None if role == "k" else b[j * d : (j + 1) * d])
            _linear(out, f"{layer}.self_attn.out_proj", v(f"{sa}/linear_1/weight"), v(f"{sa}/linear_1/bias"))
            out[f"{layer}.self_attn_layer_norm.weight"] = v(f"{sa}/layer_norm/gamma")
            out[f"{layer}.self_attn_layer_norm.bias"] = v(f"{sa}/layer_norm/beta")
            if side == "decoder":
                ca = f"{ct}/attention"
                _linear(out, f"{layer}.encoder_attn.q_proj", v(f"{ca}/linear_0/weight"), v(f"{ca}/linear_0/bias"))
                w, b = v(f"{ca}/linear_1/weight"), v(f"{ca}/linear_1/bias")  # (2D, D), (2D,): k, v
                _linear(out, f"{layer}.encoder_attn.k_proj", w[:d], None)
                _linear(out, f"{layer}.encoder_attn.v_proj", w[d:], b[d:])
                _linear(out, f"{layer}.encoder_attn.out_proj", v(f"{ca}/linear_2/weight"), v(f"{ca}/linear_2/bias"))
                out[f"{layer}.encoder_attn_layer_norm.weight"] = v(f"{ca}/layer_norm/gamma")
                out[f"{layer}.encoder_attn_layer_norm.bias"] = v(f"{ca}/layer_norm/beta")
            for j in (0, 1):
                _linear(out, f"{layer}.fc{j + 1}", v(f"{ct}/ffn/linear_{j}/weight"), v(f"{ct}/ffn/linear_{j}/bias"))
            out[f"{layer}.final_layer_norm.weight"] = v(f"{ct}/ffn/layer_norm/gamma")
            out[f"{layer}.final_layer_norm.bias"] = v(f"{ct}/ffn/layer_norm/beta")
    for j in (1, 2):
        _linear(out, f"model.encoder.conv{j}", v(f"encoder/conv{j}/weight"), v(f"encoder/conv{j}/bias"))
    out["model.decoder.embed_tokens.weight"] = v("decoder/embeddings/weight")
    if not tied(variables):  # an output projection of its own
        out["proj_out.weight"] = v("decoder/projection/weight")
    return out


def whisper_from_ct2(folder: str | Path, tokenizer):
    """A float32 WhisperForConditionalGeneration from a CTranslate2 Whisper folder (model.bin, config.json)."""
    import json

    from transformers import WhisperConfig, WhisperForConditionalGeneration

    folder = Path(folder)
    spec, _, variables, _ = read_model_bin(folder / "model.bin")
    if spec != SPEC:
        raise WeightsError(f"{folder / 'model.bin'}: a CTranslate2 {spec}, not a {SPEC}")
    ct2_config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    special = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|startoftranscript|>")}
    config = WhisperConfig(**whisper_config_kwargs(variables, ct2_config, special))
    model = WhisperForConditionalGeneration(config).eval()
    missing, unexpected = model.load_state_dict(whisper_state_dict(variables), strict=False)
    missing = [k for k in missing if k != "proj_out.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise WeightsError(f"{folder}: CTranslate2 weights do not fit WhisperForConditionalGeneration (missing "
                           f"{missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    return model

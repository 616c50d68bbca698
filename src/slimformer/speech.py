"""Speech inputs of Whisper (arch.SPEECH adapters): 16 kHz mono audio -> log-mel features, greedy transcription,
and the calibration batches the passes measure importance on.

A Whisper model takes input_features (B, 80, 3000): 30 s of 16 kHz audio as an 80-bin log-mel spectrogram, made by
its WhisperFeatureExtractor (numpy; SlimModel keeps it in its `tokenizer` slot beside the tokenizer, see
`SpeechProcessor`). Decoding is greedy, English, transcribe, no timestamps, as ctranslate2's Whisper.generate with
beam_size=1 does it: the config's suppress_tokens at every step, begin_suppress_tokens at the first.
"""

from __future__ import annotations

import os
from math import gcd
from pathlib import Path

import numpy as np
import torch

from .errors import DataFormatError, SlimformerError

SPEECH = "speech"  # arch.Adapter.modality of Whisper
RATE = 16000  # Whisper's sampling rate (Hz)
PROMPT = ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")
MAX_NEW_TOKENS = 128  # a sentence of speech is far shorter; bounds a model that never says <|endoftext|>
CALIB_CLIPS = 32  # synthesized clips a calibration uses when none are given (passes: Fisher, layer choice)


def is_speech(model) -> bool:
    return getattr(model, "modality", "text") == SPEECH


def read_wav(path: str | Path, rate: int = RATE) -> np.ndarray:
    """A WAV file as float32 mono samples in [-1, 1] at `rate` Hz (other rates resampled with a polyphase filter;
    several channels averaged)."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    try:
        sr, x = wavfile.read(path)
    except (ValueError, OSError) as e:
        raise DataFormatError(f"{path}: not a readable WAV file ({e})") from None
    if x.dtype == np.uint8:  # 8-bit PCM is offset binary
        x = (x.astype(np.float32) - 128) / 128
    elif x.dtype.kind == "i":  # int16 (most) or int32 PCM
        x = x.astype(np.float32) / (np.iinfo(x.dtype).max + 1)
    x = x.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(1)
    if sr != rate:
        g = gcd(sr, rate)
        x = resample_poly(x, rate // g, sr // g).astype(np.float32)
    return x


class SpeechProcessor:
    """Whisper's feature extractor and tokenizer in one slot (SlimModel.tokenizer): __call__ turns audio into
    {"input_features": (B, 80, 3000)}; decode and save_pretrained are the tokenizer's and the extractor's."""

    def __init__(self, feature_extractor, tokenizer):
        self.feature_extractor, self.tokenizer = feature_extractor, tokenizer

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "SpeechProcessor | None":
        """None for a folder without preprocessor_config.json (a model built in code, fed input_features)."""
        from transformers import AutoTokenizer, WhisperFeatureExtractor

        if not (Path(folder) / "preprocessor_config.json").is_file():
            return None
        return cls(WhisperFeatureExtractor.from_pretrained(folder), AutoTokenizer.from_pretrained(folder))

    def __call__(self, audio: list[np.ndarray]) -> dict[str, torch.Tensor]:
        feats = self.feature_extractor(list(audio), sampling_rate=RATE, return_tensors="np")["input_features"]
        return {"input_features": torch.from_numpy(np.asarray(feats, dtype=np.float32))}

    def decode(self, ids, **kw) -> str:
        return self.tokenizer.decode(ids, **kw)

    def save_pretrained(self, folder) -> None:
        self.feature_extractor.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


@torch.inference_mode()
def torch_steps(net, features: torch.Tensor):
    """step(ids (B, T)) -> next-token logits (B, V) of a WhisperForConditionalGeneration on `features`, the encoder
    run once and the KV cache kept between steps."""
    enc = net.get_encoder()(input_features=features).last_hidden_state  # (B, 1500, D)
    state = {"cache": None}

    def step(ids: torch.Tensor) -> torch.Tensor:
        res = net(encoder_outputs=(enc,), decoder_input_ids=ids, cache=state["cache"], use_cache=True)
        state["cache"] = res.cache
        return res.logits[:, -1].float()

    return step


@torch.inference_mode()
def greedy_ids(net, features: torch.Tensor, prompt: list[int], max_new_tokens: int = MAX_NEW_TOKENS,
               min_new_tokens: int = 0) -> list[list[int]]:
    """Greedy decoding with the KV cache: the new token ids of each clip (prompt and <|endoftext|> left out).
    features (B, 80, 3000); `net` a WhisperForConditionalGeneration (possibly narrowed), or an export's session
    (runtime/whisper.py: its decoder_steps). min_new_tokens: no <|endoftext|> before that many (for timing a fixed
    amount of decoding)."""
    cfg = net.config
    eot = cfg.eos_token_id
    step = net.decoder_steps(features) if hasattr(net, "decoder_steps") else torch_steps(net, features)
    ids = torch.tensor([prompt] * len(features))  # (B, P)
    suppress = torch.tensor(list(cfg.suppress_tokens or []), dtype=torch.long)
    begin = torch.tensor(list(cfg.begin_suppress_tokens or []), dtype=torch.long)
    out = [[] for _ in range(len(features))]
    done = torch.zeros(len(features), dtype=torch.bool)
    for i in range(max_new_tokens):
        logits = step(ids)  # (B, V)
        logits[:, suppress] = float("-inf")
        if i == 0:
            logits[:, begin] = float("-inf")
        if i < min_new_tokens:
            logits[:, eot] = float("-inf")
        nxt = logits.argmax(-1)  # (B,)
        nxt[done] = eot
        for b in range(len(features)):
            if not done[b] and int(nxt[b]) != eot:
                out[b].append(int(nxt[b]))
        done |= nxt == eot
        if bool(done.all()):
            break
        ids = nxt[:, None]
    return out


def prompt_ids(tokenizer) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in PROMPT]


def transcribe(model, audio: list[np.ndarray], batch_size: int = 8) -> list[str]:
    """Greedy English transcripts of 16 kHz clips (each at most 30 s) with a SlimModel holding Whisper."""
    proc = model.tokenizer
    if not isinstance(proc, SpeechProcessor):
        raise SlimformerError("transcription needs a Whisper model loaded with its feature extractor and tokenizer")
    prompt, texts = prompt_ids(proc.tokenizer), []
    for i in range(0, len(audio), batch_size):
        feats = proc(audio[i : i + batch_size])["input_features"]
        texts += [proc.decode(ids, skip_special_tokens=True).strip() for ids in greedy_ids(model.net, feats, prompt)]
    return texts


def read_speech_tsv(path: str | Path) -> tuple[list[np.ndarray], list[str]]:
    """(clips, texts) of a TSV with header `audio<TAB>text`, audio paths relative to the TSV (WAV, resampled to
    16 kHz mono where they are not)."""
    from .data import _read_tsv

    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"speech set not found: {path}")
    header, rows = _read_tsv(path)
    if header[:2] != ["audio", "text"]:
        raise DataFormatError(f"{path}: header must be audio<TAB>text, got {chr(9).join(header)!r}")
    bad = [n for n, cells in rows if len(cells) < 2]
    if bad or not rows:
        raise DataFormatError(f"{path}: line {bad[0]} has no text column" if bad else f"{path}: no utterances")
    clips = [read_wav(path.parent / cells[0]) for _, cells in rows]
    return clips, [cells[1] for _, cells in rows]


def calibration_batches(model, clips: list[np.ndarray], texts: list[str] | None = None) -> list[dict]:
    """One batch per clip: {"input_features": (1, 80, 3000), "decoder_input_ids": (1, T)}, the decoder's input
    the prompt plus the clip's own transcript (given, or the model's greedy one): what the passes measure the
    decoder's next-token distributions on. One clip a batch: no padding in the decoder, so every position counts."""
    proc = model.tokenizer
    prompt = prompt_ids(proc.tokenizer)
    if texts is None:
        texts = transcribe(model, clips)
    batches = []
    for clip, text in zip(clips, texts):
        ids = prompt + proc.tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"]
        batches.append({**proc([clip]), "decoder_input_ids": torch.tensor([ids])})
    return batches


def speech_calibration(calib, model) -> list[dict]:
    """`compress`'s calib argument for a speech model -> calibration batches (calibration_batches): a TSV path
    (audio<TAB>text, read_speech_tsv), a list of (16 kHz clip, transcript) pairs, or ready batches (dicts with
    input_features and decoder_input_ids). Keep it disjoint from the WER set. There is no default: no speech is
    shipped with the package."""
    if calib is None:
        raise SlimformerError("a speech model calibrates on speech: give calib (--calib), a TSV with header "
                              "audio<TAB>text (benchmarks/speech_set.py makes one from the data folder's train "
                              "sentences)")
    if isinstance(calib, (str, os.PathLike)):
        clips, texts = read_speech_tsv(calib)
    else:
        pairs = list(calib)
        if pairs and all(isinstance(p, dict) and "input_features" in p for p in pairs):
            return pairs
        if not pairs or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
            raise SlimformerError("calibration for a speech model: a TSV path, or a list of (clip, text) pairs")
        clips, texts = [np.asarray(c, dtype=np.float32) for c, _ in pairs], [t for _, t in pairs]
    return calibration_batches(model, clips, texts)

"""A speech recognizer's quality and speed: word error rate (WER, percent) of greedy transcripts against reference
texts, how far two models' WERs differ beyond what resampling the utterances moves (paired bootstrap over
utterances), and Whisper's own speed keys for `bench`."""

from __future__ import annotations

import re

import numpy as np
import torch

from ..speech import RATE, greedy_ids, prompt_ids, transcribe


def normalize(text: str) -> list[str]:
    """Words for WER: lowercase, punctuation dropped (an apostrophe inside a word stays: "don't"), split on space."""
    text = re.sub(r"[^\w\s']|_", " ", text.lower())
    return [w.strip("'") for w in text.split() if w.strip("'")]


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance: substitutions + deletions + insertions turning ref into hyp."""
    row = list(range(len(hyp) + 1))  # distance of ref[:0] to hyp[:j]
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def wer(edits: np.ndarray, words: np.ndarray) -> float:
    """Percent: all edits over all reference words (long utterances weigh by their length)."""
    return float(100 * np.sum(edits) / max(int(np.sum(words)), 1))


def utterance_errors(model, audio: list[np.ndarray], texts: list[str],
                     batch_size: int = 8) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(edits, words, transcripts): each utterance's word errors (n,), its reference word count (n,), and the
    model's greedy transcripts (batch_size clips a decode)."""
    hyps = transcribe(model, audio, batch_size)
    refs = [normalize(t) for t in texts]
    edits = np.array([word_errors(r, normalize(h)) for r, h in zip(refs, hyps)], dtype=np.float64)
    return edits, np.array([len(r) for r in refs], dtype=np.float64), hyps


def wer_interval(words: np.ndarray, a: np.ndarray, b: np.ndarray, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Paired bootstrap interval of WER(b) - WER(a), in points: both models' per-utterance edits (a, b: (n,))
    resampled together, each resample's rate over its own word total (words: (n,))."""
    a, b, words = (np.asarray(x, dtype=np.float64) for x in (a, b, words))
    idx = np.random.default_rng(seed).integers(0, len(a), (resamples, len(a)))  # (R, n)
    d = 100 * (b[idx].sum(1) - a[idx].sum(1)) / words[idx].sum(1).clip(1)
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


# ------------------------------------------------------------------------------------------------- speed

AUDIO_S = 30  # Whisper's chunk: the encoder always sees 30 s (shorter audio is padded)
DECODE_TOKENS = 64  # greedy steps timed for the real-time factor: about what 30 s of English speech takes


def _timed_calls(model) -> tuple:
    """(encoder forward, transcription of DECODE_TOKENS tokens) on 30 s of silence at batch 1, as calls."""
    feats = model.tokenizer([np.zeros(AUDIO_S * RATE, dtype=np.float32)])["input_features"]  # (1, 80, 3000)
    encoder, prompt = model.net.get_encoder(), prompt_ids(model.tokenizer.tokenizer)
    return (lambda: encoder(input_features=feats),
            lambda: greedy_ids(model.net, feats, prompt, DECODE_TOKENS, min_new_tokens=DECODE_TOKENS))


@torch.inference_mode()
def speech_speeds(models: dict, runs: int = 20) -> dict[str, dict]:
    """Whisper's own speed keys for `bench`, every model timed in turns (timing.interleaved_ms): {name:
    {"encoder_ms": {"1x30s"}: median ms of the encoder forward on 30 s of audio at batch 1, "rtf": (encoder +
    DECODE_TOKENS greedy decoder steps with the KV cache) / 30 s, the transcription real-time factor (lower is faster;
    the step count is fixed so that every model does the same work)}}. Models: SlimModels or speech exports."""
    from ..timing import interleaved_ms

    calls = {n: _timed_calls(m) for n, m in models.items()}
    enc_ms = interleaved_ms({n: c[0] for n, c in calls.items()}, runs, give_up_ms=float("inf"))
    full = interleaved_ms({n: c[1] for n, c in calls.items()}, max(3, runs // 5), give_up_ms=float("inf"))
    return {n: {"encoder_ms": {"1x30s": round(enc_ms[n], 2)}, "rtf": round(full[n] / 1e3 / AUDIO_S, 4)}
            for n in models}

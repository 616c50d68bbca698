"""Synthesized speech sets for Whisper: sentences of the data folder spoken by espeak-ng, written as 16 kHz mono
16-bit WAVs plus a TSV (`audio<TAB>text`, audio paths relative to the TSV) that `--task wer:PATH` reads.

- wer.tsv: N sentences of STS-B test (held out), the WER set.
- calib.tsv: M sentences of STS-B train (disjoint from the WER set), what the passes calibrate on (--calib).

espeak-ng speaks with `-v en-us -s 140` (US English, 140 words a minute), and 0.5 s of silence goes before and
after each sentence: at its default voice and speed, with no lead-in, Whisper base drops the first word and mishears
far more (on 20 of these sentences: 43% WER at the defaults, 35% with the silence, 9% with both).

Sentences are taken in data-folder order, each once, of 5 to 20 words and without digits (espeak says "3" as
"three", which Whisper may write either way: a mismatch that is no recognition error). The data folder is only read.

    python benchmarks/speech_set.py OUT_DIR [--n 100] [--calib 32]
"""

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from scipy.io import wavfile

from slimformer.data import read_stsb
from slimformer.speech import RATE, read_wav


def pick(pairs, n: int, skip: set[str]) -> list[str]:
    out, seen = [], set(skip)
    for a, b, _ in pairs:
        for s in (a, b):
            s = " ".join(s.split())
            if s in seen or re.search(r"\d", s) or not 5 <= len(s.split()) <= 20:
                continue
            seen.add(s)
            out.append(s)
            if len(out) == n:
                return out
    return out


VOICE = ["-v", "en-us", "-s", "140"]
PAD_S = 0.5  # seconds of silence before and after


def speak(text: str, wav: Path) -> np.ndarray:
    """espeak-ng's speech of `text` (22.05 kHz, written to `wav`) as 16 kHz float32 samples, padded with silence."""
    subprocess.run(["espeak-ng", *VOICE, "-w", str(wav), text], check=True)
    pad = np.zeros(int(PAD_S * RATE), dtype=np.float32)
    return np.concatenate([pad, read_wav(wav), pad])


def write_set(folder: Path, name: str, sentences: list[str]) -> Path:
    (folder / name).mkdir(parents=True, exist_ok=True)
    rows = ["audio\ttext"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, s in enumerate(sentences):
            x = speak(s, Path(tmp) / "raw.wav")  # 16 kHz float32
            wavfile.write(folder / name / f"{i:04d}.wav", RATE, (np.clip(x, -1, 1) * 32767).astype(np.int16))
            rows.append(f"{name}/{i:04d}.wav\t{s}")
    tsv = folder / f"{name}.tsv"
    tsv.write_text("\n".join(rows) + "\n")
    return tsv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--calib", type=int, default=32)
    args = ap.parse_args()
    test = pick(read_stsb("test"), args.n, set())
    calib = pick(read_stsb("train"), args.calib, set(test))
    print(write_set(args.out, "wer", test), len(test))
    print(write_set(args.out, "calib", calib), len(calib))


if __name__ == "__main__":
    main()

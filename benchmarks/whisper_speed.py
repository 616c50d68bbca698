"""Speed of Whisper base (fp32) and compressed copies of it, every model timed in one alternating loop (compare by
ratio): the encoder forward on 30 s of audio at batch 1, and transcription's real-time factor (the encoder plus
DECODE_TOKENS greedy decoder steps with the KV cache, over 30 s; fixed steps, so every model does the same work), as
`bench` reports them one model at a time. Speed only: the folders' WERs come from whisper_quality.py.

    python benchmarks/whisper_speed.py [--runs N] [MODEL] FOLDER ...
    (MODEL: models/whisper-base by default; FOLDERs: saved by `whisper_quality.py --save DIR` or `slimformer compress`)
"""

import json
import sys
from pathlib import Path

from slimformer.measure.asr import speech_speeds
from slimformer.measure.bench import cpu_info, size_mb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from folders import load_models  # noqa: E402

args, runs = sys.argv[1:], 6
if args[:1] == ["--runs"]:
    runs, args = int(args[1]), args[2:]
models = load_models(args, "models/whisper-base")
speed = speech_speeds(models, runs)  # every model in turns: the encoder, then whole transcriptions
print("| recipe | size MB | encoder ms (1x30s) | speedup | RTF | speedup |")
print("|---|---|---|---|---|---|")
rows = []
for name, m in models.items():
    enc, rtf = speed[name]["encoder_ms"]["1x30s"], speed[name]["rtf"]
    row = {"recipe": name, "size_mb": round(size_mb(m.net), 1), "encoder_ms": round(enc, 1),
           "encoder_speedup": round(speed["fp32"]["encoder_ms"]["1x30s"] / enc, 2), "rtf": rtf,
           "rtf_speedup": round(speed["fp32"]["rtf"] / rtf, 2)}
    print(f"| {name} | {row['size_mb']} | {row['encoder_ms']:.1f} | {row['encoder_speedup']:.2f}x | "
          f"{row['rtf']:.4f} | {row['rtf_speedup']:.2f}x |")
    rows.append(row)
info = cpu_info()
print(f"\n{info['model']} ({', '.join(info['flags'])}), {info['threads']} threads, {runs} encoder runs, "
      f"{max(3, runs // 5)} transcriptions each, alternated")
print(json.dumps({"machine": info, "rows": rows}))

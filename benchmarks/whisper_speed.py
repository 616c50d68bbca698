"""Speed of Whisper base (fp32) and compressed copies of it, every model timed in one alternating loop (compare by
ratio): the encoder forward on 30 s of audio at batch 1, and transcription's real-time factor (the encoder plus
DECODE_TOKENS greedy decoder steps with the KV cache, over 30 s; fixed steps, so every model does the same work), as
`bench` reports them one model at a time. Speed only: the folders' WERs come from whisper_quality.py.

    python benchmarks/whisper_speed.py [--runs N] [MODEL] FOLDER ...
    (MODEL: models/whisper-base by default; FOLDERs: saved by `whisper_quality.py --save DIR` or `slimformer compress`)
"""

import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from slimformer.measure.asr import AUDIO_S, DECODE_TOKENS
from slimformer.measure.bench import cpu_info, size_mb
from slimformer.speech import RATE, greedy_ids, prompt_ids
from slimformer.timing import interleaved_times

sys.path.insert(0, str(Path(__file__).resolve().parent))
from folders import load_models  # noqa: E402

args, runs = sys.argv[1:], 6
if args[:1] == ["--runs"]:
    runs, args = int(args[1]), args[2:]
models = load_models(args, "models/whisper-base")
proc = models["fp32"].tokenizer
feats = proc([np.zeros(AUDIO_S * RATE, dtype=np.float32)])["input_features"]  # (1, 80, 3000): 30 s of silence
prompt = prompt_ids(proc.tokenizer)
with torch.inference_mode():
    enc = interleaved_times({n: (lambda e: lambda: e(input_features=feats))(m.net.get_encoder())
                             for n, m in models.items()}, reps=runs, give_up_ms=float("inf"))
    full = interleaved_times({n: (lambda net: lambda: greedy_ids(net, feats, prompt, DECODE_TOKENS,
                                                                 min_new_tokens=DECODE_TOKENS))(m.net)
                              for n, m in models.items()}, reps=max(3, runs // 2), give_up_ms=float("inf"))
enc = {n: statistics.median(t) for n, t in enc.items()}
full = {n: statistics.median(t) for n, t in full.items()}
print("| recipe | size MB | encoder ms (1x30s) | speedup | RTF | speedup |")
print("|---|---|---|---|---|---|")
rows = []
for name, m in models.items():
    row = {"recipe": name, "size_mb": round(size_mb(m.net), 1), "encoder_ms": round(enc[name], 1),
           "encoder_speedup": round(enc["fp32"] / enc[name], 2), "rtf": round(full[name] / 1e3 / AUDIO_S, 4),
           "rtf_speedup": round(full["fp32"] / full[name], 2)}
    print(f"| {name} | {row['size_mb']} | {row['encoder_ms']:.1f} | {row['encoder_speedup']:.2f}x | "
          f"{row['rtf']:.4f} | {row['rtf_speedup']:.2f}x |")
    rows.append(row)
info = cpu_info()
print(f"\n{info['model']} ({', '.join(info['flags'])}), {info['threads']} threads, {runs} encoder runs, "
      f"{max(3, runs // 2)} transcriptions each, alternated")
print(json.dumps({"machine": info, "rows": rows}))

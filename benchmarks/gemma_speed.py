"""Speed of Gemma 3 270M (fp32) and compressed copies of it, every model timed in one alternating loop (compare by
ratio): time to the first token at 1x128 and 8x128 (the prompt's forward with the last position's logits, as
generate runs it), greedy decoding tokens/s with the KV cache at batch 1, and with --score the 8x128 forward with
logits at every position (scoring, perplexity). Speed only: the folders' perplexities come from gemma_quality.py.

    python benchmarks/gemma_speed.py [--runs N] [--score] [MODEL] FOLDER ...
    (MODEL: models/gemma-3-270m by default; FOLDERs: saved by `gemma_quality.py --out DIR` or `slimformer compress`)
"""

import json
import sys
from pathlib import Path

from slimformer.measure.bench import cpu_info, size_mb
from slimformer.measure.lm import lm_speeds
from slimformer.timing import latency_ms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from folders import load_models  # noqa: E402

args, runs, score = sys.argv[1:], 20, False
while args and args[0].startswith("--"):
    if args[0] == "--runs":
        runs, args = int(args[1]), args[2:]
    elif args[0] == "--score":
        score, args = True, args[1:]
    else:
        raise SystemExit(f"unknown option {args[0]}")
models = load_models(args, "models/gemma-3-270m")
speed = lm_speeds(models, runs)
if score:
    full = latency_ms({n: (lambda net: lambda x: net(**x, use_cache=False))(m.net) for n, m in models.items()},
                      {n: m.tokenizer.vocab_size for n, m in models.items()}, ((8, 128),), runs)
ref = speed["fp32"]
print("| recipe | size MB | prefill 1x128 ms | prefill 8x128 ms | speedup 8x128 | decode tokens/s | speedup |"
      + (" score 8x128 ms | speedup |" if score else ""))
print("|---|---|---|---|---|---|---|" + ("---|---|" if score else ""))
rows = []
for name, m in models.items():
    s = speed[name]
    row = {"recipe": name, "size_mb": round(size_mb(m.net), 1), **s,
           "prefill_speedup_8x128": round(ref["prefill_ms"]["8x128"] / s["prefill_ms"]["8x128"], 2),
           "decode_speedup": round(s["decode_tokens_per_s"] / ref["decode_tokens_per_s"], 2)}
    line = (f"| {name} | {row['size_mb']} | {s['prefill_ms']['1x128']:.1f} | {s['prefill_ms']['8x128']:.1f} | "
            f"{row['prefill_speedup_8x128']:.2f}x | {s['decode_tokens_per_s']:.1f} | {row['decode_speedup']:.2f}x |")
    if score:
        row["score_ms_8x128"] = full[name]["8x128"]
        row["score_speedup_8x128"] = round(full["fp32"]["8x128"] / full[name]["8x128"], 2)
        line += f" {row['score_ms_8x128']:.1f} | {row['score_speedup_8x128']:.2f}x |"
    print(line)
    rows.append(row)
info = cpu_info()
print(f"\n{info['model']} ({', '.join(info['flags'])}), {info['threads']} threads, {runs} runs a shape")
print(json.dumps({"machine": info, "rows": rows}))

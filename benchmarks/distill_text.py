"""What distillation reads (issue 17): today's default text (STS-B train + SST-2 train sentences, 82% of them SST-2
movie-review phrases) against a balanced mix (STS-B train, SST-2 train and the shipped UD corpus of web, news,
Wikipedia and technical text, in equal turns). The first 512 sentences, the calibration sample that importance and
int8 read, are the same in both, so only what `vocab` keeps and what `distill` trains on differ. Scored on STS-B
test, whole and by genre (captions; news+forum), as deltas to the original with 95% paired-bootstrap intervals.
Quality only (no timing). One JSON line per model and scored set.

Usage: .venv/bin/python benchmarks/distill_text.py STEPS [default] [balanced]
"""
import json
import random
import sys
import tempfile
from pathlib import Path

import slimformer
from slimformer.data import SHIPPED_CORPUS, calibration_texts, read_lines, read_sst2, read_stsb
from slimformer.measure.tasks import delta_interval, evaluate, sts_pairs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer import write_test_sets  # noqa: E402


def corpora() -> dict[str, list[str]]:
    default = calibration_texts(None)  # what compress reads with no --calib, shuffled
    head = default[:512]
    seen = set(head)

    def rest(texts):
        texts = [t for t in dict.fromkeys(texts) if t not in seen]
        random.Random(1).shuffle(texts)
        return texts

    sources = [rest(s for a, b, _ in read_stsb("train") for s in (a, b)),
               rest(s for s, _ in read_sst2("train") if len(s.split()) >= 4), rest(read_lines(SHIPPED_CORPUS))]
    turns = [s[i] for i in range(max(map(len, sources))) for s in sources if i < len(s)]
    return {"default": default, "balanced": head + turns}


def main(steps: int, which: list[str]) -> None:
    texts = corpora()
    base = slimformer.load()
    recipe = f"vocab+prune(flops=0.35)+distill(steps={steps})+int8(embedding_bits=4)"
    with tempfile.TemporaryDirectory() as tmp:
        tasks = {"stsb": "stsb", **write_test_sets(Path(tmp))}
        ref = {t: evaluate(base, task) for t, task in tasks.items()}
        gold = {t: [p[2] for p in sts_pairs(task)] for t, task in tasks.items()}
        for name in which:
            model = slimformer.compress(base, recipe, calib=texts[name])
            for t, task in tasks.items():
                r = evaluate(model, task)
                lo, hi = delta_interval(gold[t], ref[t].per_example, r.per_example)
                print(json.dumps({"text": name, "recipe": recipe, "scored": t, "value": round(r.value, 2),
                                  "delta": round(r.value - ref[t].value, 2), "lo": round(lo, 2), "hi": round(hi, 2),
                                  "vocab_rows": model.encoder.get_input_embeddings().num_embeddings}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:] or ["default", "balanced"])

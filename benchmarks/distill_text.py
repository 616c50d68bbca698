"""What vocabulary pruning keeps and distillation trains on (issue 17): the default text before the shipped corpus
joined it (STS-B train + SST-2 train sentences, 82% of them SST-2 movie-review phrases; `before`), the default text now
(the same, then the shipped corpus's web, review, email and technical sentences; `default`), and that text with the
corpus's held-out news and Wikipedia too (`balanced`, the mix first measured). The first 512 sentences, the
calibration sample that importance and int8 read, are the same in all. Scored on STS-B test, whole and by genre
(captions; news+forum), as deltas to the original with 95% paired-bootstrap intervals, and label-free on the held-out
news and Wikipedia (`other`: the compress report's fidelity, Spearman x100 of pairwise similarities against the
original's; meaningless for `balanced`, which trains on them). Quality only (no timing). One JSON line per model and
scored set.

Usage: .venv/bin/python benchmarks/distill_text.py STEPS [--recipe RECIPE] [before] [default] [balanced]
       (RECIPE: a recipe with `{steps}` for its distill steps; default: the combined recipe)
"""
import json
import random
import sys
import tempfile
from pathlib import Path

import slimformer
from slimformer.api import REPORT_SENTENCES
from slimformer.data import calibration_texts, default_calibration, shipped_corpus
from slimformer.measure.fidelity import fidelity
from slimformer.measure.tasks import delta_interval, evaluate, sts_pairs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer import write_test_sets  # noqa: E402


RECIPE = "vocab+prune(flops=0.35)+distill(steps={steps})+int8(embedding_bits=4)"


def corpora() -> dict[str, list[str]]:
    default = calibration_texts(None)  # what compress reads with no --calib, shuffled
    before = default_calibration()
    random.Random(0).shuffle(before)  # calibration_texts' order: the same first 512
    assert default[:512] == before[:512]
    seen = set(default)
    held = [t for t in shipped_corpus(held_out=True) if t not in seen]
    return {"before": before, "default": default, "balanced": default + held}


def main(steps: int, recipe: str, which: list[str]) -> None:
    texts = corpora()
    base = slimformer.load()
    recipe = recipe.format(steps=steps)
    other = shipped_corpus(held_out=True)
    random.Random(0).shuffle(other)
    other = other[:REPORT_SENTENCES]
    with tempfile.TemporaryDirectory() as tmp:
        tasks = {"stsb": "stsb", **write_test_sets(Path(tmp))}
        ref = {t: evaluate(base, task) for t, task in tasks.items()}
        gold = {t: [p[2] for p in sts_pairs(task)] for t, task in tasks.items()}
        for name in which:
            model = slimformer.compress(base, recipe, calib=texts[name])
            rows = model.encoder.get_input_embeddings().num_embeddings
            for t, task in tasks.items():
                r = evaluate(model, task)
                lo, hi = delta_interval(gold[t], ref[t].per_example, r.per_example)
                print(json.dumps({"text": name, "recipe": recipe, "scored": t, "value": round(r.value, 2),
                                  "delta": round(r.value - ref[t].value, 2), "lo": round(lo, 2), "hi": round(hi, 2),
                                  "vocab_rows": rows}), flush=True)
            print(json.dumps({"text": name, "recipe": recipe, "scored": "other (fidelity)",
                              "value": round(fidelity(base, model, other), 2), "vocab_rows": rows}), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    steps, recipe = int(args.pop(0)), RECIPE
    if args[:1] == ["--recipe"]:
        recipe, args = args[1], args[2:]
    main(steps, recipe, args or ["before", "default"])

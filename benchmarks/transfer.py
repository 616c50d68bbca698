"""Does a no-training recipe hold beyond its calibration text? In- and out-of-distribution deltas per recipe.

Protocol (issue 17), all from the data folder, every text disjoint from what it is scored on:
- calibration sources, each a whole text, shuffled (seeded): `captions` and `news+forum` (the STS-B train sentences
  of those genres: 3,384 and 7,182), `sst2` (SST-2 train sentences of 4 words or more: 48,800 movie-review phrases),
  `default` (what `compress` uses with no --calib), and any `NAME=FILE` given with --calib (one sentence a line).
  `compress` reads a text as it reads a user's: the first 512 sentences are the sample that the trials and int8
  scales read; narrowing's importance reads up to 1,024 and its compensation up to 2,048 (the sample's fit half,
  then the text after the sample and the report's check sentences); `vocab` and `distill` all of it. Each source
  used to be its first 512 sentences only (the same sample): the README's tables before "Importance and
  compensation read more text" read no more.
- scored sets: STS-B test split by genre, `captions` (625 pairs) and `news+forum` (754 pairs).
- in-distribution (ID): the calibration genre is the scored genre; out-of-distribution (OOD): `captions` scored on
  news+forum and the reverse, and `sst2` scored on both.
Each cell is compressed minus original (Spearman x100) on the same pairs, with its 95% paired-bootstrap interval;
the summary row per recipe is the mean ID delta, the mean OOD delta and their gap (OOD - ID), the gap with its 95%
interval from one bootstrap that resamples each scored set's pairs once for all of its cells (gap_interval).
--split dev+test scores STS-B dev and test together (news+forum 754 -> 1,629 pairs, captions 625 -> 1,250; no pass
reads either split: calibration is train); the README's earlier tables scored test alone (the default).

Usage: .venv/bin/python benchmarks/transfer.py [--model DIR] [--recipes R ...] [--calib NAME=FILE ...]
                                               [--split test|dev+test] [--json OUT]
Quality only (no timing), so it may run beside other work; ~2 min per recipe and source on 2 cores (AVX2).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import numpy as np

import slimformer
from slimformer.data import calibration_texts, data_dir
from slimformer.measure.tasks import delta_interval, evaluate, spearman_rows, sts_pairs

GENRES = {"captions": ("main-captions",), "news+forum": ("main-news", "main-forum", "main-forums")}


def stsb_rows(split: str) -> list[list[str]]:
    with open(data_dir() / "stsb" / f"sts-{split}.csv", encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def genre_sentences(genres: tuple[str, ...]) -> list[str]:
    rows = [r for r in stsb_rows("train") if r[0] in genres]
    return list(dict.fromkeys(s for r in rows for s in (r[5], r[6])))


def sst2_sentences() -> list[str]:
    from slimformer.data import read_sst2

    return list(dict.fromkeys(s for s, _ in read_sst2("train") if len(s.split()) >= 4))


def shuffled(texts: list[str], seed: int = 0) -> list[str]:
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    return texts


def write_test_sets(folder: Path, splits: tuple[str, ...] = ("test",)) -> dict[str, str]:
    """STS-B `splits` split by genre as `sts:PATH` task files (generated under a temp folder, never committed)."""
    tasks = {}
    rows = [r for split in splits for r in stsb_rows(split)]
    for name, genres in GENRES.items():
        path = folder / f"stsb-{'-'.join(splits)}-{name.replace('+', '-')}.tsv"
        lines = ["sentence1\tsentence2\tscore"] + [f"{r[5]}\t{r[6]}\t{r[4]}" for r in rows if r[0] in genres]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tasks[name] = f"sts:{path}"
    return tasks


def gap_interval(gold: dict, ref: dict, cells: list[dict], resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of mean OOD delta - mean ID delta over `cells` ({"scored", "kind", "pred"}: one cell's
    per-pair cosines (n,) on scored set t). Each resample draws each set's pairs once, for the original (ref[t]) and
    every cell scored on t alike, so what the cells share cancels as in delta_interval. gold, ref: {t: (n,)}."""
    rng = np.random.default_rng(seed)
    idx = {t: rng.integers(0, len(g), (resamples, len(g))) for t, g in gold.items()}  # {t: (R, n)}
    base = {t: spearman_rows(ref[t][i], gold[t][i]) for t, i in idx.items()}  # {t: (R,)}

    def mean_delta(kind: str) -> np.ndarray:  # (R,)
        mine = [c for c in cells if c["kind"] == kind]
        return np.mean([spearman_rows(c["pred"][idx[c["scored"]]], gold[c["scored"]][idx[c["scored"]]])
                        - base[c["scored"]] for c in mine], axis=0)

    lo, hi = np.quantile(mean_delta("OOD") - mean_delta("ID"), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the embedded all-MiniLM-L6-v2)")
    ap.add_argument("--recipes", nargs="+", default=["int8", "prune(flops=0.8)+int8"])
    ap.add_argument("--calib", nargs="*", default=[], help="extra calibration sources NAME=FILE")
    ap.add_argument("--split", default="test", choices=["test", "dev+test"], help="STS-B pairs scored")
    ap.add_argument("--json", default=None, help="write every cell as JSON here")
    args = ap.parse_args()

    sources = {"captions": shuffled(genre_sentences(GENRES["captions"])),
               "news+forum": shuffled(genre_sentences(GENRES["news+forum"])),
               "sst2": shuffled(sst2_sentences()),
               "default": calibration_texts(None)}
    for spec in args.calib:
        name, path = spec.split("=", 1)
        sources[name] = calibration_texts(None, path=path)

    base = slimformer.load(args.model)
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        tasks = write_test_sets(Path(tmp), tuple(args.split.split("+")))
        ref = {t: evaluate(base, task) for t, task in tasks.items()}
        gold = {t: np.array([p[2] for p in sts_pairs(task)]) for t, task in tasks.items()}
        for t, r in ref.items():
            print(f"original on {t}: {r.value:.2f} (n={r.n})", flush=True)
        for recipe in args.recipes:
            for src, texts in sources.items():
                model = slimformer.compress(base, recipe, calib=texts)
                for t, task in tasks.items():
                    r = evaluate(model, task)
                    lo, hi = delta_interval(gold[t], ref[t].per_example, r.per_example)
                    kind = "ID" if src == t else ("OOD" if src in GENRES or src == "sst2" else "-")
                    cells.append({"recipe": recipe, "calib": src, "scored": t, "kind": kind,
                                  "delta": round(r.value - ref[t].value, 2), "lo": round(lo, 2), "hi": round(hi, 2),
                                  "pred": r.per_example})
                    print(f"{recipe:28s} calib={src:11s} on {t:10s} {kind:3s} "
                          f"{r.value - ref[t].value:+.2f} [{lo:+.2f}, {hi:+.2f}]", flush=True)

    print("\n| recipe | calibration | scored on | kind | delta | 95% interval |\n|---|---|---|---|---|---|")
    for c in cells:
        print(f"| `{c['recipe']}` | {c['calib']} | {c['scored']} | {c['kind']} | {c['delta']:+.2f} | "
              f"{c['lo']:+.2f} .. {c['hi']:+.2f} |")
    print(f"\nscored: STS-B {args.split}, " + ", ".join(f"{t} {len(g)} pairs" for t, g in gold.items()))
    print("\n| recipe | mean ID delta | mean OOD delta | gap (OOD - ID) [95%] | default calib, per genre |\n"
          "|---|---|---|---|---|")
    refs = {t: r.per_example for t, r in ref.items()}
    for recipe in args.recipes:
        mine = [c for c in cells if c["recipe"] == recipe]
        idd = np.mean([c["delta"] for c in mine if c["kind"] == "ID"])
        ood = np.mean([c["delta"] for c in mine if c["kind"] == "OOD"])
        lo, hi = gap_interval(gold, refs, mine)
        default = ", ".join(f"{c['scored']} {c['delta']:+.2f}" for c in mine if c["calib"] == "default")
        print(f"| `{recipe}` | {idd:+.2f} | {ood:+.2f} | {ood - idd:+.2f} [{lo:+.2f}, {hi:+.2f}] | {default} |")
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in c.items() if k != "pred"} for c in cells],
                                              indent=1))


if __name__ == "__main__":
    main()

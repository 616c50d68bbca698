"""Where real data lives and how to read it: STS-B, SST-2 and the default calibration text.

The data folder is read in place (never copied into the repo): `$SLIMFORMER_DATA`, else `../shared/data` beside the
repository checkout, else `../shared/data` beside the current directory. Without it (a pip install), the default
calibration text is the small corpus shipped in the package (corpus/calibration.txt, sources in corpus/NOTICE.md).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from .errors import DataFormatError, DataNotFoundError

_REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CORPUS = Path(__file__).resolve().parent / "corpus" / "calibration.txt"  # 4,308 sentences of 8 genres


def data_dir() -> Path:
    env = os.environ.get("SLIMFORMER_DATA")
    candidates = [Path(env)] if env else [_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    raise DataNotFoundError(f"data folder not found (tried {', '.join(map(str, candidates))}); set SLIMFORMER_DATA")


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataNotFoundError(f"data file not found: {path}")
    return path


def read_stsb(split: str = "test") -> list[tuple[str, str, float]]:
    """STS-B pairs (sentence1, sentence2, gold 0..5). Tab-separated, no quoting: split on tabs (see its README)."""
    path = _need(data_dir() / "stsb" / f"sts-{split}.csv")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            out.append((p[5], p[6], float(p[4])))
    return out


def _read_tsv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header cells, [(line number, cells)] of the non-empty lines below it) of a UTF-8 tab-separated file."""
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline().rstrip("\n").split("\t")
            return header, [(n, line.rstrip("\n").split("\t")) for n, line in enumerate(f, 2) if line.strip()]
    except UnicodeDecodeError:
        raise DataFormatError(f"{path}: not UTF-8 text") from None


def read_sts_tsv(path: str | Path) -> list[tuple[str, str, float]]:
    """Any TSV with header `sentence1<TAB>sentence2<TAB>score`."""
    path = _need(Path(path))
    header, rows = _read_tsv(path)
    if header[:3] != ["sentence1", "sentence2", "score"]:
        raise DataFormatError(f"{path}: header must be sentence1<TAB>sentence2<TAB>score, got {header[:3]}")
    out = []
    for n, r in rows:
        try:
            out.append((r[0], r[1], float(r[2])))
        except (IndexError, ValueError):
            raise DataFormatError(f"{path}, line {n}: must be sentence1<TAB>sentence2<TAB>score (a number)") from None
    return out


def read_sst2(split: str = "train") -> list[tuple[str, int]]:
    """SST-2 (sentence, label). `train` joins train_part1 and train_part2."""
    files = ["train_part1.tsv", "train_part2.tsv"] if split == "train" else [f"{split}.tsv"]
    out = []
    for name in files:
        with open(_need(data_dir() / "sst2" / name), encoding="utf-8") as f:
            next(f)  # header: sentence<TAB>label
            for line in f:
                s, label = line.rstrip("\n").rsplit("\t", 1)
                out.append((s.strip(), int(label)))
    return out


def read_cls_tsv(path: str | Path) -> list[tuple[str | tuple[str, str], str]]:
    """A classification TSV: (text or (sentence1, sentence2), label as written). The header names `sentence`, or
    `sentence1` and `sentence2`, and `label`, in any order (other columns are ignored). Labels stay text here: an
    id or a name, resolved against a model's id2label by measure/tasks.py."""
    path = _need(Path(path))
    header, rows = _read_tsv(path)
    names = ["sentence1", "sentence2"] if "sentence1" in header else ["sentence"]
    if not set(names + ["label"]) <= set(header):
        raise DataFormatError(f"{path}: header must name sentence (or sentence1 and sentence2) and label, "
                              f"tab-separated; got {header}")
    cols = [header.index(c) for c in names + ["label"]]
    out = []
    for n, r in rows:
        cells = [r[c].strip() if c < len(r) else "" for c in cols]
        if not all(cells):
            raise DataFormatError(f"{path}, line {n}: needs {' '.join(f'<{c}>' for c in names + ['label'])} "
                                  f"(tab-separated, none empty), got {len(r)} column(s)")
        out.append((cells[0] if len(names) == 1 else (cells[0], cells[1]), cells[-1]))
    if not out:
        raise DataFormatError(f"{path}: no examples below the header")
    return out


def read_lines(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped (one sentence a line); one-line errors naming the file when
    it is missing, a folder, unreadable, not UTF-8, or holds no text."""
    path = Path(path)
    if path.is_dir():
        raise DataFormatError(f"{path}: a folder, not a text file (one sentence a line)")
    try:
        with open(_need(path), encoding="utf-8") as f:
            texts = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError:
        raise DataFormatError(f"{path}: not UTF-8 text (one sentence a line)") from None
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not texts:
        raise DataFormatError(f"{path}: no text in it (empty or only whitespace; one sentence a line)")
    return texts


# lines of SHIPPED_CORPUS (1-based, inclusive) that the default text leaves out: UD_English-PUD, news and Wikipedia
# (corpus/NOTICE.md), the "other" text a compress report measures transfer on, so it stays text no pass fitted on
HELD_OUT_LINES = (3038, 4035)


def shipped_corpus(held_out: bool = False) -> list[str]:
    """The shipped corpus without its held-out lines (the part the default text adds), or only those lines."""
    lo, hi = HELD_OUT_LINES
    with open(SHIPPED_CORPUS, encoding="utf-8") as f:
        lines = [(i, line.strip()) for i, line in enumerate(f, 1) if line.strip()]
    return [t for i, t in lines if (lo <= i <= hi) == held_out]


def default_calibration() -> list[str]:
    """STS-B train and SST-2 train sentences from the data folder (never a test split); where the data folder or
    those files are absent, the corpus shipped in the package."""
    try:
        sts = [s for a, b, _ in read_stsb("train") for s in (a, b)]
        sst = [s for s, _ in read_sst2("train") if len(s.split()) >= 4]  # SST-2 train has many 1-2 word phrases
    except DataNotFoundError:
        return read_lines(SHIPPED_CORPUS)
    return list(dict.fromkeys(sts + sst))  # dedupe, keep order


def calibration_texts(n: int | None = 512, path: str | Path | None = None, seed: int = 0) -> list[str]:
    """Unlabeled calibration sentences, shuffled: one a line from `path`, else default_calibration(). Returns at
    most n sentences (None: all). The default text then goes on with the shipped corpus's web, review, email and
    technical sentences (shuffled; not its held-out news and Wikipedia): STS-B and SST-2 are captions, news, forums
    and movie reviews, and what `vocab` keeps and `distill` trains on should cover more than that (README, "Beyond
    the calibration text": it halved the tokens of other text that `vocab` drops). The first sentences, the sample
    importance and int8 scales read, are the same either way."""
    texts = read_lines(path) if path is not None else default_calibration()
    rng = random.Random(seed)
    rng.shuffle(texts)
    if path is None and (n is None or n > len(texts)):
        seen = set(texts)
        more = [t for t in shipped_corpus() if t not in seen]
        rng.shuffle(more)
        texts += more
    return texts[:n]

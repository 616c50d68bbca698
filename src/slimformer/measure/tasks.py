"""Quality on real benchmarks: STS (Spearman of cosine x100) for embedders, classification accuracy (x100, macro-F1
beside it) for sequence classifiers, and how far two models' scores differ beyond what resampling the benchmark's
examples moves (paired bootstrap)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from ..data import read_cls_tsv, read_lines, read_sst2, read_sts_tsv, read_stsb
from .lm import PPL_BATCH, coverage, document_nll, perplexity, ppl_interval
from .asr import utterance_errors, wer, wer_interval
from ..speech import read_speech_tsv
from ..vision import labelled_images
from ..errors import SlimformerError
from .labels import SST2_LABELS, fits_sst2, gold_ids, id2label_of, show_labels

AUTO = "auto"  # the model's own task: default_task(model)
SEQ_CLS = "sequence-classification"  # SlimModel.head of a sequence classifier
IMAGE_CLS = "image-classification"  # SlimModel.head of ViT / DeiT with their classifier
TASKS = "stsb, stsb-dev, sts:PATH, sst2, cls:PATH, ppl, ppl:PATH, wer:PATH"
SPEECH_SEQ2SEQ = "speech-seq2seq"  # SlimModel.head of Whisper
CAUSAL_LM = "causal-lm"  # SlimModel.head of a decoder LM


@dataclass(frozen=True)
class TaskResult:
    task: str
    metric: str
    value: float
    n: int
    # (n,) what delta_interval resamples: STS: each pair's cosine; classification: 1.0 where right, 0.0 where wrong
    per_example: np.ndarray | None = field(default=None, repr=False, compare=False)
    gold: np.ndarray | None = field(default=None, repr=False, compare=False)  # (n,) STS gold; None: classification
    extra: dict = field(default_factory=dict, compare=False)  # more figures for JSON and reports, e.g. macro-F1


def task_kind(task: str) -> str:
    """"sts" (scores sentence embeddings), "cls" (scores a sequence classifier's logits) or "ppl" (a causal LM's
    perplexity)."""
    if task == "ppl" or task.startswith("ppl:"):
        return "ppl"
    if task.startswith("wer:"):
        return "wer"
    if task in ("stsb", "stsb-dev") or task.startswith("sts:"):
        return "sts"
    if task == "sst2" or task.startswith("cls:"):
        return "cls"
    raise SlimformerError(f"unknown task '{task}' (tasks: {TASKS})")


def sts_pairs(task: str) -> list[tuple[str, str, float]]:
    if task == "stsb":
        return read_stsb("test")
    if task == "stsb-dev":
        return read_stsb("dev")
    if task.startswith("sts:"):
        return read_sts_tsv(task[4:])
    raise SlimformerError(f"unknown STS task '{task}' (tasks: {TASKS})")


def images_task(task: str) -> bool:
    """cls:FOLDER: an image classifier's labelled images (cls:PATH of a file: a text classifier's TSV)."""
    return task.startswith("cls:") and Path(task[4:]).is_dir()


def cls_examples(task: str) -> list[tuple[str | tuple[str, str], str]]:
    """(text or (sentence1, sentence2), or an image's path; label as written: an id or a name) of a classification
    task: cls:PATH is a TSV of texts, or a folder of images with one subfolder per label."""
    if task == "sst2":
        return [(s, SST2_LABELS[y]) for s, y in read_sst2("dev")]
    if images_task(task):
        return labelled_images(task[4:])
    if task.startswith("cls:"):
        return read_cls_tsv(task[4:])
    raise SlimformerError(f"unknown classification task '{task}' (tasks: {TASKS})")


def ppl_documents(task: str) -> list[str]:
    """The documents of a perplexity task: `ppl` is SST-2 dev's sentences (held out: calibration reads train
    splits), `ppl:PATH` a text file, one document a line."""
    if task == "ppl":
        return [s for s, _ in read_sst2("dev")]
    return read_lines(task[4:])


def task_inputs(task: str) -> list:
    """What a model is given for `task`, each input once (for throughput): sentences (STS), texts or pairs (cls)."""
    if task_kind(task) == "sts":
        return list(dict.fromkeys(s for a, b, _ in sts_pairs(task) for s in (a, b)))
    if task_kind(task) == "ppl":
        return ppl_documents(task)
    if task_kind(task) == "wer":
        return read_speech_tsv(task[4:])[0]
    return list(dict.fromkeys(x for x, _ in cls_examples(task)))


def inference_fn(model):
    """What a user calls on the model: encode() for an embedder, predict() for a classifier, for a causal LM the
    scoring of documents (each one's next-token log-likelihood, as perplexity runs it; at most PPL_BATCH documents a
    forward: its logits are vocabulary-wide); fn(inputs, batch_size)."""
    if getattr(model, "head", None) == CAUSAL_LM:
        return lambda docs, batch_size=PPL_BATCH: document_nll(model, list(docs), min(batch_size, PPL_BATCH))
    return model.predict if getattr(model, "head", None) else model.encode


def default_task(model) -> str:
    """The model's own task: stsb for an embedder, sst2 for a 2-label sequence classifier whose labels are SST-2's
    (negative/positive in any order, or LABEL_0/LABEL_1 read as ids); anything else must be named."""
    head = getattr(model, "head", None)
    if head is None and getattr(model, "modality", "text") != "text":
        raise SlimformerError(f"no quality task for {_what(model)} without a head yet (an image classifier takes "
                              "--task cls:FOLDER)")
    if head is None:
        return "stsb"
    if head == CAUSAL_LM:
        return "ppl"
    if head == SEQ_CLS:
        labels = id2label_of(model)
        if fits_sst2(labels):
            return "sst2"
        raise SlimformerError(f"no built-in task has this classifier's labels ({show_labels(labels)}): give --task "
                              "cls:PATH, a TSV with a sentence (or sentence1, sentence2) and a label column")
    if head == SPEECH_SEQ2SEQ:
        raise SlimformerError("a speech recognizer is scored on a speech set: give --task wer:PATH (a TSV with "
                              "header audio<TAB>text; benchmarks/speech_set.py makes one)")
    if head == IMAGE_CLS:
        raise SlimformerError("an image classifier is scored on labelled images: give --task cls:FOLDER (one "
                              "subfolder per label, named as the label, its images inside)")
    raise SlimformerError(f"no quality task for a {head} model yet (compress: --task none)")


def _what(model) -> str:
    """What a model is, for the one-line errors: "an embedder", "an image model", "a causal LM", "an
    image-classification model"..."""
    head = getattr(model, "head", None)
    if head is None:
        return "an embedder" if getattr(model, "modality", "text") == "text" else f"an {model.modality} model"
    return "a causal LM" if head == CAUSAL_LM else f"{'an' if head[0] in 'aeiou' else 'a'} {head} model"


def _check_fits(task: str, model) -> str:
    """The task's kind, or a one-line error when the model cannot be scored on it."""
    kind, head, what = task_kind(task), getattr(model, "head", None), _what(model)
    if (kind == "wer") != (head == SPEECH_SEQ2SEQ):
        raise SlimformerError(f"task '{task}': word error rate (wer:PATH) scores a speech recognizer and a speech "
                              f"recognizer takes only wer:PATH; this model is {what}")
    if (kind == "ppl") != (head == CAUSAL_LM):
        raise SlimformerError(f"task '{task}': perplexity scores a causal LM and a causal LM takes only perplexity "
                              f"(ppl, ppl:PATH); this model is {what}")
    images = images_task(task)
    if kind == "cls" and head != (IMAGE_CLS if images else SEQ_CLS):
        what += " (no classification head)" if head is None else ""
        scores = "an image classifier's predictions (a folder)" if images else "a sequence classifier's predictions"
        raise SlimformerError(f"task '{task}' scores {scores}; this model is {what}")
    if kind == "sts" and (head is not None or getattr(model, "modality", "text") != "text"):
        hint = " (its tasks: sst2, cls:PATH)" if head == SEQ_CLS else ""
        raise SlimformerError(f"task '{task}' scores sentence embeddings; this model is {what}{hint}")
    return kind


def check_task(task: str | None, model) -> str:
    """The task `model` will be scored on (AUTO: its own), after checking that the task fits the model and that the
    data reads (labels resolved): call it before slow work, so a mismatch fails in seconds."""
    task = default_task(model) if task in (None, AUTO) else task
    kind = _check_fits(task, model)
    if kind == "cls":
        examples = cls_examples(task)
        gold_ids(task, [y for _, y in examples], model)
    elif kind == "ppl":
        ppl_documents(task)
    elif kind == "wer":
        read_speech_tsv(task[4:])
    else:
        sts_pairs(task)
    return task


# --------------------------------------------------------------------------------------------------------- scoring

def pair_cosines(encode, pairs: list[tuple[str, str, float]], batch_size: int = 64) -> np.ndarray:
    """cosine(emb(s1), emb(s2)) of each pair: (n,). `encode(texts) -> (N, H) array`; each sentence encoded once."""
    unique = list(dict.fromkeys(s for a, b, _ in pairs for s in (a, b)))
    index = {s: i for i, s in enumerate(unique)}
    emb = np.asarray(encode(unique, batch_size=batch_size), dtype=np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    a = emb[[index[p[0]] for p in pairs]]
    b = emb[[index[p[1]] for p in pairs]]
    return (a * b).sum(1)


def macro_f1(gold: np.ndarray, pred: np.ndarray) -> float:
    """Mean F1 over the labels that occur in gold or in pred (as scikit-learn's f1_score(average="macro")): 0..1."""
    f1 = []
    for c in np.union1d(gold, pred):
        tp = np.sum((pred == c) & (gold == c))
        f1.append(2 * tp / (np.sum(pred == c) + np.sum(gold == c)))
    return float(np.mean(f1))


def evaluate(model, task: str | None = AUTO, batch_size: int = 64) -> TaskResult:
    """STS: Spearman x100 between each pair's cosine and its gold score. Classification: accuracy x100 of the
    argmax of model.predict's logits (N, C), macro-F1 x100 in `extra`. The per-example values come along for
    delta_interval. task AUTO: the model's own (default_task)."""
    task = default_task(model) if task in (None, AUTO) else task
    kind = _check_fits(task, model)
    if kind == "ppl":  # per_example: each document's nll; gold: its token count (what ppl_interval resamples)
        docs = ppl_documents(task)
        nll, tokens = document_nll(model, docs)
        kept = coverage(model, docs)  # a vocabulary-pruned model: the share of the tokens it can predict
        return TaskResult(task, "perplexity", perplexity(nll, tokens), len(nll), nll, tokens,
                          {"tokens": int(tokens.sum()), **({"coverage": round(kept, 4)} if kept is not None else {})})
    if kind == "wer":  # per_example: each utterance's word errors; gold: its reference words (wer_interval)
        edits, words, _ = utterance_errors(model, *read_speech_tsv(task[4:]))
        return TaskResult(task, "wer", wer(edits, words), len(edits), edits, words, {"words": int(words.sum())})
    if kind == "sts":
        pairs = sts_pairs(task)
        cos = pair_cosines(model.encode, pairs, batch_size)
        gold = np.array([p[2] for p in pairs])
        return TaskResult(task, "spearman_cosine_x100", float(spearmanr(cos, gold).statistic * 100), len(pairs), cos,
                          gold)
    examples = cls_examples(task)
    gold = gold_ids(task, [y for _, y in examples], model)  # (n,)
    logits = np.asarray(model.predict([x for x, _ in examples], batch_size=batch_size))  # (n, C)
    if logits.shape != (len(examples), len(id2label_of(model))):
        raise SlimformerError(f"predict gave logits of shape {logits.shape} for {len(examples)} examples and "
                              f"{len(id2label_of(model))} labels")
    pred = logits.argmax(1)
    correct = (pred == gold).astype(np.float64)
    return TaskResult(task, "accuracy_x100", float(correct.mean() * 100), len(examples), correct, None,
                      {"macro_f1_x100": macro_f1(gold, pred) * 100})


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman x100 of each row of x (R, n) with the same row of y (R, n): Pearson of ranks (ties averaged)."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(1, keepdims=True)
    ry -= ry.mean(1, keepdims=True)
    return 100 * (rx * ry).sum(1) / np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))


def delta_interval(gold, a: np.ndarray, b: np.ndarray, resamples: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float]:
    """Paired bootstrap interval of metric(b) - metric(a) (x100) on the same n examples: both models are scored on
    one resample of the examples at a time, so what the examples share cancels. An interval that holds 0: the
    benchmark cannot tell the two apart.
    gold: STS gold scores, a and b each pair's cosine (metric: Spearman); None: a and b per-example correctness,
    1.0 or 0.0 (metric: accuracy). TaskResult.gold and .per_example are these."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(a), (resamples, len(a)))  # (R, n)
    if gold is None:
        d = 100 * (b - a)[idx].mean(1)  # exactly 0 for identical models
    else:
        gold = np.asarray(gold, dtype=np.float64)
        d = spearman_rows(b[idx], gold[idx]) - spearman_rows(a[idx], gold[idx])
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def result_interval(base: TaskResult, other: TaskResult, **kw) -> tuple[float, float]:
    """delta_interval of other - base, two results of one task."""
    if base.task != other.task or base.n != other.n:
        raise ValueError(f"results of different tasks: {base.task} (n={base.n}) and {other.task} (n={other.n})")
    if base.metric == "perplexity":
        return ppl_interval(base.gold, base.per_example, other.per_example, **kw)
    if base.metric == "wer":
        return wer_interval(base.gold, base.per_example, other.per_example, **kw)
    return delta_interval(base.gold, base.per_example, other.per_example, **kw)

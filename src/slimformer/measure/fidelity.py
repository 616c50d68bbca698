"""How faithfully a compressed model reproduces its original, label-free, on text like the calibration text and on
text unlike it: the "may not transfer" warning a compress report carries next to the task's delta.

A task's delta says how much was lost on that task; a model fitted on calibration text may lose more on a user's
other text (issue 17: STS-B -0.19, another STS set -1.40). Labels for the other text rarely exist, so the report
compares the compressed model with the original on it: for an embedder, the Spearman correlation (x100) of their
pairwise sentence similarities (what any similarity task ranks); for a classifier, how often their predicted
classes agree (%). 100 means: behaves as the original. A gap between the two texts is the transfer risk.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr


def _pair_cosines(model, texts: list[str]) -> np.ndarray:
    """Cosine of every pair of sentences' embeddings: (N (N - 1) / 2,)."""
    e = np.asarray(model.encode(texts, batch_size=64), dtype=np.float64)  # (N, H)
    e /= np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
    iu = np.triu_indices(len(texts), 1)
    return (e @ e.T)[iu]


def fidelity(base, model, texts: list[str]) -> float:
    """Spearman x100 of the two models' pairwise similarities (embedders), or % of equal predicted classes
    (sequence classifiers), over `texts`."""
    if getattr(base, "head", None) == "sequence-classification":
        agree = base.predict(texts).argmax(-1) == model.predict(texts).argmax(-1)
        return float(100 * agree.mean())
    return float(100 * spearmanr(_pair_cosines(base, texts), _pair_cosines(model, texts)).statistic)


def risk_texts(corpus: list[str], other: list[str], used: int, n: int) -> dict[str, list[str]]:
    """The two texts a report compares on: "calibration-like", sentences of the calibration corpus that no pass
    fitted on (the `n` after the first `used`), and "other", `n` sentences of `other` (a different corpus) that are
    not in the calibration corpus. A kind with fewer than 16 sentences is left out."""
    seen = set(corpus)
    kinds = {"calibration-like": corpus[used : used + n], "other": [s for s in other if s not in seen][:n]}
    return {k: v for k, v in kinds.items() if len(v) >= 16}


def transfer_risk(base, model, calib: str | None = None) -> dict:
    """{"metric", kind: fidelity x100} of `model` against `base` on each risk_texts kind, for the compress report:
    the calibration text is `calib` (a file) or the default one, the other text the package's corpus's held-out news
    and Wikipedia (data.HELD_OUT_LINES; shuffled, seeded), minus anything in the calibration text."""
    import random

    from ..api import CALIB_SENTENCES, REPORT_SENTENCES
    from ..data import calibration_texts, shipped_corpus

    other = shipped_corpus(held_out=True)
    random.Random(0).shuffle(other)
    kinds = risk_texts(calibration_texts(None, path=calib), other, CALIB_SENTENCES, REPORT_SENTENCES)
    metric = "agreement_pct" if getattr(base, "head", None) == "sequence-classification" else "similarity_spearman_x100"
    return {"metric": metric, **{k: round(fidelity(base, model, t), 2) for k, t in kinds.items()}}


def risk_md(risk: dict) -> str:
    """One paragraph for report.md."""
    what = ("predicted classes equal to the original's (%)" if risk["metric"] == "agreement_pct" else
            "Spearman x100 of its pairwise sentence similarities against the original's")
    kinds = ", ".join(f"{k} text {v:.2f}" for k, v in risk.items() if k != "metric")
    return (f"Fidelity to the original, label-free ({what}; 100: behaves the same): {kinds}. A lower value on other "
            "text than on calibration-like text means the task's delta may not hold on other data (pass --calib "
            "with text like yours, or give a narrowed model a minute of distill before int8).")

"""A quality budget's unit (search --max-drop): how much worse a score is than the original's, for every metric a
task gives (measure/tasks.py): higher-is-better scores, word error rate, perplexity."""

from __future__ import annotations


def drop(metric: str, original: float, value: float) -> float:
    """How much worse `value` scores than the original, in the unit a quality budget (search --max-drop) is given
    in: points of a higher-is-better score (Spearman, accuracy x100), WER points, percent of the original's
    perplexity (a perplexity's scale is the text's own: 236 on one file, 15 on another)."""
    if metric == "perplexity":
        return 100 * (value / original - 1)
    return value - original if metric == "wer" else original - value


def worst_allowed(metric: str, original: float, max_drop: float) -> float:
    """The score whose drop() from the original is max_drop: where a quality budget's line is drawn."""
    if metric == "perplexity":
        return original * (1 + max_drop / 100)
    return original + max_drop if metric == "wer" else original - max_drop


def drop_unit(metric: str) -> str:
    """What follows a drop's number in a sentence: " points", "% of the perplexity", " WER points"."""
    return {"perplexity": "% of the perplexity", "wer": " WER points"}.get(metric, " points")


def drop_interval(metric: str, original: float, lo: float, hi: float) -> tuple[float, float]:
    """result_interval's (lo, hi) of other - base, in the metric's unit -> the same interval of drop()."""
    if metric == "perplexity":
        return 100 * lo / original, 100 * hi / original
    return (lo, hi) if metric == "wer" else (-hi, -lo)

"""Config dataclasses of the passes whose implementation lives in later milestones' files. Each validates itself
in __post_init__, so a bad recipe fails at parse time, before any model is touched."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RecipeError


def check_keep(step: str, keep: float | int) -> None:
    """K is a fraction in (0, 1] (a float) or a count >= 1 (an int)."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise RecipeError(f"{step}: keep must be a fraction in (0, 1] or a count >= 1, got {keep!r}")
    if isinstance(keep, float) and not 0.0 < keep <= 1.0:
        raise RecipeError(f"{step}: keep fraction must be in (0, 1], got {keep}")
    if isinstance(keep, int) and keep < 1:
        raise RecipeError(f"{step}: keep count must be >= 1, got {keep}")


@dataclass(frozen=True)
class Heads:
    keep: float | int  # fraction of all heads (placed by importance), or a count kept in every layer
    tune: bool = False  # least-squares mask tuning of what is kept (Kwon et al. 2022); off: it cost STS-B here

    def __post_init__(self):
        check_keep("heads", self.keep)


@dataclass(frozen=True)
class Ffn:
    keep: float | int  # fraction of all FFN neurons (placed by importance), or a count kept in every layer
    tune: bool = False  # least-squares mask tuning of what is kept

    def __post_init__(self):
        check_keep("ffn", self.keep)


@dataclass(frozen=True)
class Layers:
    keep: float | int  # fraction of layers, or a count

    def __post_init__(self):
        check_keep("layers", self.keep)


@dataclass(frozen=True)
class Prune:
    flops: float  # target fraction of the original encoder's FLOPs, heads and FFN neurons chosen jointly
    tune: bool = False  # least-squares mask tuning of what is kept

    def __post_init__(self):
        if isinstance(self.flops, bool) or not isinstance(self.flops, (int, float)) or not 0 < self.flops <= 1:
            raise RecipeError(f"prune: flops must be a fraction in (0, 1], got {self.flops!r}")


@dataclass(frozen=True)
class Vocab:
    corpus: str | None = None  # text file, one sentence a line; default: the calibration text
    keep: int | None = None  # keep the N most frequent tokens (plus the special tokens)
    fallback: str = "nearest"  # a dropped token reads the row of its nearest kept token (cosine), or "unk"

    def __post_init__(self):
        if self.fallback not in ("nearest", "unk"):
            raise RecipeError(f"vocab: fallback must be nearest or unk, got {self.fallback!r}")
        if self.keep is not None and (isinstance(self.keep, bool) or not isinstance(self.keep, int)
                                      or self.keep < 1):
            raise RecipeError(f"vocab: keep must be a count >= 1, got {self.keep!r}")


@dataclass(frozen=True)
class LowRank:
    ratio: float | None = None  # parameter fraction of the factorized Linears
    energy: float | None = None  # share of spectral energy kept
    rank: int | None = None  # one rank for all
    fisher: bool = False  # Fisher-weighted SVD (Hsu et al. 2022)

    def __post_init__(self):
        given = [k for k in ("ratio", "energy", "rank") if getattr(self, k) is not None]
        if len(given) != 1:
            raise RecipeError(f"lowrank: give exactly one of ratio=, energy=, rank= (got {given or 'none'})")
        for k in ("ratio", "energy"):
            v = getattr(self, k)
            if v is not None and not 0 < v <= 1:
                raise RecipeError(f"lowrank: {k} must be in (0, 1], got {v}")
        if self.rank is not None and (not isinstance(self.rank, int) or self.rank < 1):
            raise RecipeError(f"lowrank: rank must be an integer >= 1, got {self.rank!r}")
        if not isinstance(self.fisher, bool):
            raise RecipeError(f"lowrank: fisher must be true or false, got {self.fisher!r}")


@dataclass(frozen=True)
class FNet:
    layers: str | int = "all"  # "all" or how many layers (counted from the first) get Fourier mixing

    def __post_init__(self):
        if self.layers != "all" and (not isinstance(self.layers, int) or self.layers < 1):
            raise RecipeError(f"fnet: layers must be 'all' or a count >= 1, got {self.layers!r}")


@dataclass(frozen=True)
class Distill:
    minutes: float | None = None  # wall-clock budget
    steps: int | None = None  # or a number of optimizer steps
    lr: float = 3e-4  # AdamW peak (warm-up, then linear decay); beat 1e-4 by 2 STS-B points on low-rank
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"  # where to train ("cuda" when lent a GPU); the model comes back to the CPU

    def __post_init__(self):
        if not (isinstance(self.lr, float) and self.lr > 0) or not (isinstance(self.batch_size, int)
                                                                    and self.batch_size >= 1):
            raise RecipeError(f"distill: lr must be > 0 and batch_size >= 1, got {self.lr!r}, {self.batch_size!r}")
        if (self.minutes is None) == (self.steps is None):
            raise RecipeError("distill: give exactly one of minutes= or steps=")
        if self.device not in ("cpu", "cuda"):
            raise RecipeError(f"distill: device must be cpu or cuda, got {self.device!r}")
        if self.minutes is not None and not self.minutes > 0:
            raise RecipeError(f"distill: minutes must be > 0, got {self.minutes}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise RecipeError(f"distill: steps must be an integer >= 1, got {self.steps!r}")


@dataclass(frozen=True)
class Freeze:
    pass

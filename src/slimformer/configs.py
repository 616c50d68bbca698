"""The config dataclass of every recipe step. Torch-free, so a recipe parses (and fails) before torch loads.

Each class names its step (`step`, the word in recipe text) and its phase (`phase`: a recipe's phases must not
decrease) and validates its own fields in __post_init__, so a bad recipe fails at parse time, before any model is
touched, and always as a RecipeError that names the step: a bool is not a number, nan and inf are not finite, a
word is not a count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from .errors import RecipeError

# phases, in the order a recipe runs them
STRUCTURE, DISTILL, INT8, FREEZE = range(4)
PHASE_NAMES = ("structure", "distill", "int8", "freeze")


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_real(v) -> bool:
    """A finite number; an int is one too (int 1 is the fraction 1.0), a bool is not."""
    return is_int(v) or (isinstance(v, float) and math.isfinite(v))


def require(ok: bool, step: str, message: str) -> None:
    if not ok:
        raise RecipeError(f"{step}: {message}")


def check_keep(step: str, keep: float | int) -> None:
    """K is a fraction in (0, 1] (a float) or a count >= 1 (an int)."""
    require(is_real(keep), step, f"keep must be a fraction in (0, 1] or a count >= 1, got {keep!r}")
    if isinstance(keep, float):
        require(0.0 < keep <= 1.0, step, f"keep fraction must be in (0, 1], got {keep}")
    require(not is_int(keep) or keep >= 1, step, f"keep count must be >= 1, got {keep}")


def check_fraction(step: str, key: str, v) -> None:
    require(is_real(v) and 0 < v <= 1, step, f"{key} must be a fraction in (0, 1], got {v!r}")


def check_count(step: str, key: str, v, least: int = 1) -> None:
    require(is_int(v) and v >= least, step, f"{key} must be an integer >= {least}, got {v!r}")


# What an embedder's head/neuron importance is the Fisher information of: "states", every block's token states
# (each block's share normalized per sentence), or "pooled", the pooled sentence embedding only. "states" is the
# default: on benchmarks/transfer.py it lost less out of distribution (README, "Beyond the calibration text").
FISHER_TARGETS = ("states", "pooled")


def check_fisher(step: str, v) -> None:
    require(v in FISHER_TARGETS, step, f"fisher must be one of {', '.join(FISHER_TARGETS)}, got {v!r}")


def check_bool(step: str, key: str, v) -> None:
    require(isinstance(v, bool), step, f"{key} must be true or false, got {v!r}")


@dataclass(frozen=True)
class Heads:
    step: ClassVar[str] = "heads"
    phase: ClassVar[int] = STRUCTURE
    keep: float | int  # fraction of all heads (placed by importance), or a count kept in every layer
    tune: bool = False  # least-squares mask tuning of what is kept (Kwon et al. 2022); off: it cost STS-B here
    fisher: str = "states"  # an embedder's importance target (FISHER_TARGETS); a classifier's is its logits
    compensate: bool = True  # fold dropped units into the kept ones by regression (compensate.py); false: off

    def __post_init__(self):
        check_keep(self.step, self.keep)
        check_bool(self.step, "tune", self.tune)
        check_bool(self.step, "compensate", self.compensate)
        check_fisher(self.step, self.fisher)


@dataclass(frozen=True)
class Ffn:
    step: ClassVar[str] = "ffn"
    phase: ClassVar[int] = STRUCTURE
    keep: float | int  # fraction of all FFN neurons (placed by importance), or a count kept in every layer
    tune: bool = False  # least-squares mask tuning of what is kept
    fisher: str = "states"  # an embedder's importance target (FISHER_TARGETS); a classifier's is its logits
    compensate: bool = True  # fold dropped units into the kept ones by regression (compensate.py); false: off

    def __post_init__(self):
        check_keep(self.step, self.keep)
        check_bool(self.step, "tune", self.tune)
        check_bool(self.step, "compensate", self.compensate)
        check_fisher(self.step, self.fisher)


@dataclass(frozen=True)
class Layers:
    step: ClassVar[str] = "layers"
    phase: ClassVar[int] = STRUCTURE
    keep: float | int  # fraction of layers, or a count

    def __post_init__(self):
        check_keep(self.step, self.keep)


# weights of head importance relative to neuron importance that prune(flops=F) tries when no head_weight is given:
# the diagonal Fisher of a head mask misses the interactions inside the head, and the right exchange rate differs
# by model, so it is measured (here, torch-free, so that the search space can sample among them)
HEAD_WEIGHTS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0)


@dataclass(frozen=True)
class Prune:
    step: ClassVar[str] = "prune"
    phase: ClassVar[int] = STRUCTURE
    flops: float  # target fraction of the original encoder's FLOPs, heads and FFN neurons chosen jointly
    tune: bool = False  # least-squares mask tuning of what is kept
    fisher: str = "states"  # an embedder's importance target (FISHER_TARGETS); a classifier's is its logits
    compensate: bool = True  # fold dropped units into the kept ones by regression (compensate.py); false: off
    head_weight: float | None = None  # head vs neuron importance exchange rate; None: measured among HEAD_WEIGHTS

    def __post_init__(self):
        check_fraction(self.step, "flops", self.flops)
        check_bool(self.step, "tune", self.tune)
        check_bool(self.step, "compensate", self.compensate)
        check_fisher(self.step, self.fisher)
        require(self.head_weight is None or is_real(self.head_weight) and self.head_weight > 0, self.step,
                f"head_weight must be a positive number, got {self.head_weight!r}")


@dataclass(frozen=True)
class Vocab:
    step: ClassVar[str] = "vocab"
    phase: ClassVar[int] = STRUCTURE
    corpus: str | None = None  # text file, one sentence a line; default: the calibration text
    keep: int | None = None  # keep the N most frequent tokens (plus the special tokens)
    fallback: str = "nearest"  # a dropped token reads the row of its nearest kept token (cosine), or "unk"
    # the tokenizer's first `common` ids stay whatever the text (its most common pieces); None: passes/vocab.py's
    # COMMON_TOKENS, or 0 when keep is given (keep is a size: exactly the keep most frequent of the text) or the
    # vocabulary is multilingual-sized
    common: int | None = None

    def __post_init__(self):
        # a number is no path (open(5) would read file descriptor 5)
        require(self.corpus is None or isinstance(self.corpus, str) and self.corpus != "", self.step,
                f"corpus must be a path to a text file, got {self.corpus!r}")
        require(self.fallback in ("nearest", "unk"), self.step,
                f"fallback must be nearest or unk, got {self.fallback!r}")
        require(self.keep is None or is_int(self.keep) and self.keep >= 1, self.step,
                f"keep must be a count >= 1, got {self.keep!r}")
        require(self.common is None or is_int(self.common) and self.common >= 0, self.step,
                f"common must be a count >= 0, got {self.common!r}")


@dataclass(frozen=True)
class LowRank:
    step: ClassVar[str] = "lowrank"
    phase: ClassVar[int] = STRUCTURE
    ratio: float | None = None  # parameter fraction of the factorized Linears
    energy: float | None = None  # share of spectral energy kept
    rank: int | None = None  # one rank for all
    fisher: bool = False  # Fisher-weighted SVD (Hsu et al. 2022)

    def __post_init__(self):
        given = [k for k in ("ratio", "energy", "rank") if getattr(self, k) is not None]
        require(len(given) == 1, self.step, f"give exactly one of ratio=, energy=, rank= (got {given or 'none'})")
        for k in ("ratio", "energy"):
            if getattr(self, k) is not None:
                check_fraction(self.step, k, getattr(self, k))
        if self.rank is not None:
            check_count(self.step, "rank", self.rank)
        check_bool(self.step, "fisher", self.fisher)


@dataclass(frozen=True)
class FNet:
    step: ClassVar[str] = "fnet"
    phase: ClassVar[int] = STRUCTURE
    layers: str | int = "all"  # "all" or how many layers (counted from the first) get Fourier mixing

    def __post_init__(self):
        require(self.layers == "all" if isinstance(self.layers, str) else is_int(self.layers) and self.layers >= 1,
                self.step, f"layers must be 'all' or a count >= 1, got {self.layers!r}")


@dataclass(frozen=True)
class Distill:
    step: ClassVar[str] = "distill"
    phase: ClassVar[int] = DISTILL
    minutes: float | None = None  # wall-clock budget
    steps: int | None = None  # or a number of optimizer steps
    lr: float | None = None  # AdamW peak (warm-up, then linear decay); None: distill.LR by kind
    # items per step; None: BATCH_SIZE by kind (a causal LM's logits are vocabulary-wide, a speech item is 30 s)
    batch_size: int | None = None
    seed: int = 0
    device: str = "cpu"  # where to train ("cuda" when lent a GPU); the model comes back to the CPU
    temperature: float = 2.0  # of the KL term on a classifier's logits (softmax(z / T), scaled by T^2)

    def __post_init__(self):
        require(self.lr is None or is_real(self.lr) and self.lr > 0, self.step,
                f"lr must be a number > 0, got {self.lr!r}")
        require(is_real(self.temperature) and self.temperature > 0, self.step,
                f"temperature must be a number > 0, got {self.temperature!r}")
        if self.batch_size is not None:
            check_count(self.step, "batch_size", self.batch_size)
        # torch.Generator.manual_seed takes a 64-bit seed
        require(is_int(self.seed) and 0 <= self.seed < 2**63, self.step,
                f"seed must be an integer in [0, 2^63), got {self.seed!r}")
        require((self.minutes is None) != (self.steps is None), self.step, "give exactly one of minutes= or steps=")
        require(self.device in ("cpu", "cuda"), self.step, f"device must be cpu or cuda, got {self.device!r}")
        if self.minutes is not None:
            require(is_real(self.minutes) and self.minutes > 0, self.step,
                    f"minutes must be a number > 0, got {self.minutes!r}")
        if self.steps is not None:
            check_count(self.step, "steps", self.steps)


@dataclass(frozen=True)
class Int8:
    step: ClassVar[str] = "int8"
    phase: ClassVar[int] = INT8
    smooth: float = 0.5  # SmoothQuant migration strength a in [0, 1]; 0 turns it off
    fp32: int = 0  # keep this many of the most sensitive Linears in fp32 (measured on calibration text)
    embeddings: bool = True  # int8 embedding tables (token, position, type) with per-row scales
    embedding_bits: int = 8  # bits of the token table: 8, or 4 (half the size again; for the last step to 10x)
    # Linears that keep float activations (int8 weights, a float kernel): N, the N with the noisiest int8 inputs on
    # calibration text; "auto", as little compute as keeps a next-token model's KL within quantize.ACT_KL of
    # weights-only int8, the Linears ranked by KL per FLOP (none for other models: their activation int8 harmless)
    float_act: int | str = "auto"

    def __post_init__(self):
        require(is_real(self.smooth) and 0 <= self.smooth <= 1, self.step,
                f"smooth must be in [0, 1], got {self.smooth!r}")
        check_count(self.step, "fp32", self.fp32, least=0)
        require(self.float_act == "auto" or (is_int(self.float_act) and self.float_act >= 0), self.step,
                f"float_act must be auto or an integer >= 0, got {self.float_act!r}")
        check_bool(self.step, "embeddings", self.embeddings)
        require(is_int(self.embedding_bits) and self.embedding_bits in (4, 8), self.step,
                f"embedding_bits must be 8 or 4, got {self.embedding_bits!r}")


@dataclass(frozen=True)
class Freeze:
    step: ClassVar[str] = "freeze"
    phase: ClassVar[int] = FREEZE


STATIC_TOKENS = ("context", "alone")


@dataclass(frozen=True)
class Static:
    step: ClassVar[str] = "static"
    phase: ClassVar[int] = STRUCTURE
    followed_by: ClassVar[tuple[str, ...]] = ("int8",)  # the last structural step: no transformer is left after it
    dims: int = 256  # PCA width of the token vectors
    fit: float = 0  # minutes of training the vectors towards the teacher's sentence embeddings (0: none)
    zipf: bool = True  # SIF weights a / (a + p) from the calibration text's token frequencies, folded into the rows
    tokens: str = "context"  # token vectors averaged over the calibration text ("alone": [CLS] tok [SEP], model2vec)
    steps: int = 0  # or train this many optimizer steps instead of `fit` minutes

    def __post_init__(self):
        check_count(self.step, "dims", self.dims)
        require(is_real(self.fit) and self.fit >= 0, self.step, f"fit must be minutes >= 0, got {self.fit!r}")
        check_bool(self.step, "zipf", self.zipf)
        require(self.tokens in STATIC_TOKENS, self.step,
                f"tokens must be one of {', '.join(STATIC_TOKENS)}, got {self.tokens!r}")
        check_count(self.step, "steps", self.steps, least=0)
        require(not (self.fit and self.steps), self.step, "give fit= (minutes) or steps=, not both")


# every step, in the order a recipe may run them
CONFIGS: tuple[type, ...] = (Heads, Ffn, Layers, Prune, Vocab, LowRank, FNet, Static, Distill, Int8, Freeze)

"""The search space: an Optuna trial's parameters -> a candidate (recipe text + runtime), and the objectives.

Torch-free, like recipe.py: the parent process of a search only samples and bookkeeps, the trials (subprocesses)
load torch. Every parameter has an "off" value, so the original itself (only a runtime change) is in the space.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..configs import HEAD_WEIGHTS
from ..errors import SlimformerError
from ..recipe import parse, to_text

# objective -> what the trial measures; every objective is a cost relative to the original measured in the same
# alternating run (candidate / original; for throughput original / candidate), so lower is better and a slow spell
# of the machine between trials does not move it.
OBJECTIVES = {"latency@1x16": (1, 16), "latency@8x128": (8, 128), "latency@32x32": (32, 32),
              "throughput": None, "size": None}


@dataclass(frozen=True)
class Family:
    """What a model family's search measures and samples: its objectives (the first is the default), each timed
    with the family's own speed keys (probe.py), and the steps its passes refuse (passes/__init__.py)."""
    what: str  # for the one-line errors
    objectives: tuple[str, ...]
    no_steps: tuple[str, ...] = ()
    token_table: bool = True  # int8's embedding_bits is sampled only where there is a token table


FAMILIES = {  # a causal LM: prefill (time to the first token) at batch x prompt tokens, greedy decoding tokens/s;
    # speech: the encoder on 30 s of audio and the transcription real-time factor; images: one image, a batch of 8
    "text": Family("a text model", ("latency@8x128", *(o for o in OBJECTIVES if o != "latency@8x128"))),
    "causal-lm": Family("a causal LM", ("prefill@8x128", "prefill@1x128", "decode", "size"), no_steps=("fnet",)),
    "speech": Family("a speech model", ("rtf", "encoder", "size"), no_steps=("vocab", "fnet")),
    "image": Family("an image model", ("latency@8", "latency@1", "size"), no_steps=("vocab", "fnet"),
                    token_table=False),
}


def family_of(model) -> str:
    """The FAMILIES key of a loaded model: a causal LM by its head, speech and images by their modality."""
    if getattr(model, "head", None) == "causal-lm":
        return "causal-lm"
    modality = getattr(model, "modality", "text")
    return modality if modality in FAMILIES else "text"
RUNTIMES = ("torch", "onnx", "openvino")
EXPORT_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}  # runtime/export.py's names

PRUNE_FLOPS = (0.3, 1.0, 0.05)  # low, high (1.0: no prune step), step
LOWRANK_RATIOS = (1.0, 0.75, 0.5, 0.35)  # parameter fraction of the factorized Linears; 1.0: no lowrank step
MAX_FP32 = 4  # int8(fp32=N): at most this many sensitive Linears kept in fp32


@dataclass(frozen=True)
class Candidate:
    recipe: str | None  # canonical recipe text; None: the original as it is
    runtime: str  # torch | onnx | openvino

    @property
    def label(self) -> str:
        return f"{self.recipe or 'original'} @ {self.runtime}"


def available_runtimes(runtime: str) -> tuple[str, ...]:
    """--runtime torch|onnx|openvino|auto -> the runtimes to search over; auto: every one installed here (OpenVINO
    is an optional extra, skipped when absent)."""
    have = {"torch": True, "onnx": importlib.util.find_spec("onnxruntime") is not None,
            "openvino": importlib.util.find_spec("openvino") is not None}
    if runtime == "auto":
        return tuple(r for r in RUNTIMES if have[r])
    if runtime not in RUNTIMES:
        raise SlimformerError(f"search: --runtime must be torch, onnx, openvino or auto, got {runtime!r}")
    if not have[runtime]:
        extra = "openvino" if runtime == "openvino" else "onnx"
        raise SlimformerError(f"search: runtime {runtime} is not installed (pip install 'slimformer[{extra}]')")
    return (runtime,)


def check_objective(objective: str | None, family: str = "text") -> str:
    """The objective (None: the family's default), or a one-line error naming the family's objectives."""
    fam = FAMILIES[family]
    if objective is None:
        return fam.objectives[0]
    if objective not in fam.objectives:
        raise SlimformerError(f"search: unknown objective {objective!r} for {fam.what} (objectives: "
                              f"{', '.join(fam.objectives)})")
    return objective


DISTILL_SHARES = (0.0, 0.1, 0.25)  # of the search's minutes a trial may train for (0: none), so a few trained fit
NO_BUDGET_MINUTES = 10.0  # what the shares are of when the search has --trials but no --minutes


def distill_minutes(share: float, minutes: float | None) -> float:
    """Training minutes of a sampled share. The parameter is the share, not minutes, so that workers given
    different --minutes sample one space (the recipe records the minutes that ran)."""
    return round(share * (NO_BUDGET_MINUTES if minutes is None else minutes), 2)


def parse_try(text: str, runtimes: tuple[str, ...]) -> list[Candidate]:
    """A hand-picked candidate to run first: "RECIPE" (on each searched runtime), "RECIPE@RUNTIME", "original" or
    "original@RUNTIME". The recipe is checked here, before anything runs."""
    recipe, _, runtime = text.partition("@")
    recipe = recipe.strip()
    recipe = None if recipe in ("", "original") else to_text(parse(recipe))
    if runtime and runtime.strip() not in runtimes:
        raise SlimformerError(f"search: --try {text!r}: runtime {runtime.strip()!r} is not searched here "
                              f"(runtimes: {', '.join(runtimes)})")
    return [Candidate(recipe, r) for r in ([runtime.strip()] if runtime else runtimes)]


def suggest(trial, n_layers: int, runtimes: tuple[str, ...], minutes: float | None,
            max_distill: float | None = None, family: str = "text") -> Candidate:
    """Sample one candidate. Steps in the order the passes compose: vocabulary, layers, joint heads+FFN pruning,
    Fourier mixing of the first layers and low-rank factorization (only when the candidate trains), then
    distillation (only after a structural change: it repairs what structure broke) and int8. minutes: the search's
    budget (None: none). max_distill: minutes left for training; a larger sampled share runs as the largest that
    fits, and the recipe records what ran. family: a FAMILIES key; the steps its passes refuse are not sampled."""
    fam, steps = FAMILIES[family], []
    # training first: Fourier mixing and low-rank factorization are sampled only for a candidate that trains (both
    # lose 5-50 STS-B points untrained, README: a trial spent on them untrained is a trial lost)
    fits = [distill_minutes(s, minutes) for s in DISTILL_SHARES]
    train = distill_minutes(trial.suggest_categorical("distill", list(DISTILL_SHARES)), minutes)
    if max_distill is not None and train > max_distill:
        train = max([m for m in fits if m <= max_distill], default=0.0)
    if "vocab" not in fam.no_steps and trial.suggest_categorical("vocab", [False, True]):
        steps.append("vocab")
    keep = trial.suggest_int("layers", max(1, n_layers // 2), n_layers)
    if keep < n_layers:
        steps.append(f"layers(keep={keep})")
    low, high, step = PRUNE_FLOPS
    flops = round(trial.suggest_float("prune_flops", low, high, step=step), 2)
    if flops < 1.0:  # the head/neuron exchange rate: "auto" lets the pass measure it (six narrowed clones scored)
        weight = trial.suggest_categorical("prune_head_weight", ["auto", *HEAD_WEIGHTS])
        steps.append(f"prune(flops={flops})" if weight == "auto" else f"prune(flops={flops}, head_weight={weight})")
    fnet = trial.suggest_int("fnet", 0, max(0, keep // 2)) if train > 0 and "fnet" not in fam.no_steps else 0
    if fnet:
        steps.append(f"fnet(layers={fnet})")
    ratio = trial.suggest_categorical("lowrank", list(LOWRANK_RATIOS)) if train > 0 else 1.0
    if ratio < 1.0:
        steps.append(f"lowrank(ratio={ratio})")
    if steps and train > 0:  # distillation repairs what structure broke: nothing to repair, nothing to train
        steps.append(f"distill(minutes={train})")
    if trial.suggest_categorical("int8", [False, True]):
        fp32 = trial.suggest_int("int8_fp32", 0, MAX_FP32)
        if fam.token_table:
            bits = trial.suggest_categorical("embedding_bits", [8, 4])
            steps.append(f"int8(fp32={fp32}, embedding_bits={bits})")
        else:
            steps.append(f"int8(fp32={fp32})")
    runtime = trial.suggest_categorical("runtime", list(runtimes))
    return Candidate(to_text(parse("+".join(steps))) if steps else None, runtime)

"""`compress`'s pass runner: each step's config class (configs.py) maps to one handler here, and every handler has
the one signature `fn(model: SlimModel, cfg, ctx: Context) -> dict` (the decisions, JSON-able, for the manifest).
Each pass's module also has a function callable on its own on a plain nn.Module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..configs import Distill, Ffn, FNet, Freeze, Heads, Int8, Layers, LowRank, Prune, Static, Vocab
from ..errors import StepNotApplicableError
from ..speech import is_speech
from ..static_model import StaticModel
from . import distill, fnet, freeze, lowrank, prune, quantize, static, vocab
from .calib import Calibration


@dataclass
class Context:
    """What a pass may need besides the model: calibration inputs and the uncompressed teacher."""

    calib: Calibration | None
    teacher: object | None = None  # the SlimModel compress() started from (never modified)
    corpus_texts: list[str] | None = None  # what `vocab` keeps the tokens of: all the calibration text there is
    default_calib: bool = False  # corpus_texts is slimformer's default English text, not the user's (vocab checks)
    checkpoint_dir: Path | None = None  # where a training step keeps its resumable state


# config type -> handler(model: SlimModel, cfg, ctx) -> decisions (a JSON-able dict for the manifest)
HANDLERS: dict[type, Callable] = {
    Heads: prune.heads,
    Ffn: prune.ffn,
    Layers: prune.layers,
    Prune: prune.prune,
    Vocab: vocab.vocab,
    LowRank: lowrank.lowrank,
    FNet: fnet.fnet,
    Distill: distill.distill,
    Int8: quantize.quantize,
    Freeze: freeze.freeze,
    Static: static.static,  # returns (a new StaticModel, decisions): the model changes type
}

# what runs on a speech model (Whisper) so far; the rest are refused with one line
SPEECH_STEPS: tuple[type, ...] = (Heads, Ffn, Layers, Prune, LowRank, Distill, Int8)

# what may run on a StaticModel (a model compressed with `static` earlier, or loaded from a static folder)
STATIC_HANDLERS: dict[type, Callable] = {Int8: static.int8}


def run_passes(model, steps: list, ctx: Context, progress: Callable[[str], None] | None = None):
    """Apply `steps` (configs, validated by recipe.steps_of) to `model` (a SlimModel) in place, recording each
    step's decisions in its manifest."""
    for cfg in steps:
        if progress:
            progress(cfg.step)
        table = STATIC_HANDLERS if isinstance(model, StaticModel) else HANDLERS
        if type(cfg) not in table:
            raise StepNotApplicableError(f"{cfg.step}: the model is a static embedding table (no transformer left); "
                                         f"only {', '.join(c.step for c in table)} applies")
        if is_speech(model) and type(cfg) not in SPEECH_STEPS:
            raise StepNotApplicableError(f"{cfg.step} does not apply to a speech model ({model.model_type}) yet; "
                                         f"its steps: {', '.join(c.step for c in SPEECH_STEPS)}")
        decisions = table[type(cfg)](model, cfg, ctx)
        if isinstance(decisions, tuple):  # a step that returns a new model (static)
            model, decisions = decisions
        model.manifest["steps"].append({"step": cfg.step, **decisions})
    return model

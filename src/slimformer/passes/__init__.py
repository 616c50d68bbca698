"""`compress`: run a recipe's passes in order on a copy of a model. Each pass is a config dataclass plus a handler
registered here; each pass function is also callable on its own on a plain nn.Module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import RecipeError
from ..runtime import freeze
from .calib import Calibration
from . import distill, fnet, lowrank, prune, vocab
from .configs import Distill, Ffn, FNet, Freeze, Heads, Layers, LowRank, Prune, Vocab
from .quantize import Int8, int8


@dataclass
class Context:
    """What a pass may need besides the model: calibration inputs and the uncompressed teacher."""

    calib: Calibration | None
    teacher: object | None = None  # the SlimModel compress() started from (never modified)
    corpus_texts: list[str] | None = None  # what `vocab` keeps the tokens of: all the calibration text there is
    checkpoint_dir: Path | None = None  # where a training step keeps its resumable state


# config type -> handler(model: SlimModel, cfg, ctx) -> decisions (a JSON-able dict for the manifest)
HANDLERS: dict[type, Callable] = {
    Int8: lambda model, cfg, ctx: int8(model.encoder, cfg, ctx.calib)[1],
    Heads: prune.heads,
    Ffn: prune.ffn,
    Layers: prune.layers,
    Prune: prune.prune,
    Vocab: vocab.vocab,
    LowRank: lowrank.lowrank,
    Distill: distill.distill,
    FNet: fnet.fnet,
    Freeze: freeze.freeze,
}


def register(cfg_type: type, handler: Callable) -> None:
    HANDLERS[cfg_type] = handler


def run_passes(model, steps: list, ctx: Context, progress: Callable[[str], None] | None = None):
    """Apply `steps` to `model` (a SlimModel) in place, recording each decision in its manifest."""
    from ..recipe import NAMES

    for cfg in steps:
        name = NAMES[type(cfg)]
        if type(cfg) not in HANDLERS:
            raise RecipeError(f"step '{name}' is not implemented yet in this version of slimformer")
        if progress:
            progress(name)
        decisions = HANDLERS[type(cfg)](model, cfg, ctx)
        model.manifest["steps"].append({"step": name, **decisions})
    return model

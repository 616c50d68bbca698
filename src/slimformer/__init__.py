"""slimformer: make trained transformer encoders an order of magnitude smaller and faster for CPU inference.

    import slimformer
    model = slimformer.load()                      # the embedded all-MiniLM-L6-v2, or a HF / ST / slimformer folder
    small = slimformer.compress(model, "int8")     # or [slimformer.Int8()]
    slimformer.save(small, "out/minilm-int8")
    emb = slimformer.load("out/minilm-int8").encode(["A sentence."])
"""

from .api import compress
from .errors import (BudgetError, ModelNotFoundError, OutputExistsError, RecipeError, SlimformerError,
                     UnsupportedArchitectureError)
from .io import load, save
from .model import SlimModel
from .passes.configs import FNet, Distill, Ffn, Freeze, Heads, Layers, LowRank, Prune, Vocab
from .passes.quantize import Int8

__all__ = [
    "load", "save", "compress", "SlimModel",
    "Int8", "Heads", "Ffn", "Layers", "Prune", "Vocab", "LowRank", "FNet", "Distill", "Freeze",
    "SlimformerError", "ModelNotFoundError", "UnsupportedArchitectureError", "RecipeError", "BudgetError",
    "OutputExistsError",
]

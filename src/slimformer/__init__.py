"""slimformer: make trained transformer encoders an order of magnitude smaller and faster for CPU inference.

    import slimformer
    model = slimformer.load()                      # the embedded all-MiniLM-L6-v2, or a HF / ST / slimformer folder
    small = slimformer.compress(model, "int8")     # or [slimformer.Int8()]
    slimformer.save(small, "out/minilm-int8")
    emb = slimformer.load("out/minilm-int8").encode(["A sentence."])
"""

import importlib

from .configs import FNet, Distill, Ffn, Freeze, Heads, Int8, Layers, LowRank, Prune, Static, Vocab
from .errors import (BudgetError, ModelNotFoundError, OutputExistsError, RecipeError, SlimformerError,
                     UnsupportedArchitectureError)

# The torch-heavy names load on first use (PEP 562), so `import slimformer.recipe` (parsing a recipe) and the
# config classes do not import torch.
_LAZY = {"load": "io", "save": "io", "compress": "api", "SlimModel": "model", "StaticModel": "static_model"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'slimformer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "load", "save", "compress", "SlimModel", "StaticModel",
    "Int8", "Heads", "Ffn", "Layers", "Prune", "Vocab", "LowRank", "FNet", "Distill", "Freeze", "Static",
    "SlimformerError", "ModelNotFoundError", "UnsupportedArchitectureError", "RecipeError", "BudgetError",
    "OutputExistsError",
]

"""What the per-family speed scripts (gemma_speed.py, whisper_speed.py) share: [MODEL] FOLDER ... -> {name: model}."""

from pathlib import Path

import slimformer
from slimformer.measure.peers import folder_label


def load_models(args: list[str], base: str) -> dict:
    """{"fp32": the original, "recipe [runtime]" (or folder): each compressed folder}. args: an optional original's
    folder (one without slimformer.json; default `base`), then folders saved or exported by slimformer."""
    if args and not (Path(args[0]) / "slimformer.json").is_file():
        base, args = args[0], args[1:]
    models = {"fp32": slimformer.load(base)}
    for folder in args:
        m = slimformer.load(folder)
        # a torch folder and its export differ by runtime, whatever their order; two of one recipe and runtime by name
        models[folder_label(m, folder, models)] = m
    return models

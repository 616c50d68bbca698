"""What the per-family speed scripts (gemma_speed.py, whisper_speed.py) share: [MODEL] FOLDER ... -> {name: model}."""

from pathlib import Path

import slimformer


def load_models(args: list[str], base: str) -> dict:
    """{"fp32": the original, recipe (or folder): each compressed folder}. args: an optional original's folder (one
    without slimformer.json; default `base`), then folders saved by slimformer."""
    if args and not (Path(args[0]) / "slimformer.json").is_file():
        base, args = args[0], args[1:]
    models = {"fp32": slimformer.load(base)}
    for folder in args:
        m = slimformer.load(folder)
        name = m.manifest.get("recipe") or folder
        models[folder if name in models else name] = m  # two folders of one recipe: the second goes by its path
    return models

"""Compress one model with several recipes and measure them all against it in one alternating run: what the demo, the
CLI's `compress` (report.json / report.md), `bench --peers` and the benchmark scripts share."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from .. import api, io
from .report import measure, speed_ticks
from .tasks import AUTO, check_task


def _bar(show: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False, disable=not show)


def compare(models: dict, recipes: dict[str, str | list], task: str | None = AUTO, runs: int = 20,
            calib: list[str] | str | None = None, checkpoint_dir: str | Path | None = None, reload: bool = False,
            throughput_texts: list | None = None, show_progress: bool = False,
            on_compressed: Callable[[str, object, float], None] | None = None) -> tuple[dict, dict]:
    """Compress the first of `models` (the baseline) with each of `recipes` ({row name: recipe text or configs}),
    then time and score every model in one loop; returns (measure()'s result, {row name: model}), rows in the order
    models, then recipes.

    task: the quality column, as measure() takes it (AUTO: the baseline's own task; None: none).
    models: rows measured as given, the baseline first (peers such as torch.ao int8 may follow it).
    calib / checkpoint_dir: as in api.compress (checkpoint_dir suits one recipe: the CLI resumes its training).
    reload: save each compressed model and measure the reloaded copy, the one a user would serve.
    show_progress: "compress" and "measure" bars on stderr. on_compressed(name, model, seconds): after each recipe,
    for scripts that log as they go."""
    out = dict(models)
    base = next(iter(models.values()))
    task = check_task(task, base) if task else None  # a task that does not fit fails here, before compressing
    with tempfile.TemporaryDirectory() as tmp:
        with _bar(show_progress and bool(recipes), len(recipes), "compress") as bar:
            for name, recipe in recipes.items():
                if name in out:
                    raise ValueError(f"row name '{name}' given twice")
                bar.set_postfix_str(name)
                t0 = time.perf_counter()
                model = api.compress(base, recipe, calib=calib, checkpoint_dir=checkpoint_dir)
                if reload:
                    model = io.load(io.save(model, Path(tmp) / str(len(out))))
                if on_compressed is not None:
                    on_compressed(name, model, time.perf_counter() - t0)
                out[name] = model
                bar.update()
        # measure() ticks once per shape and block round, then once per model for the task and for throughput
        total = speed_ticks(base, runs) + len(out) * (bool(task) + bool(throughput_texts))
        with _bar(show_progress, total, "measure") as bar:
            result = measure(out, task, runs, progress=bar.update, throughput_texts=throughput_texts)
    return result, out

"""Output folders, written whole or not at all, and the manifest fields every slimformer folder shares.

One writer for everything slimformer writes as a folder (a saved model, an export, a training checkpoint): the body
fills a hidden sibling, which is renamed into place at the end, so a killed or failing run never leaves a
half-written output. A leaf module (standard library only): io.py, runtime/export.py and passes/distill.py all
build on it, and io.py imports the other two's packages, so the writer cannot live in io.py without an import cycle.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError

MANIFEST = "slimformer.json"
FORMAT = 1


def write_json(path: str | os.PathLike, obj) -> None:
    """One JSON file, written whole or not at all (a sibling renamed into place): a reader never sees half of it."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def manifest_fields(model) -> dict:
    """What every slimformer.json holds, saved model or export: format, what the model came from and what was done
    to it, and how token states become a sentence embedding. `model`: a SlimModel."""
    return {
        "format": FORMAT,
        "source": model.manifest.get("source"),
        "recipe": model.manifest.get("recipe", ""),
        "steps": model.manifest.get("steps", []),
        "pooling": {"mode": model.pooling, "normalize": model.normalize, "max_seq_length": model.max_seq_length},
    }


def check_output(out: str | os.PathLike, force: bool = False, source: str | os.PathLike | None = None) -> Path:
    """The resolved output path, or OutputExistsError: when it exists and force is not given, or when replacing it
    would destroy the input model folder `source` (the same folder, or one inside it). Cheap: call it before slow
    work, atomic_folder calls it again."""
    out = Path(out).resolve()
    if source:
        src = Path(source).resolve()
        if src == out or out in src.parents:
            raise OutputExistsError(f"output {out} is the input model folder; choose another output")
    if out.exists() and not force:
        raise OutputExistsError(f"output exists: {out} (use --force to overwrite)")
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_leftovers(out: Path) -> None:
    """Remove what a writer killed mid-way (kill -9) left beside `out`: .NAME.tmp-PID / .NAME.old-PID of dead PIDs."""
    for p in out.parent.glob(f".{glob.escape(out.name)}.*-*"):
        kind, _, pid = p.name[len(out.name) + 2:].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike, force: bool = False,
                  source: str | os.PathLike | None = None) -> Iterator[Path]:
    """`with atomic_folder(out, force) as tmp:` write into tmp; on a clean exit tmp becomes `out` (an existing `out`
    is replaced only with force), and if the body raises, `out` stays as it was and tmp is removed."""
    out = check_output(out, force, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        check_output(out, force)  # something may have appeared there while the body ran
        if out.exists():
            # rename, rename, delete: `out` is always either the whole old folder or the whole new one
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

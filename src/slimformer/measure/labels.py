"""A classifier's labels: its id2label as the tasks read it, and gold labels (names or ids, as a task's file writes
them) resolved to the model's label ids."""

from __future__ import annotations

import numpy as np

from ..errors import DataFormatError, SlimformerError

SST2_LABELS = ("negative", "positive")  # SST-2's label ids 0 and 1


def id2label_of(model) -> dict[int, str]:
    return {int(k): str(v) for k, v in model.config.id2label.items()}


def show_labels(id2label: dict[int, str]) -> str:
    items = [f"{k}={v}" for k, v in sorted(id2label.items())]
    return ", ".join(items[:8]) + (f", ... ({len(items)} labels)" if len(items) > 8 else "")


def _generic(id2label: dict[int, str]) -> bool:
    """transformers' placeholder names (LABEL_0, LABEL_1, ...): the ids carry the meaning."""
    return all(v == f"LABEL_{k}" for k, v in id2label.items())


def fits_sst2(id2label: dict[int, str]) -> bool:
    return len(id2label) == 2 and (_generic(id2label) or {v.lower() for v in id2label.values()} == set(SST2_LABELS))


def gold_ids(task: str, labels: list[str], model) -> np.ndarray:
    """Each label (a name of the model's id2label, any case, or an id) as the model's label id: (n,) int64.
    SST-2's gold is negative/positive: a model with placeholder names LABEL_0/LABEL_1 reads them as ids 0/1."""
    id2label = id2label_of(model)
    if task == "sst2":
        if not fits_sst2(id2label):
            raise SlimformerError(f"sst2: the model's labels ({show_labels(id2label)}) are not SST-2's (0=negative, "
                                  "1=positive); give --task cls:PATH with the model's own labels")
        if _generic(id2label):
            labels = [str(SST2_LABELS.index(y)) for y in labels]
    by_name = {v: k for k, v in id2label.items()}
    lower = {}
    for k, v in id2label.items():
        lower.setdefault(v.lower(), set()).add(k)
    ids = []
    for y in labels:
        if y in by_name:
            ids.append(by_name[y])
        elif len(lower.get(y.lower(), ())) == 1:
            ids.append(next(iter(lower[y.lower()])))
        elif y.isdigit() and int(y) in id2label:
            ids.append(int(y))
        else:
            ids.append(None)
    bad = sorted({y for y, i in zip(labels, ids) if i is None})
    if bad:
        src = task[4:] if task.startswith("cls:") else task
        raise DataFormatError(f"{src}: label(s) {', '.join(map(repr, bad[:5]))} are not the model's labels "
                              f"({show_labels(id2label)}); give an id or a name from its id2label")
    return np.asarray(ids, dtype=np.int64)

"""The shared primitives of model surgery: every module swap goes through `replace_modules`, every slice through
`keep` (after Torch-Pruning: one primitive that keeps a set of indices and fixes the features together), and every
temporary forward hook through `hooks`."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch
from torch import nn


def replace_modules(
    model: nn.Module,
    filter_fn: Callable[[nn.Module, str], bool],
    fn: Callable[[nn.Module, str], nn.Module],
) -> list[str]:
    """Replace every submodule `m` at path `fqn` with `fn(m, fqn)` where `filter_fn(m, fqn)` holds.

    Walks a snapshot of the tree first, so replacements are never visited again. Returns the replaced paths."""
    targets = [(fqn, m) for fqn, m in model.named_modules() if fqn and filter_fn(m, fqn)]
    for fqn, m in targets:
        set_module(model, fqn, fn(m, fqn))
    return [fqn for fqn, _ in targets]


def set_module(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def keep(layer: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    """Return a new Linear with only the given output rows (dim=0) or input columns (dim=1) of `layer`.

    weight is (out, in): dim=0 slices rows and the bias, dim=1 slices columns and keeps the bias whole."""
    assert dim in (0, 1), f"dim must be 0 (outputs) or 1 (inputs), got {dim}"  # callers pass a literal
    idx = torch.as_tensor(idx, dtype=torch.long).sort().values
    w = layer.weight.index_select(dim, idx)
    out_f, in_f = w.shape
    new = nn.Linear(in_f, out_f, bias=layer.bias is not None, dtype=w.dtype, device=w.device)
    new.weight.copy_(w)
    if layer.bias is not None:
        new.bias.copy_(layer.bias[idx] if dim == 0 else layer.bias)
    return new


@contextlib.contextmanager
def hooks(pre: Iterable[tuple[nn.Module, Callable]] = (),
          post: Iterable[tuple[nn.Module, Callable]] = ()) -> Iterator[None]:
    """Forward hooks that live for the body only: `pre` (module, fn(module, args) -> new args | None) and `post`
    (module, fn(module, args, output)) pairs; all are removed on exit, also when the body (or a hook) raises."""
    handles = []
    try:
        for m, fn in pre:
            handles.append(m.register_forward_pre_hook(fn))
        for m, fn in post:
            handles.append(m.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()

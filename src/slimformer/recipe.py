"""Recipe text <-> list of pass configs. Grammar: steps joined by `+`, each `name` or `name(key=value, ...)`.

    "vocab+prune(flops=0.5)+distill(minutes=10)+int8"

Values: integers, floats, true/false, or bare words (paths, `all`). Order is validated: structural steps first,
then distill, then int8, then freeze; a step appears at most once.
"""

from __future__ import annotations

import dataclasses
import re

from .errors import RecipeError
from .passes.configs import FNet, Distill, Ffn, Freeze, Heads, Layers, LowRank, Prune, Vocab
from .passes.quantize import Int8

STEPS: dict[str, type] = {
    "heads": Heads, "ffn": Ffn, "layers": Layers, "prune": Prune, "vocab": Vocab, "lowrank": LowRank,
    "fnet": FNet, "distill": Distill, "int8": Int8, "freeze": Freeze,
}
NAMES = {cls: name for name, cls in STEPS.items()}
# phase of each step: a recipe's phases must not decrease
PHASE = {Heads: 0, Ffn: 0, Layers: 0, Prune: 0, Vocab: 0, LowRank: 0, FNet: 0, Distill: 1, Int8: 2, Freeze: 3}

_STEP = re.compile(r"^\s*([a-z0-9_]+)\s*(?:\((.*)\))?\s*$", re.S)


def _value(text: str):
    t = text.strip()
    if re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)", t):
        return float(t)
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    if not t:
        raise RecipeError("empty value")
    return t


def _split_steps(text: str) -> list[str]:
    """Split on `+` outside parentheses (a path argument may not contain `+`; a number's exponent may)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "+" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def parse_step(text: str):
    m = _STEP.match(text)
    if not m:
        raise RecipeError(f"bad recipe step '{text.strip()}': expected name or name(key=value, ...)")
    name, args = m.group(1), m.group(2)
    if name not in STEPS:
        raise RecipeError(f"unknown recipe step '{name}' (steps: {', '.join(STEPS)})")
    cls = STEPS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for arg in filter(str.strip, (args or "").split(",")):
        key, eq, val = arg.partition("=")
        key = key.strip()
        if not eq:
            raise RecipeError(f"step '{name}': argument '{arg.strip()}' must be key=value")
        if key not in fields:
            raise RecipeError(f"step '{name}': unknown argument '{key}' (arguments: {', '.join(sorted(fields)) or 'none'})")
        try:
            kwargs[key] = _value(val)
        except RecipeError:
            raise RecipeError(f"step '{name}': argument '{key}' has no value") from None
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.name not in kwargs]
    if missing:
        raise RecipeError(f"step '{name}': missing argument {', '.join(missing)} (e.g. {name}({missing[0]}=0.5))")
    return cls(**kwargs)  # each config validates itself and names its step in the error


def validate(steps: list) -> list:
    seen = set()
    for prev, step in zip([None, *steps], steps):
        name = NAMES[type(step)]
        if name in seen:
            raise RecipeError(f"step '{name}' appears twice")
        seen.add(name)
        if prev is not None and PHASE[type(step)] < PHASE[type(prev)]:
            raise RecipeError(f"step '{name}' must come before '{NAMES[type(prev)]}' "
                              "(order: structure, then distill, then int8, then freeze)")
    return steps


def parse(text: str) -> list:
    if not text or not text.strip():
        raise RecipeError("empty recipe")
    return validate([parse_step(s) for s in _split_steps(text)])


def to_text(steps: list) -> str:
    out = []
    for s in steps:
        args = [f"{f.name}={_fmt(getattr(s, f.name))}" for f in dataclasses.fields(s)
                if getattr(s, f.name) != f.default]
        out.append(NAMES[type(s)] + (f"({', '.join(args)})" if args else ""))
    return "+".join(out)


def _fmt(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)

"""Recipe text <-> list of pass configs. Grammar: steps joined by `+`, each `name` or `name(key=value, ...)`.

    "vocab+prune(flops=0.5)+distill(minutes=10)+int8"

Values: integers, floats, true/false, or bare words (paths, `all`; also `nan` and `inf`, which no config accepts as
a number). Order is validated from each config class's `phase`: structural steps first, then distill, then int8,
then freeze; a step appears at most once. Imports no torch (configs.py is torch-free).
"""

from __future__ import annotations

import dataclasses
import re

from .configs import CONFIGS, PHASE_NAMES
from .errors import RecipeError

# step name -> config class; each class carries its own name (`step`) and phase (`phase`)
STEPS: dict[str, type] = {cls.step: cls for cls in CONFIGS}

_STEP = re.compile(r"^\s*([a-z0-9_]+)\s*(?:\((.*)\))?\s*$", re.S)


def _value(text: str):
    """A value's text -> int, float, bool or the word itself (a path, `all`); numbers are ASCII digits only."""
    t = text.strip()
    if not t:
        raise RecipeError("has no value")
    if re.fullmatch(r"[+-]?\d+", t, re.ASCII):
        if len(t) > 100:  # int() refuses thousands of digits; no count here needs more than a few
            raise RecipeError(f"has a number of {len(t)} digits")
        return int(t)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)", t, re.ASCII):
        return float(t)  # 1e999 reads as inf, which each config rejects where it needs a finite number
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
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
        raise RecipeError(f"bad recipe step {text.strip()!r}: expected name or name(key=value, ...)")
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
            raise RecipeError(f"step '{name}': argument {arg.strip()!r} must be key=value")
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise RecipeError(f"step '{name}': unknown argument {key!r} (arguments: {known})")
        if key in kwargs:
            raise RecipeError(f"step '{name}': argument '{key}' given twice")
        try:
            kwargs[key] = _value(val)
        except RecipeError as e:
            raise RecipeError(f"step '{name}': argument '{key}' {e}") from None
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.name not in kwargs]
    if missing:
        raise RecipeError(f"step '{name}': missing argument {', '.join(missing)} (e.g. {name}({missing[0]}=0.5))")
    return cls(**kwargs)  # each config validates itself and names its step in the error


def validate(steps) -> list:
    """A list of configs, checked: each one a step's config, each step at most once, phases never decreasing."""
    if isinstance(steps, (str, bytes)) or not hasattr(steps, "__iter__"):
        raise RecipeError(f"a recipe is text or a list of step configs, got {type(steps).__name__}")
    steps = list(steps)
    if not steps:
        raise RecipeError("empty recipe")
    for step in steps:
        if type(step) not in CONFIGS:
            raise RecipeError(f"not a recipe step config: a {type(step).__name__} (configs: {', '.join(STEPS)})")
    seen, seen_steps = set(), []
    for prev, step in zip([None, *steps], steps):
        if step.step in seen:
            raise RecipeError(f"step '{step.step}' appears twice")
        seen.add(step.step)
        for before in seen_steps:  # a step that only some steps may follow (static: only int8)
            allowed = getattr(before, "followed_by", None)
            if allowed is not None and step.step not in allowed:
                hint = " (train the static vectors with static(fit=MINUTES) instead)" if step.step == "distill" else ""
                raise RecipeError(f"step '{step.step}' cannot follow '{before.step}' (only "
                                  f"{', '.join(allowed)} may){hint}")
        seen_steps.append(step)
        if prev is not None and step.phase < prev.phase:
            raise RecipeError(f"step '{step.step}' must come before '{prev.step}' "
                              f"(order: {', then '.join(PHASE_NAMES)})")
    return steps


def parse(text: str) -> list:
    """Recipe text -> a validated list of configs; anything wrong is a RecipeError naming the step."""
    if not isinstance(text, str):
        raise RecipeError(f"recipe text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise RecipeError("empty recipe")
    return validate([parse_step(s) for s in _split_steps(text)])


def steps_of(recipe) -> list:
    """Text or a list of configs -> a validated list of configs (text is parsed once, here)."""
    return parse(recipe) if isinstance(recipe, str) else validate(recipe)


def to_text(steps: list) -> str:
    out = []
    for s in steps:
        args = [f"{f.name}={_fmt(getattr(s, f.name))}" for f in dataclasses.fields(s)
                if getattr(s, f.name) != f.default]
        out.append(s.step + (f"({', '.join(args)})" if args else ""))
    return "+".join(out)


def _fmt(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)

"""The main job: compress the embedded all-MiniLM-L6-v2 with each method alone and combined, save and reload each
result (so the measured model is the one a user would serve), and print one measured table."""

from __future__ import annotations

from . import io
from .measure.compare import compare
from .measure.peers import torch_ao_dynamic
from .measure.report import markdown, structures_md

# (row name, recipe, distillation minutes for --full): one row per method, alone and combined. Rows that train
# get SHORT_MINUTES by default, and say so in their name; --full gives them the README's budget.
ROWS = [
    ("int8", "int8", None),
    ("int8 + freeze", "int8+freeze", None),
    ("narrowing", "prune(flops=0.5)", None),
    ("narrowing + int8", "prune(flops=0.5)+int8", None),
    ("low-rank", "lowrank(ratio=0.5, fisher=true)", None),
    ("low-rank + int8", "lowrank(ratio=0.5, fisher=true)+int8", None),
    ("low-rank + distill", "lowrank(ratio=0.5, fisher=true)+distill(minutes={m})", 10),
    # FNet in the 3 layers whose attention matters least: the most layers that keep >=95% of STS-B (README curve)
    ("FNet + distill", "fnet(layers=3)+distill(minutes={m}, lr=0.001)", 15),
    ("combined", "vocab+prune(flops=0.35)+distill(minutes={m})+int8(embedding_bits=4)+freeze", 15),
]
SHORT_MINUTES = 1


def run_demo(full: bool = False, runs: int = 20, task: str = "stsb") -> str:
    base = io.load()
    recipes = {}
    for name, recipe, minutes in ROWS:
        if minutes is not None:
            m = minutes if full else SHORT_MINUTES
            name, recipe = f"{name} ({m} min)", recipe.format(m=m)
        recipes[name] = recipe
    models = {"fp32 (original)": base, "torch.ao int8 one-liner (reference)": torch_ao_dynamic(base)}
    result, models = compare(models, recipes, task, runs, reload=True, show_progress=True)
    listed = "\n".join(f"- {r['name']}: `{r['recipe']}`" for r in result["rows"][2:])
    kept = structures_md(models)
    return "all-MiniLM-L6-v2, compressed by slimformer\n\n" + markdown(result) + "\n\nRecipes:\n" + listed + \
        ("\n\nStructure:\n" + kept if kept else "")

"""What a search leaves behind: search.json (every trial of the study), search.md (the Pareto table) and
pareto.png (quality vs the objective, the chosen point marked, the original and, with --peers, the peers as
reference points); the progress bar."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path

from ..errors import BudgetError
from ..measure.budget import drop_unit, worst_allowed

ROW_KEYS = ("recipe", "runtime", "stage", "quality", "drop", "drop_95", "other_fidelity", "slice_quality",
            "slice_drop", "cost", "latency_ms", "original_ms", "prefill_ms", "decode_tokens_per_s", "encoder_ms", "rtf",
            "original_speeds", "size_mb", "sentences_per_s", "worker", "wall_s", "error", "predicted_cost", "pruned")


def read_reference(path: Path) -> dict | None:
    """The original's figures a trial compares with (probe.reference), or None when not measured yet."""
    return json.loads(Path(path).read_text()) if Path(path).is_file() else None


def study_name(settings: dict) -> str:
    """The default study name: the same command (model, task, objective, budget) resumes the same study."""
    model = Path(settings["model"]).name or settings["model"]
    name = f"{model}-{settings['task']}-{settings['objective']}-drop{settings['max_drop']}"
    return re.sub(r"[^A-Za-z0-9@._-]+", "_", name)


def rows(study) -> list[dict]:
    """Every trial of the study (every worker's) as one JSON-able row; Pareto-optimal full measurements marked."""
    out = []
    for t in study.get_trials(deepcopy=False) if study is not None else []:
        if t.state.name == "WAITING":
            continue
        row = {"number": t.number, "state": t.state.name, **{k: t.user_attrs[k] for k in ROW_KEYS
                                                             if k in t.user_attrs}, "params": t.params}
        out.append(row)
    full = [r for r in out if r["state"] == "COMPLETE" and r.get("stage") == "full"]
    for r in full:  # no other full measurement is at least as good on both and better on one
        r["pareto"] = not any(o["drop"] <= r["drop"] and o["cost"] <= r["cost"] and
                              (o["drop"] < r["drop"] or o["cost"] < r["cost"]) for o in full)
    return out


def summary(study, meta: dict, chosen) -> dict:
    return {**meta, "chosen": None if chosen is None else chosen.number, "trials": rows(study)}


def closest(summary_: dict) -> str:
    """One phrase naming the trial that came nearest the budget (the smallest drop measured)."""
    done = [r for r in summary_["trials"] if r["state"] == "COMPLETE"]
    if not done:
        failed = [r for r in summary_["trials"] if r["state"] == "FAIL"]
        last = f"; the last error: {failed[-1].get('error')}" if failed else ""
        return f"no trial completed ({len(failed)} failed{last})"
    r = min(done, key=lambda r: (r["stage"] != "full", r["drop"]))
    where = "on the whole split" if r["stage"] == "full" else "on a slice"
    return (f"the closest was trial {r['number']} ({r['recipe'] or 'original'} @ {r['runtime']}: drop "
            f"{r['drop']:.2f}{drop_unit(summary_['metric'])} {where}, {r['cost']:.2f}x the original's "
            f"{summary_['objective']})")


def fail(study, meta: dict, out: Path, why: str):
    """Nothing to write to OUT: search.json goes beside it, and a one-line BudgetError says what came closest."""
    s = summary(study, meta, None)
    path = out.parent / f"{out.name}.search.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(s, indent=1))
    raise BudgetError(f"search: {why}; {closest(s)}; trials in {path}")


def speed_cells(r: dict) -> dict[str, str]:
    """A fully measured row's speed figures by column title: ms per token shape (an image model: per batch of
    images), a causal LM's prefill ms and decoding tokens/s, Whisper's encoder ms on 30 s and real-time factor."""
    cells = {f"ms {k}": f"{v:.1f}" for k, v in r.get("latency_ms", {}).items()}
    cells.update({f"prefill ms {k}": f"{v:.1f}" for k, v in r.get("prefill_ms", {}).items()})
    if "decode_tokens_per_s" in r:
        cells["decode tokens/s"] = f"{r['decode_tokens_per_s']:.1f}"
    if "encoder_ms" in r:
        cells["encoder ms 30 s"] = f"{r['encoder_ms']['1x30s']:.1f}"
    if "rtf" in r:
        cells["RTF"] = f"{r['rtf']:.4f}"
    return cells


def _measured(r: dict, speeds: list[str]) -> str:
    """A fully measured row's cells: quality | drop (95%) | other-text fidelity | cost | speed columns | MB (a
    trial's or a peer's)."""
    lo, hi = r["drop_95"]
    fid, cells = r.get("other_fidelity"), speed_cells(r)
    return (f"{r['quality']:.2f} | {r['drop']:.2f} ({lo:.2f}, {hi:.2f}) | {'' if fid is None else f'{fid:.2f}'} | "
            f"{r['cost']:.3f} | " + " | ".join(cells.get(k, "") for k in speeds) + f" | {r['size_mb']:.1f}")


def markdown(s: dict) -> str:
    front = sorted((r for r in s["trials"] if r.get("pareto")), key=lambda r: r["cost"])
    speeds = list(dict.fromkeys(k for r in [*front, *s.get("peers", [])] for k in speed_cells(r)))
    o = s["original"]
    lines = [f"# search: {s['model']} on {s['task']}, objective {s['objective']}, max drop {s['max_drop']}", "",
             f"Original: {s['metric']} {o['value']:.2f} (re-measurement noise {o['noise']:.4f}), {o['size_mb']:.1f} "
             f"MB. Cost: the candidate's {s['objective']} relative to the original's, timed in the same alternating "
             f"loop (lower is better). Drop: how much worse than the original on the whole split (unit: "
             f"{drop_unit(s['metric']).strip()}), with its 95% paired-bootstrap interval. Other-text "
             "fidelity (text encoders and classifiers): label-free, on text no pass fitted on (the compress report's "
             "transfer check; 100: behaves as the original); well below 100 where the drop is small, the budget may "
             "not hold on other data.", "",
             "| trial | recipe | runtime | quality | drop (95%) | other-text fidelity | cost | "
             + "".join(f"{k} | " for k in speeds) + "MB | chosen |", "|" + "---|" * (9 + len(speeds))]
    for r in front:
        lines.append(f"| {r['number']} | {r['recipe'] or 'original'} | {r['runtime']} | {_measured(r, speeds)} | "
                     + ("**yes**" if r["number"] == s["chosen"] else "") + " |")
    if s.get("peers"):
        lines += ["", "Peers (`bench --peers`' rows: the original under each peer's runtime), measured the same way on "
                  "this machine:", "", "| peer | quality | drop (95%) | other-text fidelity | cost | "
                  + "".join(f"{k} | " for k in speeds) + "MB |", "|" + "---|" * (6 + len(speeds))]
        lines += [f"| {r['name']} | {_measured(r, speeds)} |" for r in s["peers"]]
    states = {}
    for r in s["trials"]:
        key = r["state"] if r["state"] != "COMPLETE" else f"complete ({r['stage']})"
        states[key] = states.get(key, 0) + 1
    lines += ["", "Trials: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items())) +
              ". The Pareto table lists the fully measured trials no other beats on both drop and cost."]
    if "PRUNED" in states:
        lines[-1] += (f" Pruned: never built, their cost predicted from the latency table (the original's cost per "
                      f"layer, head and neuron, measured once here at torch fp32) above {s.get('prune_above')}x the "
                      "best feasible cost at the time.")
    return "\n".join(lines) + "\n"


def plot(s: dict, path: Path) -> None:
    """Quality vs cost of every fully measured trial, the front joined, the chosen one starred, the original at 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = [r for r in s["trials"] if r["state"] == "COMPLETE" and r.get("stage") == "full"]
    front = sorted((r for r in full if r.get("pareto")), key=lambda r: r["cost"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter([r["cost"] for r in full], [r["quality"] for r in full], s=18, color="tab:blue", label="trials")
    ax.plot([r["cost"] for r in front], [r["quality"] for r in front], color="tab:blue", lw=1)
    ax.scatter([1.0], [s["original"]["value"]], marker="D", color="black", label="original")
    for i, r in enumerate(s.get("peers", [])):
        ax.scatter([r["cost"]], [r["quality"]], marker="x", color="gray", label="peers" if i == 0 else None)
        ax.annotate(r["name"], (r["cost"], r["quality"]), fontsize=6, color="gray", xytext=(3, 3),
                    textcoords="offset points")
    ax.axhline(worst_allowed(s["metric"], s["original"]["value"], s["max_drop"]), ls="--", color="gray", lw=1,
               label="budget")
    for r in full:
        if r["number"] == s["chosen"]:
            ax.scatter([r["cost"]], [r["quality"]], marker="*", s=220, color="tab:red", label="chosen", zorder=3)
    ax.set_xlabel(f"{s['objective']}, relative to the original (lower is better)")
    ax.set_ylabel(f"{s['task']} {s['metric']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(folder: Path, s: dict) -> None:
    (folder / "search.json").write_text(json.dumps(s, indent=1))
    (folder / "search.md").write_text(markdown(s))
    plot(s, folder / "pareto.png")


class _Bar:
    """tqdm bar: trials done, best cost so far, minutes left."""

    def __init__(self, show: bool, total: int | None, deadline: float | None):
        from tqdm import tqdm

        self.deadline = deadline
        self.bar = tqdm(total=total, desc="search", unit="trial", file=sys.stderr, disable=not show)

    def update(self, study, best) -> None:
        done = sum(t.state.name in ("COMPLETE", "FAIL", "PRUNED") for t in study.get_trials(deepcopy=False))
        self.bar.n = done
        post = [f"best {best.user_attrs['cost']:.2f}x (drop {best.user_attrs['drop']:.2f})" if best else "best -"]
        if self.deadline is not None:
            left = max(0, self.deadline - time.time())
            post.append(f"{int(left // 60)}:{int(left % 60):02d} left")
        self.bar.set_postfix_str(", ".join(post))
        self.bar.refresh()


@contextlib.contextmanager
def progress(show: bool, total: int | None, deadline: float | None):
    b = _Bar(show, total, deadline)
    try:
        yield b
    finally:
        b.bar.close()

"""Measured comparisons: a baseline and its compressed variants, timed in one alternating loop, as JSON and as
markdown tables (report.json / report.md, the demo table)."""

from __future__ import annotations

import json
from typing import Callable

from ..timing import SHAPES, ticks
from .asr import DECODE_TOKENS, speech_speeds
from .bench import bench, cpu_info, n_params, size_mb, throughput
from .lm import lm_speeds
from .tasks import AUTO, default_task, evaluate, inference_fn, result_interval
from ..model import SlimModel
from ..vision import bench_shapes, is_image, random_pixels
from ..passes import int8_kernels

SHAPE_KEYS = [f"{b}x{t}" for b, t in SHAPES]


def runnable(model):
    """What serves a forward: the SlimModel itself (so a frozen graph is what gets timed), or an export's session."""
    return model if isinstance(model, SlimModel) else model.encoder


def served_by(model) -> dict:
    """What runs a model's forward on this machine: {"runtime": "torch eager" | "torch trace" | "onnxruntime" |
    "openvino", "int8_kernel": {kernel: how many Int8Linears run it}} (int8 kernels are chosen per CPU at load)."""
    if not isinstance(model, SlimModel):
        return {"runtime": getattr(model, "manifest", {}).get("runtime"), "int8_kernel": {}}
    traced = model.__dict__.get("frozen") is not None
    return {"runtime": "torch trace" if traced else "torch eager", "int8_kernel": int8_kernels.summary(model.net)}


def bench_model(model, runs: int = 20) -> dict:
    """One model's `slimformer bench` figures: {"size_mb", "params", "latency_ms": {"1x16", ...}, "threads", "cpu",
    "runtime", "int8_kernel"}."""
    info = cpu_info()
    machine = {"threads": info["threads"], "cpu": {k: info[k] for k in ("model", "flags", "freed_memory")}}
    stats, own = speeds({"m": model}, runs)
    return {**stats["m"], **own.get("m", {}), **machine, **served_by(model)}


def speed_ticks(model, runs: int) -> int:
    """How many times speeds() calls progress for models like `model` (none for Whisper's own keys)."""
    if getattr(model, "head", None) == "speech-seq2seq":
        return 0
    return ticks(runs, bench_shapes(model.config) if is_image(model) else SHAPES)


def speeds(models: dict, runs: int, progress=None) -> tuple[dict, dict]:
    """Every model timed in one alternating loop: ({name: {"size_mb", "params", "latency_ms"}}, {name: the family's
    own keys}). Whisper has its own shapes only (30 s of audio: asr.speech_speeds), no token batches; a causal LM
    adds prefill and decode (lm.lm_speeds) to the token batches."""
    first = next(iter(models.values()))
    head, runners = getattr(first, "head", None), {n: runnable(m) for n, m in models.items()}
    if head == "speech-seq2seq":
        return ({n: {"size_mb": round(size_mb(r), 2), "params": n_params(r)} for n, r in runners.items()},
                speech_speeds(models, runs))
    if is_image(first):  # random pixels of the config's size, one image and a batch (vision.bench_shapes)
        make = {n: (lambda cfg: lambda b, t: {"pixel_values": random_pixels(cfg, b)})(m.config)
                for n, m in models.items()}
        return bench(runners, {}, bench_shapes(first.config), runs, progress, make_inputs=make), {}
    stats = bench(runners, {n: m.tokenizer.vocab_size for n, m in models.items()}, runs=runs, progress=progress)
    return stats, lm_speeds(models, runs) if head == "causal-lm" else {}


def measure(models: dict[str, SlimModel], task: str | None = AUTO, runs: int = 20, progress=None,
            throughput_texts: list | None = None) -> dict:
    """{"machine", "task", "metric", "extra", "rows": [{"name", "recipe", "size_mb", "params", "latency_ms", task:
    value, f"{task}_{extra}": value}]}; the first model is the baseline, every ratio is against it, and each quality
    delta comes with its 95% paired-bootstrap interval. task AUTO: the baseline's own (tasks.default_task); None:
    no quality column. With throughput_texts (sentences, or a classifier's inputs), each row also gets inputs/s of
    encode() (predict() for a classifier) over them, end to end. progress() is called timing.ticks(runs) times
    while timing, then once per model scored and once per model's throughput."""
    if task == AUTO:
        task = default_task(next(iter(models.values())))
    stats, own = speeds(models, runs, progress)
    rows, results = [], []
    for name, m in models.items():
        row = {"name": name, "recipe": m.manifest.get("recipe", ""), **stats[name], **own.get(name, {}),
               **served_by(m)}
        if task:
            result = evaluate(m, task)
            row[task] = round(result.value, 2)
            row.update({f"{task}_{k}": round(v, 2) for k, v in result.extra.items()})  # e.g. sst2_macro_f1_x100
            results.append(result)
            if progress:
                progress()
        if throughput_texts:
            row["sentences_per_s"] = round(throughput(inference_fn(m), throughput_texts), 1)
            if progress:
                progress()
        rows.append(row)
    base = rows[0]
    for i, row in enumerate(rows):
        row["size_ratio"] = round(base["size_mb"] / row["size_mb"], 2)
        if "encoder_ms" in row:  # Whisper
            row["encoder_speedup"] = round(base["encoder_ms"]["1x30s"] / row["encoder_ms"]["1x30s"], 2)
            row["rtf_speedup"] = round(base["rtf"] / row["rtf"], 2)
        else:
            row["speedup"] = {k: round(v / row["latency_ms"][k], 2) for k, v in base["latency_ms"].items()}
        if "prefill_ms" in row:
            row["prefill_speedup"] = {k: round(base["prefill_ms"][k] / v, 2) for k, v in row["prefill_ms"].items()}
            row["decode_speedup"] = round(row["decode_tokens_per_s"] / base["decode_tokens_per_s"], 2)
        if task:
            row[f"{task}_delta"] = round(row[task] - base[task], 2)
            row[f"{task}_delta_95"] = [round(v, 2) for v in result_interval(results[0], results[i])]
    return {"machine": cpu_info(), "task": task, "metric": results[0].metric if task else None,
            "extra": list(results[0].extra) if task else [], "rows": rows}


EXTRA_LABELS = {"macro_f1_x100": "macro-F1"}  # column titles of TaskResult.extra figures
COUNTS = ("tokens", "words")  # extras that count the benchmark itself: one value in every row (the JSON keeps them)


def task_label(task: str, metric: str | None) -> str:
    """The quality column's title: STSB (Spearman), "WER %", "perplexity", or e.g. "sst2 accuracy"."""
    if task == "stsb":
        return "STSB"
    if metric in ("wer", "perplexity"):
        return {"wer": "WER %", "perplexity": "perplexity"}[metric]
    return f"{task} accuracy" if (metric or "").startswith("accuracy") else task


def _speed_columns(rows: list[dict]) -> tuple[list[str], Callable[[dict], list[str]], str]:
    """(titles, row -> cells, what the times are) of the speed columns: Whisper's encoder and transcription, else
    the shapes the rows were timed at (token batches, or an image model's images)."""
    if all("encoder_ms" in r for r in rows):
        return (["encoder speedup 30 s", "encoder ms 30 s", "transcription speedup", "RTF"],
                lambda r: [f"{r['encoder_speedup']:.2f}x", f"{r['encoder_ms']['1x30s']:.0f}",
                           f"{r['rtf_speedup']:.2f}x", f"{r['rtf']:.3f}"],
                "the encoder's time is the median of its forward on 30 s of audio at batch 1; RTF is the real-time "
                f"factor of transcribing it (the encoder and {DECODE_TOKENS} greedy decoder steps with the KV cache, "
                "over 30 s); all rows timed in turns")
    keys = list(rows[0]["latency_ms"])  # SHAPE_KEYS, or an image model's (vision.bench_shapes)
    shape = "seq" if keys == SHAPE_KEYS else "image height (random pixels)"
    return ([*[f"speedup {k}" for k in keys], *[f"ms {k}" for k in keys]],
            lambda r: [*[f"{r['speedup'][k]:.2f}x" for k in keys], *[f"{r['latency_ms'][k]:.1f}" for k in keys]],
            f"latency is the median of the encoder forward at batch x {shape}, all rows timed in one loop that "
            "alternates between them (blocks of back-to-back runs, shuffled each round)")


def markdown(result: dict) -> str:
    task = result["task"]
    speed_head, speed_cells, timed = _speed_columns(result["rows"])
    head = ["method", "size MB", "smaller", *speed_head]
    if task:
        extra = [k for k in result.get("extra", []) if k not in COUNTS]
        head += [task_label(task, result.get("metric")), "delta [95%]", *[EXTRA_LABELS.get(k, k) for k in extra]]
    lm = all("prefill_ms" in r for r in result["rows"])  # a causal LM: time to first token and decoding
    if lm:
        head += ["prefill speedup 8x128", "prefill ms 8x128", "decode speedup", "decode tokens/s"]
    tput = all("sentences_per_s" in r for r in result["rows"])
    if tput:
        head += ["sentences/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [r["name"], f"{r['size_mb']:.1f}", f"{r['size_ratio']:.2f}x", *speed_cells(r)]
        if task:
            lo, hi = r[f"{task}_delta_95"]
            cells += [f"{r[task]:.2f}", f"{r[f'{task}_delta']:+.2f} [{lo:+.2f}, {hi:+.2f}]",
                      *[f"{r[f'{task}_{k}']:.2f}" for k in extra]]
        if lm:
            cells += [f"{r['prefill_speedup']['8x128']:.2f}x", f"{r['prefill_ms']['8x128']:.1f}",
                      f"{r['decode_speedup']:.2f}x", f"{r['decode_tokens_per_s']:.1f}"]
        if tput:
            cells += [f"{r['sentences_per_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for name, why in result.get("skipped", {}).items():  # peers that cannot run this model, each with its reason
        lines.append(f"| {name} | not run: {why} |" + " |" * (len(head) - 2))
    m = result["machine"]
    kernels = [f"{r['name']}: " + ", ".join(f"{k} x{n}" for k, n in r["int8_kernel"].items())
               for r in result["rows"] if r.get("int8_kernel")]
    lines.append("")
    if kernels:
        lines.append("int8 kernels chosen on this CPU (Linears each runs): " + "; ".join(kernels) + ".")
    heap = {"kept": "freed memory kept in the process", "default": "the allocator's default (SLIMFORMER_MALLOC)",
            "not glibc": "the allocator's default (not glibc)"}.get(m.get("freed_memory"), "")
    lines.append(f"Measured on {m['model']} ({', '.join(m['flags']) or 'no AVX2'}), {m['threads']} threads"
                 + (f", {heap}" if heap else "") + "; "
                 + timed + "; speedup and size are ratios to the first row."
                 + (f" Quality: `{task}`; the delta's 95% interval is a paired bootstrap over the benchmark's "
                    "examples (1000 resamples): where it holds 0, the benchmark cannot tell that row from the first."
                    if task else "")
                 + (" A causal LM's latency columns time the forward with logits at every position (scoring, "
                    "perplexity); prefill is the time to the first token (the prompt's forward with the last "
                    "position's logits, as generate runs it); decode is greedy tokens/s with the KV cache at batch 1; "
                    "inputs/s score documents (perplexity)." if lm else ""))
    return "\n".join(lines)


def structure_md(steps: list[dict], label: str = "") -> str:
    """What the structural steps kept, per layer (heads, FFN neurons, layers)."""
    lines = []
    for s in steps:
        if "heads_per_layer" in s:
            lines.append(f"- {label}{s['step']}: heads per layer {s['heads_per_layer']}, FFN neurons per layer "
                         f"{s['ffn_per_layer']}, {s['flops_fraction']:.0%} of the encoder FLOPs at 128 tokens")
        if "kept_layers" in s:
            lines.append(f"- {label}{s['step']}: kept layers {s['kept_layers']}")
    return "\n".join(lines)


def structures_md(models: dict) -> str:
    """structure_md of every model that has structural steps, each line labelled with the model's row name."""
    return "\n".join(filter(None, (structure_md(m.manifest["steps"], f"{n}, ") for n, m in models.items())))


def report_files(result: dict, model) -> dict[str, str]:
    """report.json (measure()'s result plus the model's steps) and report.md, written beside a compressed model."""
    steps = model.manifest["steps"]
    md = f"# slimformer report: `{model.manifest['recipe']}`\n\n" + markdown(result) + "\n\n" + \
        structure_md(steps) + "\n"
    if "fidelity" in result:
        from .fidelity import risk_md

        md += "\n" + risk_md(result["fidelity"]) + "\n"
    return {"report.json": json.dumps({**result, "steps": steps}, indent=1), "report.md": md}


def plot(result: dict, path) -> None:
    """Speedup at a batch shape (8x128; an image model: 8 images; a speech model: its encoder on 30 s of audio)
    against quality, one labelled point a row (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task, rows = result["task"], result["rows"]
    if all("encoder_speedup" in r for r in rows):
        xs, what = [r["encoder_speedup"] for r in rows], "of the encoder on 30 s of audio"
    else:
        key = "8x128" if "8x128" in rows[0]["speedup"] else list(rows[0]["speedup"])[-1]
        xs, what = [r["speedup"][key] for r in rows], f"at {key}"
    fig, ax = plt.subplots(figsize=(8, 5))
    for r, x in zip(rows, xs):
        ax.scatter(x, r[task])
        ax.annotate(r["name"], (x, r[task]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel(f"speedup {what} vs torch fp32 (same run)")
    ax.set_ylabel(f"{task} ({(result.get('metric') or '').replace('_', ' ')})")  # e.g. sst2 (accuracy x100)
    m = result["machine"]
    ax.set_title(f"{m['model']} ({', '.join(m['flags'])}), {m['threads']} threads", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

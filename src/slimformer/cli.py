"""Thin command-line layer over the API: compress, bench, eval, demo. No logic of its own beyond I/O."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from .errors import SlimformerError
from .search.space import FAMILIES  # torch-free: the objectives --help lists

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Make transformer encoders smaller and faster; measure them honestly.")

MODEL_ARG = typer.Argument(None, help="HF / sentence-transformers / slimformer folder (default: all-MiniLM-L6-v2)")


def _quiet():
    """Keep the output to what we print: no weight-loading bars or advice from transformers."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


@app.command()
def compress(model: Optional[str] = MODEL_ARG,
             recipe: str = typer.Option(..., "--recipe", "-r", help='e.g. "int8" or "prune(flops=0.5)+int8"'),
             out: Path = typer.Option(..., "--out", "-o", help="output folder (written atomically)"),
             force: bool = typer.Option(False, "--force", help="overwrite an existing output folder"),
             calib: Optional[Path] = typer.Option(None, "--calib", help="calibration text, one sentence a line"),
             task: str = typer.Option("auto", "--task", help="quality task for the report: auto (the model's own: "
                                      "stsb for an embedder, sst2 for a 2-label classifier; a speech or image model: "
                                      "no report without wer:PATH or cls:FOLDER), a task eval takes, or none"),
             runs: int = typer.Option(20, "--runs", help="timed runs per shape")):
    """Compress MODEL with RECIPE into OUT, with report.json / report.md against the original."""
    from . import recipe as recipes

    steps = recipes.parse(recipe)  # parsed once, here: a bad recipe fails before torch or the model loads
    from . import io
    from .folder import check_output
    from .measure.compare import compare
    from .measure.report import markdown, report_files

    check_output(out, force, source=model)  # and so does an output that is there (io.save checks it again)
    from .data import read_lines

    images = calib is not None and calib.is_dir()  # a folder: an image model's calibration images
    if calib is not None and not images:
        read_lines(calib)  # and an empty, unreadable or missing --calib file
    base = io.load(model)
    if images and getattr(base, "modality", "text") != "image":
        read_lines(calib)  # a text model's --calib is a file: the one-line error naming the folder
    # a training step keeps resumable state beside OUT: the same command after a crash (even kill -9) resumes
    ckpt = Path(out).resolve().parent / f".{Path(out).name}.checkpoint"
    modality = getattr(base, "modality", "text")
    if modality != "text" and task == "auto":  # an image or speech model has no task of its own: no report
        from .api import compress as compress_model

        small = compress_model(base, steps, calib=str(calib) if calib else None, checkpoint_dir=ckpt)
        task = "cls:FOLDER (an image classifier)" if modality == "image" else "wer:PATH"
        typer.echo(f"wrote {io.save(small, out, force=force)} (no report: give --task {task} for one; measure it "
                   "with bench and eval)")
        return
    # compare() checks that the task fits the model (auto: picks the model's own) before compressing
    result, models = compare({"original": base}, {"compressed": steps}, None if task == "none" else task, runs,
                             calib=str(calib) if calib else None, checkpoint_dir=ckpt, show_progress=True)
    small = models["compressed"]
    if task != "none" and modality == "text":  # how faithful it stays on text unlike the calibration text
        from .measure.fidelity import transfer_risk

        result["fidelity"] = transfer_risk(base, small, str(calib) if calib else None)
    path = io.save(small, out, force=force, extra_files=report_files(result, small))
    typer.echo(markdown(result))
    if "fidelity" in result:
        from .measure.fidelity import risk_md

        typer.echo("\n" + risk_md(result["fidelity"]))
    typer.echo(f"\nwrote {path}")


@app.command()
def bench(models: Optional[List[str]] = typer.Argument(None, help="model folder(s); none: the embedded default"),
          as_json: bool = typer.Option(False, "--json"),
          runs: int = typer.Option(20, "--runs", help="timed runs per shape (>= 20 for reported figures)"),
          peers: bool = typer.Option(False, "--peers", help="also the original under torch fp32, torch.ao int8, "
                                     "ORT fp32 and ORT int8, all in one run, with the task (--task) and throughput"),
          base: Optional[str] = typer.Option(None, "--base", help="with --peers: the model every peer row is built "
                                             "from (default: the original the models' manifests name, else "
                                             "all-MiniLM-L6-v2)"),
          out_dir: Path = typer.Option(Path("benchmarks/out"), "--out-dir", help="where --peers writes "
                                       "peers.json, peers.md and peers.png"),
          task: Optional[str] = typer.Option(None, "--task", help="with --peers: the quality column (default: the "
                                             "original's own; a speech model: wer:PATH)")):
    """Size, parameters and median latency at 1x16, 8x128 and 32x32 (with --peers: the side-by-side table)."""
    from . import io
    from .measure.report import bench_model

    models = models or []
    if peers:
        from .measure.peers import compare_peers

        result, table = compare_peers(models, runs, out_dir, show_progress=True, base=base, task=task)
        typer.echo(json.dumps({"rows": result["rows"]}) if as_json else table)
        return
    for name, given in (("--base", base), ("--task", task)):
        if given is not None:
            raise SlimformerError(f"bench: {name} goes with --peers")
    if len(models) > 1:
        raise SlimformerError("bench: one model at a time (or --peers to compare several)")
    model = models[0] if models else None
    out = {"model": model or "all-MiniLM-L6-v2 (embedded)", **bench_model(io.load(model), runs)}
    if as_json:
        typer.echo(json.dumps(out))
        return
    typer.echo(f"model    {out['model']}\nsize     {out['size_mb']:.2f} MB\nparams   {out['params']:,}")
    for k, v in out.get("latency_ms", {}).items():  # a speech model has its own keys instead
        typer.echo(f"{k:<8} {v:.2f} ms")
    for k, v in out.get("prefill_ms", {}).items():  # a causal LM's time to the first token
        typer.echo(f"prefill  {k} {v:.2f} ms")
    if "decode_tokens_per_s" in out:
        typer.echo(f"decode   {out['decode_tokens_per_s']:.1f} tokens/s")
    if "encoder_ms" in out:
        typer.echo(f"encoder  {out['encoder_ms']['1x30s']:.1f} ms on 30 s of audio\nrtf      {out['rtf']:.4f}")
    cpu = out["cpu"]
    typer.echo(f"cpu      {cpu['model']} ({', '.join(cpu['flags'])}), {out['threads']} threads")


@app.command("eval")
def eval_(model: Optional[str] = MODEL_ARG,
          task: Optional[str] = typer.Option(None, "--task", help="stsb | stsb-dev | sts:PATH | sst2 | cls:PATH "
                                             "| ppl | ppl:PATH | wer:PATH (default: the model's own: stsb for an "
                                             "embedder, sst2 for a 2-label classifier, ppl (SST-2 dev) for a causal "
                                             "LM; a speech model: wer:PATH, a TSV audio<TAB>text; an image "
                                             "classifier: cls:FOLDER, one subfolder of images per label)"),
          as_json: bool = typer.Option(False, "--json")):
    """Quality on a real benchmark (STS-B test: Spearman of cosine x100; classification: accuracy x100)."""
    from . import io
    from .measure.tasks import evaluate, task_inputs

    if task:
        task_inputs(task)  # a bad task or a missing / malformed file fails before the model loads
    r = evaluate(io.load(model), task)
    extra = {k: round(v, 4) for k, v in r.extra.items()}  # e.g. macro_f1_x100 for a classifier
    out = {"model": model or "all-MiniLM-L6-v2 (embedded)", "task": r.task, "metric": r.metric,
           "value": round(r.value, 4), "n": r.n, **extra}
    more = "".join(f", {k} = {v:.2f}" for k, v in extra.items())
    typer.echo(json.dumps(out) if as_json else f"{out['task']}: {out['metric']} = {out['value']:.2f}{more} (n={r.n})")


@app.command()
def export(model: Optional[str] = MODEL_ARG, out: Path = typer.Option(..., "--out", "-o", help="output folder"),
           onnx: bool = typer.Option(True, "--onnx", help="export to ONNX Runtime (the default target)"),
           openvino: bool = typer.Option(False, "--openvino", help="export to OpenVINO IR instead (int8 weights; "
                                         "needs pip install 'slimformer[openvino]')"),
           int8: bool = typer.Option(True, "--int8/--fp32", help="int8 per-channel quantization in the runtime"),
           optimize: bool = typer.Option(True, "--optimize/--no-optimize", help="ORT transformer graph fusions"),
           force: bool = typer.Option(False, "--force", help="overwrite an existing output folder")):
    """Export MODEL (any slimformer output, or an original) to ONNX Runtime or OpenVINO, in the folder layout
    sentence-transformers (backend="onnx"/"openvino") and optimum load; bench/eval/load serve it too. A classifier's
    graph returns its logits."""
    from . import io
    from .runtime.export import export as run_export

    del onnx  # the default target; --openvino picks the other
    path = run_export(io.load(model), out, int8=int8, optimize=optimize, force=force,
                      runtime="openvino" if openvino else "onnxruntime")
    typer.echo(f"wrote {path}")


@app.command()
def demo(full: bool = typer.Option(False, "--full", help="the README's table (longer training budgets)"),
         runs: int = typer.Option(20, "--runs", help="timed runs per shape")):
    """Compress the embedded all-MiniLM-L6-v2 with each method and print the measured comparison table."""
    from .demo import run_demo

    typer.echo(run_demo(full=full, runs=runs))


@app.command()
def search(model: Optional[str] = MODEL_ARG,
           max_drop: float = typer.Option(..., "--max-drop", help="quality budget: the most the task's score may "
                                          "drop on the whole split (points x100; WER points; a causal LM: percent "
                                          "of its perplexity)"),
           out: Path = typer.Option(..., "--out", "-o", help="the chosen model, with search.json / search.md / "
                                    "pareto.png"),
           task: Optional[str] = typer.Option(None, "--task", help="stsb-dev | sts:PATH | sst2 | cls:PATH | ppl:PATH | "
                                              "wer:PATH (default: stsb-dev for an embedder, the model's own for a "
                                              "classifier or a causal LM)"),
           objective: Optional[str] = typer.Option(None, "--objective", help="the first of the model family's is "
                                                   "the default: " + "; ".join(f"{f.what}: {' | '.join(f.objectives)}"
                                                                              for f in FAMILIES.values())),
           calib: Optional[str] = typer.Option(None, "--calib", help="what every trial calibrates on, as compress's "
                                               "--calib (a speech model: required, a TSV of speech)"),
           runtime: str = typer.Option("auto", "--runtime", help="torch | onnx | openvino | auto (search over every "
                                       "runtime installed)"),
           minutes: Optional[float] = typer.Option(None, "--minutes", help="wall-clock budget of this worker, "
                                                   "distillation included (default 30 when --trials is not given)"),
           trials: Optional[int] = typer.Option(None, "--trials", help="trials in the study, all workers together"),
           storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage: an RDB URL (sqlite:///..., "
                                                 "postgresql://...) or a journal file path for several machines "
                                                 "(default: OUT.optuna.db beside OUT)"),
           study: Optional[str] = typer.Option(None, "--study", help="study name (default: from model, task, "
                                               "objective and budget, so the same command resumes)"),
           tries: Optional[List[str]] = typer.Option(None, "--try", help="RECIPE[@RUNTIME] to run first (repeat; "
                                                     "default: the original and prune(flops=0.8)+int8)"),
           runs: int = typer.Option(20, "--runs", help="timed runs per shape of a full measurement"),
           peers: bool = typer.Option(False, "--peers", help="also measure bench --peers' rows once on this machine "
                                      "(minutes, out of --minutes): reference points in search.md and pareto.png"),
           force: bool = typer.Option(False, "--force", help="overwrite an existing OUT")):
    """The fastest (or smallest) model within a quality budget: an Optuna study over structure, int8,
    distillation and runtime; each trial compresses, exports and measures in a subprocess. Rerun the same command
    to resume; run it on several machines with one --storage to share the work."""
    from .search.study import search as run_search

    if task is None:
        from . import io
        from .measure.tasks import default_task

        own = default_task(io.load(model))  # a speech or image model: the one-line error naming the task to give
        task = "stsb-dev" if own == "stsb" else own  # never the test split the README reports
    s = run_search(model, max_drop, out, task=task, objective=objective, runtime=runtime, minutes=minutes,
                   n_trials=trials, storage=storage, study_name=study, force=force, tries=tries, runs=runs,
                   show_progress=True, peers=peers, calib=calib)
    from .measure.budget import drop_unit

    chosen = next(r for r in s["trials"] if r["number"] == s["chosen"])
    typer.echo(f"chosen: trial {chosen['number']}, {chosen['recipe'] or 'original'} @ {chosen['runtime']}: "
               f"{s['task']} {chosen['quality']:.2f} (drop {chosen['drop']:.2f}{drop_unit(s['metric'])}), "
               f"{chosen['cost']:.3f}x the original's {s['objective']}")
    typer.echo(f"wrote {Path(out).resolve()}")


def _warning_lines() -> None:
    """slimformer's own warnings (CoverageWarning) as one `warning:` line on stderr; others as Python prints them."""
    import sys
    import warnings

    from tqdm import tqdm

    from .errors import CoverageWarning

    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CoverageWarning):
            tqdm.write(f"warning: {message}", file=sys.stderr)  # on its own line, under any progress bar
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line


def main() -> None:
    _quiet()
    _warning_lines()
    try:
        app()
    except SlimformerError as e:
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130)


if __name__ == "__main__":
    main()

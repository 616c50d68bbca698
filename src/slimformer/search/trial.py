"""One trial in a subprocess: compress the original with the candidate's recipe, export it to the candidate's
runtime, measure it (probe.py), and write the result as JSON. A subprocess, so that a crash, an out-of-memory kill
or a hung export in one trial ends that trial only: the search records it as failed with its one-line error.

    python -m slimformer.search.trial SPEC.json     # SPEC: what run() writes; the result goes to spec["result"]

The spec's "mode" is "reference" (measure the original: its full and slice scores and their noise, and, when the
spec names a "table" file, the latency table proxy.py predicts from), "table" (that table only), "peers" (the
peers of `bench --peers`, measured like a full trial) or "trial".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..folder import write_json
from .space import EXPORT_RUNTIME

GRACE_S = 60  # a trial may overrun the search's time budget by this much before it is killed


def run(spec: dict, folder: Path, timeout: float | None) -> dict:
    """Run `spec` in a fresh Python process; its result dict, or {"error": one line} when it failed, was killed
    (signal 9: most often out of memory) or ran past `timeout` seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    path, result = folder / "spec.json", folder / "result.json"
    result.unlink(missing_ok=True)
    path.write_text(json.dumps({**spec, "result": str(result)}))
    import slimformer

    env = dict(os.environ)  # the child imports this same slimformer (a source checkout shadows an installed one)
    src = str(Path(slimformer.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        proc = subprocess.run([sys.executable, "-m", "slimformer.search.trial", str(path)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"ran past the search's time budget ({timeout:.0f} s) and was stopped", "timed_out": True}
    if proc.returncode == 0 and result.is_file():
        return json.loads(result.read_text())
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    if proc.returncode < 0:
        why = f"killed by signal {-proc.returncode}" + (" (out of memory?)" if proc.returncode == -9 else "")
        return {"error": why}
    return {"error": (lines[-1] if lines else f"exit code {proc.returncode}").removeprefix("error: ")}


def one_line(e: Exception) -> str:
    """An unexpected exception as the one line a failed trial records: its type and its message's first line."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _die_with_parent() -> None:
    """A killed search must not leave its trial running: exit when the parent process is gone."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _build(spec: dict, base, out: Path):
    """The candidate: compressed (if it has a recipe), written to `out` in its runtime's format, and loaded back
    from there as a user would serve it."""
    from .. import api, io
    from ..runtime.export import export

    cand = spec["candidate"]
    small = api.compress(base, cand["recipe"], calib=spec.get("calib")) if cand["recipe"] else base
    if cand["runtime"] == "torch":
        io.save(small, out, force=True)
    else:  # the runtime quantizes to int8 when the recipe did (it keeps the recipe's fp32 Linears in float)
        int8 = any(step.startswith("int8") for step in (cand["recipe"] or "").split("+"))
        export(small, out, int8=int8, runtime=EXPORT_RUNTIME[cand["runtime"]], force=True)
    return io.load(out)


def measure_trial(spec: dict) -> dict:
    """Compress + export, then the proxy (quality on a slice, cost at the objective's shape); the full measurement
    (whole split with its interval, every shape) only when the proxy is near the front (spec["full_if"])."""
    from .. import io
    from ..measure.budget import drop
    from . import probe

    ref = json.loads(Path(spec["reference"]).read_text())
    t0 = time.perf_counter()
    base = io.load(spec["model"])
    model_dir = Path(spec["dir"]) / "model"
    cand = _build(spec, base, model_dir)
    out = {"stage": "proxy", "recipe": cand.manifest.get("recipe") or None,  # what ran (None: the original)
           "build_s": round(time.perf_counter() - t0, 1)}
    t1 = time.perf_counter()
    slice_q = probe.slice_score(cand, spec["task"])
    slice_drop = drop(ref["metric"], ref["slice"], slice_q)
    proxy = probe.cost(base, cand, spec["objective"], max(3, spec["runs"] // 4), spec["task"], all_shapes=False)
    out.update(slice_quality=slice_q, slice_drop=slice_drop, proxy_cost=proxy["cost"], **proxy, drop=slice_drop,
               proxy_s=round(time.perf_counter() - t1, 1))
    full_if = spec["full_if"]
    if out["slice_drop"] <= full_if["drop"] and proxy["cost"] <= full_if["cost"]:
        t2 = time.perf_counter()
        out.update(stage="full", **probe.full_quality(cand, spec["task"], ref),
                   other_fidelity=probe.other_fidelity(base, cand, spec.get("calib")),
                   **probe.cost(base, cand, spec["objective"], spec["runs"], spec["task"], all_shapes=True))
        out["full_s"] = round(time.perf_counter() - t2, 1)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def measure_peers(spec: dict) -> dict:
    """`bench --peers`' rows (the original under torch.ao int8, ORT fp32 and int8, OpenVINO int8 weights) measured as
    a fully measured trial is, on the search's task, objective and machine: reference points for search.md and
    pareto.png."""
    import tempfile

    from .. import io
    from ..measure.peers import peer_models
    from . import probe

    ref = json.loads(Path(spec["reference"]).read_text())
    base = io.load(spec["model"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:  # the peers' exports live until they are measured
        for name, m in peer_models(base, tmp).items():
            if m is not base:
                rows.append({"name": name, **probe.full_quality(m, spec["task"], ref),
                             "other_fidelity": probe.other_fidelity(base, m, spec.get("calib")),
                             **probe.cost(base, m, spec["objective"], spec["runs"], spec["task"], all_shapes=True)})
    return {"model": spec["model"], "task": spec["task"], "objective": spec["objective"], "peers": rows}


def latency_table(spec: dict, model) -> dict:
    """The original's latency table (proxy.measure_table) for the spec's objective, written to spec["table"]; a
    model it cannot be measured on gets {"error": why} there (the search then builds every candidate)."""
    from ..errors import SlimformerError
    from . import proxy

    try:
        table = proxy.measure_table(model, spec["objective"])
    except SlimformerError as e:
        table = {"error": str(e)}
    except Exception as e:  # an architecture the narrowed clones do not fit: no proxy, the reference still stands
        table = {"error": one_line(e)}
    table = {**table, "model": spec["model"], "key": proxy.table_key(spec["objective"])}
    write_json(spec["table"], table)
    return table


def main(path: str) -> None:
    from ..errors import SlimformerError

    _die_with_parent()
    spec = json.loads(Path(path).read_text())
    try:
        if spec["mode"] == "reference":
            from .. import io
            from .probe import reference

            model = io.load(spec["model"])
            result = {**reference(model, spec["task"]), "model": spec["model"]}
            if spec.get("table"):
                latency_table(spec, model)
        elif spec["mode"] == "table":
            from .. import io

            result = latency_table(spec, io.load(spec["model"]))
        elif spec["mode"] == "peers":
            result = measure_peers(spec)
        else:
            result = measure_trial(spec)
    except SlimformerError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except Exception as e:  # any crash is this trial's failure, in one line; the search goes on
        print(one_line(e), file=sys.stderr)
        raise SystemExit(1)
    write_json(spec["result"], result)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    main(sys.argv[1])

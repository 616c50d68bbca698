"""The search loop: an Optuna study (multi-objective TPE: quality drop and cost, constrained to drop <= budget) in
a storage that several workers share, each trial run by trial.py in a subprocess.

Storage: an SQLite file beside OUT by default; any URL Optuna's RDB storage takes (postgresql://, mysql://); or a
plain file path, which is Optuna's journal file (append-only, for a shared disk: workers on several machines).
Rerunning the same command resumes the study: trials already finished are not run again. --trials counts the
study's trials (every worker's); --minutes is this worker's wall clock, distillation included.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import time
from pathlib import Path

from ..errors import BudgetError, SlimformerError
from ..folder import atomic_folder, check_output
from . import proxy, report, space, trial as trials

DEFAULT_TRIES = ("original", "prune(flops=0.8)+int8")  # run first on each runtime: the original, the usual hand pick
SLICE_SLACK = 1.0  # points a slice's drop may exceed the budget by and still get the full measurement
NEAR = 1.15  # a proxy cost within this factor of the best full feasible cost so far gets the full measurement;
# a candidate the latency table predicts above it is not built at all (proxy.py)
STARTUP = 6  # random trials before TPE models the space
PRUNED_RUN = 20  # after this many pruned trials in a row the next one is built all the same: a pruned trial costs
# milliseconds, and a sampler stuck where the table says no must not fill the storage with them until the deadline


def open_storage(storage: str | None, out: Path):
    """The Optuna storage: None -> SQLite file OUT.optuna.db beside OUT; "x://..." -> an RDB URL; else a journal
    file path (several machines on a shared disk)."""
    import optuna

    if storage is None:
        storage = f"sqlite:///{out.parent / (out.name + '.optuna.db')}"
    if "://" in storage:
        kw = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(storage, engine_kwargs=kw)
    from optuna.storages.journal import JournalFileBackend

    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(storage)))


def open_study(storage, name: str, settings: dict):
    """Create or load the study; a study made by a different command (model, task, objective, budget) is refused."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(n_startup_trials=STARTUP)
    study = optuna.create_study(study_name=name, storage=storage, directions=["minimize", "minimize"],
                                sampler=sampler, load_if_exists=True)
    have = study.user_attrs.get("settings")
    if have is None:
        study.set_user_attr("settings", settings)
    elif have != settings:
        diff = ", ".join(f"{k} {have.get(k)!r} (now {v!r})" for k, v in settings.items() if have.get(k) != v)
        raise SlimformerError(f"search: study '{name}' was made with {diff}; give another --study")
    return study


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_workers(study) -> None:
    """Trials left running by a killed worker of this machine are marked failed (a rerun then goes on from the
    rest); a running trial of another machine is left alone: its worker may still be at work."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w_host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if w_host == host and pid.isdigit() and not _alive(int(pid)):
            study._storage.set_trial_user_attr(t._trial_id, "error", "its worker was killed")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def counted(study) -> int:
    """Trials that use up --trials: finished (complete, failed) and running ones, every worker's."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED,
                                                      TrialState.RUNNING)))


def time_left_for_one(study, deadline: float | None) -> bool:
    """Whether another trial can start: the clock has at least half a typical trial (the median so far) left."""
    import statistics

    if deadline is None:
        return True
    took = [t.user_attrs["wall_s"] for t in study.get_trials(deepcopy=False) if "wall_s" in t.user_attrs]
    return deadline - time.time() > (statistics.median(took) / 2 if took else 0)


def feasible_full(study, max_drop: float) -> list:
    """Trials fully measured (whole split, every shape) whose drop is within the budget."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("stage") == "full" and t.user_attrs["drop"] <= max_drop]


def choose(study, max_drop: float):
    """The lowest-cost feasible fully measured trial (ties: the smaller drop), or None."""
    return min(feasible_full(study, max_drop), key=lambda t: (t.user_attrs["cost"], t.user_attrs["drop"]),
               default=None)


def _candidate(t, n_layers: int, runtimes, minutes, max_distill, family: str) -> space.Candidate:
    if "try_runtime" in t.user_attrs:  # enqueued hand pick
        return space.Candidate(t.user_attrs.get("try_recipe"), t.user_attrs["try_runtime"])
    return space.suggest(t, n_layers, runtimes, minutes, max_distill, family)


def latency_table(spec: dict, work: Path) -> dict:
    """The original's latency table for the spec's model and objective: the file the reference subprocess wrote, or
    (a reference kept from a search with another objective) measured now, in a subprocess, and kept in that file."""
    table = proxy.read_table(spec["table"], spec["model"], spec["objective"])
    if table is None:
        table = trials.run({**spec, "mode": "table"}, work / "table", None)
        shutil.rmtree(work / "table", ignore_errors=True)
    return table


def pruned_by_proxy(study, t, cand: space.Candidate, table: dict | None, best) -> bool:
    """Predict the candidate's cost from the latency table (proxy.py) and record it; once some trial is feasible, a
    candidate predicted above NEAR x the best feasible cost is told PRUNED, unbuilt. Hand picks (--try) always run."""
    from optuna.trial import TrialState

    recent = study.get_trials(deepcopy=False)[-PRUNED_RUN - 1 : -1]  # the ones before this trial
    if table is None or "error" in table or (len(recent) == PRUNED_RUN and
                                             all(r.state == TrialState.PRUNED for r in recent)):
        return False
    done = [(space.Candidate(f.user_attrs.get("recipe"), f.user_attrs["runtime"]), f.user_attrs["proxy_cost"])
            for f in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "proxy_cost" in f.user_attrs]
    predicted = proxy.predicted_cost(cand, table, proxy.factors(done, table))
    if predicted is None:
        return False
    t.set_user_attr("predicted_cost", round(predicted, 4))
    if best is None or "try_runtime" in t.user_attrs or predicted <= NEAR * best.user_attrs["cost"]:
        return False
    t.set_user_attr("pruned", f"predicted cost {predicted:.3f} > {NEAR} x {best.user_attrs['cost']:.3f}, the "
                              f"best feasible cost so far (trial {best.number})")
    study.tell(t, state=TrialState.PRUNED)
    return True


def run_one(study, spec: dict, work: Path, n_layers: int, runtimes, minutes, deadline: float | None,
            max_drop: float, table: dict | None = None) -> None:
    """Ask the study for a trial; unless the latency table prunes it, run it in a subprocess and tell the study
    what it measured (or that it failed)."""
    from optuna.trial import TrialState

    left = None if deadline is None else max(0.0, deadline - time.time())
    t = study.ask()
    cand = _candidate(t, n_layers, runtimes, minutes, None if left is None else left / 60 / 2,
                      spec.get("family", "text"))
    t.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    t.set_user_attr("recipe", cand.recipe)
    t.set_user_attr("runtime", cand.runtime)
    best = choose(study, max_drop)
    if pruned_by_proxy(study, t, cand, table, best):
        return
    full_if = {"drop": max_drop + SLICE_SLACK, "cost": best.user_attrs["cost"] * NEAR if best else math.inf}
    folder = work / f"trial-{t.number:04d}"
    t0 = time.time()
    result = trials.run({**spec, "mode": "trial", "candidate": {"recipe": cand.recipe, "runtime": cand.runtime},
                         "dir": str(folder), "full_if": full_if}, folder,
                        None if left is None else left + trials.GRACE_S)
    result["wall_s"] = round(time.time() - t0, 1)
    for k, v in result.items():
        t.set_user_attr(k, v)
    if "error" in result:
        study.tell(t, state=TrialState.FAIL)
        if result.get("timed_out"):  # not the candidate's fault: the next run of the command tries it again
            study.enqueue_trial({}, user_attrs={"try_recipe": cand.recipe, "try_runtime": cand.runtime})
        shutil.rmtree(folder, ignore_errors=True)
        return
    t.set_constraint("drop", result["drop"] - max_drop)  # <= 0: feasible; TPE samples around feasible trials
    study.tell(t, [result["drop"], result["cost"]])
    if not (result["stage"] == "full" and result["drop"] <= max_drop):
        shutil.rmtree(folder, ignore_errors=True)  # only what could become OUT is kept


def search(model: str | None, max_drop: float, out: str | os.PathLike, task: str | None = None,
           objective: str | None = None, runtime: str = "auto", minutes: float | None = None,
           n_trials: int | None = None, storage: str | None = None, study_name: str | None = None,
           force: bool = False, tries: list[str] | None = None, runs: int = 20, show_progress: bool = False,
           peers: bool = False, calib: str | None = None) -> dict:
    """Search for the lowest-cost model whose quality drop on `task` is at most `max_drop` (measure/budget.py:
    points, WER points, or percent of the perplexity); write it to OUT with search.json / search.md / pareto.png and
    return search.json's content. Nothing found: search.json goes beside OUT (OUT.search.json) and a BudgetError
    names the closest trial. objective: one of the model family's (space.FAMILIES; None: its first). calib: what
    every trial compresses with (api.compress's calib; a speech model's TSV is required). peers: also measure `bench
    --peers`' rows once on this machine (kept beside OUT like the original's figures), as reference points in
    search.md and pareto.png."""
    from .. import io
    from ..api import calibration_of
    from ..arch import LAYER_STACK, blocks
    from ..measure.budget import drop_unit
    from ..measure.tasks import check_task

    out = check_output(out, force, source=model)
    runtimes = space.available_runtimes(runtime)
    if not (isinstance(max_drop, (int, float)) and math.isfinite(max_drop)):
        raise SlimformerError(f"search: --max-drop must be a number, got {max_drop!r}")
    if n_trials is not None and n_trials < 1:
        raise SlimformerError(f"search: --trials must be >= 1, got {n_trials}")
    if minutes is not None and not minutes > 0:
        raise SlimformerError(f"search: --minutes must be > 0, got {minutes}")
    if minutes is None and n_trials is None:
        minutes = 30.0
    picks = [c for text in (DEFAULT_TRIES if tries is None else tries) for c in space.parse_try(text, runtimes)]
    if tries is None and len(runtimes) > 1:  # the original under torch is the reference itself: cost 1, drop 0
        picks = [c for c in picks if c != space.Candidate(None, "torch")]
    base = io.load(model)
    family = space.family_of(base)
    objective = space.check_objective(objective, family)
    task = check_task(task, base)
    if calib is not None or family == "speech":  # a bad --calib fails here, not in every trial
        calibration_of(base, calib)
    n_layers = len(blocks(base.encoder, LAYER_STACK.get(base.model_type, base.adapter)))  # what layers(keep=) counts
    del base
    work = out.parent / f".{out.name}.search"
    deadline = None if minutes is None else time.time() + minutes * 60
    spec = {"model": model, "task": task, "objective": objective, "runs": runs, "calib": calib, "family": family,
            "reference": str(work / "reference" / "result.json"), "table": str(work / "reference" / "latency.json")}
    ref = report.read_reference(work / "reference" / "result.json")  # measured once per machine, kept beside OUT
    if ref is None or (ref.get("model"), ref["task"]) != (model, task):
        ref = trials.run({**spec, "mode": "reference"}, work / "reference", None)  # the latency table too
        if "error" in ref:
            raise SlimformerError(f"search: measuring the original failed: {ref['error']}")
    table = latency_table(spec, work)
    settings = {"model": str(model or "all-MiniLM-L6-v2"), "task": task, "objective": objective,
                "max_drop": max_drop, "runtimes": list(runtimes), **({"calib": calib} if calib else {})}
    name = study_name or report.study_name(settings)
    meta = {**settings, "metric": ref["metric"], "study": name, "storage": storage or "sqlite (beside OUT)",
            "original": {k: ref[k] for k in ("value", "noise", "size_mb", "n")}, "peers": [],
            "latency_table": table, "prune_above": NEAR}
    if max_drop < ref["noise"]:
        return report.fail(None, meta, out, f"--max-drop {max_drop} is below the original's re-measurement noise "
                           f"({ref['noise']:.4f}{drop_unit(ref['metric'])}: a slice of {task} scored again with "
                           "another batch size)")
    if peers:  # measured once per machine, task and objective, like the reference (after the budget check: minutes)
        got = report.read_reference(work / "peers" / "result.json")
        if got is None or (got.get("model"), got["task"], got["objective"]) != (model, task, objective):
            got = trials.run({**spec, "mode": "peers"}, work / "peers", None)
            if "error" in got:
                raise SlimformerError(f"search: measuring the peers failed: {got['error']}")
        meta["peers"] = got["peers"]
    study = open_study(open_storage(storage, out), name, settings)
    fail_dead_workers(study)
    if not study.trials:
        for c in picks:
            study.enqueue_trial({}, user_attrs={"try_recipe": c.recipe, "try_runtime": c.runtime})
    with report.progress(show_progress, n_trials, deadline) as bar:
        while (n_trials is None or counted(study) < n_trials) and time_left_for_one(study, deadline):
            run_one(study, spec, work, n_layers, runtimes, minutes, deadline, max_drop, table)
            bar.update(study, choose(study, max_drop))
    chosen = choose(study, max_drop)
    if chosen is None:
        return report.fail(study, meta, out, f"nothing within --max-drop {max_drop} on {task}")
    folder = work / f"trial-{chosen.number:04d}" / "model"
    if not folder.is_dir():  # fully measured by a worker on another machine: build it again here
        cand = {"recipe": chosen.user_attrs["recipe"], "runtime": chosen.user_attrs["runtime"]}
        res = trials.run({**spec, "mode": "trial", "candidate": cand, "dir": str(folder.parent),
                          "full_if": {"drop": -math.inf, "cost": -math.inf}}, folder.parent, None)
        if "error" in res:
            raise SlimformerError(f"search: rebuilding trial {chosen.number} failed: {res['error']}")
    summary = report.summary(study, meta, chosen)
    with atomic_folder(out, force, source=model) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
        report.write(tmp, summary)
    shutil.rmtree(folder.parent, ignore_errors=True)
    return summary

"""slimformer search: the space makes valid recipes, the study's bookkeeping (choice, Pareto rows, dead workers,
settings), and end to end on a tiny random model and a small STS slice: OUT and its reports, the budget, a failing
trial, two workers on one storage, resume after a kill, the impossible budget."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from slimformer.errors import BudgetError, RecipeError, SlimformerError
from slimformer.search import report, space, study as studies, trial as trials

optuna.logging.set_verbosity(optuna.logging.WARNING)
OFF = {"vocab": False, "layers": 6, "prune_flops": 1.0, "fnet": 0, "lowrank": 1.0, "distill": 0.0, "int8": False,
       "runtime": "onnx"}


def test_all_off_is_the_original_and_all_on_is_the_full_recipe():
    assert space.suggest(optuna.trial.FixedTrial(OFF), 6, ("torch", "onnx"), 30) == \
        space.Candidate(None, "onnx")
    on = {**OFF, "vocab": True, "layers": 4, "prune_flops": 0.5, "prune_head_weight": "auto", "fnet": 1,
          "lowrank": 0.5, "distill": 0.1, "int8": True, "int8_fp32": 2, "embedding_bits": 4, "runtime": "torch"}
    c = space.suggest(optuna.trial.FixedTrial(on), 6, ("torch", "onnx"), 30)
    assert c == space.Candidate("vocab+layers(keep=4)+prune(flops=0.5)+fnet(layers=1)+lowrank(ratio=0.5)+"
                                "distill(minutes=3.0)+int8(fp32=2, embedding_bits=4)", "torch")
    # a sampled head/neuron exchange rate is given to the pass ("auto": the pass measures it)
    c = space.suggest(optuna.trial.FixedTrial({**on, "prune_head_weight": 3.0}), 6, ("torch",), 30)
    assert "+prune(flops=0.5, head_weight=3.0)+" in c.recipe
    # training that does not fit in the minutes left runs as the largest share that does
    c = space.suggest(optuna.trial.FixedTrial({**on, "distill": 0.25}), 6, ("torch",), 30, max_distill=5.0)
    assert "distill(minutes=3.0)" in c.recipe
    c = space.suggest(optuna.trial.FixedTrial({**on, "distill": 0.25}), 6, ("torch",), None)
    assert "distill(minutes=2.5)" in c.recipe  # no --minutes: shares of 10 minutes
    # Fourier mixing and low-rank come only with training (untrained they lose 5-50 points): without it, neither
    c = space.suggest(optuna.trial.FixedTrial({**on, "distill": 0.0}), 6, ("torch",), 30)
    assert c.recipe == "vocab+layers(keep=4)+prune(flops=0.5)+int8(fp32=2, embedding_bits=4)"
    c = space.suggest(optuna.trial.FixedTrial({**on, "distill": 0.25}), 6, ("torch",), 30, max_distill=1.0)
    assert "fnet" not in c.recipe and "lowrank" not in c.recipe and "distill" not in c.recipe  # no time left


def test_sampled_candidates_parse_and_stay_in_range():
    from slimformer.recipe import parse

    s = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen, weights = set(), set()
    for _ in range(40):
        t = s.ask()
        c = space.suggest(t, 6, ("torch", "onnx"), 4)
        steps = parse(c.recipe) if c.recipe else []
        assert ("prune_head_weight" in t.params) == any(st.step == "prune" for st in steps)  # only with a prune step
        weights |= {st.head_weight for st in steps if st.step == "prune"}
        assert all(getattr(st, "keep", 6) >= 3 for st in steps if st.step == "layers")
        assert all(st.layers <= 3 for st in steps if st.step == "fnet")
        if any(st.step in ("fnet", "lowrank") for st in steps):
            assert any(st.step == "distill" for st in steps), c.recipe
        seen |= {st.step for st in steps} | {c.runtime}
        s.tell(t, [0.0, 0.0])
    assert seen >= {"vocab", "layers", "prune", "fnet", "lowrank", "int8", "torch", "onnx"}
    assert None in weights and len(weights) >= 3 and weights <= {None, *space.HEAD_WEIGHTS}


def test_tries_and_bad_input():
    assert space.parse_try("prune(flops=0.8)+int8", ("torch", "onnx")) == [
        space.Candidate("prune(flops=0.8)+int8", "torch"), space.Candidate("prune(flops=0.8)+int8", "onnx")]
    assert space.parse_try("original@onnx", ("torch", "onnx")) == [space.Candidate(None, "onnx")]
    with pytest.raises(SlimformerError, match="runtime 'openvino' is not searched"):
        space.parse_try("int8@openvino", ("torch",))
    with pytest.raises(RecipeError, match="unknown recipe step 'int4'"):
        space.parse_try("int4", ("torch",))
    with pytest.raises(SlimformerError, match="unknown objective"):
        space.check_objective("latency@2x2")
    with pytest.raises(SlimformerError, match="--runtime must be"):
        space.available_runtimes("tensorrt")


def _add(s, number_drop_cost_stage):
    for drop, cost, stage in number_drop_cost_stage:
        attrs = {"recipe": f"prune(flops={cost})", "runtime": "onnx", "stage": stage, "drop": drop, "cost": cost,
                 "quality": 80 - drop, "drop_95": [drop - 0.2, drop + 0.2], "latency_ms": {"8x128": 100 * cost},
                 "size_mb": 20.0}
        s.add_trial(optuna.trial.create_trial(values=[drop, cost], user_attrs=attrs))
    s.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"error": "boom"}))


META = {"model": "m", "task": "sts:x", "objective": "latency@8x128", "max_drop": 1.0, "metric": "spearman",
        "original": {"value": 80.0, "noise": 0.0, "size_mb": 90.0, "n": 10}}


def test_choice_pareto_rows_and_markdown(tmp_path):
    s = optuna.create_study(directions=["minimize", "minimize"])
    # (drop, cost, stage): 1 is the cheapest within budget; 2 is cheaper but over it; 3 is a proxy, never chosen
    _add(s, [(0.2, 0.9, "full"), (0.8, 0.6, "full"), (1.5, 0.4, "full"), (0.1, 0.3, "proxy"), (0.9, 0.7, "full")])
    assert studies.choose(s, 1.0).number == 1
    summary = report.summary(s, META, studies.choose(s, 1.0))
    pareto = {r["number"] for r in summary["trials"] if r.get("pareto")}
    assert pareto == {0, 1, 2}  # 4 is beaten by 1 on both; proxies and failures are not on the front
    assert [r["state"] for r in summary["trials"]].count("FAIL") == 1
    md = report.markdown(summary)
    assert "| 1 | prune(flops=0.6) | onnx |" in md and "**yes**" in md and "| 4 |" not in md
    report.write(tmp_path, summary)
    assert json.loads((tmp_path / "search.json").read_text())["chosen"] == 1
    assert (tmp_path / "pareto.png").stat().st_size > 1000


def test_peers_are_listed_and_plotted_beside_the_trials(tmp_path):
    s = optuna.create_study(directions=["minimize", "minimize"])
    _add(s, [(0.2, 0.9, "full")])
    peer = {"name": "ORT optimized + int8 per-channel", "quality": 79.6, "drop": 0.4, "drop_95": [0.1, 0.7],
            "cost": 0.65, "latency_ms": {"8x128": 65.0}, "size_mb": 22.8, "other_fidelity": 91.5}
    summary = report.summary(s, {**META, "peers": [peer]}, studies.choose(s, 1.0))
    md = report.markdown(summary)
    assert "| ORT optimized + int8 per-channel | 79.60 | 0.40 (0.10, 0.70) | 91.50 | 0.650 |" in md
    report.write(tmp_path, summary)
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert "Peers" not in report.markdown(report.summary(s, META, None))  # none measured: no table


@pytest.mark.slow
def test_peers_mode_measures_every_peer_on_the_search_task(tiny_dir, sts_slice, tmp_path):
    spec = {"model": str(tiny_dir), "task": f"sts:{sts_slice}", "objective": "latency@1x16", "runs": 2,
            "reference": str(tmp_path / "reference" / "result.json")}
    assert "error" not in trials.run({**spec, "mode": "reference"}, tmp_path / "reference", 600)
    got = trials.run({**spec, "mode": "peers"}, tmp_path / "peers", 600)
    names = [r["name"] for r in got["peers"]]
    assert names[:3] == ["torch.ao dynamic int8", "ORT fp32", "ORT optimized + int8 per-channel"]
    by = {r["name"]: r for r in got["peers"]}
    assert abs(by["ORT fp32"]["drop"]) < 0.5  # the same float model under another runtime
    assert all(r["cost"] > 0 and set(r["latency_ms"]) == {"1x16", "8x128", "32x32"} for r in got["peers"])


def test_nothing_within_budget_names_the_closest_and_writes_search_json(tmp_path):
    s = optuna.create_study(directions=["minimize", "minimize"])
    _add(s, [(1.5, 0.4, "full"), (0.7, 0.3, "proxy")])
    assert studies.choose(s, 0.5) is None
    with pytest.raises(BudgetError) as e:
        report.fail(s, {**META, "max_drop": 0.5}, tmp_path / "out", "nothing within --max-drop 0.5")
    assert "the closest was trial 0 (prune(flops=0.4) @ onnx: drop 1.50 points on the whole split" in str(e.value)
    assert "\n" not in str(e.value)
    assert len(json.loads((tmp_path / "out.search.json").read_text())["trials"]) == 3
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_storage_settings_and_dead_workers(tmp_path, kind):
    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else str(tmp_path / "shared" / "journal.log")
    settings = {"model": "m", "task": "t", "objective": "size", "max_drop": 0.5, "runtimes": ["torch"]}
    s = studies.open_study(studies.open_storage(url, tmp_path / "out"), "x", settings)
    t = s.ask()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    t.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    live = s.ask()
    live.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    again = studies.open_study(studies.open_storage(url, tmp_path / "out"), "x", settings)  # a second worker
    studies.fail_dead_workers(again)
    states = {ft.number: ft.state.name for ft in again.trials}
    assert states == {0: "FAIL", 1: "RUNNING"}
    assert again.trials[0].user_attrs["error"] == "its worker was killed"
    assert studies.counted(again) == 2
    with pytest.raises(SlimformerError, match=r"was made with max_drop 0.5 \(now 1.0\)"):
        studies.open_study(studies.open_storage(url, tmp_path / "out"), "x", {**settings, "max_drop": 1.0})


def test_a_crashing_trial_is_one_error_line(tmp_path):
    r = trials.run({"mode": "reference", "model": str(tmp_path / "missing"), "task": "stsb-dev"}, tmp_path / "t",
                   120)
    assert set(r) == {"error"} and "model path not found" in r["error"] and "\n" not in r["error"]


# ------------------------------------------------------------------------------------------------- end to end

@pytest.fixture
def sts_slice(tmp_path):
    from slimformer.data import read_stsb

    pairs = read_stsb("dev")[::60]  # 25 pairs over every genre
    path = tmp_path / "sts.tsv"
    path.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs))
    return path


def cli(*args, wait=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "slimformer.cli", "search", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def search_args(model, task, out, *more):
    return [model, "--task", f"sts:{task}", "-o", out, "--runs", 5, *more]


@pytest.mark.slow
def test_search_writes_the_chosen_model_within_budget_and_survives_a_failing_trial(tiny_dir, sts_slice, tmp_path):
    import slimformer

    out = tmp_path / "out"
    p = cli(*search_args(tiny_dir, sts_slice, out, "--max-drop", 5, "--trials", 3, "--try", "original@torch",
                         "--try", "layers(keep=9)@torch", "--try", "layers(keep=1)@onnx"))
    assert p.returncode == 0, p.stderr
    s = json.loads((out / "search.json").read_text())
    by = {r["number"]: r for r in s["trials"]}
    assert by[1]["state"] == "FAIL" and "cannot keep 9" in by[1]["error"]  # the search went on after it
    assert by[0]["state"] == by[2]["state"] == "COMPLETE"
    chosen = by[s["chosen"]]
    assert chosen["stage"] == "full" and chosen["drop"] <= 5
    assert by[0]["drop"] == 0  # the original, reloaded, scores as the reference
    assert by[0]["other_fidelity"] == pytest.approx(100.0)  # ... and behaves as it on the held-out text
    assert -100.0 <= by[2]["other_fidelity"] <= 100.0 and "other-text fidelity" in (out / "search.md").read_text()
    # the latency table was measured with the reference, kept beside it, and predicted every trial's cost
    table = s["latency_table"]
    assert table["key"] == "8x128" and table["head"] > 0 and table["neuron"] > 0
    assert (tmp_path / ".out.search" / "reference" / "latency.json").is_file()
    assert by[0]["predicted_cost"] == pytest.approx(1.0) and by[2]["predicted_cost"] < 1.0  # 1 of 2 layers
    assert (out / "search.md").read_text().count("**yes**") == 1 and (out / "pareto.png").is_file()
    m = slimformer.load(out)
    assert m.encode(["a sentence"]).shape == (1, 64)


@pytest.mark.slow
def test_two_workers_share_one_journal_and_a_killed_worker_resumes(tiny_dir, sts_slice, tmp_path):
    journal = tmp_path / "shared" / "journal.log"
    tries = ["--try", "original@torch", "--try", "original@onnx", "--try", "layers(keep=1)@torch",
             "--try", "layers(keep=1)@onnx"]
    common = ["--max-drop", 50, "--trials", 4, "--storage", journal, "--study", "s", *tries]
    a = cli(*search_args(tiny_dir, sts_slice, tmp_path / "a", *common), wait=False)
    b = cli(*search_args(tiny_dir, sts_slice, tmp_path / "b", *common), wait=False)
    assert a.wait(900) == 0, a.stderr.read()
    assert b.wait(900) == 0, b.stderr.read()
    # the worker that stopped last wrote its search.json after the other had ended: every trial is final in it (the
    # first to stop may have seen the other's last trial still running)
    last = max((tmp_path / w / "search.json" for w in "ab"), key=lambda f: f.stat().st_mtime_ns)
    s = json.loads(last.read_text())
    done = [r for r in s["trials"] if r["state"] in ("COMPLETE", "FAIL")]
    assert 4 <= len(done) <= 5  # two workers may both pass the count check at the last trial
    assert len({r["worker"] for r in done}) == 2  # both workers' trials are in the one study
    assert len({r["number"] for r in done}) == len(done)

    # a worker killed mid-trial: rerunning the same command goes on from the storage, nothing finished runs again
    args = search_args(tiny_dir, sts_slice, tmp_path / "c", "--max-drop", 50, "--trials", 3, *tries)
    c = cli(*args, wait=False)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'c.optuna.db'}")
    deadline = time.time() + 600
    while time.time() < deadline:
        time.sleep(2)
        try:
            st = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
        except (IndexError, KeyError):
            continue
        if any(t.state.name == "COMPLETE" for t in st.trials) and any(t.state.name == "RUNNING" for t in st.trials):
            break
    c.send_signal(signal.SIGKILL)
    c.wait()
    before = {t.number: t.state.name for t in st.trials if t.state.name == "COMPLETE"}
    p = cli(*args)
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "c" / "search.json").read_text())
    by = {r["number"]: r for r in s["trials"]}
    assert all(by[n]["state"] == "COMPLETE" for n in before)
    killed = [r for r in s["trials"] if r.get("error") == "its worker was killed"]
    assert len(killed) == 1 and len(s["trials"]) == 3
    assert len({(r["recipe"], r["runtime"]) for r in s["trials"]}) == 3  # the rerun took the next candidate


@pytest.mark.slow
def test_impossible_budget_is_one_line_and_non_zero(tiny_dir, sts_slice, tmp_path):
    p = cli(*search_args(tiny_dir, sts_slice, tmp_path / "out", "--max-drop", -1, "--trials", 2))
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error")]
    assert p.returncode != 0 and len(lines) == 1, p.stderr
    assert "below the original's re-measurement noise" in lines[0] and "no trial completed" in lines[0]
    assert json.loads((tmp_path / "out.search.json").read_text())["chosen"] is None
    assert not (tmp_path / "out").exists()


def test_search_refuses_a_model_it_cannot_score_in_one_line(tmp_path):
    """An image model without a head has no task to score: refused before anything is measured (an image classifier,
    a speech model, a causal LM: tests/test_search_families.py)."""
    import torch
    import transformers as T

    import slimformer
    from slimformer.model import SlimModel

    torch.manual_seed(0)
    vit = T.ViTModel(T.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 image_size=16, patch_size=4)).eval()
    folder = slimformer.save(SlimModel(vit, None, pooling="cls"), tmp_path / "vit")
    with pytest.raises(SlimformerError, match="no quality task for an image model without a head yet"):
        studies.search(str(folder), 1.0, tmp_path / "out", n_trials=1)
    assert not (tmp_path / ".out.search").exists()  # nothing measured

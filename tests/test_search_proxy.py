"""The search's cheap cost proxy (search/proxy.py): the latency table of the original (exact for size, positive
per-unit costs for latency, measured once and cached), the cost it predicts from a recipe, and a hopeless candidate
recorded as pruned without being built."""

import optuna
import pytest

from slimformer.search import proxy, report, space, study as studies, trial as trials
from slimformer.search.space import Candidate

optuna.logging.set_verbosity(optuna.logging.WARNING)
# a made-up table: 2 layers of 4 heads and 128 neurons; the original costs 1 + 2 x (1 + 4 x 0.5 + 128 x 0.02)
TABLE = {"key": "8x128", "unit": "ms", "original": 12.12, "layers": 2, "heads": 4.0, "neurons": 128.0, "head": 0.5,
         "neuron": 0.02, "layer": 1.0, "rest": 1.0}


def narrowed(model, layers=None, heads=None, neurons=None):
    from slimformer.passes.structure import drop_layers, slice_ffn, slice_heads

    m = model.clone()
    if layers is not None:
        drop_layers(m.encoder, m.adapter, layers)
    if heads is not None:
        slice_heads(m.encoder, m.adapter, heads)
    if neurons is not None:
        slice_ffn(m.encoder, m.adapter, neurons)
    return m


def test_the_size_table_predicts_narrowed_models_exactly(tiny):
    """Size is linear in the units: the table's four costs predict every narrowed model's MB exactly."""
    from slimformer.measure.bench import size_mb

    t = proxy.measure_table(tiny, "size")
    assert t["key"] == "size" and t["unit"] == "MB" and (t["layers"], t["heads"], t["neurons"]) == (2, 4, 128)
    assert t["head"] > 0 and t["neuron"] > 0 and t["layer"] > 0 and t["rest"] > 0
    full = size_mb(tiny)
    assert abs(t["original"] - full) < 1e-9
    half = [[0, 1]] * 2, [list(range(64))] * 2
    cases = {"layers(keep=1)": narrowed(tiny, layers=[0]),
             "prune(flops=0.5)": narrowed(tiny, heads=half[0], neurons=half[1]),  # the FLOPs share on both
             "heads(keep=0.5)+ffn(keep=0.25)": narrowed(tiny, heads=half[0], neurons=[list(range(32))] * 2),
             "layers(keep=1)+heads(keep=3)": narrowed(tiny, layers=[1], heads=[[0, 1, 2]])}
    assert proxy.structure_cost(None, t) == pytest.approx(1.0, abs=1e-12)
    for recipe, m in cases.items():
        assert proxy.structure_cost(recipe, t) == pytest.approx(size_mb(m) / full, rel=1e-6), recipe


def test_the_latency_table_has_positive_costs_at_the_objectives_shape(tiny):
    t = proxy.measure_table(tiny, "latency@1x16", runs=5)
    assert t["key"] == "1x16" and t["unit"] == "ms" and t["original"] > 0
    assert t["head"] > 0 and t["neuron"] > 0 and t["layer"] >= 0 and t["rest"] >= 0
    assert proxy.table_key("throughput") == "8x128" and proxy.table_key("latency@32x32") == "32x32"


def test_predicted_cost_is_monotone_in_the_structure():
    cost = lambda r, rt="torch", learned=None: proxy.predicted_cost(Candidate(r, rt), TABLE, learned)  # noqa: E731
    assert cost(None) == pytest.approx(1.0)
    assert cost("layers(keep=1)") < cost(None)
    assert cost("prune(flops=0.3)") < cost("prune(flops=0.5)") < cost("prune(flops=0.8)") < cost(None)
    assert cost("layers(keep=1)+prune(flops=0.5)") < cost("layers(keep=1)") and \
        cost("layers(keep=1)+prune(flops=0.5)") < cost("prune(flops=0.5)")
    assert cost("vocab") < cost(None) and cost("fnet(layers=1)+distill(minutes=1)") < cost(None)
    assert cost("lowrank(ratio=0.5)+distill(minutes=1)") < cost(None)
    assert cost("prune(flops=0.5, head_weight=2.0)") == cost("prune(flops=0.5)")
    assert cost("static(dims=64)") is None and proxy.predicted_cost(Candidate(None, "torch"), {"error": "x"}) is None
    # int8 / runtime: the ratio of measured to predicted cost of the study's finished trials of the same setting
    done = [(Candidate("prune(flops=0.5)+int8", "onnx"), 0.5 * cost("prune(flops=0.5)")),
            (Candidate("int8", "onnx"), 0.5), (Candidate(None, "onnx"), 0.8),
            (Candidate("vocab+int8", "onnx"), 5.0)]  # a vocabulary cut's ratio is left out (predicted low on purpose)
    learned = proxy.factors(done, TABLE)
    assert learned == pytest.approx({"int8@onnx": 0.5, "fp32@onnx": 0.8})
    assert cost("prune(flops=0.8)+int8", "onnx", learned) == pytest.approx(0.5 * cost("prune(flops=0.8)"))
    assert cost("layers(keep=1)", "onnx", learned) == pytest.approx(0.8 * cost("layers(keep=1)"))
    assert cost(None, "openvino", learned) == pytest.approx(0.5)  # not measured yet: the smallest factor learned


def test_the_table_is_measured_once_per_model_and_objective(tiny_dir, tmp_path, monkeypatch):
    calls = []
    real = trials.run
    monkeypatch.setattr(trials, "run", lambda *a, **k: calls.append(a[0]["mode"]) or real(*a, **k))
    spec = {"model": str(tiny_dir), "objective": "size", "table": str(tmp_path / "latency.json")}
    first = studies.latency_table(spec, tmp_path)
    assert calls == ["table"] and first["head"] > 0 and first["model"] == str(tiny_dir)
    assert studies.latency_table(spec, tmp_path) == first and calls == ["table"]  # the file, not a new measurement
    assert proxy.read_table(tmp_path / "latency.json", str(tiny_dir), "latency@1x16") is None  # another objective
    assert not (tmp_path / "table").exists()


def _feasible(s, recipe, cost, proxy_cost):
    attrs = {"recipe": recipe, "runtime": "torch", "stage": "full", "drop": 0.1, "cost": cost,
             "proxy_cost": proxy_cost, "quality": 79.9, "drop_95": [0.0, 0.2], "size_mb": 1.0}
    s.add_trial(optuna.trial.create_trial(values=[0.1, cost], user_attrs=attrs))


PARAMS = {"distill": 0.0, "vocab": False, "layers": 2, "prune_flops": 1.0, "int8": False, "runtime": "torch"}


def test_a_hopeless_candidate_is_pruned_unbuilt_and_the_search_goes_on(tmp_path, monkeypatch):
    ran = []

    def fake_run(spec, folder, timeout):
        ran.append(spec["candidate"])
        return {"stage": "proxy", "drop": 0.3, "slice_drop": 0.3, "cost": 0.4, "proxy_cost": 0.4}

    monkeypatch.setattr(trials, "run", fake_run)
    s = optuna.create_study(directions=["minimize", "minimize"])
    best = proxy.structure_cost("prune(flops=0.5)", TABLE)  # torch fp32 as the table predicts: factor 1
    _feasible(s, "prune(flops=0.5)", best, best)
    s.enqueue_trial(PARAMS)  # the original: predicted 1.0 > 1.15 x best
    s.enqueue_trial({**PARAMS, "prune_flops": 0.45, "prune_head_weight": "auto"})  # predicted below best
    s.enqueue_trial({}, user_attrs={"try_recipe": None, "try_runtime": "torch"})  # a hand pick always runs
    for _ in range(3):
        studies.run_one(s, {}, tmp_path, 2, ("torch",), None, None, 0.5, TABLE)
    states = [t.state.name for t in s.trials]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"]
    pruned = s.trials[1]
    assert pruned.user_attrs["predicted_cost"] == pytest.approx(1.0)
    assert pruned.user_attrs["pruned"].startswith(f"predicted cost 1.000 > 1.15 x {best:.3f}")
    assert [c["recipe"] for c in ran] == ["prune(flops=0.45)", None]  # the pruned one never reached a subprocess
    assert s.trials[2].user_attrs["predicted_cost"] < best
    rows = report.rows(s)
    assert rows[1]["state"] == "PRUNED" and "predicted cost" in rows[1]["pruned"]
    meta = {"model": "m", "task": "sts:x", "objective": "latency@8x128", "max_drop": 0.5, "metric": "spearman",
            "original": {"value": 80.0, "noise": 0.0, "size_mb": 2.0, "n": 10}, "prune_above": studies.NEAR}
    md = report.markdown(report.summary(s, meta, studies.choose(s, 0.5)))
    assert "1 pruned" in md and "above 1.15x the best feasible cost" in md


def test_nothing_is_pruned_before_a_trial_is_feasible_or_without_a_table(tmp_path, monkeypatch):
    monkeypatch.setattr(trials, "run", lambda spec, folder, timeout: {"error": "boom"})
    s = optuna.create_study(directions=["minimize", "minimize"])
    s.enqueue_trial(PARAMS)
    studies.run_one(s, {}, tmp_path, 2, ("torch",), None, None, 0.5, TABLE)  # no feasible trial yet
    _feasible(s, "prune(flops=0.5)", 0.1, 0.1)
    s.enqueue_trial(PARAMS)
    studies.run_one(s, {}, tmp_path, 2, ("torch",), None, None, 0.5, {"error": "too few layers"})
    assert [t.state.name for t in s.trials] == ["FAIL", "COMPLETE", "FAIL"]  # both built (and failed)
    assert s.trials[0].user_attrs["predicted_cost"] == pytest.approx(1.0)
    assert "predicted_cost" not in s.trials[2].user_attrs


def test_a_long_run_of_pruned_trials_lets_the_next_one_be_built(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(trials, "run", lambda spec, folder, timeout: ran.append(1) or {"error": "boom"})
    s = optuna.create_study(directions=["minimize", "minimize"])
    _feasible(s, "prune(flops=0.5)", 0.1, 0.1)
    for _ in range(studies.PRUNED_RUN + 1):
        s.enqueue_trial(PARAMS)  # predicted 1.0, far above 1.15 x 0.1
        studies.run_one(s, {}, tmp_path, 2, ("torch",), None, None, 0.5, TABLE)
    assert [t.state.name for t in s.trials[1:]] == ["PRUNED"] * studies.PRUNED_RUN + ["FAIL"] and ran == [1]

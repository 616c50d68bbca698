"""Report tables hold the measured numbers: measure() derives its ratios and deltas from them, markdown() prints them
with the documented rounding, and compare() measures exactly the models it compressed."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import spearmanr

from slimformer.measure import report
from slimformer.measure.bench import size_mb
from slimformer.measure.compare import compare
from slimformer.measure.report import markdown, measure, report_files, runnable, structure_md, structures_md
from slimformer.measure.tasks import TaskResult, delta_interval

MACHINE = {"model": "Test CPU", "flags": ["avx2", "avx512f"], "threads": 2}


def _row(name, size, ratio, speedups, ms, quality=None, delta=None, interval=None, tput=None):
    row = {"name": name, "recipe": "", "size_mb": size, "params": 1000, "size_ratio": ratio,
           "speedup": dict(zip(report.SHAPE_KEYS, speedups)), "latency_ms": dict(zip(report.SHAPE_KEYS, ms))}
    if quality is not None:
        row.update({"stsb": quality, "stsb_delta": delta, "stsb_delta_95": interval})
    if tput is not None:
        row["sentences_per_s"] = tput
    return row


def test_markdown_prints_each_number_with_its_documented_rounding():
    rows = [_row("fp32", 90.84, 1.0, [1, 1, 1], [7.44, 131.96, 128.2], 82.03, 0.0, [0.0, 0.0], 414.4),
            _row("int8", 23.06, 3.93, [1.714, 2.886, 3.23], [4.34, 45.64, 39.71], 82.029, -0.014, [-0.094, 0.081],
                 1511.6)]
    lines = markdown({"machine": MACHINE, "task": "stsb", "rows": rows}).splitlines()
    assert lines[0] == ("| method | size MB | smaller | speedup 1x16 | speedup 8x128 | speedup 32x32 | ms 1x16 | "
                        "ms 8x128 | ms 32x32 | STSB | delta [95%] | sentences/s |")
    assert lines[1] == "|" + "---|" * 12
    # size and ms to 0.1, ratios to 0.01 with an x, quality to 0.01, delta and its interval signed, sentences/s whole
    assert lines[2] == ("| fp32 | 90.8 | 1.00x | 1.00x | 1.00x | 1.00x | 7.4 | 132.0 | 128.2 | 82.03 | "
                        "+0.00 [+0.00, +0.00] | 414 |")
    assert lines[3] == ("| int8 | 23.1 | 3.93x | 1.71x | 2.89x | 3.23x | 4.3 | 45.6 | 39.7 | 82.03 | "
                        "-0.01 [-0.09, +0.08] | 1512 |")
    assert lines[5].startswith("Measured on Test CPU (avx2, avx512f), 2 threads;") and "paired bootstrap" in lines[5]


def test_markdown_without_a_task_or_throughput_has_only_size_and_speed_columns():
    rows = [_row("a", 10.0, 1.0, [1, 1, 1], [2.0, 3.0, 4.0]), _row("b", 5.0, 2.0, [2, 1.5, 1], [1.0, 2.0, 4.0])]
    lines = markdown({"machine": {**MACHINE, "flags": []}, "task": None, "rows": rows}).splitlines()
    assert lines[0].count("|") - 1 == 9 and "delta" not in lines[0] and "sentences/s" not in lines[0]
    assert lines[3] == "| b | 5.0 | 2.00x | 2.00x | 1.50x | 1.00x | 1.0 | 2.0 | 4.0 |"
    assert "(no AVX2)" in lines[5] and "bootstrap" not in lines[5]


def test_measure_derives_ratios_and_deltas_from_the_measured_numbers(monkeypatch):
    """Known latencies, sizes and per-pair cosines in; measure() must turn them into ratios to the first row and a
    quality delta with the paired-bootstrap interval of exactly those cosines."""
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 200)
    cos = {"base": gold / 5 + rng.normal(0, 0.2, 200), "small": gold / 5 + rng.normal(0, 0.4, 200)}
    stats = {"base": {"size_mb": 90.0, "params": 10, "latency_ms": {"1x16": 8.0, "8x128": 120.0, "32x32": 100.0}},
             "small": {"size_mb": 22.5, "params": 5, "latency_ms": {"1x16": 3.0, "8x128": 48.0, "32x32": 40.0}}}
    monkeypatch.setattr(report, "bench", lambda runners, vocab, runs, progress: {n: stats[n] for n in runners})
    monkeypatch.setattr(report, "evaluate", lambda m, task: TaskResult(
        task, "spearman", spearmanr(cos[m.key], gold).statistic * 100, 200, cos[m.key], gold))
    models = {n: SimpleNamespace(key=n, encoder=None, tokenizer=SimpleNamespace(vocab_size=100),
                                 manifest={"recipe": n}) for n in ("base", "small")}
    ticks = []
    base, small = measure(models, "stsb", runs=1, progress=lambda: ticks.append(1))["rows"]
    assert len(ticks) == 2  # one per model scored (the stubbed bench ticks nothing)
    assert small["size_ratio"] == 4.0 and small["speedup"] == {"1x16": 2.67, "8x128": 2.5, "32x32": 2.5}
    assert base["size_ratio"] == 1.0 and base["speedup"] == dict.fromkeys(report.SHAPE_KEYS, 1.0)
    want = {n: round(spearmanr(cos[n], gold).statistic * 100, 2) for n in cos}
    assert base["stsb"] == want["base"] and small["stsb"] == want["small"]
    assert small["stsb_delta"] == round(want["small"] - want["base"], 2) < 0
    lo, hi = delta_interval(gold, cos["base"], cos["small"])
    assert small["stsb_delta_95"] == [round(lo, 2), round(hi, 2)]
    assert lo <= small["stsb_delta"] <= hi and base["stsb_delta_95"] == [0.0, 0.0]


def test_structure_md_lists_what_each_structural_step_kept():
    steps = [{"step": "prune", "heads_per_layer": [12, 8], "ffn_per_layer": [1536, 1024], "flops_fraction": 0.5049},
             {"step": "layers", "kept_layers": [0, 2, 5]}, {"step": "int8", "bits": 8}]
    assert structure_md(steps, "narrowed, ").splitlines() == [
        "- narrowed, prune: heads per layer [12, 8], FFN neurons per layer [1536, 1024], 50% of the encoder FLOPs at "
        "128 tokens",
        "- narrowed, layers: kept layers [0, 2, 5]"]
    assert structure_md([{"step": "int8"}]) == ""


@pytest.fixture(scope="module")
def sts_slice(tmp_path_factory):
    from slimformer.data import read_stsb

    path = tmp_path_factory.mktemp("sts") / "mini.tsv"
    path.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in read_stsb("dev")[:40]))
    return f"sts:{path}"


def test_compare_measures_every_recipe_against_the_base(tiny, sentences, sts_slice):
    from slimformer.measure.tasks import evaluate

    seen = []
    recipes = {"int8": "int8", "one layer": "layers(keep=1)"}
    result, models = compare({"original": tiny}, recipes, sts_slice, runs=1, calib=sentences, reload=True,
                             on_compressed=lambda name, m, s: seen.append((name, s >= 0)))
    assert seen == [("int8", True), ("one layer", True)]
    assert list(models) == ["original", "int8", "one layer"] and models["original"] is tiny
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == list(models)
    for name, m in models.items():
        assert rows[name]["size_mb"] == round(size_mb(runnable(m)), 2)
        assert rows[name]["recipe"] == m.manifest["recipe"]
        assert rows[name][sts_slice] == pytest.approx(evaluate(m, sts_slice).value, abs=0.006)
        for k, ms in rows[name]["latency_ms"].items():
            assert rows[name]["speedup"][k] == round(rows["original"]["latency_ms"][k] / ms, 2)
    assert rows["int8"]["size_ratio"] > 2.5 and rows["one layer"]["size_mb"] < rows["original"]["size_mb"]
    kept = models["one layer"].manifest["steps"][0]["kept_layers"]
    assert len(kept) == 1 and structures_md(models) == f"- one layer, layers: kept layers {kept}"
    files = report_files(result, models["int8"])
    assert json.loads(files["report.json"])["steps"] == models["int8"].manifest["steps"]
    assert files["report.md"].startswith("# slimformer report: `int8`") and "| int8 |" in files["report.md"]


def test_compare_refuses_a_row_name_twice(tiny):
    with pytest.raises(ValueError, match="given twice"):
        compare({"int8": tiny}, {"int8": "int8"}, None, runs=1, calib=["A sentence."])

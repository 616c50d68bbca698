"""The command line: error paths give one line and a non-zero exit; the happy paths print the contracted JSON."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest


def run(*args, cwd=None, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "slimformer.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def one_error_line(p):
    assert p.returncode != 0
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


def test_missing_model(tmp_path):
    line = one_error_line(run("bench", str(tmp_path / "missing")))
    assert "model path not found" in line


def test_bad_recipe(tmp_path):
    line = one_error_line(run("compress", "--recipe", "int8+heads(keep=0.5", "-o", str(tmp_path / "o")))
    assert "bad recipe step" in line
    line = one_error_line(run("compress", "--recipe", "int4", "-o", str(tmp_path / "o")))
    assert "unknown recipe step 'int4'" in line
    line = one_error_line(run("compress", "--recipe", "int8(smooth=nan)", "-o", str(tmp_path / "o")))
    assert "int8: smooth must be in [0, 1], got 'nan'" in line  # was a TypeError traceback


def test_existing_out_refused(tmp_path):
    (tmp_path / "o").mkdir()
    line = one_error_line(run("compress", "--recipe", "int8", "-o", str(tmp_path / "o")))
    assert "output exists" in line and "--force" in line


@pytest.fixture(scope="module")
def sts_tsv(tmp_path_factory):
    from slimformer.data import read_stsb

    path = tmp_path_factory.mktemp("sts") / "mini.tsv"
    rows = read_stsb("dev")[:60]
    path.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows))
    return path


def test_compress_bench_eval_end_to_end(tiny_dir, tmp_path, sts_tsv):
    out = tmp_path / "tiny-int8"
    p = run("compress", str(tiny_dir), "--recipe", "int8", "-o", str(out), "--task", f"sts:{sts_tsv}",
            "--runs", "2")
    assert p.returncode == 0, p.stderr
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["original", "compressed"]
    assert report["rows"][1]["size_ratio"] > 2.5
    assert "| compressed |" in (out / "report.md").read_text()
    # the transfer risk: label-free fidelity on calibration-like text and on the package corpus (int8: near 100)
    risk = report["fidelity"]
    assert risk["metric"] == "similarity_spearman_x100" and set(risk) == {"metric", "calibration-like", "other"}
    assert all(95 < risk[k] <= 100 for k in ("calibration-like", "other"))
    assert "Fidelity to the original" in (out / "report.md").read_text()

    bench = json.loads(run("bench", str(out), "--json", "--runs", "2").stdout)
    assert set(bench) == {"model", "size_mb", "params", "latency_ms", "threads", "cpu", "runtime", "int8_kernel"}
    assert set(bench["latency_ms"]) == {"1x16", "8x128", "32x32"}
    assert bench["runtime"] == "torch eager" and sum(bench["int8_kernel"].values()) == 13  # every Linear, a kernel
    # the kernels are chosen by timing in each process, so compress and load may differ on a busy machine; a forced
    # choice is the same everywhere
    assert sum(report["rows"][1]["int8_kernel"].values()) == 13
    forced = json.loads(run("bench", str(out), "--json", "--runs", "2", env={"SLIMFORMER_INT8_KERNEL": "w8"}).stdout)
    assert forced["int8_kernel"] == {"w8": 13}

    ev = json.loads(run("eval", str(out), "--task", f"sts:{sts_tsv}", "--json").stdout)
    assert set(ev) == {"model", "task", "metric", "value", "n"} and ev["n"] == 60
    assert ev["value"] == pytest.approx(report["rows"][1][f"sts:{sts_tsv}"], abs=0.01)


def test_bad_task(tiny_dir):
    assert "unknown task" in one_error_line(run("eval", str(tiny_dir), "--task", "glue"))
    assert "data file not found" in one_error_line(run("eval", str(tiny_dir), "--task", "sts:/nonexistent.tsv"))


@pytest.mark.slow
def test_bench_peers_writes_table_json_and_plot(tiny_dir, tmp_path):
    p = run("bench", str(tiny_dir), "--peers", "--json", "--runs", "2", "--out-dir", str(tmp_path))
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)["rows"]
    names = [r["name"] for r in rows]
    assert names[:4] == ["torch fp32 eager (original)", "torch.ao dynamic int8", "ORT fp32",
                         "ORT optimized + int8 per-channel"]
    openvino = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
    assert names[4:-1] == (["OpenVINO int8 weights (nncf)"] if openvino else []) and len(names) == 5 + openvino
    for r in rows:
        assert {"name", "size_mb", "latency_ms", "stsb", "sentences_per_s"} <= set(r)
    assert (tmp_path / "peers.png").stat().st_size > 1000 and "| ORT fp32 |" in (tmp_path / "peers.md").read_text()

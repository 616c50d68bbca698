"""Every int8 kernel against the reference arithmetic, the forced kernel really running, and the choice surviving
save -> load, freeze, and a move to another machine (nothing machine-specific is stored)."""

import numpy as np
import pytest
import torch
from torch import nn

import slimformer
from slimformer.passes import int8_kernels, int8_ops
from slimformer.passes.int8_kernels import KERNELS, Int8Linear
from slimformer.passes import freeze

# the op each kernel's matmul must appear as in the profiler
KERNEL_OPS = {"intmm": "aten::_int_mm", "fbgemm": "quantized::linear_with_input_q_dq_qweight_dq_output_fp32",
              "w8": "aten::_weight_int8pack_mm",
              "fp16": "quantized::linear_dynamic_fp16", "fp32": "aten::linear"}


def reference_int8(lin: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """The int8 arithmetic written out in float64: per-token symmetric int8 activations (after 1/s), int8 weights,
    exact integer products. x (M, K) -> (M, N)."""
    x = x.double() * (lin.inv_smooth.double() if lin.inv_smooth is not None else 1)
    amax = x.abs().amax(-1, keepdim=True).clamp_min(1e-8)
    q = torch.round(x * 127 / amax)
    y = (q @ lin.weight.double().T) * amax / 127 * lin.weight_scale.double()
    return y + lin.bias.double() if lin.bias is not None else y


def reference_float(lin: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """The dequantized weights on float64 activations: what weight-only kernels approximate."""
    w = lin.weight.double() * lin.weight_scale.double()[:, None]
    if lin.inv_smooth is not None:
        w = w * lin.inv_smooth.double()
    return x.double() @ w.T + lin.bias.double()


@pytest.fixture(scope="module")
def layer_and_inputs(minilm, sentences):
    """MiniLM's first FFN-in Linear, quantized with SmoothQuant, and its real inputs on real sentences: (M, 384)."""
    block = minilm.encoder.encoder.layer[0]
    got = []
    handle = block.intermediate.dense.register_forward_hook(lambda m, a, o: got.append(a[0].detach()))
    batch = minilm.tokenize(sentences[:16])
    with torch.inference_mode():
        minilm.encoder(**batch)
    handle.remove()
    x = got[0][batch["attention_mask"].bool()]  # real tokens only
    smooth = (x.abs().amax(0).clamp_min(1e-5) ** 0.5 / block.intermediate.dense.weight.abs().amax(0).clamp_min(1e-5)
              ** 0.5).clamp(1e-2, 1e2)
    return Int8Linear.from_linear(block.intermediate.dense, smooth.detach()), x.clone()


# kernel -> (reference, largest relative error ||y - ref|| / ||ref|| on real activations)
TOLERANCES = {"intmm": (reference_int8, 1e-5),  # the same arithmetic: fp32 rounding only
              "fbgemm": (reference_int8, 0.03),  # 7-bit activations (reduce_range): twice the 8-bit step
              "w8": (reference_float, 0.01),  # the weights re-rounded once after folding 1/s in
              "fp16": (reference_float, 2e-3),  # the dequantized weights rounded to fp16 (11-bit mantissa)
              "fp32": (reference_float, 1e-5)}


def test_kernel_matches_reference_arithmetic(layer_and_inputs, kernel):
    lin, x = layer_and_inputs
    int8_kernels.set_kernel(lin, kernel)
    reference, tol = TOLERANCES[kernel]
    ref = reference(lin, x)
    err = float((lin(x).double() - ref).norm() / ref.norm())
    assert err < tol, (kernel, err)


@pytest.mark.parametrize("scripted", ["intmm", "fbgemm", "fp16"])
def test_without_torchscript_the_kernels_compute_the_same_values(layer_and_inputs, scripted, monkeypatch):
    """These kernels run as TorchScript functions (fewer Python calls); where TorchScript cannot compile
    (it is deprecated), the same bodies run eagerly and give the same values, at each row count and rank."""
    lin, x = layer_and_inputs
    assert len(x) > int8_kernels.SMALL_ROWS  # the many-rows branch of row_absmax too
    int8_kernels.set_kernel(lin, scripted)
    inputs = (x[:16], x, x[:16].reshape(2, 8, -1))
    expected = [lin(rows) for rows in inputs]
    for name, body in int8_ops.EAGER.items():
        assert isinstance(getattr(int8_ops, name), torch.jit.ScriptFunction), name  # this build compiles them
        monkeypatch.setattr(int8_ops, name, body)
    for rows, want in zip(inputs, expected):
        got = lin(rows)
        assert got.shape == want.shape and torch.equal(got, want), (scripted, rows.shape)

    def refuse(fn):
        raise RuntimeError("TorchScript is gone")

    monkeypatch.setattr(torch.jit, "script", refuse)
    monkeypatch.setattr(int8_ops, "EAGER", {})
    assert int8_ops._scripted(reference_int8) is reference_int8


def test_forced_kernel_is_the_one_that_runs(layer_and_inputs, kernel, monkeypatch):
    lin, x = layer_and_inputs
    monkeypatch.setenv(int8_kernels.ENV, kernel)
    module = nn.Sequential(lin)
    assert int8_kernels.choose(module) == {kernel: 1}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        lin(x)
    ops = {e.key for e in prof.key_averages()}
    assert KERNEL_OPS[kernel] in ops, (kernel, sorted(ops))
    assert not ({KERNEL_OPS[k] for k in KERNELS if k != kernel} - {"aten::linear"}) & ops


def test_a_call_outside_no_grad_runs_and_gives_the_same_values(layer_and_inputs, kernel):
    """HF style `model(**x)` without no_grad: the input then requires grad (it comes from float parameters), which
    the fbgemm kernel's in-place buffer writes used to refuse with an autograd error."""
    lin, x = layer_and_inputs
    int8_kernels.set_kernel(lin, kernel)
    with torch.inference_mode():
        expected = lin(x)
    assert torch.equal(lin(x.clone().requires_grad_(True)), expected)


def test_unknown_kernel_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv(int8_kernels.ENV, "vnni512")
    with pytest.raises(slimformer.SlimformerError, match="SLIMFORMER_INT8_KERNEL 'vnni512': unknown kernel 'vnni512'"):
        int8_kernels.choose(nn.Sequential())


def test_small_and_large_calls_run_their_own_kernel(layer_and_inputs):
    """"fp32/fbgemm": a call of up to SMALL_ROWS tokens runs the first kernel, a larger one the second."""
    lin, x = layer_and_inputs
    int8_kernels.set_kernel(lin, "fp32/fbgemm")
    assert int8_kernels.summary(nn.Sequential(lin)) == {"fp32/fbgemm": 1}
    big = x.repeat(-(-(int8_kernels.SMALL_ROWS + 1) // len(x)), 1)  # more than SMALL_ROWS rows
    for rows, op, other in ((x[:16], "aten::linear", KERNEL_OPS["fbgemm"]),
                            (big, KERNEL_OPS["fbgemm"], "aten::linear")):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            lin(rows)
        ops = {e.key for e in prof.key_averages()}
        assert op in ops and other not in ops, (len(rows), sorted(ops))


def test_measured_choice_beats_fp32_in_its_own_measurement(layer_and_inputs):
    """At each timed count the chosen kernel beats fp32 by MIN_GAIN by its own paired timings and is the fastest of
    them, or is fp32 itself when none does."""
    lin, _ = layer_and_inputs
    spec, ratios = int8_kernels.measure(lin)
    assert all(r == 1.0 for r in ratios["fp32"])  # fp32 against itself, turn by turn
    for i, name in enumerate(int8_kernels.parse(spec)):
        fastest = min(ratios, key=lambda n: ratios[n][i])
        if name == "fp32":
            assert ratios[fastest][i] * int8_kernels.MIN_GAIN > 1.0, (spec, ratios)
        else:
            assert name == fastest and ratios[name][i] * int8_kernels.MIN_GAIN <= 1.0, (spec, ratios)


@pytest.fixture(scope="module")
def tiny_int8(tiny_dir, sentences):
    return slimformer.compress(slimformer.load(tiny_dir), "int8", calib=sentences)


def test_save_load_keeps_the_choice_and_stores_no_kernel(tiny_int8, tmp_path):
    out = slimformer.save(tiny_int8, tmp_path / "m")
    assert "kernel" not in (out / "slimformer.json").read_text()  # chosen per machine, at load
    loaded = slimformer.load(out)
    assert int8_kernels.summary(loaded.encoder) == int8_kernels.summary(tiny_int8.encoder)


def test_a_saved_model_runs_with_every_kernel(tiny_int8, sentences, tmp_path, monkeypatch, kernel):
    """What another CPU class would pick: the same folder loads and runs with each kernel, close to the kernel this
    machine picked (each within its own quantization error of the float model)."""
    out = slimformer.save(tiny_int8, tmp_path / "m")
    ref = tiny_int8.encode(sentences[:8])
    monkeypatch.setenv(int8_kernels.ENV, kernel)
    loaded = slimformer.load(out)
    assert int8_kernels.summary(loaded.encoder) == {kernel: 13}  # 2 x (q, k, v, o, ffn in, ffn out), pooler
    got = loaded.encode(sentences[:8])
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.995, (kernel, cos.min())


def test_freeze_traces_each_kernel(tiny_int8, sentences, kernel):
    model = tiny_int8.clone()
    int8_kernels.choose(model.encoder, kernel)
    eager = model.encode(sentences, batch_size=7)
    freeze.apply(model, "trace")
    np.testing.assert_allclose(model.encode(sentences, batch_size=7), eager, atol=1e-5, rtol=0)


def test_freeze_traces_the_batch_kernel_and_keeps_the_eager_choice(tiny_int8, sentences):
    model = tiny_int8.clone()
    int8_kernels.choose(model.encoder, "fp32/fbgemm")
    freeze.apply(model, "trace")
    graph = model.__dict__["frozen"].graph.inlined_graph
    assert KERNEL_OPS["fbgemm"] in str(graph)  # the batch kernel, though the trace example is small
    assert int8_kernels.summary(model.encoder) == {"fp32/fbgemm": 13}  # eager fallback: as chosen



def test_freeze_step_checks_the_trace_against_eager_with_the_same_kernels(tiny_dir, sentences, monkeypatch):
    """A small eager call runs the one-query kernel, the trace the batch kernel: the freeze step's accuracy check must
    compare like with like, or it rejects every trace whose kernels differ by size (it did: max error 0.15)."""
    monkeypatch.setenv(int8_kernels.ENV, "fp32/fbgemm")
    model = slimformer.compress(slimformer.load(tiny_dir), "int8+freeze", calib=sentences)
    assert model.manifest["steps"][-1]["max_error"] <= freeze.ATOL


def test_a_float_act_layer_races_and_is_forced_onto_float_kernels_only(layer_and_inputs, monkeypatch):
    lin, x = layer_and_inputs
    flt = Int8Linear(lin.in_features, lin.out_features, float_act=True)
    flt.load_state_dict({k: v for k, v in lin.state_dict().items() if k != "inv_smooth"}, strict=False)
    _, ratios = int8_kernels.measure(flt)
    assert set(ratios) <= set(int8_kernels.FLOAT_ACT) and "fp32" in ratios
    monkeypatch.setenv(int8_kernels.ENV, "intmm/fp16")
    int8_kernels.choose(nn.Sequential(flt))
    assert flt.kernel == "fp32/fp16"  # intmm quantizes activations: fp32 instead; fp16 keeps them float
    with torch.inference_mode():
        out = flt(x)
    assert float((out.double() - reference_float(flt, x)).abs().max()) < 1e-3 * float(out.abs().max())



def test_a_kernel_this_build_lacks_is_out_of_the_race_and_a_one_line_error_when_forced(monkeypatch):
    """A kernel whose op this build or CPU lacks (fbgemm on ARM) fails to prepare: the measured choice leaves it out,
    and forcing it names the kernel in one line instead of a RuntimeError traceback."""
    def missing(lin):
        raise RuntimeError("Could not run 'quantized::linear_prepack' with arguments from the 'CPU' backend.\nmore")

    monkeypatch.setitem(int8_kernels.KERNELS, "fbgemm", (missing, int8_kernels.KERNELS["fbgemm"][1]))
    monkeypatch.setattr(int8_kernels, "_CHOICE", {})
    lin = Int8Linear.from_linear(nn.Linear(64, 32))
    assert not int8_kernels.available("fbgemm") and int8_kernels.available("fp32")
    assert "fbgemm" not in int8_kernels.measure(lin)[1]
    monkeypatch.setenv(int8_kernels.ENV, "fp16/fbgemm")
    with pytest.raises(slimformer.SlimformerError, match=r"^int8 kernel 'fbgemm' cannot run here: Could not run "
                                                         r"'quantized::linear_prepack' .* backend\.$"):
        int8_kernels.choose(nn.Sequential(lin))

"""The int8 kernels settled by the whole model's speed among each layer's close rivals (passes/int8_settle.py): the
faster plan wins, the batch kernel and then the one-query kernel, nothing is timed where nothing is to settle."""

import pytest
import torch

import slimformer
from slimformer.passes import int8_kernels, int8_settle
from slimformer.passes.int8_kernels import Int8Linear, parse


@pytest.fixture(scope="module")
def tiny_int8(tiny_dir, sentences):
    return slimformer.compress(slimformer.load(tiny_dir), "int8", calib=sentences)


def linears(model) -> list[Int8Linear]:
    return [m for m in model.net.modules() if isinstance(m, Int8Linear)]


@pytest.mark.parametrize("slow", ["fbgemm", "intmm"])
def test_the_plan_the_model_runs_fastest_stays(tiny_int8, monkeypatch, slow):
    """Every layer starts on `slow` for batches, with intmm and fbgemm as rivals; the model is timed (here: a stand-in
    clock) slower the more layers run `slow` in batches, so the other one must serve every layer's batch calls, and
    the one-query kernel stays."""
    model = tiny_int8.clone()
    int8_kernels.choose(model.net, f"fp16/{slow}")
    timed = []

    def clock(m, inputs):
        timed.append(inputs["input_ids"].shape)
        return sum(10.0 if parse(lin.kernel)[1] == slow else 1.0 for lin in linears(m))

    # one-query rivals: fp16 alone, so only the batch kernel is raced
    monkeypatch.setattr(int8_settle, "rivals", lambda lin, side: ["intmm", "fbgemm"] if side else ["fp16"])
    monkeypatch.setattr(int8_settle, "forward_ms", clock)
    monkeypatch.setattr(int8_settle, "_SETTLED", {})
    fast = "intmm" if slow == "fbgemm" else "fbgemm"
    assert int8_settle.settle(model) == {f"fp16/{fast}": 13}  # 2 x (q, k, v, o, ffn in, ffn out), pooler
    assert set(timed) == {torch.Size([8, 128])}  # one batch of 1,024 tokens
    again = tiny_int8.clone()  # the same model (a saved one loaded, say) in this process: settled alike, not timed
    int8_kernels.choose(again.net, f"fp16/{slow}")
    monkeypatch.setattr(int8_settle, "forward_ms", lambda *a: pytest.fail("timed twice"))
    assert int8_settle.settle(again) == {f"fp16/{fast}": 13}


def test_the_one_query_kernel_is_raced_after_the_batch_kernel(tiny_int8, monkeypatch):
    """Every layer starts on fp32 for calls of up to SMALL_ROWS tokens (as measured alone at 16 rows, where a layer's
    weights stay in cache) with fp16 as a rival; the model runs faster the more layers run fp16 there, so fp16 must
    serve them all, timed at one query of 16 and of 64 tokens; the batch kernel (no rival) stays."""
    model = tiny_int8.clone()
    int8_kernels.choose(model.net, "fp32/intmm")
    timed = []

    def clock(m, inputs):
        timed.append(inputs["input_ids"].shape)
        return sum(2.0 if parse(lin.kernel)[0] == "fp32" else 1.0 for lin in linears(m))

    monkeypatch.setattr(int8_settle, "rivals", lambda lin, side: ["intmm"] if side else ["fp32", "fp16"])
    monkeypatch.setattr(int8_settle, "forward_ms", clock)
    monkeypatch.setattr(int8_settle, "_SETTLED", {})
    assert int8_settle.settle(model) == {"fp16/intmm": 13}
    assert set(timed) == {torch.Size([1, 16]), torch.Size([1, 64])}
    # the race kept every kernel's cache to switch back and forth; the losers' are gone afterwards
    assert not [key for lin in linears(model) for key in vars(lin) if key.startswith("_kernel_fp32")]


@pytest.mark.parametrize("size", [16, 48])
def test_an_image_model_is_raced_on_pixels(monkeypatch, size):
    """A vision transformer is settled too, timed on random pixels of its config's size: a batch of 8 images for the
    batch kernel, one image for the one-query kernel, unless one image is already a batch call (48 pixels in 4-pixel
    patches: 145 rows, over SMALL_ROWS)."""
    from transformers import ViTConfig, ViTModel

    from slimformer.model import SlimModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       image_size=size, patch_size=4)
    vit = SlimModel(ViTModel(config).eval(), None, pooling="cls")
    model = slimformer.compress(vit, "int8")
    int8_kernels.choose(model.net, "fp32/intmm")
    timed = []

    def clock(m, inputs):
        timed.append(tuple(inputs["pixel_values"].shape))
        slow = (parse(lin.kernel) for lin in linears(m))  # fp32 for one image and intmm for batches are the slow ones
        return sum(1.0 + (small == "fp32") + (large == "intmm") for small, large in slow)

    monkeypatch.setattr(int8_settle, "rivals", lambda lin, side: ["intmm", "fbgemm"] if side else ["fp32", "fp16"])
    monkeypatch.setattr(int8_settle, "forward_ms", clock)
    monkeypatch.setattr(int8_settle, "_SETTLED", {})
    one_query = "fp16" if size == 16 else "fp32"
    assert int8_settle.settle(model) == {f"{one_query}/fbgemm": 13}  # 2 x (q, k, v, o, ffn in, ffn out), pooler
    assert set(timed) == {(8, 3, size, size), (1, 3, size, size)} if size == 16 else {(8, 3, size, size)}


def test_nothing_is_timed_when_forced_or_without_rivals(tiny_int8, monkeypatch):
    model = tiny_int8.clone()
    int8_kernels.choose(model.net)
    before = int8_kernels.summary(model.net)
    monkeypatch.setattr(int8_settle, "forward_ms", lambda *a: pytest.fail("timed"))
    monkeypatch.setattr(int8_settle, "_SETTLED", {})
    monkeypatch.setattr(int8_settle, "rivals", lambda lin, side: ["fbgemm"])  # one kernel: nothing to settle
    assert int8_settle.settle(model) is None
    monkeypatch.setattr(int8_settle, "rivals", lambda lin, side: ["intmm", "fbgemm"])
    monkeypatch.setenv(int8_kernels.ENV, "fp32")
    assert int8_settle.settle(model) is None
    assert int8_kernels.summary(model.net) == before


def test_rivals_are_close_to_the_best(tiny_int8):
    """On this machine, by its own measurement: each batch rival beats fp32 by MIN_GAIN at 1,024 rows and is within
    RIVAL of the layer's best there, each one-query rival within SMALL_RIVAL of the best at 16 rows; the kernels
    `int8` ran with are the measured ones or rivals."""
    for lin in linears(tiny_int8):
        measured, ratios = int8_kernels.measure(lin)
        best = [min(r[i] for r in ratios.values()) for i in (0, 1)]
        for name in int8_settle.rivals(lin, int8_settle.LARGE):
            assert name != "fp32" and ratios[name][1] * int8_kernels.MIN_GAIN <= 1.0
            assert ratios[name][1] <= best[1] * (1 + int8_settle.RIVAL)
        for name in int8_settle.rivals(lin, int8_settle.SMALL):
            assert ratios[name][0] <= best[0] * (1 + int8_settle.SMALL_RIVAL)
        for side in (int8_settle.SMALL, int8_settle.LARGE):
            ran = parse(lin.kernel)[side]
            assert ran in {parse(measured)[side], *int8_settle.rivals(lin, side)}, (lin.kernel, ratios)

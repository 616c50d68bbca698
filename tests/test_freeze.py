import numpy as np
import pytest
import torch

import slimformer
from slimformer.passes import freeze, int8_kernels
from slimformer.passes.freeze import Frozen


@pytest.fixture(scope="module")
def small(tiny_dir, sentences):
    return slimformer.compress(slimformer.load(tiny_dir), "prune(flops=0.6)+int8", calib=sentences)


def test_traced_graph_reproduces_eager_on_padded_and_unpadded_batches(small, sentences):
    # the graph runs each Linear's batch kernel at every size; eager at 1 sentence may run another kernel (chosen by
    # timing on this machine, so the choice can change under load): eager is compared with the graph's kernels
    with int8_kernels.large_only(small.net):
        eager = small.encode(sentences, batch_size=7)  # batches of mixed lengths: padded
        one = small.encode(sentences[:1])
    traced = small.clone()
    freeze.apply(traced, "trace")
    assert isinstance(traced.__dict__["frozen"], Frozen)
    assert isinstance(traced.__dict__["frozen"].graph, torch.jit.ScriptModule)
    np.testing.assert_allclose(traced.encode(sentences, batch_size=7), eager, atol=1e-5, rtol=0)
    np.testing.assert_allclose(traced.encode(sentences[:1]), one, atol=1e-5, rtol=0)
    with int8_kernels.large_only(traced.net):  # as freeze.measure checks it: the graph's kernels on both sides
        assert freeze.max_error(traced.__dict__["frozen"], traced, freeze.check_batches(traced, sentences)) < 1e-5


def test_frozen_forward_keeps_the_hugging_face_outputs(small, sentences):
    traced = small.clone()
    freeze.apply(traced, "trace")
    batch = traced.tokenize(sentences[:3])
    with int8_kernels.large_only(small.net):  # the graph's kernels (see above)
        out, ref = traced(**batch), small(**batch)
    assert type(out) is type(ref)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=1e-5, rtol=0)
    # what the graph was not traced for goes to the eager encoder
    hidden = traced(**batch, output_hidden_states=True).hidden_states
    assert len(hidden) == 3
    assert traced.clone().__dict__["frozen"] is None  # a copy's weights may change: it runs eager


def test_freeze_step_measures_records_and_load_restores(small, sentences, tmp_path):
    m = slimformer.compress(small, "freeze", calib=sentences)
    step = m.manifest["steps"][-1]
    assert step["step"] == "freeze" and step["runtime"] in ("eager", "trace")
    assert set(step["latency_ms"]) == {"eager", "trace"} and step["max_error"] < 1e-4
    assert (m.__dict__["frozen"] is not None) == (step["runtime"] == "trace")
    for runtime in ("eager", "trace"):  # whichever won on this machine, both restore at load
        step["runtime"] = runtime
        back = slimformer.load(slimformer.save(m, tmp_path / runtime))
        assert (back.__dict__["frozen"] is not None) == (runtime == "trace")
        with int8_kernels.large_only(small.net), int8_kernels.large_only(back.net):  # one kernel each, as traced
            np.testing.assert_allclose(back.encode(sentences[:9]), small.encode(sentences[:9]), atol=1e-5, rtol=0)


def test_fnet_traces_with_per_sentence_mixing(tiny_dir, sentences):
    f = slimformer.compress(slimformer.load(tiny_dir), "fnet(layers=all)", calib=sentences)
    eager = f.encode(sentences[:9], batch_size=9)
    freeze.apply(f, "trace")
    np.testing.assert_allclose(f.encode(sentences[:9], batch_size=9), eager, atol=1e-4, rtol=0)
    alone = f.encode(sentences[4])
    np.testing.assert_allclose(f.encode(sentences[:9], batch_size=9)[4], alone, atol=1e-4, rtol=0)


def test_token_types_are_a_graph_input_only_where_the_tokenizer_makes_them(small, sentences):
    import copy

    traced = small.clone()
    freeze.apply(traced, "trace")
    assert traced.__dict__["frozen"].with_types  # BERT's tokenizer: pairs reach the graph with their segments
    two = small.clone()
    two.tokenizer = copy.deepcopy(small.tokenizer)
    two.tokenizer.model_input_names = ["input_ids", "attention_mask"]  # as RoBERTa's and MPNet's tokenizers
    freeze.apply(two, "trace")
    frozen = two.__dict__["frozen"]
    assert not frozen.with_types and len(freeze.check_batches(two, sentences)) == 3
    batch = small.tokenize(list(zip(sentences[:3], sentences[3:6])))
    assert not frozen.handles((), batch)  # marked segments to a graph without them: the eager net
    assert frozen.handles((), {**batch, "token_type_ids": torch.zeros_like(batch["token_type_ids"])})
    with int8_kernels.large_only(small.net):  # the graph's kernels (see above)
        np.testing.assert_allclose(two.encode(sentences[:9]), small.encode(sentences[:9]), atol=1e-5, rtol=0)

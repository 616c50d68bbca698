"""The transfer-risk figures of a compress report: label-free fidelity of a compressed model to its original."""

import pytest
import torch

import slimformer
from slimformer.measure.fidelity import fidelity, risk_texts


def test_identity_is_exactly_100_and_pruning_is_below(tiny, sentences):
    texts = sentences[:40]
    assert fidelity(tiny, tiny.clone(), texts) == pytest.approx(100.0, abs=1e-9)
    pruned = slimformer.compress(tiny, "prune(flops=0.5)", calib=sentences[40:104])
    f = fidelity(tiny, pruned, texts)
    assert 90 < f < 100 - 1e-3  # half the FLOPs gone without training: the similarities move (a tiny random model: a little)


def test_risk_texts_are_disjoint_from_what_was_fitted():
    corpus = [f"c{i}" for i in range(600)]
    other = [f"c{i}" for i in range(10)] + [f"o{i}" for i in range(300)]
    kinds = risk_texts(corpus, other, used=512, n=50)
    assert kinds["calibration-like"] == corpus[512:562]  # never the first `used`, which the passes fitted on
    assert kinds["other"] == [f"o{i}" for i in range(50)]  # nothing that is in the calibration text
    assert set(risk_texts(corpus[:520], other, used=512, n=256)) == {"other"}  # under 16 sentences: left out


def test_no_pass_reads_the_calibration_like_check_text(tiny, sentences):
    """`vocab` (like `distill`) reads all the calibration text but the sentences the report's calibration-like
    fidelity is scored on (those after the first 512): a word only there is not kept; one after them is."""
    zebra = tiny.tokenizer.convert_tokens_to_ids("zebra")
    for where, kept in ((600, False), (790, True)):
        texts = [sentences[i % len(sentences)] for i in range(800)]
        texts[where] = "A zebra is running."
        emb = slimformer.compress(tiny, "vocab(fallback=unk)", calib=texts).encoder.get_input_embeddings()
        unk = tiny.tokenizer.unk_token_id
        assert torch.equal(emb(torch.tensor([zebra])), emb(torch.tensor([unk]))) is not kept

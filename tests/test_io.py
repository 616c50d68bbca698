import hashlib
import json

import numpy as np
import pytest
import torch

import slimformer
from slimformer.errors import OutputExistsError
from slimformer.passes.quantize import Int8Linear


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("recipe", [None, "int8", "int8(smooth=0, embeddings=false)"])
def test_round_trip_is_bit_identical(tiny, tiny_dir, sentences, tmp_path, recipe):
    before = digest(tiny_dir)
    model = slimformer.compress(tiny, recipe, calib=sentences) if recipe else tiny
    out = slimformer.save(model, tmp_path / "out")
    back = slimformer.load(out)
    assert back.manifest["recipe"] == (recipe or "")
    batch = tiny.tokenize(sentences[:6])
    with torch.inference_mode():
        a, b = model(**batch).last_hidden_state, back(**batch).last_hidden_state
    assert torch.equal(a, b)
    np.testing.assert_array_equal(model.encode(sentences), back.encode(sentences))
    assert digest(tiny_dir) == before  # the input folder is never written to


def test_saved_files_are_json_and_safetensors(tiny, sentences, tmp_path):
    out = slimformer.save(slimformer.compress(tiny, "int8", calib=sentences), tmp_path / "out")
    names = {p.name for p in out.iterdir()}
    assert {"slimformer.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)
    manifest = json.loads((out / "slimformer.json").read_text())
    assert manifest["steps"][0]["step"] == "int8"
    assert manifest["modules"]["encoder.layer.0.attention.self.query"]["type"] == "Int8Linear"
    from safetensors.torch import load_file

    state = load_file(out / "model.safetensors")
    assert state["encoder.layer.0.attention.self.query.weight"].dtype == torch.int8  # stored as int8, not dequantized
    assert isinstance(slimformer.load(out).encoder.encoder.layer[0].attention.self.query, Int8Linear)


def test_existing_output_needs_force_and_is_replaced_atomically(tiny, tmp_path):
    out = slimformer.save(tiny, tmp_path / "out")
    with pytest.raises(OutputExistsError, match="--force"):
        slimformer.save(tiny, out)
    slimformer.save(tiny, out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old folder left behind


def test_refuses_to_write_into_the_input_folder(tiny, tiny_dir):
    with pytest.raises(OutputExistsError, match="input model folder"):
        slimformer.save(tiny, tiny_dir, force=True)

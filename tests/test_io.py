import hashlib
import os
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


def test_atomic_folder_refuses_an_existing_output_without_force(tmp_path):
    from slimformer.folder import atomic_folder

    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="--force"):
        with atomic_folder(out) as tmp:
            (tmp / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    with atomic_folder(out, force=True) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]  # replaced whole, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_folder_keeps_the_old_output_when_the_body_fails(tmp_path):
    from slimformer.folder import atomic_folder

    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_folder(out, force=True) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed half-way")
    assert (out / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left behind
    with pytest.raises(ValueError):
        with atomic_folder(tmp_path / "new"):
            raise ValueError
    assert not (tmp_path / "new").exists()


def test_atomic_folder_refuses_the_input_folder_and_its_parents(tmp_path):
    from slimformer.folder import atomic_folder, check_output

    src = tmp_path / "models" / "base"
    src.mkdir(parents=True)
    for out in (src, src.parent):
        with pytest.raises(OutputExistsError, match="input model folder"):
            with atomic_folder(out, force=True, source=str(src)):
                pass
    assert src.is_dir()
    assert check_output(tmp_path / "models" / "other", source=src) == (tmp_path / "models" / "other").resolve()


def test_atomic_folder_removes_what_a_killed_writer_left(tmp_path):
    import subprocess
    import sys

    from slimformer.folder import atomic_folder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f".out.tmp-{dead.stdout.strip()}").mkdir()  # kill -9 in the middle of a write
    (tmp_path / f".out.tmp-{os.getpid()}-x").mkdir()  # not a writer's name: kept
    with atomic_folder(tmp_path / "out"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".out.tmp-{os.getpid()}-x", "out"]

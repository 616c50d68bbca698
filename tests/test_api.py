"""compress(model, recipe): text and config lists are one recipe, the input is never touched, the manifest says
what was done, and every step's handler has the one signature (model, cfg, ctx) -> dict."""

import copy

import numpy as np
import pytest
import torch

import slimformer
from slimformer import Heads, Int8, Layers, Vocab
from slimformer.configs import CONFIGS
from slimformer.errors import RecipeError
from slimformer.passes import HANDLERS


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_text_and_config_list_give_identical_models(tiny, sentences):
    # fast steps only (heads/ffn importance takes tens of seconds even on a tiny model)
    by_text = slimformer.compress(tiny, "vocab(keep=500)+layers(keep=1)+int8", calib=sentences)
    by_list = slimformer.compress(tiny, [Vocab(keep=500), Layers(keep=1), Int8()], calib=sentences)
    assert_same_weights(by_text.state_dict(), by_list.state_dict())
    assert by_text.manifest == by_list.manifest
    np.testing.assert_array_equal(by_text.encode(sentences[:8]), by_list.encode(sentences[:8]))


def test_input_model_is_left_unchanged(tiny, sentences):
    before, manifest = copy.deepcopy(tiny.state_dict()), copy.deepcopy(tiny.manifest)
    encoded = tiny.encode(sentences[:8])
    small = slimformer.compress(tiny, "vocab+layers(keep=1)+int8", calib=sentences)
    assert small.state_dict().keys() != before.keys()  # the copy did change (int8 buffers, one layer fewer)
    assert_same_weights(tiny.state_dict(), before)
    assert tiny.manifest == manifest
    np.testing.assert_array_equal(tiny.encode(sentences[:8]), encoded)


def test_manifest_records_the_recipe_text_and_one_entry_per_step(tiny, sentences):
    seen = []
    small = slimformer.compress(tiny, " layers ( keep = 1 ) + int8(smooth=0) ", calib=sentences, progress=seen.append)
    assert small.manifest["recipe"] == "layers(keep=1)+int8(smooth=0)"  # the canonical text of the parsed steps
    assert [s["step"] for s in small.manifest["steps"]] == ["layers", "int8"] == seen
    assert small.manifest["steps"][1]["smooth"] == 0 and small.manifest["steps"][1]["quantized"] > 0


def test_compressing_a_compressed_model_appends_to_its_manifest(tiny, sentences):
    pruned = slimformer.compress(tiny, "layers(keep=1)", calib=sentences)
    both = slimformer.compress(pruned, [Int8(smooth=0)], calib=sentences)
    assert both.manifest["recipe"] == "layers(keep=1)+int8(smooth=0)"
    assert [s["step"] for s in both.manifest["steps"]] == ["layers", "int8"]
    assert pruned.manifest["recipe"] == "layers(keep=1)" and len(pruned.manifest["steps"]) == 1


def test_out_of_order_list_fails_before_any_work(tiny):
    # the calibration path does not exist: the recipe error comes first, before anything is read or copied
    with pytest.raises(RecipeError, match="step 'heads' must come before 'int8'"):
        slimformer.compress(tiny, [Int8(), Heads(keep=2)], calib="/nonexistent/calib.txt")
    with pytest.raises(RecipeError, match="not a recipe step config"):
        slimformer.compress(tiny, ["int8"], calib="/nonexistent/calib.txt")


def test_every_step_has_a_handler():
    assert set(HANDLERS) == set(CONFIGS)

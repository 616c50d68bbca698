"""Vision transformers (ViT, DeiT, CLIP's vision tower): every pass that applies, on tiny random models built in the
test (3 layers, hidden 32, 4 heads, FFN 64, 16x16 images of 4x4 patches: 17 tokens); random-normal pixels stand in
for preprocessed images. FNet, vocab and freeze must refuse an image model with one line."""

import json

import numpy as np
import pytest
import torch
import transformers as T

import slimformer
from slimformer.errors import SlimformerError, StepNotApplicableError
from slimformer.model import SlimModel
from slimformer.passes import lowrank as LR
from slimformer.passes.lowrank import FactorizedLinear
from slimformer.passes.quantize import Int8Linear
from slimformer.passes.structure import drop_layers, ffn_per_layer, heads_per_layer, slice_heads
from slimformer.runtime.export import export

SIZES = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, image_size=16,
             patch_size=4, initializer_range=0.1)  # 0.1: outputs that depend on the image (0.02: nearly constant)
KINDS = {"vit": (T.ViTConfig, T.ViTModel), "deit": (T.DeiTConfig, T.DeiTModel),
         "clip_vision_model": (T.CLIPVisionConfig, T.CLIPVisionModel)}


def build(kind: str, seed: int = 0) -> SlimModel:
    config_cls, model_cls = KINDS[kind]
    torch.manual_seed(seed)
    return SlimModel(model_cls(config_cls(**SIZES)).eval(), None, pooling="cls")


CALIB = [torch.randn((8, 3, 16, 16), generator=torch.Generator().manual_seed(2))]  # 8 calibration images: fast


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn((6, 3, 16, 16), generator=torch.Generator().manual_seed(1))  # (B, C, H, W)


def embed(model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.embed_batch({"pixel_values": pixels})  # (B, H): the CLS token's state


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.cosine_similarity(a, b).min())


def n_params(model) -> int:
    return sum(p.numel() for p in model.net.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_resolves_every_role(kind):
    model = build(kind)
    assert model.model_type == kind and model.modality == "image" and model.encoder is model.net
    assert heads_per_layer(model.encoder, model.adapter) == [4, 4, 4]
    assert ffn_per_layer(model.encoder, model.adapter) == [64, 64, 64]


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((1 - torch.cosine_similarity(a, b)).mean())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("recipe, heads, ffn", [("heads(keep=2)", [2, 2, 2], [64, 64, 64]),
                                                ("ffn(keep=32)", [4, 4, 4], [32, 32, 32]),
                                                ("layers(keep=2)", [4, 4], [64, 64])])
def test_structure_shrinks(kind, recipe, heads, ffn, pixels):
    model = build(kind)
    out = slimformer.compress(model, recipe, calib=CALIB)
    assert heads_per_layer(out.encoder, out.adapter) == heads
    assert ffn_per_layer(out.encoder, out.adapter) == ffn
    assert n_params(out) < n_params(model)
    assert out.net.config.num_hidden_layers == len(heads)
    assert torch.isfinite(embed(out, pixels)).all()
    assert n_params(build(kind)) == n_params(model)  # the input model is untouched


@pytest.mark.parametrize("kind", KINDS)
def test_the_layer_dropped_is_the_one_that_matters_least(kind, pixels):
    """Chosen on random calibration pixels, checked on other images: no other single layer moves the output less."""
    model = build(kind)
    ref = embed(model, pixels)
    out = slimformer.compress(model, "layers(keep=2)")  # the default: 64 random-normal images
    alternatives = []
    for drop in range(3):
        other = model.clone()
        drop_layers(other.encoder, other.adapter, [i for i in range(3) if i != drop])
        alternatives.append(distance(embed(other, pixels), ref))
    assert distance(embed(out, pixels), ref) == pytest.approx(min(alternatives), abs=1e-6)


@pytest.mark.parametrize("kind", ["vit", "deit"])  # CLIP's random tower: every head matters about alike
def test_the_heads_kept_matter_more_than_the_heads_dropped(kind, pixels):
    model = build(kind)
    ref = embed(model, pixels)
    out = slimformer.compress(model, "heads(keep=2)")  # the default: 64 random-normal images (8 are too noisy)
    kept = out.manifest["steps"][-1]["kept_heads"]
    other = model.clone()
    slice_heads(other.encoder, other.adapter, [[h for h in range(4) if h not in k] for k in kept])
    assert distance(embed(out, pixels), ref) < 0.7 * distance(embed(other, pixels), ref)


@pytest.mark.parametrize("kind", KINDS)
def test_keeping_everything_is_exact(kind, pixels):
    model = build(kind)
    out = slimformer.compress(model, "heads(keep=1.0)+ffn(keep=1.0)+layers(keep=1.0)", calib=CALIB)
    assert n_params(out) == n_params(model)
    torch.testing.assert_close(embed(out, pixels), embed(model, pixels), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_int8_stays_close(kind, pixels):
    model = build(kind)
    out = slimformer.compress(model, "int8", calib=CALIB)
    assert sum(isinstance(m, Int8Linear) for m in out.net.modules()) >= 6 * 3  # q/k/v/o/fc1/fc2 of every block
    ref, got = embed(model, pixels), embed(out, pixels)
    assert cosine(got, ref) > 0.999
    assert float((got - ref).norm() / ref.norm()) < 0.05


@pytest.mark.parametrize("kind", KINDS)
def test_lowrank_factorizes(kind, pixels, monkeypatch):
    monkeypatch.setattr(LR, "fastest_rank", lambda m, n: 10**6)  # tiny matrices are never faster factorized
    model = build(kind)
    ref = embed(model, pixels)
    low, high = (slimformer.compress(model, f"lowrank(rank={r})", calib=CALIB) for r in (6, 15))
    for out in (low, high):
        assert sum(isinstance(m, FactorizedLinear) for m in out.net.modules()) == 6 * 3
        assert n_params(out) < n_params(model)
    assert distance(embed(high, pixels), ref) < distance(embed(low, pixels), ref)  # more rank, closer


def test_distill_recovers_on_other_images(pixels):
    model = build("vit")
    recipe = "heads(keep=2)+ffn(keep=32)"
    pruned = slimformer.compress(model, recipe, calib=CALIB)
    out = slimformer.compress(model, recipe + "+distill(steps=20, lr=0.002, batch_size=8)", calib=CALIB)
    step = out.manifest["steps"][-1]
    assert step["step"] == "distill" and step["loss_last"] < step["loss_first"]
    ref = embed(model, pixels)
    assert cosine(embed(out, pixels), ref) > cosine(embed(pruned, pixels), ref)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_equal(kind, pixels, tmp_path):
    out = slimformer.compress(build(kind), "heads(keep=3)+ffn(keep=48)+layers(keep=2)+int8", calib=CALIB)
    path = slimformer.save(out, tmp_path / "m")
    assert (path / "model.safetensors").is_file()
    assert not [f for f in path.rglob("*") if f.suffix in (".bin", ".pt", ".pkl", ".pth")]  # never a pickle
    back = slimformer.load(path)
    assert back.modality == "image" and back.tokenizer is None and back.pooling == "cls"
    assert heads_per_layer(back.encoder, back.adapter) == heads_per_layer(out.encoder, out.adapter)
    torch.testing.assert_close(embed(back, pixels), embed(out, pixels), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_export_matches_eager(kind, pixels, tmp_path):
    model = slimformer.compress(build(kind), "heads(keep=2)+ffn(keep=48)", calib=CALIB)
    ref = embed(model, pixels)
    exported = slimformer.load(export(model, tmp_path / "fp32", int8=False))
    assert exported.encoder.session.input_names == ["pixel_values"]
    torch.testing.assert_close(exported.embed_batch({"pixel_values": pixels}), ref, atol=1e-4, rtol=1e-4)
    int8 = slimformer.load(export(model, tmp_path / "int8", int8=True))
    assert cosine(int8.embed_batch({"pixel_values": pixels}), ref) > 0.97  # ORT int8, one activation scale


@pytest.mark.parametrize("kind", KINDS)
def test_openvino_export_matches_eager(kind, pixels, tmp_path, float_tol):
    """OpenVINO IR of a narrowed image model: fp32 weights within the runtime's float tolerance (bf16 where OpenVINO
    computes in bf16), and nncf's int8 weights close."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    model = slimformer.compress(build(kind), "heads(keep=2)+ffn(keep=48)", calib=CALIB)
    ref = embed(model, pixels)
    exported = slimformer.load(export(model, tmp_path / "fp32", int8=False, runtime="openvino"))
    assert exported.manifest["runtime"] == "openvino" and exported.modality == "image"
    got = exported.embed_batch({"pixel_values": pixels})
    rel = ((got - ref).norm(dim=1) / ref.norm(dim=1)).max()  # each image's embedding, relative to its own size
    assert rel < float_tol(exported), rel
    int8 = slimformer.load(export(model, tmp_path / "int8", runtime="openvino"))
    assert cosine(int8.embed_batch({"pixel_values": pixels}), ref) > 0.99  # int8 weights, float activations


@pytest.mark.parametrize("recipe, word", [("fnet", "Fourier"), ("vocab", "vocabulary"), ("freeze", "traced")])
def test_steps_for_text_refuse_images(recipe, word):
    with pytest.raises(StepNotApplicableError, match=f"image model .*{word}") as e:
        slimformer.compress(build("vit"), recipe, calib=CALIB)
    assert "\n" not in str(e.value)


def test_calibration_inputs(tmp_path, pixels):
    model = build("vit")
    slimformer.compress(model, "heads(keep=2)", calib=[pixels[0], pixels[1:]])  # (C, H, W) and (B, C, H, W)
    with pytest.raises(SlimformerError, match="pixel tensors"):
        slimformer.compress(model, "heads(keep=2)", calib=["a sentence"])
    with pytest.raises(SlimformerError, match="not a folder"):
        slimformer.compress(model, "heads(keep=2)", calib=str(tmp_path / "missing"))
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(SlimformerError, match="image processor"):  # a model built in code has none
        slimformer.compress(model, "heads(keep=2)", calib=str(tmp_path))


def _image_classifier_dir(tmp_path, labels: int = 3):
    """A tiny random ViTForImageClassification saved as a Hugging Face folder with its image processor, and a
    folder of 8 random PNG images."""
    from PIL import Image

    torch.manual_seed(0)
    config = T.ViTConfig(**SIZES, num_labels=labels, id2label={i: f"class_{i}" for i in range(labels)},
                         label2id={f"class_{i}": i for i in range(labels)})
    T.ViTForImageClassification(config).eval().save_pretrained(tmp_path / "vit-cls", safe_serialization=True)
    T.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "vit-cls")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return tmp_path / "vit-cls", images


def test_calibration_folder_may_hold_labelled_subfolders(tmp_path):
    """A training set in the ImageFolder layout calibrates as it is: the images of every subfolder, by path."""
    from slimformer.vision import calibration_pixels

    folder, images = _image_classifier_dir(tmp_path)
    model = slimformer.load(folder)
    flat = calibration_pixels(str(images), model)  # (8, 3, 16, 16)
    for f in sorted(images.iterdir()):
        sub = images / ("a" if int(f.stem) < 4 else "b")  # a/0..3, b/4..7: the same order by path
        sub.mkdir(exist_ok=True)
        f.rename(sub / f.name)
    assert flat.shape == (8, 3, 16, 16) and torch.equal(calibration_pixels(str(images), model), flat)


@torch.no_grad()  # logits_batch runs the net as it is (compress's own passes enable grad where they need it)
def test_image_classifier_loads_compresses_saves_and_exports(tmp_path):
    folder, images = _image_classifier_dir(tmp_path)
    model = slimformer.load(folder)
    assert model.head == "image-classification" and type(model.tokenizer).__name__.startswith("ViTImageProcessor")
    assert model.pooling == "cls" and model.config.num_labels == 3
    from PIL import Image

    batch = dict(model.tokenizer(images=[Image.open(f) for f in sorted(images.iterdir())], return_tensors="pt"))
    ref = model.logits_batch(batch)  # (8, 3)
    out = slimformer.compress(model, "heads(keep=2)+ffn(keep=48)+int8", calib=str(images))
    got = out.logits_batch(batch)
    assert got.shape == (8, 3) and sum(heads_per_layer(out.encoder, out.adapter)) < 12
    probs = torch.softmax(ref, -1)
    assert float((torch.softmax(got, -1) - probs).abs().max()) < 0.2  # half the heads, untrained
    back = slimformer.load(slimformer.save(out, tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "slimformer.json").read_text())["head"] == "image-classification"
    torch.testing.assert_close(back.logits_batch(batch), got, atol=1e-6, rtol=0)
    assert type(back.tokenizer).__name__.startswith("ViTImageProcessor")
    fp32 = slimformer.compress(model, "heads(keep=3)", calib=CALIB)
    exported = slimformer.load(export(fp32, tmp_path / "onnx", int8=False))
    assert exported.head == "image-classification" and exported.tokenizer is not None
    torch.testing.assert_close(exported.logits_batch(batch), fp32.logits_batch(batch), atol=1e-4, rtol=1e-4)


def test_clip_vision_folder_without_processor_loads(tmp_path, pixels):
    torch.manual_seed(0)
    T.CLIPVisionModel(T.CLIPVisionConfig(**SIZES)).eval().save_pretrained(tmp_path / "clip", safe_serialization=True)
    model = slimformer.load(tmp_path / "clip")
    assert model.tokenizer is None and model.pooling == "cls" and model.head is None
    out = model.net(pixel_values=pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(embed(model, pixels), out, atol=0, rtol=0)


def test_cli_compresses_an_image_model_with_a_folder_of_images(tmp_path):
    import os
    import subprocess
    import sys

    folder, images = _image_classifier_dir(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "slimformer.cli", "compress", str(folder), "--recipe", "heads(keep=2)",
                        "-o", str(tmp_path / "out"), "--calib", str(images)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert "no report" in p.stdout
    back = slimformer.load(tmp_path / "out")
    assert back.head == "image-classification" and heads_per_layer(back.encoder, back.adapter) == [2, 2, 2]
    p = subprocess.run([sys.executable, "-m", "slimformer.cli", "compress", str(folder), "--recipe", "fnet",
                        "-o", str(tmp_path / "out2")], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode != 0 and len(lines) == 1 and "image model" in lines[0], p.stderr


@pytest.mark.parametrize("kind", ["vit", "clip_vision_model"])
def test_prune_under_a_flops_budget(kind):
    from slimformer.passes.structure import encoder_flops

    model = build(kind)
    out = slimformer.compress(model, "prune(flops=0.6)", calib=CALIB)
    fraction = encoder_flops(out.encoder, out.adapter) / encoder_flops(model.encoder, model.adapter)
    assert 0.4 < fraction <= 0.6 + 1e-6 and out.manifest["steps"][-1]["flops_fraction"] == round(fraction, 4)


def test_bench_and_peers_time_an_image_model(tmp_path):
    """`bench` of an image model times random pixels of its size, one image and a batch of 8 (keys "1x16", "8x16");
    `bench --peers` builds torch.ao's, ORT's (and OpenVINO's, where installed) rows of the original beside a
    compressed folder, all timed in one loop; there is no image quality task yet, so no quality column and a
    one-line error for --task."""
    import importlib.util

    from slimformer.measure.peers import compare_peers
    from slimformer.measure.report import bench_model

    folder, images = _image_classifier_dir(tmp_path)
    small = slimformer.save(slimformer.compress(slimformer.load(folder), "heads(keep=2)", calib=str(images)),
                            tmp_path / "small")
    one = bench_model(slimformer.load(small), runs=5)
    assert set(one["latency_ms"]) == {"1x16", "8x16"} and all(v > 0 for v in one["latency_ms"].values())
    result, table = compare_peers([str(small)], runs=5, out_dir=tmp_path / "peers")
    rows = {r["name"]: r for r in result["rows"]}
    openvino = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
    assert list(rows) == ["torch fp32 eager (original)", "torch.ao dynamic int8", "ORT fp32",
                          "ORT optimized + int8 per-channel", *(["OpenVINO int8 weights (nncf)"] if openvino else []),
                          "slimformer heads(keep=2) [torch]"]
    for r in rows.values():
        assert set(r["speedup"]) == {"1x16", "8x16"} and r["size_mb"] > 0
        assert r["speedup"]["8x16"] == pytest.approx(rows["torch fp32 eager (original)"]["latency_ms"]["8x16"]
                                                     / r["latency_ms"]["8x16"], abs=0.01)
    assert result["task"] is None and "| speedup 1x16 | speedup 8x16 |" in table and "batch x image height" in table
    with pytest.raises(SlimformerError, match="scores sentence embeddings; this model is an image-classification"):
        compare_peers([str(small)], runs=5, out_dir=tmp_path / "peers", task="stsb")


def _labelled(tmp_path, names: list[str], per_label: int = 4):
    """A folder of random PNGs, one subfolder per label name."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for name in names:
        (tmp_path / "labelled" / name).mkdir(parents=True)
        for i in range(per_label):
            pixels = rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "labelled" / name / f"{i}.png")
    return tmp_path / "labelled"


def test_an_image_classifier_is_scored_on_a_folder_of_labelled_images(tmp_path):
    """--task cls:FOLDER (one subfolder per label): accuracy x100 of the argmax of the classifier's logits on each
    image, the same as computed by hand; labels by name (any case) or id; `predict` takes image paths; a compress
    report and bench --peers get the quality column; a text task, or a folder for a text classifier, is a one-line
    error."""
    from PIL import Image
    from typer.testing import CliRunner

    from slimformer import cli
    from slimformer.measure.peers import compare_peers
    from slimformer.measure.tasks import check_task, default_task, evaluate

    folder, images = _image_classifier_dir(tmp_path)
    model = slimformer.load(folder)
    labelled = _labelled(tmp_path, ["CLASS_0", "class_1", "2"])  # a name in another case, a name, an id
    task = f"cls:{labelled}"
    files = sorted(labelled.glob("*/*.png"))
    with torch.no_grad():
        logits = model.logits_batch(dict(model.tokenizer(images=[Image.open(f).convert("RGB") for f in files],
                                                          return_tensors="pt")))
    gold = torch.tensor([{"CLASS_0": 0, "class_1": 1, "2": 2}[f.parent.name] for f in files])
    np.testing.assert_allclose(model.predict([str(f) for f in files]), logits.numpy(), atol=1e-5)
    result = evaluate(model, task)
    assert result.n == 12 and result.value == pytest.approx(float((logits.argmax(1) == gold).float().mean()) * 100)
    with pytest.raises(SlimformerError, match="give --task cls:FOLDER"):
        default_task(model)
    with pytest.raises(SlimformerError, match="scores sentence embeddings; this model is an image-classification"):
        check_task("stsb", model)
    with pytest.raises(SlimformerError, match="scores an image classifier's predictions"):
        check_task(task, slimformer.load(build_text_classifier(tmp_path)))
    out = CliRunner().invoke(cli.app, ["compress", str(folder), "-r", "heads(keep=2)", "-o", str(tmp_path / "h"),
                                       "--calib", str(images), "--task", task, "--runs", "2"])
    assert out.exit_code == 0, out.output
    report = json.loads((tmp_path / "h" / "report.json").read_text())
    assert report["rows"][0][task] == pytest.approx(result.value) and "speedup" in report["rows"][1]
    peers, table = compare_peers([str(tmp_path / "h")], runs=2, out_dir=tmp_path / "peers", task=task)
    rows = {r["name"]: r for r in peers["rows"]}
    assert rows["ORT fp32"][task] == rows["torch fp32 eager (original)"][task] == pytest.approx(result.value)
    assert f"{task} accuracy" in table and (tmp_path / "peers" / "peers.png").is_file()


def build_text_classifier(tmp_path):
    """A tiny random BERT sequence classifier folder (3 labels) with MiniLM's tokenizer."""
    from slimformer.io import default_model_dir

    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=3)
    T.BertForSequenceClassification(cfg).eval().save_pretrained(tmp_path / "txt-cls")
    T.AutoTokenizer.from_pretrained(default_model_dir()).save_pretrained(tmp_path / "txt-cls")
    return tmp_path / "txt-cls"

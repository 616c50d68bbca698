"""What users would pick instead, built from the same original model for side-by-side rows; `bench --peers`."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import io
from ..errors import ModelNotFoundError, SlimformerError
from ..folder import MANIFEST
from ..model import SlimModel
from .bench import throughput
from .compare import compare
from .report import markdown, plot
from ..vision import is_image
from .tasks import check_task, task_inputs


def torch_ao_dynamic(model: SlimModel) -> SlimModel:
    """The torch one-liner: torch.ao.quantization.quantize_dynamic on every Linear of the net, a task head's
    included (per-tensor activation scale, per-tensor weight scale). Deprecated in torch 2.13 but still what most
    users reach for first."""
    out = model.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out._modules["net"] = torch.ao.quantization.quantize_dynamic(out.net, {nn.Linear}, dtype=torch.qint8)
    out.manifest["recipe"] = "torch.ao quantize_dynamic"
    return out


def ort_peer(model: SlimModel, folder, int8: bool):
    """The original model as ONNX Runtime serves it: exported, graph-optimized, and (int8) dynamically quantized
    with per-channel weights -- what users pick today instead of a compressed model."""
    from ..runtime.export import export
    from ..runtime.served import load_export

    return load_export(export(model, folder, int8=int8, force=True))


def openvino_peer(model: SlimModel, folder):
    """OpenVINO's int8 route for transformers: the ONNX export converted to IR, weights compressed to int8 by
    nncf.compress_weights (per channel; activations stay float). None when the optional extra is not installed."""
    from ..errors import SlimformerError
    from ..runtime import openvino
    from ..runtime.export import export
    from ..runtime.served import load_export

    try:
        openvino.require()
    except SlimformerError:
        return None
    return load_export(export(model, folder, runtime="openvino", force=True))


class SentenceTransformersPeer:
    """What users call on the original folder, for corpus throughput only: sentence-transformers' encode() for an
    embedder; for a classifier (head: SlimModel.head) transformers' text-classification pipeline, raw logits
    (sentence-transformers' CrossEncoder takes pairs only)."""

    def __init__(self, path: str, head: str | None = None):
        self.head = head
        if head is None:
            from sentence_transformers import SentenceTransformer

            self.what, self.st = "sentence-transformers encode()", SentenceTransformer(path, device="cpu")
        else:
            from transformers import pipeline

            self.what, self.st = "transformers pipeline('text-classification')", pipeline(
                "text-classification", model=path, device="cpu")

    def encode(self, texts, batch_size: int = 32):
        if self.head is None:
            return self.st.encode(texts, batch_size=batch_size, convert_to_numpy=True)
        inputs = [{"text": t[0], "text_pair": t[1]} if isinstance(t, tuple) else t for t in texts]
        return self.st(inputs, batch_size=batch_size, function_to_apply="none", top_k=None)


def peer_models(base: SlimModel, workdir, skipped: dict[str, str] | None = None) -> dict:
    """name -> model with encode() and .encoder/.tokenizer, in the order the table shows them. A peer that cannot
    run this model (its export refuses it: SlimformerError) is left out and its one-line reason put in `skipped`."""
    work = Path(workdir)
    builders = {
        "torch.ao dynamic int8": lambda: torch_ao_dynamic(base),
        "ORT fp32": lambda: ort_peer(base, work / "ort-fp32", int8=False),
        "ORT optimized + int8 per-channel": lambda: ort_peer(base, work / "ort-int8", int8=True),
        "OpenVINO int8 weights (nncf)": lambda: openvino_peer(base, work / "openvino"),
    }
    peers = {"torch fp32 eager (original)": base}
    for name, build in builders.items():
        try:
            model = build()
        except SlimformerError as e:
            if skipped is not None:
                skipped[name] = str(e)
            continue
        if model is not None:  # OpenVINO is an optional extra: pip install 'slimformer[openvino]'
            peers[name] = model
    return peers


def folder_label(model, path, taken=(), prefix: str = "") -> str:
    """A saved folder's row name: `prefix`, its recipe (or path) and what serves it, "prune(flops=0.8)+int8 [ORT]";
    with the folder's name after it where the name is already `taken` (two folders of one recipe and runtime, say a
    search's pick and a hand-made one)."""
    runtime = {"onnxruntime": "ORT", "openvino": "OpenVINO"}.get(model.manifest.get("runtime"), "torch")
    name = f"{prefix}{model.manifest.get('recipe') or path} [{runtime}]"
    return f"{name} ({Path(path).name})" if name in taken else name


def base_of(paths: list[str], base: str | None = None) -> str | None:
    """The folder every peer row is built from: `base`, else the one original the manifests at `paths` name
    (`source`), else None (the embedded default). Models from different originals, or an original that is not on
    this machine, need `base`."""
    if base is not None:
        return base
    sources = {json.loads((Path(p) / MANIFEST).read_text()).get("source") for p in paths
               if (Path(p) / MANIFEST).is_file()} - {None}
    if len(sources) > 1:
        raise SlimformerError(f"bench --peers: the models come from different originals ({', '.join(sorted(sources))})"
                              "; choose the one to build the peers from with --base")
    if sources and not Path(next(iter(sources))).is_dir():
        raise ModelNotFoundError(f"bench --peers: the models' original {next(iter(sources))} is not on this machine; "
                                 "give it with --base")
    return next(iter(sources), None)


def compare_peers(paths: list[str], runs: int, out_dir, show_progress: bool = False,
                  base: str | None = None, task: str | None = None) -> tuple[dict, str]:
    """The original under each peer's runtime next to the slimformer models at `paths`, in one run, with `task`
    (default: the original's own, tasks.default_task: STS-B test for an embedder, SST-2 dev for a 2-label classifier,
    perplexity for a causal LM; a speech model needs wer:PATH; an image model has none, an image classifier takes
    cls:FOLDER) and, for text, corpus throughput (the task's inputs run end to end); writes peers.json, peers.md and
    (with a task) peers.png to out_dir.
    base: the original every peer row is built from (default: base_of(paths)).
    Returns (measure()'s result plus sentence-transformers' throughput, the markdown table)."""
    base_dir = base_of(paths, base)
    base = io.load(base_dir)
    if not isinstance(base, SlimModel):
        raise SlimformerError(f"bench --peers: the base {base_dir} is an export; give the torch model it came from")
    text = getattr(base, "modality", "text") == "text"
    # checked before the peers are built: a task that does not fit fails in seconds. An image model has no task of
    # its own (an image classifier's is a folder of the user's labelled images: cls:FOLDER)
    task = None if is_image(base) and not task else check_task(task, base)
    texts = task_inputs(task) if text else None  # throughput: text inputs only
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:  # the peers' exports live until they are measured
        models = peer_models(base, tmp, skipped)
        for p in paths:
            m = io.load(p)
            models[folder_label(m, p, models, "slimformer ")] = m
        result, _ = compare(models, {}, task, runs, throughput_texts=texts, show_progress=show_progress)
    if skipped:
        result["skipped"] = skipped
    st_dir = Path(base_dir) if base_dir is not None else io.default_model_dir()
    table = markdown(result)
    # sentence-transformers reads HF and its own folders, not slimformer's; it neither embeds nor classifies with a
    # causal LM (whose inputs/s, document scoring, the rows above hold), and reads no speech or images
    if not (st_dir / MANIFEST).is_file() and getattr(base, "head", None) != "causal-lm" and text:
        st = SentenceTransformersPeer(str(st_dir), getattr(base, "head", None))
        result["sentence_transformers_sentences_per_s"] = round(throughput(st.encode, texts), 1)
        table += ("\n\nCorpus throughput (%s, %d inputs, tokenization included): %s on the original: %.0f inputs/s."
                  % (task, len(texts), st.what, result["sentence_transformers_sentences_per_s"]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "peers.json").write_text(json.dumps(result, indent=1))
    (out_dir / "peers.md").write_text(table + "\n")
    if task:  # speed against quality: none without a quality column (an image model without --task)
        plot(result, out_dir / "peers.png")
    return result, table

"""Exports load in sentence-transformers and optimum: MiniLM compressed with `prune(flops=0.8)+int8` and exported,
then served by SentenceTransformer(EXPORT, backend=...) and by optimum's model class (mean-pooled by hand, as
sentence-transformers does), each against slimformer.load(EXPORT).encode on STS-B test sentences. Prints the cosines
and exits non-zero when one falls below 0.999 (issue 13's acceptance). `make ecosystem` runs it in its venvs:

Usage: .venv-eco/bin/python benchmarks/ecosystem.py onnx [DIR]        (sentence-transformers 5 + optimum[onnxruntime])
       .venv-eco-ov/bin/python benchmarks/ecosystem.py openvino [DIR] (sentence-transformers 6 + optimum-intel)

DIR (default benchmarks/out/ecosystem) keeps the compressed model (DIR/p80, made once, minutes) and the export.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import slimformer
from slimformer.data import read_stsb
from slimformer.runtime.export import export

RECIPE = "prune(flops=0.8)+int8"
N_PAIRS = 200  # 400 sentences
BATCH = 32  # sentence-transformers' default batch size, and slimformer's


def optimum_encode(folder: Path, backend: str, texts: list[str]) -> np.ndarray:
    """optimum's model class alone: longest first, BATCH a batch, mean over the mask, L2-normalized (MiniLM's)."""
    from transformers import AutoTokenizer

    if backend == "onnx":  # optimum-onnx finds onnx/model.onnx by itself; optimum-intel is told the subfolder
        from optimum.onnxruntime import ORTModelForFeatureExtraction

        model = ORTModelForFeatureExtraction.from_pretrained(str(folder))
    else:
        from optimum.intel import OVModelForFeatureExtraction

        model = OVModelForFeatureExtraction.from_pretrained(str(folder), subfolder="openvino")
    tok = AutoTokenizer.from_pretrained(folder)
    order = np.argsort([-len(t) for t in texts])  # sentence-transformers' batches
    out = []
    for i in range(0, len(texts), BATCH):
        batch = tok([texts[j] for j in order[i : i + BATCH]], padding=True, truncation=True, max_length=256,
                    return_tensors="pt")
        states = model(**batch).last_hidden_state  # (B, T, H)
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        out.append(F.normalize((states * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)[torch.from_numpy(np.argsort(order))].numpy()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main(backend: str, work: Path) -> int:
    from sentence_transformers import SentenceTransformer

    texts = [s for a, b, _ in read_stsb("test")[:N_PAIRS] for s in (a, b)]
    t0 = time.perf_counter()
    if not (work / "p80" / "slimformer.json").is_file():
        slimformer.save(slimformer.compress(slimformer.load(), RECIPE), work / "p80", force=True)
    out = export(slimformer.load(work / "p80"), work / f"p80-{backend}", force=True,
                 runtime="onnxruntime" if backend == "onnx" else "openvino")
    print(f"{RECIPE} of all-MiniLM-L6-v2 compressed and exported to {backend} in {time.perf_counter() - t0:.0f} s")
    mine = slimformer.load(out).encode(texts, batch_size=BATCH)
    optimum_class = "ORTModelForFeatureExtraction" if backend == "onnx" else "OVModelForFeatureExtraction"
    consumers = {
        f'SentenceTransformer(EXPORT, backend="{backend}")':
            lambda: SentenceTransformer(str(out), backend=backend, device="cpu").encode(texts, batch_size=BATCH),
        f"optimum {optimum_class}": lambda: optimum_encode(out, backend, texts),
    }
    worst = 1.0
    for name, encode in consumers.items():
        c = cosines(encode(), mine)
        worst = min(worst, c.min())
        print(f"{name:50s} vs slimformer.load(EXPORT).encode, {len(texts)} STS-B test sentences: "
              f"cosine min {c.min():.7f}, mean {c.mean():.7f}", flush=True)
    # why the batches must be the same ones: ORT's dynamic int8 takes one activation scale per batch
    c = cosines(slimformer.load(out).encode(texts, batch_size=BATCH // 2), mine)
    print(f"{'slimformer encode, batch_size ' + str(BATCH // 2):50s} vs batch_size {BATCH} (not checked): "
          f"cosine min {c.min():.7f}, mean {c.mean():.7f}")
    print("OK" if worst >= 0.999 else f"FAIL: a cosine below 0.999 ({worst:.7f})")
    return 0 if worst >= 0.999 else 1


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in ("onnx", "openvino"):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], Path(sys.argv[2] if len(sys.argv) == 3 else "benchmarks/out/ecosystem")))

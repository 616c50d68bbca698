"""model2vec beside slimformer's `static` step (`make peers-static`). Runs in its own venv (.venv-m2v): model2vec's
`distill` extra pins transformers<5.4, which the main venv does not have.

    python benchmarks/static_peers.py distill MODEL_DIR -o OUT [--dims 256]
        model2vec's own distillation of the same teacher (PCA to --dims, SIF 1e-4, float32), saved as a model2vec
        folder, which `slimformer eval` / `bench` load as a StaticModel.
    python benchmarks/static_peers.py vectors FOLDER VECTORS.npy SENTENCES.txt   (in slimformer's venv)
        STS-B dev sentences and slimformer's vectors of them, for `check`.
    python benchmarks/static_peers.py check FOLDER VECTORS.npy SENTENCES.txt
        loads a slimformer static folder with model2vec's own StaticModel and compares its vectors with the ones
        slimformer wrote (exit 1 on a mismatch): the model2vec half of the export check.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def distill_peer(model_dir: str, out: str, dims: int) -> None:
    from model2vec.distill import distill

    t0 = time.perf_counter()
    m = distill(model_name=model_dir, pca_dims=dims, quantize_to="float32", device="cpu")
    seconds = time.perf_counter() - t0
    m.save_pretrained(out)
    print(json.dumps({"peer": "model2vec distill", "dims": dims, "seconds": round(seconds, 1), "out": out}))


def vectors(folder: str, out: str, sentences: str) -> None:
    import slimformer
    from slimformer.data import read_stsb

    texts = sorted({s for a, b, _ in read_stsb("dev") for s in (a, b)})
    Path(sentences).write_text("\n".join(texts) + "\n")
    np.save(out, slimformer.load(folder).encode(texts))


def check(folder: str, vectors: str, sentences: str) -> int:
    from model2vec import StaticModel

    texts = Path(sentences).read_text().splitlines()
    ours = np.load(vectors)
    theirs = StaticModel.from_pretrained(folder).encode(texts)
    err = float(np.abs(ours - theirs).max())
    # model2vec drops [UNK] from the ids; slimformer (like sentence-transformers) averages it in
    print(json.dumps({"folder": folder, "sentences": len(texts), "max_abs_diff": err}))
    return 0 if err < 1e-5 else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("distill")
    d.add_argument("model_dir")
    d.add_argument("-o", "--out", required=True)
    d.add_argument("--dims", type=int, default=256)
    for name in ("vectors", "check"):
        c = sub.add_parser(name)
        c.add_argument("folder")
        c.add_argument("vectors")
        c.add_argument("sentences")
    a = p.parse_args()
    if a.cmd == "distill":
        distill_peer(a.model_dir, a.out, a.dims)
    elif a.cmd == "vectors":
        vectors(a.folder, a.vectors, a.sentences)
    else:
        return check(a.folder, a.vectors, a.sentences)
    return 0


if __name__ == "__main__":
    sys.exit(main())

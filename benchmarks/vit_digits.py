"""A trained vision transformer with a real labelled image set, for the README's vision section (issue 16): no
pretrained ViT weights install here, but scikit-learn ships a real image set, the UCI handwritten digits (1,797
scans of digits 0-9 by 43 writers, 8x8 pixels of 17 grey levels). This trains a ViT classifier on them from scratch on
the CPU, so every pass can be scored on a trained model's accuracy instead of only on random weights.

- OUT_DIR/train/<digit>/*.png and OUT_DIR/test/<digit>/*.png: a seeded split, a quarter of each digit held out (450
  images), as 32x32 RGB PNGs (the 8x8 scans upscaled bilinearly), in the `--task cls:FOLDER` layout; the train images
  are what `--calib` reads, disjoint from the test ones.
- MODEL_DIR: a `ViTForImageClassification` (DeiT-Tiny's width: 192 hidden, 3 heads, FFN 768; 6 layers; 4x4 patches,
  so 64 patches + CLS) with its image processor and id2label "0".."9". AdamW with a cosine schedule, random shifts
  of up to 3 pixels as augmentation, seeded; it prints the test accuracy at the end.

    .venv/bin/python benchmarks/vit_digits.py OUT_DIR MODEL_DIR [--epochs 40]
"""

import argparse
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from slimformer.folder import atomic_folder
from slimformer.vision import labelled_images, load_pixels

SIZE, PATCH = 32, 4


def write_images(out: Path) -> None:
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    seen: dict[int, list[int]] = {}
    for i in order:
        seen.setdefault(int(digits.target[i]), []).append(int(i))
    for label, idx in seen.items():
        n_test = round(len(idx) / 4)
        for split, part in (("test", idx[:n_test]), ("train", idx[n_test:])):
            folder = out / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                grey = (digits.images[i] * (255 / 16)).round().astype(np.uint8)  # (8, 8), 0..16 -> 0..255
                img = Image.fromarray(grey).resize((SIZE, SIZE), Image.BILINEAR).convert("RGB")
                img.save(folder / f"{i:04d}.png")


def pixels(folder: Path, processor) -> tuple[torch.Tensor, torch.Tensor]:
    """A labelled folder as `--task cls:FOLDER` reads it: (pixels (N, 3, 32, 32), labels (N,))."""
    pairs = labelled_images(folder)
    return load_pixels([p for p, _ in pairs], processor), torch.tensor([int(label) for _, label in pairs])


def shifted(x: torch.Tensor, gen: torch.Generator, most: int = 3) -> torch.Tensor:
    """Each image moved by up to `most` pixels each way, the background (-1 after normalization) filling in."""
    pad = F.pad(x, (most,) * 4, value=-1.0)  # (B, 3, H + 2m, W + 2m)
    dy, dx = torch.randint(0, 2 * most + 1, (2, len(x)), generator=gen)
    return torch.stack([p[:, y : y + SIZE, z : z + SIZE] for p, y, z in zip(pad, dy.tolist(), dx.tolist())])


def train(out: Path, model_dir: Path, epochs: int) -> None:
    torch.manual_seed(0)
    processor = ViTImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    config = ViTConfig(image_size=SIZE, patch_size=PATCH, hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
                       intermediate_size=768, num_labels=10, id2label={i: str(i) for i in range(10)},
                       label2id={str(i): i for i in range(10)})
    model = ViTForImageClassification(config)
    x, y = pixels(out / "train", processor)
    x_test, y_test = pixels(out / "test", processor)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    batch, gen = 64, torch.Generator().manual_seed(0)
    total = epochs * math.ceil(len(x) / batch)
    warm_cosine = lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / total))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warm_cosine)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            b = perm[i : i + batch]
            loss = F.cross_entropy(model(pixel_values=shifted(x[b], gen)).logits, y[b], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            model.eval()
            with torch.no_grad():
                acc = (model(pixel_values=x_test).logits.argmax(-1) == y_test).float().mean().item()
            print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test accuracy {100 * acc:.2f}", flush=True)
    model.eval()
    with atomic_folder(model_dir, force=True) as tmp:  # a run killed mid-save leaves the previous model
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--epochs", type=int, default=40)
    a = ap.parse_args()
    shutil.rmtree(a.out_dir, ignore_errors=True)
    write_images(a.out_dir)
    train(a.out_dir, a.model_dir, a.epochs)


if __name__ == "__main__":
    main()

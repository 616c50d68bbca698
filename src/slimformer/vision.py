"""Image inputs of vision transformers (ViT, DeiT, CLIP's vision tower: arch.VISION_ADAPTERS): the pixel batches
that calibration, distillation and export feed them.

An image model takes pixel_values (B, C, H, W), already resized and normalized by its image processor (which
SlimModel keeps in its `tokenizer` slot: both turn raw inputs into forward kwargs and save_pretrained alike). Without
calibration images the passes see random-normal pixels: the processor's output is normalized to about zero mean and
unit variance per channel, so N(0, 1) has the right scale, though none of the structure of real images.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .arch import adapter_for
from .errors import SlimformerError, StepNotApplicableError

IMAGE = "image"  # arch.Adapter.modality of a vision transformer
CALIB_IMAGES = 64  # random images when none are given: as many as a short calibration needs
BENCH_IMAGES = (1, 8)  # batch sizes `bench` times: one image (serving a request), a batch
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def is_image(model) -> bool:
    return getattr(model, "modality", "text") == IMAGE


def pixel_shape(config) -> tuple[int, int, int]:
    """(C, H, W) of the images a vision config takes."""
    size = config.image_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return getattr(config, "num_channels", 3), h, w


def bench_shapes(config) -> tuple[tuple[int, int], ...]:
    """`bench`'s shapes of an image model: one image and a batch of 8, each (batch, image height): keys "1x224"."""
    return tuple((b, pixel_shape(config)[1]) for b in BENCH_IMAGES)


def random_pixels(config, n: int = CALIB_IMAGES, seed: int = 0) -> torch.Tensor:
    """n random-normal images of the config's shape, (n, C, H, W), the same for a seed."""
    return torch.randn((n, *pixel_shape(config)), generator=torch.Generator().manual_seed(seed))


def image_files(folder: Path) -> list[Path]:
    """The image files in `folder` and its subfolders (an ImageFolder layout's labels: calibration ignores them),
    sorted by path."""
    return sorted(f for f in Path(folder).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())


def load_pixels(images: list, processor) -> torch.Tensor:
    """Images (file paths or PIL images) through the model's image processor: (N, C, H, W)."""
    from PIL import Image

    if processor is None:
        raise SlimformerError("images need the model's image processor (preprocessor_config.json); this model has "
                              "none: pass preprocessed tensors (pixel_values) instead")
    images = [Image.open(x).convert("RGB") if isinstance(x, (str, os.PathLike)) else x.convert("RGB") for x in images]
    return processor(images=images, return_tensors="pt")["pixel_values"].float()


def folder_pixels(folder: Path, processor) -> torch.Tensor:
    """Every image file under `folder` (sorted by path) through the model's image processor: (N, C, H, W)."""
    files = image_files(folder)
    if not files:
        raise SlimformerError(f"calibration folder {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return load_pixels(files, processor)


def labelled_images(folder: str | Path) -> list[tuple[str, str]]:
    """(image path, label) of a labelled image folder: one subfolder per label, named as the label (a name of the
    model's id2label or an id), its image files inside (torchvision's ImageFolder layout)."""
    folder = Path(folder)
    pairs = [(str(f), sub.name) for sub in sorted(d for d in folder.iterdir() if d.is_dir()) for f in image_files(sub)]
    if not pairs:
        raise SlimformerError(f"{folder}: no labelled images (one subfolder per label, image files inside: "
                              f"{', '.join(IMAGE_SUFFIXES)})")
    return pairs


def calibration_pixels(calib, model) -> torch.Tensor:
    """`compress`'s calib argument for an image model -> (N, C, H, W): None (random-normal pixels), a folder of
    image files, or a list of preprocessed tensors, each (C, H, W) or (B, C, H, W)."""
    if calib is None:
        return random_pixels(model.config)
    if isinstance(calib, (str, os.PathLike)):
        folder = Path(calib)
        if not folder.is_dir():
            raise SlimformerError(f"calibration for an image model is a folder of images; not a folder: {folder}")
        return folder_pixels(folder, model.tokenizer)
    tensors = list(calib)
    if not tensors or not all(isinstance(t, torch.Tensor) and t.dim() in (3, 4) for t in tensors):
        raise SlimformerError("calibration for an image model: a folder of images, or a non-empty list of pixel "
                              "tensors (C, H, W) or (B, C, H, W)")
    return torch.cat([t if t.dim() == 4 else t[None] for t in tensors]).float()


def preprocessor(folder: Path, model_type: str):
    """What turns raw inputs into a model's forward kwargs: a text model's tokenizer; an image model's image
    processor (preprocessor_config.json), None when the folder has none (a model built in code, fed pixel_values)."""
    if adapter_for(model_type).modality != IMAGE:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)
    if not (folder / "preprocessor_config.json").is_file():
        return None
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(folder)


def not_for_images(model, step: str, why: str) -> None:
    """The one-line error of a step that has no meaning for an image model."""
    if is_image(model):
        raise StepNotApplicableError(f"{step} does not apply to an image model ({model.model_type}): {why}")

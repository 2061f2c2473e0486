"""The model's own evaluation transform, split into a uint8 geometric part and a normalization.

The geometric part (resize, crop — exactly the model's own, with its interpolation) runs
once per image at preprocessing time and yields uint8 CHW pixels that are stored. The
normalization (``x / 255``, minus mean, over std) runs on the inference device. Together
they compute what the reference transform computes, in the same order.

- timm models: the PIL stages of ``timm.data.create_transform`` built from the model's
  pretrained config (everything before ``ToTensor``).
- torchvision weights: the stages of ``weights.transforms()`` (``ImageClassification``):
  ``resize`` and ``center_crop`` on the PIL image, then ``pil_to_tensor``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for one model: the stored geometric part and the normalization."""

    input_size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str
    resize_crop: Callable[[Image.Image], np.ndarray]  # RGB PIL image -> uint8 (3, H, W)
    resize_to: int | None = None  # the shorter side the resize aims at (what JPEG draft mode may reduce to)
    jpeg_draft: bool = False  # decode JPEGs in draft mode (DCT-domain downscaling): faster, not exact
    channel_order: str = "rgb"  # "bgr": channels reversed before mean/std (Caffe-style models)
    # the resize's size as the transform gives it: (n,) = shorter side to n, (h, w) = exactly h x w
    resize_size: tuple[int, ...] | None = None
    # the same resize and crop as tensor ops on a uint8 (3, H, W) tensor on any device (what
    # ``device_decoding`` runs after decoding on a GPU); None when the transform has no tensor form.
    # Close to ``resize_crop``, not equal: torchvision's tensor resize rounds differently from PIL's.
    resize_crop_tensor: Callable[[torch.Tensor], torch.Tensor] | None = None

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of what the resize makes of a ``width x height`` image (the largest
        intermediate of the transform), computed as torchvision's ``resize`` does; unchanged when
        there is no resize. Checked before decoding, so a 1x60000 image cannot become 256x15360000."""
        size = self.resize_size or ((self.resize_to,) if self.resize_to else None)
        if not size:
            return width, height
        if len(size) == 2:
            return size[1], size[0]
        short, long = sorted((max(width, 1), max(height, 1)))
        new_short, new_long = size[0], int(size[0] * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def with_jpeg_draft(self) -> Preprocessing:
        """The same transform on JPEGs decoded in draft mode (a different fingerprint: other pixels)."""
        return dataclasses.replace(self, jpeg_draft=True, description=self.description + " +jpeg-draft")

    def with_channel_order(self, order: str) -> Preprocessing:
        """The same pixels fed to the model in ``order`` (``rgb`` or ``bgr``); mean/std are in that order."""
        return dataclasses.replace(self, channel_order=order)

    @property
    def draft_request(self) -> tuple[int, int] | None:
        """What ``decoding.load_rgb`` is asked for in draft mode, or None when decoding is exact."""
        if not self.jpeg_draft or not self.resize_to:
            return None
        return (self.resize_to, self.resize_to)

    @property
    def fingerprint(self) -> str:
        """Short stable id of the geometric part: stored pixels are only reused when it matches."""
        return hashlib.sha1(self.description.encode()).hexdigest()[:12]

    def normalize(self, batch_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 (N, 3, H, W) on any device -> normalized float, as ToTensor + Normalize do."""
        x = batch_uint8.to(torch.float32).div_(255.0)
        if self.channel_order == "bgr":
            x = x.flip(1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std).to(dtype)


def _pil_to_chw(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def from_timm_config(pretrained_cfg: dict) -> Preprocessing:
    """Preprocessing from a timm pretrained config (as ``timm.data.resolve_data_config`` reads it)."""
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms as T

    data_config = resolve_data_config(pretrained_cfg=pretrained_cfg)
    compose = create_transform(**data_config, is_training=False)
    stages = list(compose.transforms)
    cut = next(i for i, t in enumerate(stages) if "ToTensor" in type(t).__name__)
    geometric = T.Compose(stages[:cut])

    def resize_crop(image: Image.Image) -> np.ndarray:
        return _pil_to_chw(geometric(image))

    _, height, width = data_config["input_size"]
    resize = next((t.size for t in stages[:cut] if isinstance(t, T.Resize)), None)
    resize_to = min(resize) if isinstance(resize, (list, tuple)) else resize
    if resize is None:  # timm's own ResizeKeepRatio (or none): bounded as if its larger side were the shorter one
        keep_ratio = next((t.size for t in stages[:cut] if hasattr(t, "size") and "Resize" in type(t).__name__), None)
        resize_size = (max(keep_ratio),) if isinstance(keep_ratio, (list, tuple)) else keep_ratio and (keep_ratio,)
    else:
        resize_size = tuple(resize) if isinstance(resize, (list, tuple)) else (resize,)
    description = f"timm {data_config['input_size']} {data_config['interpolation']} " + " ".join(
        repr(t).replace("\n", "") for t in stages[:cut]
    )
    return Preprocessing(
        input_size=(height, width),
        mean=tuple(float(m) for m in data_config["mean"]),
        std=tuple(float(s) for s in data_config["std"]),
        description=description,
        resize_crop=resize_crop,
        resize_to=resize_to,
        resize_size=resize_size,
        # torchvision's Resize / CenterCrop take tensors too; timm's own stages (ResizeKeepRatio) may not
        resize_crop_tensor=geometric if all(type(t).__module__.startswith("torchvision") for t in stages[:cut]) else None,
    )


def from_torchvision_transform(transform) -> Preprocessing:
    """Preprocessing from a torchvision ``ImageClassification`` preset (``weights.transforms()``)."""
    from torchvision.transforms import functional as F

    resize_size, crop_size = list(transform.resize_size), list(transform.crop_size)
    interpolation, antialias = transform.interpolation, transform.antialias

    def geometric(image: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        """Resize and crop a PIL image, or a uint8 (3, H, W) tensor on any device (F takes both)."""
        resized = F.resize(image, resize_size, interpolation=interpolation, antialias=antialias)
        return F.center_crop(resized, crop_size)

    def resize_crop(image: Image.Image) -> np.ndarray:
        return _pil_to_chw(geometric(image))

    height, width = (crop_size * 2)[:2] if len(crop_size) == 1 else crop_size
    return Preprocessing(
        input_size=(height, width),
        mean=tuple(float(m) for m in transform.mean),
        std=tuple(float(s) for s in transform.std),
        description=f"torchvision resize={resize_size} crop={crop_size} {interpolation.value} antialias={antialias}",
        resize_crop=resize_crop,
        resize_to=min(resize_size),
        resize_size=tuple(resize_size),
        resize_crop_tensor=geometric,
    )

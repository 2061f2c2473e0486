"""JPEG decoding on the inference device, batched, with Pillow as the fallback.

``decode_batch`` hands every JPEG of a batch to ``torchvision.io.decode_jpeg`` in one call on
the device (nvJPEG on a GPU; libjpeg-turbo on CPU), EXIF orientation applied, and decodes with
Pillow (``decoding.load_rgb``, the exact path) whatever it cannot: PNGs and other formats,
CMYK or otherwise unsupported JPEGs, damaged files. ``resize_crop_batch`` then runs the model's
resize and crop as tensor ops on the device (``Preprocessing.resize_crop_tensor``).

Not exact: nvJPEG's IDCT and chroma upsampling differ from libjpeg's by a few levels per pixel,
and torchvision's tensor resize rounds differently from PIL's. Agreement with the Pillow path
(pixels and top-1) is measured by ``compare_with_pillow`` and reported by ``bench/gpu_check.py``;
the pipeline's default preprocessing stays on Pillow.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from inference_assets.core.errors import ConfigError
from inference_assets.core.images.decoding import describe_error, load_rgb
from inference_assets.core.images.preprocessing import Preprocessing

JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_MAGIC


@dataclass
class DecodedBatch:
    """Upright RGB uint8 (3, H, W) tensors on the device, in input order (None: not decodable at all)."""

    images: list[torch.Tensor | None]
    on_device: list[int] = field(default_factory=list)  # indices decoded by decode_jpeg
    by_pillow: list[int] = field(default_factory=list)  # indices decoded by the Pillow fallback
    failed: dict[int, str] = field(default_factory=dict)  # index -> one-line reason


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """decode_jpeg on all of ``data`` at once; when the batch call fails, one by one (one bad file
    fails a batched call), None for those that fail alone."""
    from torchvision.io import ImageReadMode, decode_jpeg

    options = {"mode": ImageReadMode.RGB, "device": device, "apply_exif_orientation": True}
    try:
        return list(decode_jpeg(data, **options))
    except RuntimeError:
        pass
    decoded: list[torch.Tensor | None] = []
    for one in data:
        try:
            decoded.append(decode_jpeg(one, **options))
        except RuntimeError:
            decoded.append(None)
    return decoded


def decode_batch(encoded: Sequence[bytes], device: torch.device | str) -> DecodedBatch:
    """Decode ``encoded`` images: JPEGs on ``device`` in one batched call, the rest with Pillow."""
    device = torch.device(device)
    images: list[torch.Tensor | None] = [None] * len(encoded)
    result = DecodedBatch(images)
    jpegs = [i for i, data in enumerate(encoded) if is_jpeg(data)]
    if jpegs:
        tensors = [torch.frombuffer(bytearray(encoded[i]), dtype=torch.uint8) for i in jpegs]
        for i, image in zip(jpegs, _decode_jpegs(tensors, device)):
            # nvJPEG hands back grayscale JPEGs as 1 channel on some versions despite mode=RGB
            if image is not None and image.shape[0] == 3:
                images[i] = image
                result.on_device.append(i)
    for i, data in enumerate(encoded):
        if images[i] is not None:
            continue
        try:
            rgb = load_rgb(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - a bad image is reported, never fatal to the batch
            result.failed[i] = describe_error(exc)
            continue
        images[i] = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()).to(device)
        result.by_pillow.append(i)
    return result


def resize_crop_batch(images: Sequence[torch.Tensor], preprocessing: Preprocessing) -> torch.Tensor:
    """The model's resize and crop of each image as tensor ops on its device: uint8 (N, 3, H, W)."""
    if preprocessing.resize_crop_tensor is None:
        raise ConfigError(
            f"this model's preprocessing ({preprocessing.description[:80]}) has no tensor form for decoding on the "
            "device: decode with Pillow (the default)"
        )
    return torch.stack([preprocessing.resize_crop_tensor(image) for image in images])


@dataclass(frozen=True)
class PixelAgreement:
    """The device path against Pillow's on the same images (after resize and crop)."""

    images: int
    decoded_on_device: int  # the rest by the Pillow fallback
    decoded_by_pillow: int
    mean_abs_difference: float  # in uint8 levels, over all pixels of all images
    max_abs_difference: int
    share_within_2_levels: float  # of all pixel values


def compare_with_pillow(encoded: Sequence[bytes], preprocessing: Preprocessing, device: torch.device | str) -> tuple[
    PixelAgreement, torch.Tensor, torch.Tensor
]:
    """Both paths on ``encoded``: (their agreement, device pixels, Pillow pixels), both uint8 (N, 3, H, W) on CPU.

    Images neither path can decode are left out of both.
    """
    decoded = decode_batch(encoded, device)
    keep = [i for i, image in enumerate(decoded.images) if image is not None]
    on_device = resize_crop_batch([decoded.images[i] for i in keep], preprocessing).cpu()
    pillow = torch.stack([torch.from_numpy(preprocessing.resize_crop(load_rgb(io.BytesIO(encoded[i])))) for i in keep])
    difference = (on_device.to(torch.int16) - pillow.to(torch.int16)).abs()
    agreement = PixelAgreement(
        images=len(keep),
        decoded_on_device=len(decoded.on_device),
        decoded_by_pillow=len(decoded.by_pillow),
        mean_abs_difference=float(difference.float().mean()) if len(keep) else 0.0,
        max_abs_difference=int(difference.max()) if len(keep) else 0,
        share_within_2_levels=float((difference <= 2).float().mean()) if len(keep) else 1.0,
    )
    return agreement, on_device, pillow

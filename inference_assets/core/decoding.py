"""Image bytes -> an upright RGB Pillow image, or a one-line reason why not.

- The first frame of animated images; EXIF orientation applied.
- 16-bit and 32-bit grayscale are scaled to 8 bits (Pillow's own ``convert("RGB")`` clips
  them to white); float images are clipped to [0, 255].
- Every other mode (L, P with or without transparency, RGBA, LA, CMYK, 1, ...) goes through
  Pillow's ``convert("RGB")``, exactly as the models' reference pipelines do.
- Decompression-bomb guard: an image whose width x height exceeds ``max_pixels`` is refused
  before its pixels are decoded (``None`` disables the guard).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from .local_files import local_path

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's default Image.MAX_IMAGE_PIXELS (about 0.25 GB of RGB)


class ImageTooLargeError(ValueError):
    """The image has more pixels than the configured decompression-bomb limit."""


_ORIENTATION = 0x0112


def load_rgb(
    uri: str | Path | bytes | BinaryIO, max_pixels: int | None = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None
) -> Image.Image:
    """Decode an image (a local path, a local manifest ``uri``, or an open binary file such as
    a source's bytes) into an upright RGB image.

    ``draft``: for a JPEG, let the decoder downscale by 1/2, 1/4 or 1/8 in the DCT domain while
    both sides stay at least this size (Pillow's draft mode). Much faster for large photos, but
    not the exact pixels the reference transform sees: opt-in.
    """
    if hasattr(uri, "read"):
        opened = contextlib.nullcontext(uri)
    else:
        opened = open(local_path(uri) if isinstance(uri, str) else uri, "rb")
    with warnings.catch_warnings(), opened as fh:
        # our own limit below is the guard; Pillow's (2x its own default) stays as a backstop
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", message="Palette images with Transparency")
        image = Image.open(fh)
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLargeError(
                f"{width}x{height} = {width * height} pixels exceeds the decompression-bomb limit of "
                f"{max_pixels} (raise max_image_pixels to allow it)"
            )
        image.seek(0)
        if draft is not None and image.format == "JPEG":
            image.draft("RGB", draft)
        image.load()  # decoded here, while the file is open; no copy is made below unless needed
        if image.getexif().get(_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        return image if image.mode == "RGB" else to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16") or image.mode == "I":
        array = np.asarray(image).astype(np.int64)
        scaled = np.clip(array, 0, 65535) >> 8
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a failed image."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        message = exc.strerror  # e.g. "No such file or directory", without repeating the path
    else:
        message = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {message}"[:500]

"""Image bytes -> an upright RGB Pillow image."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file, apply its EXIF orientation, and convert it to RGB.

    Pillow's decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) stays in force.
    """
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image)
        return upright.convert("RGB")


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a failed image."""
    message = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {message}"[:500]

"""Image bytes -> an upright RGB Pillow image, or a one-line reason why not.

- The first frame of animated images; EXIF orientation applied.
- 16-bit and 32-bit grayscale are scaled to 8 bits (Pillow's own ``convert("RGB")`` clips
  them to white); float images are clipped to [0, 255].
- Every other mode (L, P with or without transparency, RGBA, LA, CMYK, 1, ...) goes through
  Pillow's ``convert("RGB")``, exactly as the models' reference pipelines do.
- Decompression-bomb guard: an image whose width x height exceeds ``max_pixels`` is refused
  before its pixels are decoded (``None`` disables the guard). So is an image whose model
  resize would exceed ``max_pixels`` (``resized_size``: the size the model's resize gives a
  ``width x height`` image; e.g. 1x60000 with the shorter side to 256 is 256x15360000), so a
  tiny file of an extreme aspect ratio cannot allocate gigabytes either.
  Memory bound per decoding thread: about 12 bytes x ``max_pixels`` (Pillow keeps RGB, RGBA
  and CMYK at 4 bytes a pixel: the decoded image, one converted/rotated copy or the resize's
  first pass, and the resize's output, each at most ``max_pixels``), about 1 GiB at the default;
  32-bit integer or float images up to about 16 bytes.
- Reasons (``describe_error``) never contain the image's path, uri or a Python object address,
  so the same problem in different files gives the same reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from inference_assets.core.sources.local_files import local_path

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's default Image.MAX_IMAGE_PIXELS (about 0.25 GB of RGB)


class ImageTooLargeError(ValueError):
    """The image, or its model resize, has more pixels than the configured decompression-bomb limit."""


_ORIENTATION = 0x0112


def check_size(
    width: int, height: int, max_pixels: int | None, resized_size: Callable[[int, int], tuple[int, int]] | None = None
) -> None:
    """Raise ImageTooLargeError when a ``width x height`` image, or what the model's resize makes
    of it, has more than ``max_pixels`` pixels (checked from the header, before any allocation)."""
    if max_pixels is None:
        return
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{width}x{height} = {width * height} pixels exceeds the decompression-bomb limit of "
            f"{max_pixels} (raise max_image_pixels to allow it)"
        )
    if resized_size is not None:
        new_width, new_height = resized_size(width, height)
        if new_width * new_height > max_pixels:
            raise ImageTooLargeError(
                f"{width}x{height} would be resized to {new_width}x{new_height} = {new_width * new_height} pixels, "
                f"over the limit of {max_pixels} (raise max_image_pixels to allow it)"
            )


def load_rgb(
    uri: str | Path | bytes | BinaryIO,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft: tuple[int, int] | None = None,
    resized_size: Callable[[int, int], tuple[int, int]] | None = None,
) -> Image.Image:
    """Decode an image (a local path, a local manifest ``uri``, or an open binary file such as
    a source's bytes) into an upright RGB image.

    ``draft``: for a JPEG, let the decoder downscale by 1/2, 1/4 or 1/8 in the DCT domain while
    both sides stay at least this size (Pillow's draft mode). Much faster for large photos, but
    not the exact pixels the reference transform sees: opt-in.

    ``resized_size(width, height)``: the size the model's resize will give the image; an image
    whose resize would exceed ``max_pixels`` is refused too (EXIF rotation swaps the sides, which
    changes neither product).
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
        check_size(*image.size, max_pixels, resized_size)
        image.seek(0)
        if draft is not None and image.format == "JPEG":
            image.draft("RGB", draft)
        image.load()  # decoded here, while the file is open; no copy is made below unless needed
        if image.getexif().get(_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        return image if image.mode == "RGB" else to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16") or image.mode == "I":
        # in the image's own integer type (not int64: 8 bytes a pixel), same values: clip to 0..65535, top 8 bits
        array = np.asarray(image)
        if array.dtype.kind == "i":
            array = np.clip(array, 0, min(65535, np.iinfo(array.dtype).max))
        scaled = (array >> 8).astype(np.uint8)
        del array
        return Image.fromarray(scaled).convert("RGB")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


_OBJECT_REPR = re.compile(r"<[^<>]*?(?:\bname=|\bobject at 0x)[^<>]*>")  # <_io.BufferedReader name='/x'>
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
_ADDRESS = re.compile(r"\s*\bat 0x[0-9a-fA-F]+\b|\b0x[0-9a-fA-F]{8,}\b")
_NOT_PROCESSED = re.compile(r"\s*\(\d+ bytes not processed\)")  # Pillow's truncated-file count differs per file
THE_FILE = "the file"


def describe_error(exc: BaseException, uri: str | None = None) -> str:
    """A one-line reason for a failed image, without its path or uri (``uri``: the image's, if known),
    so that the same problem gives the same reason in every file."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        message = exc.strerror  # e.g. "No such file or directory", without repeating the path
    else:
        message = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {without_locations(message, uri)}"[:500]


def without_locations(message: str, uri: str | None = None) -> str:
    """``message`` with file object reprs, quoted paths and the image's uri replaced by "the file"."""
    locations = set()
    if uri:
        path = local_path(uri)
        path = os.fsdecode(path) if isinstance(path, bytes) else path
        locations = {uri, path} - {""}
    message = _OBJECT_REPR.sub(THE_FILE, message)

    def quoted(match: re.Match) -> str:
        text = match.group()[1:-1]
        if "/" in text or "\\" in text or any(
            text and (location.endswith(text) or text in location.split("/")) for location in locations
        ):
            return THE_FILE
        return match.group()

    message = _QUOTED.sub(quoted, message)
    for location in sorted(locations, key=len, reverse=True):
        message = message.replace(location, THE_FILE)
    message = message.replace(f"file {THE_FILE}", "file")  # "cannot identify image file", not "... file the file"
    return _NOT_PROCESSED.sub("", _ADDRESS.sub("", message))

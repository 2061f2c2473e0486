"""Small PNG thumbnails of source images, as ``data:`` URIs for Markdown metadata and the report."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterable

from PIL import Image

from inference_assets.core.images.decoding import load_rgb
from inference_assets.core.reporting.markdown import Markdown, image


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail_png(image: object, size: int = 96) -> bytes:
    """A PNG no larger than ``size`` x ``size`` of an image (a path or a binary file), upright.

    A JPEG is decoded in draft mode (DCT-domain downscaling) to no less than twice ``size`` on each
    side, as Pillow's own ``Image.thumbnail`` does (``reducing_gap=2``): a large photo's thumbnail
    costs a fraction of its full decode, and looks the same at this size."""
    picture = load_rgb(image, draft=(2 * size, 2 * size))
    picture.thumbnail((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()


def thumbnail_uri(opener: Callable[[str], object], uri: str, size: int = 96) -> str | None:
    """A ``data:`` URI of the image at ``uri`` opened by a source's ``opener``; None if it cannot be read."""
    try:
        return png_data_uri(thumbnail_png(opener(uri), size))
    except Exception:  # a failed image has no picture; its failure row says why
        return None


def markdown_image(data_uri: str | None, alt: str) -> Markdown:
    """A thumbnail for Markdown metadata, its alt text (a file name) escaped (see :mod:`.markdown`)."""
    return image(data_uri, alt)


def thumbnails_markdown(
    opener: Callable[[str], object], images: Iterable[tuple[str, str]], count: int, size: int = 96
) -> str:
    """Markdown of the first ``count`` of ``images`` ((uri, alt text)) that can be read, as ``size``
    thumbnails separated by spaces; images are opened only until ``count`` have decoded, and the
    text is empty when none does."""
    pictures = []
    for uri, alt in images:
        picture = thumbnail_uri(opener, uri, size)  # None for an image that does not decode
        if picture is not None:
            pictures.append(markdown_image(picture, alt))
        if len(pictures) == count:
            break
    return " ".join(pictures)

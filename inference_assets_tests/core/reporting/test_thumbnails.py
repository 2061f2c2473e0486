"""Thumbnails for metadata and the report: upright, at most the asked size, and a large JPEG is
decoded at a reduced scale (draft mode) rather than in full."""

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageOps, JpegImagePlugin

from inference_assets.core.reporting.thumbnails import thumbnail_png, thumbnails_markdown

from inference_assets_tests.support.environment import SAMPLE_IMAGES

pytestmark = pytest.mark.fast


def _large_rotated_jpeg(path) -> Image.Image:
    """A real photo enlarged to 3000 x 2000, stored sideways with EXIF orientation 6; returns the upright picture."""
    upright = Image.open(SAMPLE_IMAGES / "espresso" / "coffee.jpg").convert("RGB").resize((3000, 2000), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=92)
    return upright


def test_a_large_jpeg_thumbnail_is_drafted_upright_and_looks_like_the_full_decode(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    _large_rotated_jpeg(path)
    scales = []
    original = JpegImagePlugin.JpegImageFile.draft

    def recording_draft(self, mode, size):
        before = self.size
        result = original(self, mode, size)
        scales.append(before[0] / self.size[0])  # the file's width / the width it will be decoded at
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
    thumb = Image.open(io.BytesIO(thumbnail_png(str(path), 96)))
    assert scales and scales[0] >= 4, scales  # decoded at 1/4 (or less) of 2000 x 3000, not in full

    full = ImageOps.exif_transpose(Image.open(path)).convert("RGB")  # the whole picture, decoded in full
    full.thumbnail((96, 96), Image.Resampling.BICUBIC, reducing_gap=None)
    assert thumb.size == full.size == (96, 64)  # upright (landscape): the EXIF rotation is applied
    difference = np.abs(np.asarray(thumb, dtype=np.int16) - np.asarray(full, dtype=np.int16))
    assert difference.mean() < 2.0, difference.mean()  # same picture at this size


def test_small_images_and_pngs_keep_their_thumbnail(tmp_path):
    png = Image.open(io.BytesIO(thumbnail_png(str(SAMPLE_IMAGES / "tripod" / "camera.png"), 96)))
    assert max(png.size) == 96
    tiny = tmp_path / "tiny.jpg"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tiny)
    small = Image.open(io.BytesIO(thumbnail_png(str(tiny), 96)))
    assert small.size == (40, 30)  # never enlarged


def test_thumbnails_markdown_skips_images_that_do_not_decode_and_stops_at_the_count(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    images = [(str(tmp_path / "broken.jpg"), "broken.jpg"), (str(SAMPLE_IMAGES / "astronaut.jpg"), "astronaut.jpg"),
              (str(SAMPLE_IMAGES / "tripod" / "camera.png"), "camera.png"),
              (str(SAMPLE_IMAGES / "espresso" / "coffee.jpg"), "coffee.jpg")]
    opened = []

    def opener(uri):
        opened.append(uri)
        return uri

    text = thumbnails_markdown(opener, images, count=2, size=32)
    pictures = text.split(" ")
    assert [picture.split("]")[0] for picture in pictures] == ["![astronaut.jpg", "![camera.png"], text
    assert all(picture.endswith(")") and "](data:image/png;base64," in picture for picture in pictures)
    assert opened == [uri for uri, _ in images[:3]]  # coffee.jpg is never opened
    thumb = Image.open(io.BytesIO(base64.b64decode(pictures[0].split("base64,")[1][:-1])))
    assert max(thumb.size) == 32
    assert thumbnails_markdown(opener, images[:1], count=2, size=32) == ""

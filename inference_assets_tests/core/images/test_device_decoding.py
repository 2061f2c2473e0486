"""JPEG decoding on the inference device (``core/images/device_decoding.py``), here on CPU with torchvision's
decoder: the same code a GPU runs with nvJPEG (``test_cuda.py`` checks it there)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from inference_assets.core.errors import ConfigError
from inference_assets.core.images.decoding import load_rgb
from inference_assets.core.images.device_decoding import compare_with_pillow, decode_batch, resize_crop_batch
from inference_assets.core.models.loading import ModelSpec, resolve_preprocessing

from inference_assets_tests.support.environment import SAMPLE_IMAGES

pytestmark = pytest.mark.fast


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _photo() -> Image.Image:
    return Image.open(SAMPLE_IMAGES / "espresso" / "coffee.jpg").convert("RGB")


def test_jpegs_on_the_device_the_rest_by_pillow_bad_bytes_reported():
    photo = _photo()
    rotated = Image.Exif()
    rotated[0x0112] = 6  # EXIF orientation: rotate 90° clockwise to display
    encoded = [
        _encoded(photo, "JPEG", quality=90),
        _encoded(photo, "PNG"),
        _encoded(photo.convert("L"), "JPEG"),
        _encoded(photo, "JPEG", exif=rotated.tobytes()),
        b"\xff\xd8\xff\xe0 not really a JPEG",
    ]
    decoded = decode_batch(encoded, "cpu")
    assert decoded.on_device == [0, 2, 3] and decoded.by_pillow == [1]
    assert list(decoded.failed) == [4] and decoded.failed[4] == "OSError: Truncated File Read"  # as Pillow says it
    assert "0x" not in decoded.failed[4]  # one-line reason without an object address
    for i in (0, 1, 2, 3):
        pillow = torch.from_numpy(np.asarray(load_rgb(io.BytesIO(encoded[i]))).transpose(2, 0, 1).copy())
        image = decoded.images[i]
        assert image.dtype == torch.uint8 and image.shape == pillow.shape  # RGB, upright (EXIF applied)
        assert (image.int() - pillow.int()).abs().float().mean() < 1.0


def test_resize_and_crop_on_tensors_track_the_pillow_transform():
    preprocessing = resolve_preprocessing(ModelSpec())
    files = sorted(p for p in SAMPLE_IMAGES.rglob("*") if p.suffix in (".jpg", ".png"))
    agreement, device_pixels, pillow_pixels = compare_with_pillow([p.read_bytes() for p in files], preprocessing, "cpu")
    assert device_pixels.shape == pillow_pixels.shape == (len(files), 3, 224, 224)
    assert agreement.images == len(files)
    assert agreement.mean_abs_difference < 0.5 and agreement.share_within_2_levels > 0.999  # close, not equal


def test_a_transform_without_a_tensor_form_is_a_one_line_error():
    import dataclasses

    preprocessing = dataclasses.replace(resolve_preprocessing(ModelSpec()), resize_crop_tensor=None)
    with pytest.raises(ConfigError, match="no tensor form .* decode with Pillow"):
        resize_crop_batch([torch.zeros((3, 10, 10), dtype=torch.uint8)], preprocessing)

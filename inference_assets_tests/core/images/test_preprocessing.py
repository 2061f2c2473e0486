"""The stored uint8 pixels + on-device normalization equal the model's own reference transform."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torchvision.models import ResNet18_Weights

from inference_assets.core.images.decoding import load_rgb
from inference_assets.core.images.preprocessing import from_torchvision_transform
from inference_assets.core.models.loading import ModelSpec, resolve_preprocessing

from inference_assets_tests.support.environment import SAMPLE_IMAGES

pytestmark = pytest.mark.fast  # the whole module is in `make test-fast`


PHOTOS = sorted(p for p in SAMPLE_IMAGES.rglob("*") if p.is_file())


def _ours(preprocessing, path):
    pixels = preprocessing.resize_crop(load_rgb(path))
    assert pixels.dtype == np.uint8 and pixels.shape == (3, *preprocessing.input_size)
    return preprocessing.normalize(torch.from_numpy(pixels)[None])[0]


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
def test_timm_preprocessing_matches_the_models_own_transform(path):
    preprocessing = resolve_preprocessing(ModelSpec())
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    reference = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    expected = reference(Image.open(path).convert("RGB"))
    assert torch.equal(_ours(preprocessing, path), expected)


@pytest.mark.parametrize("path", PHOTOS[:3], ids=lambda p: p.name)
def test_torchvision_preprocessing_matches_weights_transforms(path):
    transform = ResNet18_Weights.IMAGENET1K_V1.transforms()
    preprocessing = from_torchvision_transform(transform)
    expected = transform(Image.open(path).convert("RGB"))
    assert torch.equal(_ours(preprocessing, path), expected)


def test_default_model_preprocessing_is_bicubic_crop_0875_mean_std_half():
    preprocessing = resolve_preprocessing(ModelSpec())
    assert preprocessing.input_size == (224, 224)
    assert preprocessing.mean == (0.5, 0.5, 0.5) and preprocessing.std == (0.5, 0.5, 0.5)
    assert "bicubic" in preprocessing.description and "size=256" in preprocessing.description


def test_exif_orientation_is_applied(tmp_path):
    upright = Image.open(SAMPLE_IMAGES / "espresso" / "coffee.jpg")
    rotated_path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored pixels are rotated 90 degrees CCW
    upright.transpose(Image.Transpose.ROTATE_90).save(rotated_path, exif=exif, quality=95)
    loaded = load_rgb(rotated_path)
    assert loaded.size == upright.size and loaded.mode == "RGB"

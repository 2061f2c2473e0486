"""Safe defaults: bomb guard on, weights without pickle code, UI on loopback, no escaping symlinks."""

import subprocess

import pytest
from PIL import Image

from inference_assets.core.images.decoding import DEFAULT_MAX_PIXELS, ImageTooLargeError, load_rgb
from inference_assets.resources import ImageSourceResource, ObjectStoreResource, PreprocessingResource

from inference_assets_tests.support.environment import PROJECT_ROOT

pytestmark = pytest.mark.fast  # the whole module is in `make test-fast`


def test_decompression_bomb_limit_is_on_by_default(tmp_path):
    assert PreprocessingResource().max_image_pixels == DEFAULT_MAX_PIXELS == 89_478_485
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10_000, 9_000)).save(bomb)  # 90 Mpx, a few kB on disk
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageTooLargeError, match="exceeds the decompression-bomb limit of 89478485"):
        load_rgb(bomb)


def test_external_symlinks_are_not_followed_by_default():
    assert ImageSourceResource(image_root=".", object_store=ObjectStoreResource()).follow_external_symlinks is False


def test_the_dagster_ui_binds_to_loopback():
    commands = subprocess.run(["make", "-n", "dev"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout
    line = next(l for l in commands.splitlines() if "dagster dev" in l)
    assert "-h 127.0.0.1" in line

"""JPEG draft mode (core/images/decoding.py, Preprocessing.with_jpeg_draft): large JPEGs downscaled in
the decoder and nothing else, their pixels stored apart from the exact ones and their predictions
never mixed with them.

Speed itself is measured by ``make bench``, never here; these check that the option does what it
says and changes what is computed only as documented.
"""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from inference_assets.core.collection.manifest import build_manifest, read_manifest
from inference_assets.core.images.decoding import load_rgb
from inference_assets.core.images.pixel_store import read_pixel_shard, write_pixel_shard
from inference_assets.core.inference.batches import InferenceSettings, predict_shard
from inference_assets.core.models.loading import ModelSpec, resolve_preprocessing
from inference_assets.core.storage.results import read_reusable

CPU = torch.device("cpu")


@pytest.fixture
def large_jpeg(image_root, tmp_path) -> Path:
    path = tmp_path / "large.jpg"
    Image.open(image_root / "espresso" / "coffee.jpg").convert("RGB").resize((2000, 1500)).save(path, quality=90)
    return path


@pytest.mark.fast
def test_draft_mode_downscales_large_jpegs_in_the_decoder_and_nothing_else(large_jpeg, image_root):
    assert load_rgb(large_jpeg).size == (2000, 1500)  # exact by default
    drafted = load_rgb(large_jpeg, draft=(256, 256))
    assert drafted.size == (500, 375) and drafted.mode == "RGB"  # 1/4: the smallest DCT scale keeping 256
    png = image_root / "tabby" / "chelsea.png"
    assert load_rgb(png, draft=(256, 256)).size == load_rgb(png).size  # not a JPEG: untouched
    small = image_root / "espresso" / "coffee.jpg"  # 400x600: halving would go below 256... on one side
    assert min(load_rgb(small, draft=(256, 256)).size) >= 256


def test_draft_pixels_are_stored_apart_and_predictions_are_not_mixed(image_root, tmp_path, classifier):
    exact = classifier.preprocessing
    draft = exact.with_jpeg_draft()
    assert draft.fingerprint != exact.fingerprint and draft.draft_request == (256, 256)
    assert exact.draft_request is None
    assert resolve_preprocessing(ModelSpec("resnet50", "IMAGENET1K_V2")).resize_to == 232

    build_manifest(image_root, tmp_path / "m.parquet", num_partitions=1)
    entries = read_manifest(tmp_path / "m.parquet")
    settings = InferenceSettings(CPU)
    out = tmp_path / "results.parquet"
    for preprocessing in (exact, draft):
        shard_dir = tmp_path / "px" / preprocessing.fingerprint
        write_pixel_shard(entries, preprocessing, shard_dir, "shard-00", 2)
        shard = read_pixel_shard(shard_dir, "shard-00")
        assert shard.preprocessing == preprocessing.fingerprint
        summary = predict_shard(classifier, shard, settings, out, "shard-00")
        assert summary.predicted == 6 and summary.reused == 0  # switching decode mode recomputes everything
        assert read_reusable(out, "fp32", 5, preprocessing.fingerprint) is not None
    assert read_reusable(out, "fp32", 5, exact.fingerprint) is None
    known = {r["uri"].rsplit("/", 1)[-1]: r["class_label"] for r in pq.read_table(out).to_pylist()}
    assert known["coffee.jpg"] == "espresso" and known["camera.png"] == "tripod"

"""The speed options: the CPU allocator setting, progress logs, JPEG draft mode and torch.compile.

Speed itself is measured by ``make bench``, never here; these tests check that each option
does what it says and never changes what is computed unless it is documented to.
"""

import ctypes
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from inference_assets.core.collection.manifest import build_manifest, read_manifest
from inference_assets.core.images.decoding import load_rgb
from inference_assets.core.images.pixel_store import read_pixel_shard, write_pixel_shard
from inference_assets.core.inference.batches import InferenceSettings, classify, predict_shard
from inference_assets.core.models.loading import ModelSpec, resolve_preprocessing
from inference_assets.core.storage.results import read_reusable
from inference_assets.core.system.progress import Progress

CPU = torch.device("cpu")

# --- allocator -----------------------------------------------------------------------------

MALLINFO_PROBE = """
import ctypes, sys
from inference_assets.core.system.allocator import keep_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
if sys.argv[1] == "tuned":
    assert keep_freed_memory() is True and keep_freed_memory() is True  # idempotent
before = libc.mallinfo2().hblkhd  # bytes in mmapped blocks: what munmap gives back on free
block = libc.malloc(64 << 20)
print(libc.mallinfo2().hblkhd - before)
libc.free(block)
"""


def _has_mallinfo2() -> bool:
    try:
        ctypes.CDLL(None).mallinfo2  # noqa: B018
        return True
    except AttributeError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _has_mallinfo2(), reason="glibc only")
@pytest.mark.fast
def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    def mmapped_bytes(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", MALLINFO_PROBE, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    assert mmapped_bytes("default") >= 64 << 20  # glibc's default: a 64 MiB block is its own mapping
    assert mmapped_bytes("tuned") == 0  # tuned: from the heap, so freeing it keeps the pages for the next batch


# --- progress ------------------------------------------------------------------------------


@pytest.mark.fast
def test_progress_logs_at_most_every_interval_with_rate_and_eta():
    now = [100.0]
    lines: list[str] = []
    progress = Progress("predictions", 1000, lines.append, every=5.0, clock=lambda: now[0])
    for _ in range(10):  # 100 images in 4 s: nothing yet
        now[0] += 0.4
        progress.advance(10)
    assert lines == []
    now[0] += 1.0  # 5 s in, 110 done
    progress.advance(10)
    assert lines == ["predictions: 110/1000 images (11 %), 22.0 img/s, ETA 40s"]
    progress.advance(890)  # within the interval: not logged again
    assert len(lines) == 1
    assert progress.status() == "predictions: 1000/1000 images (100 %), 200.0 img/s, ETA 0s"
    progress.close()  # no display installed (see test_progress_display.py): nothing to end, nothing logged
    assert len(lines) == 1

    listing = Progress("manifest", None, lines.append, every=5.0, clock=lambda: now[0])  # total unknown
    now[0] += 6.0
    listing.advance(300)
    assert lines[-1] == "manifest: 300 images, 50.0 img/s"


@pytest.mark.fast
def test_partition_functions_report_every_image(image_root, tmp_path, classifier):
    listed: list[int] = []
    build_manifest(image_root, tmp_path / "m.parquet", num_partitions=1, progress=listed.append)
    assert sum(listed) == 6
    entries = read_manifest(tmp_path / "m.parquet")
    counts: list[int] = []
    write_pixel_shard(entries, classifier.preprocessing, tmp_path / "px", "shard-00", 2, progress=counts.append)
    assert sum(counts) == entries.num_rows == 6
    shard = read_pixel_shard(tmp_path / "px", "shard-00")
    counts.clear()
    predict_shard(classifier, shard, InferenceSettings(CPU, batch_size=4), tmp_path / "r.parquet", "shard-00",
                  progress=counts.append)
    assert counts == [0, 4, 2]  # nothing reused, then per batch
    counts.clear()
    predict_shard(classifier, shard, InferenceSettings(CPU, batch_size=4), tmp_path / "r.parquet", "shard-00",
                  progress=counts.append)
    assert counts == [6]  # everything up to date


# --- JPEG draft mode -------------------------------------------------------------------------


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


# --- torch.compile ---------------------------------------------------------------------------


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.conv(x).relu().mean(dim=(2, 3)))


def test_compiled_model_gives_the_eager_results_and_pads_the_last_batch(image_root, tmp_path, classifier):
    build_manifest(image_root, tmp_path / "m.parquet", num_partitions=1)
    write_pixel_shard(read_manifest(tmp_path / "m.parquet"), classifier.preprocessing, tmp_path / "px", "shard-00", 2)
    shard = read_pixel_shard(tmp_path / "px", "shard-00")
    ten_classes = dataclasses.replace(classifier.info, labels=tuple(str(i) for i in range(10)))
    tiny = dataclasses.replace(classifier, module=TinyNet().eval(), info=ten_classes)
    rows = shard.ok_rows  # 6 images, batch 4: the last batch has 2 and is padded to 4

    def run(compile_: bool):
        settings = InferenceSettings(CPU, batch_size=4, top_k=3, compile=compile_)
        parts = list(classify(tiny, shard, rows, settings))
        return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])

    eager_probs, eager_indices = run(False)
    compiled_probs, compiled_indices = run(True)
    assert compiled_probs.shape == (6, 3)
    assert (compiled_indices == eager_indices).all()
    assert np.allclose(compiled_probs, eager_probs, atol=1e-5)


# --- automatic CUDA batch size ------------------------------------------------------------------


@pytest.mark.fast
def test_automatic_batch_size_is_the_largest_power_of_two_that_fits_with_headroom():
    from inference_assets.core.inference.batch_size import pick_batch_size

    gib = 1 << 30
    # a model whose forward pass needs 1 GiB + 50 MiB per image, on a 40 GiB device: 80 % is 32 GiB
    asked: list[int] = []

    def peak(n: int) -> int | None:
        asked.append(n)
        need = gib + n * (50 << 20)
        return None if need > 40 * gib else need

    assert pick_batch_size(peak, 40 * gib) == 512  # 512 needs 26 GiB; 1024 would need 51 GiB
    assert asked == [32, 64, 128, 256, 512]  # stops before trying a size that cannot fit
    assert pick_batch_size(peak, 400 * gib, cap=256) == 256
    # out of memory already at the start: halves down until one fits
    assert pick_batch_size(lambda n: None if n > 6 else n * gib, 10 * gib) == 4
    assert pick_batch_size(lambda n: None, 10 * gib) == 1

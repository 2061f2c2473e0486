"""Progress logs (core/system/progress.py): at most one line per interval, with rate and ETA; and the
partition functions that report every image to them. The live display: test_progress_display.py."""

import pytest
import torch

from inference_assets.core.collection.manifest import build_manifest, read_manifest
from inference_assets.core.images.pixel_store import read_pixel_shard, write_pixel_shard
from inference_assets.core.inference.batches import InferenceSettings, predict_shard
from inference_assets.core.system.progress import Progress

CPU = torch.device("cpu")


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

"""A step's partitions preprocessed into their pixel shards through a real work area (with a mirror)."""

import numpy as np
import pytest

from inference_assets.core.collection.manifest import build_manifest, read_manifest, read_manifest_partitions
from inference_assets.core.collection.partitioning import partition_keys
from inference_assets.core.images.partitions import preprocess_partitions
from inference_assets.core.images.pixel_store import read_pixel_shard
from inference_assets.core.models.loading import ModelSpec, resolve_preprocessing
from inference_assets.core.storage.layout import Layout
from inference_assets.core.storage.shared_storage import SharedStorage
from inference_assets.core.storage.work_area import WorkArea

pytestmark = pytest.mark.fast


@pytest.fixture
def manifest_path(image_root, tmp_path):
    (image_root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    path = tmp_path / "m.parquet"
    build_manifest(image_root, path, num_partitions=16)  # 7 images over 16 partitions: some stay empty
    return path


def test_the_manifest_is_split_into_the_partitions_asked_for_in_their_order(manifest_path):
    manifest = read_manifest(manifest_path)
    keys = list(reversed(partition_keys(16)))
    partitions = read_manifest_partitions(manifest_path, keys)
    assert [key for key, _ in partitions] == keys
    assert sum(entries.num_rows for _, entries in partitions) == manifest.num_rows == 7
    for key, entries in partitions:
        assert set(entries.column("partition").to_pylist()) <= {key}
        assert entries.num_rows == read_manifest(manifest_path, partition=key).num_rows
    assert read_manifest_partitions(manifest_path, ["shard-00"])[0][0] == "shard-00"


def test_a_steps_partitions_are_preprocessed_into_their_shards_with_totals_and_a_line_each(manifest_path, tmp_path):
    work = tmp_path / "work"
    area = WorkArea(Layout(work), SharedStorage(str(tmp_path / "mirror"), work))
    preprocessing = resolve_preprocessing(ModelSpec())
    keys = partition_keys(16)
    partitions = read_manifest_partitions(manifest_path, keys)
    lines, warnings, done = [], [], []

    first = preprocess_partitions(partitions, preprocessing, area, workers=2, warn=warnings.append,
                                  info=lambda line, shown: lines.append((line, shown)), progress=done.append)
    assert (first.images, first.ok, first.failed, first.reused, first.decoded) == (7, 6, 1, 0, 7)
    assert list(first.summaries) == keys and sum(done) == 7 and warnings == []
    assert [shown for _, shown in lines] == [entries.num_rows > 0 for _, entries in partitions]
    busy = next(key for key, entries in partitions if entries.num_rows)
    busy_line = next(line for line, _ in lines if line.startswith(f"{busy}: "))
    assert f"{first.summaries[busy].decoded} decoded (" in busy_line and " img/s)" in busy_line
    for key, entries in partitions:  # every shard written, and published to the mirror
        shard_dir = area.pixel_dir(preprocessing.fingerprint)
        assert read_pixel_shard(shard_dir, key).index.column("image_id").to_pylist() == (
            entries.column("image_id").to_pylist()
        )
        mirrored = tmp_path / "mirror" / shard_dir.relative_to(work) / f"{key}.parquet"
        assert mirrored.exists(), mirrored

    again = preprocess_partitions(partitions, preprocessing, area, workers=2)
    assert (again.images, again.ok, again.reused, again.decoded) == (7, 6, 6, 1)  # only the failed one again
    forced = preprocess_partitions(partitions, preprocessing, area, workers=2, reuse=False)
    assert (forced.reused, forced.decoded) == (0, 7)


def test_a_shards_warnings_are_passed_on_with_its_partition(manifest_path, tmp_path):
    area = WorkArea(Layout(tmp_path / "work"), SharedStorage(None, tmp_path / "work"))
    preprocessing = resolve_preprocessing(ModelSpec())
    partitions = [(key, entries) for key, entries in read_manifest_partitions(manifest_path, partition_keys(16))
                  if entries.num_rows]
    preprocess_partitions(partitions, preprocessing, area, workers=2)
    key = partitions[0][0]
    shard = read_pixel_shard(area.pixel_dir(preprocessing.fingerprint), key)
    row = int(shard.ok_rows[0])
    row_bytes = int(np.prod(shard.shape[1:]))
    with open(shard.path, "r+b") as fh:  # one stored row damaged in place, the file's size unchanged
        fh.seek(shard.offset + row * row_bytes)
        data = fh.read(64)
        fh.seek(shard.offset + row * row_bytes)
        fh.write(bytes(b ^ 0xFF for b in data))
    warnings = []
    outcome = preprocess_partitions(partitions, preprocessing, area, workers=2, warn=warnings.append)
    assert len(warnings) == 1 and warnings[0].startswith(f"{key}: ") and shard.path.name in warnings[0], warnings
    assert outcome.summaries[key].decoded >= 1

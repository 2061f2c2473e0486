import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from inference_assets.core.collection.manifest import build_manifest, read_manifest
from inference_assets.core.models.loading import ModelSpec, resolve_preprocessing
from inference_assets.core.images.pixel_store import (
    INDEX_SCHEMA,
    STATUS_FAILED,
    STATUS_OK,
    read_pixel_shard,
    write_pixel_shard,
)


pytestmark = pytest.mark.fast  # the whole module is in `make test-fast`


@pytest.fixture
def manifest(image_root, tmp_path):
    (image_root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    path = tmp_path / "m.parquet"
    build_manifest(image_root, path, num_partitions=1)
    return read_manifest(path)


def test_shard_round_trip_keeps_order_pixels_and_failures(manifest, tmp_path):
    preprocessing = resolve_preprocessing(ModelSpec())
    summary = write_pixel_shard(manifest, preprocessing, tmp_path / "px", "shard-00", workers=2)
    assert (summary.images, summary.ok, summary.failed) == (7, 6, 1)
    shard = read_pixel_shard(tmp_path / "px", "shard-00")
    assert shard.index.column("image_id").to_pylist() == manifest.column("image_id").to_pylist()
    assert isinstance(shard.pixels, np.memmap) and shard.pixels.shape == (7, 3, 224, 224)
    rows = shard.index.to_pylist()
    broken = [r for r in rows if r["uri"].endswith("broken.jpg")][0]
    assert broken["status"] == STATUS_FAILED and broken["error"].startswith("OSError: Truncated")
    coffee = [r for r in rows if r["uri"].endswith("coffee.jpg")][0]
    assert coffee["status"] == STATUS_OK and coffee["error"] is None
    from inference_assets.core.images.decoding import load_rgb

    expected = preprocessing.resize_crop(load_rgb(coffee["uri"]))
    assert np.array_equal(shard.pixels[coffee["row"]], expected)
    assert not shard.pixels[broken["row"]].any()


def test_rewriting_a_shard_replaces_it_and_leaves_no_stray_files(manifest, tmp_path):
    preprocessing = resolve_preprocessing(ModelSpec())
    write_pixel_shard(manifest, preprocessing, tmp_path / "px", "shard-00", workers=1)
    write_pixel_shard(manifest.slice(0, 3), preprocessing, tmp_path / "px", "shard-00", workers=1)
    names = sorted(p.name for p in (tmp_path / "px").iterdir() if p.name != ".shard-00.lock")  # the writers' lock
    assert len(names) == 2 and names[1] == "shard-00.parquet" and names[0].endswith(".npy")
    assert read_pixel_shard(tmp_path / "px", "shard-00").pixels.shape[0] == 3


def test_rewriting_reuses_unchanged_rows_and_decodes_only_new_changed_and_failed(manifest, image_root, tmp_path):
    preprocessing = resolve_preprocessing(ModelSpec())
    first = write_pixel_shard(manifest, preprocessing, tmp_path / "px", "shard-00", workers=2)
    assert (first.reused, first.decoded, first.rewritten) == (0, 7, True)
    before = read_pixel_shard(tmp_path / "px", "shard-00")
    before_pixels = np.array(before.pixels)  # the file is replaced below

    unchanged = write_pixel_shard(manifest.slice(1), preprocessing, tmp_path / "px", "shard-00", workers=2)
    assert unchanged.rewritten and unchanged.reused + unchanged.decoded == 6

    # same entries as the stored shard, all decoded fine: nothing is written at all
    ok_only = manifest.filter(pc.invert(pc.ends_with(manifest["uri"], "broken.jpg")))
    write_pixel_shard(ok_only, preprocessing, tmp_path / "px", "shard-00", workers=2)
    again = write_pixel_shard(ok_only, preprocessing, tmp_path / "px", "shard-00", workers=2)
    assert (again.reused, again.decoded, again.rewritten) == (6, 0, False)

    # a changed file (new content hash) is decoded again, the rest reused byte for byte
    changed = ok_only.set_column(
        ok_only.schema.get_field_index("content_hash"),
        "content_hash",
        pa.array(["sha256:changed"] + ok_only["content_hash"].to_pylist()[1:]),
    )
    after = write_pixel_shard(changed, preprocessing, tmp_path / "px", "shard-00", workers=2)
    assert (after.reused, after.decoded) == (5, 1)
    shard = read_pixel_shard(tmp_path / "px", "shard-00")
    old_rows = {r["image_id"]: r["row"] for r in before.index.to_pylist()}
    for row in shard.index.to_pylist():
        assert np.array_equal(shard.pixels[row["row"]], before_pixels[old_rows[row["image_id"]]])


def test_empty_partition_is_a_valid_empty_shard(manifest, tmp_path):
    preprocessing = resolve_preprocessing(ModelSpec())
    summary = write_pixel_shard(manifest.slice(0, 0), preprocessing, tmp_path / "px", "shard-01", workers=2)
    assert summary.images == 0
    assert read_pixel_shard(tmp_path / "px", "shard-01").pixels.shape == (0, 3, 224, 224)


def test_a_partially_written_pixels_file_is_never_read(manifest, tmp_path):
    preprocessing = resolve_preprocessing(ModelSpec())
    write_pixel_shard(manifest, preprocessing, tmp_path / "px", "shard-00", workers=1)
    # what a killed writer leaves behind: a temporary pixels file, no new index
    (tmp_path / "px" / ".shard-00.deadbeef.npy.tmp-1-abc").write_bytes(b"partial")
    shard = read_pixel_shard(tmp_path / "px", "shard-00")
    assert shard.pixels.shape[0] == 7
    with pytest.raises(FileNotFoundError, match="materialize preprocessed_images"):
        read_pixel_shard(tmp_path / "px", "shard-09")


def test_read_rows_returns_the_stored_rows(manifest, tmp_path):
    preprocessing = resolve_preprocessing(ModelSpec())
    write_pixel_shard(manifest, preprocessing, tmp_path / "px", "shard-00", workers=2)
    shard = read_pixel_shard(tmp_path / "px", "shard-00")
    assert np.array_equal(shard.read_rows(2, 5), shard.pixels[2:5])
    assert shard.read_rows(0, 0).shape == (0, 3, 224, 224)


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(manifest, tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    folder = tmp_path / "px"
    folder.mkdir()
    orphan = folder / f".shard-00.abc.npy.tmp-{dead_pid}-deadbeef"
    live = folder / f".shard-00.def.npy.tmp-{os.getppid()}-cafecafe"  # a running process: maybe writing
    other = folder / f".shard-01.abc.npy.tmp-{dead_pid}-deadbeef"  # another partition: not ours to clean
    for path in (orphan, live, other):
        path.write_bytes(b"partial")
    write_pixel_shard(manifest, resolve_preprocessing(ModelSpec()), folder, "shard-00", workers=2)
    assert not orphan.exists() and live.exists() and other.exists()


def test_a_shard_in_an_older_format_is_rewritten_not_reused(manifest, tmp_path):
    """An index written by an earlier version (here: without the 'stage' column) is not trusted."""
    preprocessing = resolve_preprocessing(ModelSpec())
    shard_dir = tmp_path / "px"
    write_pixel_shard(manifest, preprocessing, shard_dir, "p", workers=2)
    index = pq.read_table(shard_dir / "p.parquet")
    pq.write_table(index.drop_columns(["stage"]), shard_dir / "p.parquet")
    with pytest.raises(ValueError, match="written by an older version"):
        read_pixel_shard(shard_dir, "p")
    summary = write_pixel_shard(manifest, preprocessing, shard_dir, "p", workers=2)
    assert summary.rewritten and summary.decoded == manifest.num_rows
    assert read_pixel_shard(shard_dir, "p").index.schema.names == INDEX_SCHEMA.names

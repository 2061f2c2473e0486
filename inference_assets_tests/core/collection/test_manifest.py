import os

import pyarrow.parquet as pq
import pytest

from inference_assets.core.errors import ConfigError
from inference_assets.core.storage.hashing import file_sha256
from inference_assets.core.collection.manifest import build_manifest, read_manifest
from inference_assets.core.collection.partitioning import image_id_for, partition_for


pytestmark = pytest.mark.fast  # the whole module is in `make test-fast`


def test_manifest_lists_every_image_with_ids_hashes_labels_and_partitions(image_root, tmp_path):
    out = tmp_path / "manifest.parquet"
    summary = build_manifest(image_root, out, num_partitions=4)
    table = read_manifest(out)
    rows = {r["relative_path"]: r for r in table.to_pylist()}
    assert set(rows) == {
        "astronaut.jpg",
        "hubble_deep_field.jpg",
        "espresso/coffee.jpg",
        "missile/rocket.jpg",
        "tabby/chelsea.png",
        "tripod/camera.png",
    }
    coffee = rows["espresso/coffee.jpg"]
    assert coffee["label"] == "espresso"
    assert rows["astronaut.jpg"]["label"] is None
    assert coffee["image_id"] == image_id_for("espresso/coffee.jpg")
    assert coffee["partition"] == partition_for(coffee["image_id"], 4)
    assert coffee["uri"] == str(image_root / "espresso" / "coffee.jpg")
    assert coffee["size_bytes"] == (image_root / "espresso" / "coffee.jpg").stat().st_size
    assert coffee["content_hash"] == "sha256:" + file_sha256(image_root / "espresso" / "coffee.jpg")
    assert summary.images == 6 and summary.hashed == 6
    assert summary.total_bytes == sum(r["size_bytes"] for r in rows.values())
    assert sum(summary.per_partition.values()) == 6
    assert read_manifest(out, partition=coffee["partition"]).num_rows == summary.per_partition[coffee["partition"]]


def test_extension_filter_hidden_files_and_recursion(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for name in ("a/b/deep.JPG", "a/x.png", "notes.txt", ".secret.jpg", ".hidden/y.jpg", "z.webp"):
        (root / name).write_bytes(b"not really an image")
    build_manifest(root, tmp_path / "m.parquet", 4)
    paths = sorted(read_manifest(tmp_path / "m.parquet").column("relative_path").to_pylist())
    assert paths == ["a/b/deep.JPG", "a/x.png", "z.webp"]
    labels = {r["relative_path"]: r["label"] for r in read_manifest(tmp_path / "m.parquet").to_pylist()}
    assert labels["a/b/deep.JPG"] == "b"


def test_unchanged_files_reuse_their_hash_and_changed_files_are_rehashed(image_root, tmp_path):
    out = tmp_path / "m.parquet"
    build_manifest(image_root, out, 4)
    coffee = image_root / "espresso" / "coffee.jpg"
    coffee.write_bytes(coffee.read_bytes() + b"\0")
    os.utime(coffee, ns=(coffee.stat().st_atime_ns, coffee.stat().st_mtime_ns + 10**9))
    second = build_manifest(image_root, out, 4)
    assert second.hash_reused == 5 and second.hashed == 1
    row = [r for r in read_manifest(out).to_pylist() if r["relative_path"] == "espresso/coffee.jpg"][0]
    assert row["content_hash"] == "sha256:" + file_sha256(coffee)


def test_manifest_is_written_atomically(image_root, tmp_path):
    out = tmp_path / "m.parquet"
    build_manifest(image_root, out, 4)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert pq.read_metadata(out).num_rows == 6


def test_missing_source_root_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        build_manifest(tmp_path / "nope", tmp_path / "m.parquet", 4)
    message = str(err.value)
    assert "nope" in message and "set image_root to a folder" in message and "\n" not in message
    assert err.value.settings == ("image_root",)

import os

import pyarrow.parquet as pq
import pytest

from inference_assets.core.collection.manifest import (
    ManifestSummary,
    build_manifest,
    first_images_without_error,
    read_manifest,
)
from inference_assets.core.collection.partitioning import image_id_for, partition_for, partition_keys
from inference_assets.core.errors import ConfigError
from inference_assets.core.storage.hashing import file_sha256

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


def test_the_summary_counts_every_partition_and_names_the_manifest_and_the_first_readable_images(
    image_root, tmp_path
):
    os.symlink(tmp_path / "nowhere.jpg", image_root / "dangling.jpg")  # listed, with an error
    out = tmp_path / "m.parquet"
    summary = build_manifest(image_root, out, num_partitions=16)
    counts = summary.images_per_partition(16)
    assert [key for key, _ in counts] == partition_keys(16)
    assert sum(n for _, n in counts) == 7 and 0 in {n for _, n in counts}  # the empty partitions are listed too
    assert dict(counts) == {key: summary.per_partition.get(key, 0) for key in partition_keys(16)}
    assert summary.describe(out) == (
        f"manifest: 7 images, {summary.total_bytes} bytes (6 hashed, 0 unchanged, 1 unreadable) -> {out}"
    )
    rows = read_manifest(out).to_pylist()
    readable = [(row["uri"], row["relative_path"]) for row in rows if row["error"] is None]
    assert len(readable) == 6 and "dangling.jpg" not in {relative for _, relative in readable}
    assert first_images_without_error(out, 3) == readable[:3]
    assert first_images_without_error(out, 12) == readable


def test_the_summarys_warnings_to_log_add_unlistable_folders_and_vanished_images():
    assert ManifestSummary().warnings_to_log() == []
    summary = ManifestSummary(warnings=["the previous manifest is damaged"], unlistable_folders=2,
                              images_under_unlistable_folders=3, vanished=[f"v{i}.jpg" for i in range(7)])
    assert summary.warnings_to_log() == [
        "the previous manifest is damaged",
        "2 folder(s) could not be listed: their 3 known image(s) are kept as failures (stage list); "
        "give the pipeline read access to them",
        "7 image(s) of the previous manifest are missing without their folder being listed "
        "(e.g. v0.jpg, v1.jpg, v2.jpg, v3.jpg, v4.jpg)",
    ]
    assert summary.warnings == ["the previous manifest is damaged"]  # the build's own list is left as it is

from collections import Counter

import pytest
from PIL import Image

from inference_assets.core.collection.manifest import build_manifest, read_manifest
from inference_assets.core.collection.partitioning import (
    image_id_for,
    image_id_for_bytes,
    partition_for,
    partition_keys,
)

pytestmark = pytest.mark.fast  # the whole module is in `make test-fast`


def test_partition_keys_are_zero_padded_and_sortable():
    keys = partition_keys(16)
    assert keys[0] == "shard-00" and keys[-1] == "shard-15"
    assert keys == sorted(keys)
    assert partition_keys(120)[5] == "shard-005"


def test_partition_keys_reject_zero():
    with pytest.raises(ValueError):
        partition_keys(0)


def test_image_ids_and_partitions_are_the_same_in_every_process_and_release():
    # Pinned values: a change to either hash would give every stored image a new id or move it to
    # another partition, so every existing file would be orphaned and recomputed.
    assert image_id_for("cats/a.jpg") == "e845bb660f5efb8c" and image_id_for("dogs/a.jpg") == "d9ad414538ad3c86"
    assert image_id_for_bytes("cats/a.jpg".encode()) == "e845bb660f5efb8c"
    assert len(image_id_for("x.png")) == 16
    pinned = {"img_0.jpg": "shard-03", "img_1.jpg": "shard-02", "img_2.jpg": "shard-04", "img_999.jpg": "shard-07"}
    assert {name: partition_for(image_id_for(name), 16) for name in pinned} == pinned
    assert partition_for(image_id_for("img_0.jpg"), 120) == "shard-091"


def test_adding_images_to_a_collection_never_moves_existing_ones(tmp_path):
    root = tmp_path / "images"
    for i in range(40):
        (root / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i, 0, 0)).save(root / f"d{i % 3}" / f"{i}.png")
    build_manifest(root, tmp_path / "before.parquet", num_partitions=16)
    for i in range(40, 120):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(root / f"d{i % 3}" / f"{i}.png")
    build_manifest(root, tmp_path / "after.parquet", num_partitions=16)
    before = read_manifest(tmp_path / "before.parquet").to_pydict()
    after = read_manifest(tmp_path / "after.parquet").to_pydict()
    after_partition = dict(zip(after["image_id"], after["partition"], strict=True))
    assert len(after_partition) == 120
    assert {i: after_partition[i] for i in before["image_id"]} == dict(
        zip(before["image_id"], before["partition"], strict=True)
    )
    assert len(set(after_partition.values())) > 8  # spread over the partitions, not all in one


def test_shards_are_roughly_balanced():
    counts = Counter(partition_for(image_id_for(f"photo_{i:05d}.jpg"), 16) for i in range(16000))
    assert set(counts) == set(partition_keys(16))
    assert min(counts.values()) > 800 and max(counts.values()) < 1200

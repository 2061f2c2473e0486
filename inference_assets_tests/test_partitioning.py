from collections import Counter

import pytest

from inference_assets.core.collection.partitioning import image_id_for, partition_for, partition_keys

pytestmark = pytest.mark.fast  # the whole module is in `make test-fast`


def test_partition_keys_are_zero_padded_and_sortable():
    keys = partition_keys(16)
    assert keys[0] == "shard-00" and keys[-1] == "shard-15"
    assert keys == sorted(keys)
    assert partition_keys(120)[5] == "shard-005"


def test_partition_keys_reject_zero():
    with pytest.raises(ValueError):
        partition_keys(0)


def test_image_id_is_stable_and_depends_on_relative_path_only():
    assert image_id_for("cats/a.jpg") == image_id_for("cats/a.jpg")
    assert image_id_for("cats/a.jpg") != image_id_for("dogs/a.jpg")
    assert len(image_id_for("x.png")) == 16


def test_adding_images_never_moves_existing_ones():
    before = {f"img_{i}.jpg": partition_for(image_id_for(f"img_{i}.jpg"), 16) for i in range(1000)}
    # a growing collection: same count, more images; old assignments must not change
    after = {f"img_{i}.jpg": partition_for(image_id_for(f"img_{i}.jpg"), 16) for i in range(2000)}
    assert all(after[name] == shard for name, shard in before.items())


def test_shards_are_roughly_balanced():
    counts = Counter(partition_for(image_id_for(f"photo_{i:05d}.jpg"), 16) for i in range(16000))
    assert set(counts) == set(partition_keys(16))
    assert min(counts.values()) > 800 and max(counts.values()) < 1200

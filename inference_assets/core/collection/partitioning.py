"""Stable assignment of images to a fixed number of shards (partitions).

An image's shard depends only on its ``image_id`` and the shard count, so adding
images to a collection never moves an existing image to another shard.
"""

from __future__ import annotations

import functools
import hashlib

DEFAULT_NUM_PARTITIONS = 16


def partition_keys(num_partitions: int) -> list[str]:
    """The partition keys for ``num_partitions`` shards: ``shard-00``, ``shard-01``, ..."""
    return list(_keys(num_partitions))


@functools.lru_cache(maxsize=8)
def _keys(num_partitions: int) -> tuple[str, ...]:
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    width = max(2, len(str(num_partitions - 1)))
    return tuple(f"shard-{i:0{width}d}" for i in range(num_partitions))


def image_id_for(relative_path: str) -> str:
    """A stable id for an image, derived from its path relative to the source root."""
    return image_id_for_bytes(relative_path.encode("utf-8", "surrogateescape"))


def image_id_for_bytes(relative_path: bytes) -> str:
    """The same id from the path's exact bytes (for names that are not valid UTF-8)."""
    return hashlib.sha1(relative_path).hexdigest()[:16]


def partition_for(image_id: str, num_partitions: int) -> str:
    """The shard key an image id belongs to (independent of every other image)."""
    bucket = int(hashlib.sha256(image_id.encode("ascii")).hexdigest()[:15], 16) % num_partitions
    return _keys(num_partitions)[bucket]  # cached: called once per image

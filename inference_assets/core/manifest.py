"""The image manifest: one row per image file under a source root, stored as Parquet.

Columns: ``image_id`` (stable, from the relative path), ``relative_path``, ``uri``
(absolute path), ``size_bytes``, ``modified_at``, ``mtime_ns``, ``content_hash``
(``sha256:<hex>``), ``label`` (the parent folder's name, or null for images directly
under the root) and ``partition`` (the shard key, see :mod:`partitioning`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .atomic import atomic_output
from .errors import ConfigError
from .hashing import file_sha256
from .partitioning import image_id_for, partition_for

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

MANIFEST_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("relative_path", pa.string()),
        ("uri", pa.string()),
        ("size_bytes", pa.int64()),
        ("modified_at", pa.timestamp("us", tz="UTC")),
        ("mtime_ns", pa.int64()),
        ("content_hash", pa.string()),
        ("label", pa.string()),
        ("partition", pa.string()),
    ]
)

_WRITE_CHUNK = 8192


@dataclass
class ManifestSummary:
    """What a manifest build saw: counts for metadata and logs."""

    images: int = 0
    total_bytes: int = 0
    hashed: int = 0
    hash_reused: int = 0
    per_partition: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)


def iter_image_files(root: Path, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> Iterator[Path]:
    """Image files under ``root``, recursively, in a deterministic order.

    Hidden files and folders (names starting with ``.``) are skipped; symbolic links to
    folders are not followed.
    """
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in suffixes:
                yield Path(dirpath) / name


def check_source_root(root: Path) -> Path:
    """The resolved source root, or a one-line error naming it and the fix."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"image source root {str(root)!r} is not a folder: set INFERENCE_IMAGE_ROOT "
            "(or the 'storage' resource's image_root) to a folder of images"
        )
    return root.resolve()


def _previous_hashes(previous: Path | None) -> dict[str, tuple[int, int, str]]:
    """relative_path -> (size, mtime_ns, content_hash) from an earlier manifest, if any."""
    if previous is None or not previous.exists():
        return {}
    table = pq.read_table(previous, columns=["relative_path", "size_bytes", "mtime_ns", "content_hash"])
    return {
        row["relative_path"]: (row["size_bytes"], row["mtime_ns"], row["content_hash"])
        for row in table.to_pylist()
    }


def build_manifest(
    root: Path,
    output: Path,
    num_partitions: int,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
) -> ManifestSummary:
    """List the images under ``root`` into a Parquet manifest at ``output`` (atomically).

    A file whose size and modification time match the previous manifest at ``output``
    keeps its recorded content hash instead of being read again.
    """
    root = check_source_root(root)
    known = _previous_hashes(output)
    summary = ManifestSummary()
    with atomic_output(output) as tmp:
        with pq.ParquetWriter(tmp, MANIFEST_SCHEMA) as writer:
            rows: list[dict] = []
            for path in iter_image_files(root, extensions):
                rows.append(_manifest_row(root, path, num_partitions, known, summary))
                if len(rows) >= _WRITE_CHUNK:
                    writer.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
                    rows.clear()
            writer.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
    return summary


def _manifest_row(root: Path, path: Path, num_partitions: int, known: dict, summary: ManifestSummary) -> dict:
    stat = path.stat()
    relative = path.relative_to(root).as_posix()
    previous = known.get(relative)
    if previous and previous[0] == stat.st_size and previous[1] == stat.st_mtime_ns:
        content_hash = previous[2]
        summary.hash_reused += 1
    else:
        content_hash = f"sha256:{file_sha256(path)}"
        summary.hashed += 1
    image_id = image_id_for(relative)
    partition = partition_for(image_id, num_partitions)
    label = path.parent.name if path.parent != root else None
    summary.images += 1
    summary.total_bytes += stat.st_size
    summary.per_partition[partition] += 1
    if label is not None:
        summary.labels[label] += 1
    return {
        "image_id": image_id,
        "relative_path": relative,
        "uri": str(path),
        "size_bytes": stat.st_size,
        "modified_at": datetime.fromtimestamp(stat.st_mtime_ns / 1e9, tz=timezone.utc),
        "mtime_ns": stat.st_mtime_ns,
        "content_hash": content_hash,
        "label": label,
        "partition": partition,
    }


def read_manifest(path: Path, partition: str | None = None) -> pa.Table:
    """The manifest table, or only the rows of one partition."""
    if not path.exists():
        raise ConfigError(
            f"image manifest {str(path)!r} does not exist: materialize the image_manifest asset first"
        )
    table = pq.read_table(path)
    if partition is not None:
        table = table.filter(pc.equal(table["partition"], partition))
    return table

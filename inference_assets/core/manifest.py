"""The image manifest: one row per image of a source (see :mod:`.sources`), stored as Parquet.

Columns: ``image_id`` (stable, from the image's key: its path relative to the root, its object
key under the prefix, or its table/database id), ``relative_path`` (that key as text), ``uri``
(how the source reopens it: a local path, ``s3://bucket/key``, or a database row reference),
``size_bytes``, ``modified_at``, ``mtime_ns``, ``content_hash`` (``sha256:<hex>``), ``label``
(the parent folder's name or the table's label column, else null), ``partition`` (the shard
key, see :mod:`partitioning`) and ``error`` (why the image cannot be read — a dangling or
looping symlink, a missing object, NULL bytes, no permission — in which case size, time and
hash are null; the image then gets a failure row downstream instead of disappearing).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .atomic import atomic_output, remove_orphaned_temporaries
from .errors import ConfigError
from .local_files import display
from .partitioning import image_id_for_bytes, partition_for
from .sources import ImageSource, SourceEntry
from .sources.config import IMAGE_EXTENSIONS
from .sources.folder import FolderSource, check_source_root

__all__ = ["IMAGE_EXTENSIONS", "build_manifest", "check_source_root", "read_manifest"]

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
        ("error", pa.string()),
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
    unreadable: int = 0
    per_partition: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)


def _previous_hashes(previous: Path | None) -> dict[tuple[str, str], tuple[int, int, str]]:
    """(relative_path, uri) -> (size, mtime_ns, content_hash) from an earlier manifest, if any."""
    if previous is None or not previous.exists():
        return {}
    table = pq.read_table(previous, columns=["relative_path", "uri", "size_bytes", "mtime_ns", "content_hash"])
    return {
        (row["relative_path"], row["uri"]): (row["size_bytes"], row["mtime_ns"], row["content_hash"])
        for row in table.to_pylist()
    }


def build_manifest(
    source: ImageSource | Path,
    output: Path,
    num_partitions: int,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    follow_external_symlinks: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ManifestSummary:
    """List the images of ``source`` (a source, or a local folder) into a Parquet manifest at
    ``output`` (atomically). ``progress(1)`` is told of each image listed.

    An image whose location, size and modification time match the previous manifest at
    ``output`` keeps its recorded content hash instead of being read again.
    """
    if isinstance(source, (str, Path)):
        source = FolderSource(Path(source), extensions, follow_external_symlinks)
    remove_orphaned_temporaries(output.parent, output.name)
    known = _previous_hashes(output)
    summary = ManifestSummary()
    with atomic_output(output) as tmp:
        with pq.ParquetWriter(tmp, MANIFEST_SCHEMA) as writer:
            rows: list[dict] = []
            for entry in source.entries():
                rows.append(_manifest_row(source, entry, num_partitions, known, summary))
                if progress is not None:
                    progress(1)
                if len(rows) >= _WRITE_CHUNK:
                    writer.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
                    rows.clear()
            writer.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
        if summary.images == 0:  # raised before the rename: an earlier manifest stays in place
            raise ConfigError(
                f"no images found in {source.description!r} (looked for {', '.join(sorted(set(extensions)))}): "
                "point INFERENCE_IMAGE_ROOT (or the image table or query) at images, or widen the extensions"
            )
    return summary


def _manifest_row(
    source: ImageSource, entry: SourceEntry, num_partitions: int, known: dict, summary: ManifestSummary
) -> dict:
    relative = display(entry.key)
    image_id = image_id_for_bytes(entry.key)
    partition = partition_for(image_id, num_partitions)
    row = {
        "image_id": image_id,
        "relative_path": relative,
        "uri": entry.uri,
        "size_bytes": None,
        "modified_at": None,
        "mtime_ns": None,
        "content_hash": None,
        "label": entry.label,
        "partition": partition,
        "error": entry.error,
    }
    summary.images += 1
    summary.per_partition[partition] += 1
    if entry.label is not None:
        summary.labels[entry.label] += 1
    if entry.error is None:
        try:
            previous = known.get((relative, entry.uri))
            if entry.content_hash is not None:
                content_hash = entry.content_hash  # the listing read the bytes already
                summary.hashed += 1
            elif (
                previous
                and entry.mtime_ns is not None
                and previous[0] == entry.size
                and previous[1] == entry.mtime_ns
                and previous[2]
            ):
                content_hash = previous[2]
                summary.hash_reused += 1
            else:
                content_hash = source.content_hash(entry.uri)
                summary.hashed += 1
        except Exception as exc:  # deleted since listed, no permission, unreachable...
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
            row["error"] = f"cannot read: {reason}"[:500]
        else:
            row.update(
                size_bytes=entry.size,
                modified_at=(
                    datetime.fromtimestamp(entry.mtime_ns / 1e9, tz=timezone.utc) if entry.mtime_ns is not None else None
                ),
                mtime_ns=entry.mtime_ns,
                content_hash=content_hash,
            )
            summary.total_bytes += entry.size or 0
    if row["error"] is not None:
        summary.unreadable += 1
    return row


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

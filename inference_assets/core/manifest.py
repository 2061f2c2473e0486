"""The image manifest: one row per image file under a source root, stored as Parquet.

Columns: ``image_id`` (stable, from the relative path), ``relative_path``, ``uri``
(absolute path, see :mod:`local_files`), ``size_bytes``, ``modified_at``, ``mtime_ns``,
``content_hash`` (``sha256:<hex>``), ``label`` (the parent folder's name, or null for images
directly under the root), ``partition`` (the shard key, see :mod:`partitioning`) and
``error`` (why the file cannot be read — a dangling or looping symlink, one leaving the root,
no permission — in which case size, time and hash are null; the image then gets a failure
row downstream instead of disappearing).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .atomic import atomic_output, remove_orphaned_temporaries
from .errors import ConfigError
from .hashing import file_sha256
from .local_files import FoundFile, display, uri_for, walk_images
from .partitioning import image_id_for_bytes, partition_for

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
    follow_external_symlinks: bool = False,
) -> ManifestSummary:
    """List the images under ``root`` into a Parquet manifest at ``output`` (atomically).

    A file whose size and modification time match the previous manifest at ``output``
    keeps its recorded content hash instead of being read again.
    """
    root = check_source_root(root)
    remove_orphaned_temporaries(output.parent, output.name)
    known = _previous_hashes(output)
    summary = ManifestSummary()
    with atomic_output(output) as tmp:
        with pq.ParquetWriter(tmp, MANIFEST_SCHEMA) as writer:
            rows: list[dict] = []
            for found in walk_images(root, extensions, follow_external_symlinks):
                rows.append(_manifest_row(found, num_partitions, known, summary))
                if len(rows) >= _WRITE_CHUNK:
                    writer.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
                    rows.clear()
            writer.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
        if summary.images == 0:  # raised before the rename: an earlier manifest stays in place
            raise ConfigError(
                f"no images found under {str(root)!r} (looked for {', '.join(sorted(set(extensions)))}): "
                "point INFERENCE_IMAGE_ROOT at a folder that holds images, or widen the extensions"
            )
    return summary


def _manifest_row(found: FoundFile, num_partitions: int, known: dict, summary: ManifestSummary) -> dict:
    relative = display(found.relative)
    image_id = image_id_for_bytes(found.relative)
    partition = partition_for(image_id, num_partitions)
    parent = found.relative.rpartition(b"/")[0].rpartition(b"/")[2]
    label = display(parent) if parent else None
    row = {
        "image_id": image_id,
        "relative_path": relative,
        "uri": uri_for(found.path),
        "size_bytes": None,
        "modified_at": None,
        "mtime_ns": None,
        "content_hash": None,
        "label": label,
        "partition": partition,
        "error": found.error,
    }
    summary.images += 1
    summary.per_partition[partition] += 1
    if label is not None:
        summary.labels[label] += 1
    if found.error is None:
        stat = found.stat  # from the listing: no second stat per file
        try:
            previous = known.get(relative)
            if previous and previous[0] == stat.st_size and previous[1] == stat.st_mtime_ns and previous[2]:
                content_hash = previous[2]
                summary.hash_reused += 1
            else:
                content_hash = f"sha256:{file_sha256(found.path)}"
                summary.hashed += 1
        except OSError as exc:
            row["error"] = f"cannot read: {exc.strerror or exc}"
        else:
            row.update(
                size_bytes=stat.st_size,
                modified_at=datetime.fromtimestamp(stat.st_mtime_ns / 1e9, tz=timezone.utc),
                mtime_ns=stat.st_mtime_ns,
                content_hash=content_hash,
            )
            summary.total_bytes += stat.st_size
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

"""The image manifest: one row per image of a source (see :mod:`.sources`), stored as Parquet.

Columns: ``image_id`` (stable, from the image's key: its path relative to the root, its object
key under the prefix, or its table/database id), ``relative_path`` (that key as text), ``uri``
(how the source reopens it: a local path, ``s3://bucket/key``, or a database row reference),
``size_bytes``, ``modified_at``, ``mtime_ns``, ``content_hash`` (``sha256:<hex>``), ``label``
(the parent folder's name or the table's label column, else null), ``partition`` (the shard
key, see :mod:`partitioning`) and ``error`` (why the image cannot be read — a dangling or
looping symlink, a missing object, NULL bytes, no permission — in which case size, time and
hash are null; the image then gets a failure row downstream instead of disappearing) and
``version`` (what else identifies the file's content: inode and ctime for local files, see
:class:`~.sources.SourceEntry`).

A folder that cannot be listed never makes its images vanish: the images the previous manifest
knew under it stay, with ``error`` "cannot list folder: <reason>" (stage ``list`` downstream),
and a folder with no known images is recorded itself (its key ends with ``/``). Images of the
previous manifest that are neither listed now nor known to be deleted are counted in the
file's metadata (``vanished_images``), which the accounting check reads.

Files are written with Parquet page checksums and read with verification: a damaged previous
manifest is ignored (every image is hashed again) with a warning naming it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from inference_assets.core.collection.partitioning import image_id_for_bytes, partition_for, partition_keys
from inference_assets.core.errors import ConfigError
from inference_assets.core.sources import ImageSource, SourceEntry
from inference_assets.core.sources.config import IMAGE_EXTENSIONS
from inference_assets.core.sources.folder import FolderSource, check_source_root
from inference_assets.core.sources.local_files import LIST_ERROR_PREFIX, display, local_path
from inference_assets.core.storage.atomic import atomic_output, remove_orphaned_temporaries
from inference_assets.core.storage.verified_parquet import READ_ERRORS, WRITE_OPTIONS, damaged, read_verified

__all__ = ["IMAGE_EXTENSIONS", "LIST_ERROR_PREFIX", "build_manifest", "check_source_root", "read_manifest"]

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
        ("version", pa.string()),
    ]
)

VANISHED_KEY = b"vanished_images"  # manifest metadata: previously known images missing without explanation

_WRITE_CHUNK = 8192


@dataclass
class ManifestSummary:
    """What a manifest build saw: counts for metadata and logs."""

    images: int = 0
    total_bytes: int = 0
    hashed: int = 0
    hash_reused: int = 0
    unreadable: int = 0
    unlistable_folders: int = 0
    images_under_unlistable_folders: int = 0  # images known from the previous manifest, kept as failures
    vanished: list[str] = field(default_factory=list)  # known before, absent now, not known to be deleted
    warnings: list[str] = field(default_factory=list)
    per_partition: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)

    def warnings_to_log(self) -> list[str]:
        """The build's warnings, then a line for the folders that could not be listed and one for the
        previously known images now missing without their folder being listed, when there are any."""
        lines = list(self.warnings)
        if self.unlistable_folders:
            lines.append(
                f"{self.unlistable_folders} folder(s) could not be listed: their "
                f"{self.images_under_unlistable_folders} known image(s) are kept as failures (stage list); "
                "give the pipeline read access to them"
            )
        if self.vanished:
            lines.append(
                f"{len(self.vanished)} image(s) of the previous manifest are missing without their folder being "
                f"listed (e.g. {', '.join(self.vanished[:5])})"
            )
        return lines

    def describe(self, path: Path) -> str:
        """One line for the log: the images and bytes, how many were hashed, and where the manifest is."""
        return (
            f"manifest: {self.images} images, {self.total_bytes} bytes "
            f"({self.hashed} hashed, {self.hash_reused} unchanged, {self.unreadable} unreadable) -> {path}"
        )

    def images_per_partition(self, num_partitions: int) -> list[tuple[str, int]]:
        """(partition, images) for every one of the ``num_partitions`` partitions, the empty ones included."""
        return [(key, self.per_partition.get(key, 0)) for key in partition_keys(num_partitions)]


def _previous_manifest(previous: Path | None, warnings: list[str]) -> pa.Table | None:
    """An earlier manifest, if any; a damaged one counts as none (with a warning)."""
    if previous is None or not previous.exists():
        return None
    try:
        table = read_verified(previous)
        if "version" not in table.column_names:  # written before versions were recorded: local files hash once more
            table = table.append_column("version", pa.nulls(table.num_rows, pa.string()))
        return table.select(["image_id", "relative_path", "uri", "size_bytes", "mtime_ns", "content_hash",
                             "label", "version"])
    except (*READ_ERRORS, KeyError) as exc:
        warnings.append(f"the previous {damaged('image manifest', previous, exc)}: ignored, every image is hashed again")
        return None


def _known(previous: pa.Table | None) -> dict[tuple[str, str], tuple]:
    """(relative_path, uri) -> (size, mtime_ns, version, content_hash) of the previous manifest."""
    if previous is None:
        return {}
    columns = [previous.column(name).to_pylist() for name in
               ("relative_path", "uri", "size_bytes", "mtime_ns", "version", "content_hash")]
    return {(relative, uri): tuple(rest) for relative, uri, *rest in zip(*columns, strict=True)}


def build_manifest(
    source: ImageSource | Path,
    output: Path,
    num_partitions: int,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    follow_external_symlinks: bool = False,
    progress: Callable[[int], None] | None = None,
    rehash: bool = False,
) -> ManifestSummary:
    """List the images of ``source`` (a source, or a local folder) into a Parquet manifest at
    ``output`` (atomically). ``progress(1)`` is told of each image listed.

    An image whose location, size, modification time and ``version`` (inode + ctime for local
    files) match the previous manifest at ``output`` keeps its recorded content hash instead of
    being read again; ``rehash`` reads every image again. ``summary.warnings`` tells of a damaged
    previous manifest (ignored).
    """
    if isinstance(source, (str, Path)):
        source = FolderSource(Path(source), extensions, follow_external_symlinks)
    remove_orphaned_temporaries(output.parent, output.name)
    summary = ManifestSummary()
    previous = _previous_manifest(output, summary.warnings)
    known = _known(previous)  # entries seen are taken out: what is left was not listed this time
    with atomic_output(output) as tmp:
        with pq.ParquetWriter(tmp, MANIFEST_SCHEMA, **WRITE_OPTIONS) as writer:
            rows: list[dict] = []
            for entry in source.entries():
                if entry.unlisted:
                    new_rows = _unlisted_rows(entry, previous, num_partitions, summary)
                else:
                    new_rows = [_manifest_row(source, entry, num_partitions, known, summary, rehash)]
                for row in new_rows:
                    known.pop((row["relative_path"], row["uri"]), None)
                rows.extend(new_rows)
                if progress is not None:
                    progress(1)
                if len(rows) >= _WRITE_CHUNK:
                    writer.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
                    rows.clear()
            writer.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
            is_deleted = getattr(source, "is_deleted", None)  # sources listed all at once: absent = deleted
            if is_deleted is not None:
                summary.vanished = sorted(relative for relative, uri in known if not is_deleted(uri))
            writer.add_key_value_metadata({VANISHED_KEY: str(len(summary.vanished))})
        if summary.images == 0:  # raised before the rename: an earlier manifest stays in place
            raise ConfigError(
                f"no images found in {source.description!r} (looked for {', '.join(sorted(set(extensions)))}): "
                "point image_root, or the image table or query, at images, or widen the extensions",
                settings=["image_root"],
            )
    return summary


def _path_bytes(uri: str) -> bytes:
    path = local_path(uri)
    return path if isinstance(path, bytes) else os.fsencode(path)


def _unlisted_rows(entry: SourceEntry, previous: pa.Table | None, num_partitions: int, summary: ManifestSummary):
    """Failure rows for a folder that could not be listed: the images known under it, else the folder."""
    summary.unlistable_folders += 1
    folder = _path_bytes(entry.uri).rstrip(b"/") + b"/"
    known = []
    if previous is not None:
        uris = previous.column("uri").to_pylist()
        under = [i for i, uri in enumerate(uris) if _path_bytes(uri).startswith(folder)]
        columns = previous.select(["image_id", "relative_path", "uri", "label"])
        known = columns.take(pa.array(under, pa.int64())).to_pylist()
    if known:
        summary.images_under_unlistable_folders += len(known)
    else:  # nothing known under it: the folder itself is counted, so it is not lost from view
        known = [{"image_id": image_id_for_bytes(entry.key), "relative_path": display(entry.key),
                  "uri": entry.uri, "label": None}]
    rows = []
    for row in known:
        partition = partition_for(row["image_id"], num_partitions)
        rows.append({**row, "partition": partition, "error": entry.error})
        summary.images += 1
        summary.unreadable += 1
        summary.per_partition[partition] += 1
        if row["label"] is not None:
            summary.labels[row["label"]] += 1
    return rows


def _manifest_row(
    source: ImageSource, entry: SourceEntry, num_partitions: int, known: dict, summary: ManifestSummary,
    rehash: bool = False,
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
        "version": None,
    }
    summary.images += 1
    summary.per_partition[partition] += 1
    if entry.label is not None:
        summary.labels[entry.label] += 1
    if entry.error is None:
        try:
            previous = None if rehash else known.get((relative, entry.uri))  # (size, mtime_ns, version, hash)
            if entry.content_hash is not None:
                content_hash = entry.content_hash  # the listing read the bytes already
                summary.hashed += 1
            elif (
                previous
                and entry.mtime_ns is not None
                and previous[:3] == (entry.size, entry.mtime_ns, entry.version)
                and previous[3]
            ):
                content_hash = previous[3]
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
                version=entry.version,
            )
            summary.total_bytes += entry.size or 0
    if row["error"] is not None:
        summary.unreadable += 1
    return row


def vanished_images(path: Path) -> int:
    """How many previously known images the manifest at ``path`` lost without knowing they were deleted."""
    try:
        metadata = pq.read_metadata(path).metadata or {}
    except READ_ERRORS:
        return 0
    return int(metadata.get(VANISHED_KEY, b"0"))


def read_manifest(path: Path, partition: str | None = None) -> pa.Table:
    """The manifest table, or only the rows of one partition (a one-line error if it is damaged)."""
    if not path.exists():
        raise ConfigError(
            f"image manifest {str(path)!r} does not exist: materialize the image_manifest asset first"
        )
    try:
        table = read_verified(path)
    except READ_ERRORS as exc:
        raise ConfigError(
            f"{damaged('image manifest', path, exc)}: materialize the image_manifest asset again (make run rebuilds it first)"
        ) from None
    if partition is not None:
        table = table.filter(pc.equal(table["partition"], partition))
    return table


def read_manifest_partitions(path: Path, partitions: list[str]) -> list[tuple[str, pa.Table]]:
    """(partition, its manifest rows) for each of ``partitions``, in that order: the manifest read
    once and split in memory (a partition without images gets no rows)."""
    table = read_manifest(path)
    return [(key, table.filter(pc.equal(table["partition"], key))) for key in partitions]


def first_images_without_error(path: Path, count: int) -> list[tuple[str, str]]:
    """(uri, relative_path) of the manifest's first ``count`` images that were listed and read
    without an error (fewer when the manifest has fewer)."""
    rows = read_manifest(path).filter(pc.is_null(pc.field("error"))).slice(0, count)
    return list(zip(rows.column("uri").to_pylist(), rows.column("relative_path").to_pylist(), strict=True))

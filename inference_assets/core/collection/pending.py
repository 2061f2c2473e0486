"""What work is pending: compare a source's listing with the manifest, and the manifest with
the per-partition result files. Used by the sensor and the schedule; no Dagster here.

- *Listing changes*: a partition whose images (id, location, size, modification time, version
  (inode + ctime for local files), and the content hash where the listing has one) differ from
  the manifest's needs a new manifest. A damaged manifest counts as none (a new one is needed).
  The listing can be scanned in slices under a time budget (:func:`scan_listing`), resuming
  after the last key seen; each partition's state is an order-independent digest (XOR of
  per-image hashes plus a count), so a scan can stop and resume anywhere.
- *Missing results*: a partition some of whose manifest images (id, content hash) have no row
  in its result file needs its preprocessing and predictions run; a damaged result file counts
  as absent.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from inference_assets.core.collection.partitioning import image_id_for_bytes, partition_for
from inference_assets.core.sources import SourceEntry
from inference_assets.core.storage.verified_parquet import READ_ERRORS, read_verified


def _image_hash(image_id: str, uri: str, size, mtime_ns, listed_hash, version) -> int:
    text = f"{image_id}\x00{uri}\x00{size}\x00{mtime_ns}\x00{listed_hash}\x00{version}"
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:16], "big")


@dataclass
class ListingScan:
    """A (possibly partial) scan of a listing: resumable state, JSON-friendly."""

    after: str | None = None  # hex of the last key scanned
    digests: dict[str, list] = field(default_factory=dict)  # partition -> [xor as hex, count]
    complete: bool = False
    scanned: int = 0

    def to_json(self) -> dict:
        return {"after": self.after, "digests": self.digests, "scanned": self.scanned}

    @classmethod
    def from_json(cls, data: dict | None) -> ListingScan:
        data = data or {}
        return cls(after=data.get("after"), digests=data.get("digests", {}), scanned=data.get("scanned", 0))

    def add(self, partition: str, value: int) -> None:
        xor, count = self.digests.get(partition, ["0", 0])
        self.digests[partition] = [format(int(xor, 16) ^ value, "x"), count + 1]


def scan_listing(
    entries: Iterable[SourceEntry],
    num_partitions: int,
    scan: ListingScan | None = None,
    budget_seconds: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ListingScan:
    """Go on scanning ``entries`` (sorted by key) after ``scan.after`` until done or out of time."""
    scan = scan or ListingScan()
    after = bytes.fromhex(scan.after) if scan.after is not None else None
    deadline = None if budget_seconds is None else clock() + budget_seconds
    scanned_now = 0
    for entry in entries:
        if after is not None and entry.key <= after:
            continue
        if deadline is not None and scanned_now and clock() >= deadline:
            return scan  # not complete: resume after scan.after next time
        scanned_now += 1
        image_id = image_id_for_bytes(entry.key)
        scan.add(
            partition_for(image_id, num_partitions),
            _image_hash(image_id, entry.uri, entry.size, entry.mtime_ns, entry.content_hash, entry.version),
        )
        scan.after = entry.key.hex()
        scan.scanned += 1
    scan.complete = True
    return scan


def manifest_digests(manifest_path: Path, num_partitions: int) -> dict[str, list]:
    """The manifest's per-partition digests, comparable with a complete :class:`ListingScan`'s."""
    scan = ListingScan()
    if not manifest_path.exists():
        return {}
    try:
        table = read_verified(manifest_path)
    except READ_ERRORS:
        return {}  # damaged: unlike any listing, so a manifest run is asked for (it rebuilds the file)
    if "version" not in table.column_names:  # an older manifest: differs from listings with versions
        table = table.append_column("version", pa.nulls(table.num_rows, pa.string()))
    columns = ["image_id", "uri", "size_bytes", "mtime_ns", "content_hash", "version"]
    for row in table.select(columns).to_pylist():
        listed_hash = row["content_hash"] if row["mtime_ns"] is None else None  # sources without mtimes hash when listing
        scan.add(
            partition_for(row["image_id"], num_partitions),
            _image_hash(row["image_id"], row["uri"], row["size_bytes"], row["mtime_ns"], listed_hash, row["version"]),
        )
    return scan.digests


def changed_partitions(listing: dict[str, list], manifest: dict[str, list]) -> list[str]:
    """Partitions whose images differ between a complete listing and the manifest."""
    return sorted(p for p in set(listing) | set(manifest) if listing.get(p) != manifest.get(p))


def listing_digest(digests: dict[str, list]) -> str:
    """One short digest of a whole listing (for run keys)."""
    text = ";".join(f"{p}={x}/{n}" for p, (x, n) in sorted(digests.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class MissingResults:
    partition: str
    missing: int  # manifest images without a result row for their current content
    digest: str  # of the partition's manifest rows: names this piece of work


def _stored(path: Path) -> set[tuple[str, str]]:
    """The (image_id, content_hash) pairs of a result file; none when it is absent or damaged
    (its partition is predicted again)."""
    if not path.exists():
        return set()
    try:
        results = read_verified(path, columns=["image_id", "content_hash"])
    except READ_ERRORS:
        return set()
    return set(zip(results.column("image_id").to_pylist(), results.column("content_hash").to_pylist()))


def partitions_missing_results(
    manifest_path: Path, result_file: Callable[[str], Path | list[Path]]
) -> list[MissingResults]:
    """Partitions whose manifest images are not all in their result file (by id and content hash);
    ``result_file`` may give several files for a partition (one per model): an image missing from
    any of them counts."""
    if not manifest_path.exists():
        return []
    try:
        manifest = read_verified(manifest_path, columns=["image_id", "content_hash", "partition"]).to_pylist()
    except READ_ERRORS:
        return []  # damaged: the listing differs from it, and the manifest run comes first
    wanted: dict[str, set] = {}
    for row in manifest:
        wanted.setdefault(row["partition"], set()).add((row["image_id"], row["content_hash"]))
    pending = []
    for partition in sorted(wanted):
        paths = result_file(partition)
        missing = set()
        for path in paths if isinstance(paths, list) else [paths]:
            missing |= wanted[partition] - _stored(path)
        if missing:
            digest = hashlib.sha256(repr(sorted(wanted[partition], key=str)).encode()).hexdigest()[:16]
            pending.append(MissingResults(partition, len(missing), digest))
    return pending

"""Per-partition preprocessed pixels: a uint8 ``(N, 3, H, W)`` ``.npy`` file plus a Parquet index.

Layout for partition ``P`` under a shard folder::

    P.<token>.npy   memory-mappable pixels, row i = index row i (zeros where an image failed)
    P.parquet       index: row, image_id, uri, content_hash, status ('ok'|'failed'), stage, error,
                    crc32 (of the row's stored pixel bytes)
    .P.lock         held (``flock``) by the process writing the partition

The index is written last, atomically, and names its pixels file, so a killed run
leaves the previous complete pair in place; nothing half-written is ever read.
Every row's bytes are verified against their CRC-32 when read: a stored row damaged on disk
(even without a size change) is decoded again when the shard is re-written (with a warning
naming the file), and reading it for predictions is an error naming the file and the fix.
Two processes writing the same partition take turns on the partition's lock file: the second
finds the first's shard and reuses it; neither deletes a pixels file the other's index names.
Pixels are decoded on a thread pool and appended row by row with plain file writes, and
read back in batches with positional reads, so neither a partition's pixels nor its mapped
pages accumulate in the process's memory.

Re-writing a partition reuses the stored row of every image whose id, location and content
hash are unchanged (and that decoded before); only new, changed and previously failed images
are decoded. When nothing changed, the stored pair is kept as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from inference_assets.core.images.decoding import DEFAULT_MAX_PIXELS, describe_error, load_rgb, without_locations
from inference_assets.core.images.preprocessing import Preprocessing
from inference_assets.core.sources.local_files import LIST_ERROR_PREFIX
from inference_assets.core.storage.atomic import atomic_output, remove_orphaned_temporaries, temporary_sibling
from inference_assets.core.storage.layout import (
    PIXELS_FILE_KEY,
    index_path,
    is_pixels_file,
    new_pixels_path,
    pixels_file_named_by,
)
from inference_assets.core.system.allocator import keep_freed_memory
from inference_assets.core.system.parallel import bounded_map

INDEX_SCHEMA = pa.schema(
    [
        ("row", pa.int32()),
        ("image_id", pa.string()),
        ("uri", pa.string()),
        ("content_hash", pa.string()),
        ("status", pa.string()),
        ("stage", pa.string()),  # where a failed image failed: 'read' or 'decode'
        ("error", pa.string()),
        ("crc32", pa.uint32()),  # of the row's pixel bytes as stored (zeros for a failed image)
    ]
)

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STAGE_LIST = "list"  # the image's folder could not be listed (its manifest row carries the reason)
STAGE_READ = "read"
STAGE_DECODE = "decode"


@dataclass
class PixelShard:
    """A stored partition: its index table and its pixels file."""

    index: pa.Table
    path: Path  # the .npy file
    offset: int  # where row 0 starts in it
    shape: tuple[int, int, int, int]  # (N, 3, H, W)
    preprocessing: str  # fingerprint it was made with
    _checksums: np.ndarray | None = dataclasses.field(default=None, repr=False)
    # the pixels file, opened with its index: a writer that replaces the partition meanwhile
    # deletes the name, not these bytes, so a reader never finds its file gone
    _file: object = dataclasses.field(default=None, repr=False)

    @property
    def ok_rows(self) -> np.ndarray:
        status = self.index.column("status").to_numpy(zero_copy_only=False)
        return np.flatnonzero(status == STATUS_OK)

    @property
    def pixels(self) -> np.ndarray:
        """A read-only memory map of all rows, for random access."""
        return np.load(self.path, mmap_mode="r")

    def read_rows(self, start: int, stop: int, verify: bool = True) -> np.ndarray:
        """Rows ``start:stop`` as a fresh array, read with one positional read (no mapping kept).

        With ``verify``, a row whose bytes do not match its stored CRC-32 raises DamagedPixelsError."""
        out = self._read(start, stop)
        if verify:
            bad = self.damaged_rows(out, start)
            if bad:
                raise DamagedPixelsError(
                    f"pixels file {str(self.path)!r} is damaged: row {bad[0]} ({len(bad)} of rows {start}-{stop - 1}) "
                    "does not match its checksum; re-materialize preprocessed_images for this partition to rebuild it"
                )
        return out

    def _read(self, start: int, stop: int) -> np.ndarray:
        row_bytes = int(np.prod(self.shape[1:]))
        out = np.empty((stop - start, *self.shape[1:]), dtype=np.uint8)
        if out.size == 0:
            return out
        opened = contextlib.nullcontext(self._file) if self._file is not None else open(self.path, "rb", buffering=0)
        with opened as fh:
            if os.preadv(fh.fileno(), [memoryview(out).cast("B")], self.offset + start * row_bytes) != out.nbytes:
                raise DamagedPixelsError(
                    f"pixels file {str(self.path)!r} is shorter than its index says; "
                    "re-materialize preprocessed_images for this partition to rebuild it"
                )
        return out

    def damaged_rows(self, rows: np.ndarray, start: int) -> list[int]:
        """The row numbers among ``rows`` (read from row ``start`` on) that fail their CRC-32."""
        expected = self.checksums
        return [start + i for i, row in enumerate(rows) if zlib.crc32(row) != expected[start + i]]

    @property
    def checksums(self) -> np.ndarray:
        if self._checksums is None:
            self._checksums = self.index.column("crc32").to_numpy(zero_copy_only=False)
        return self._checksums

    def verify(self, rows: list[int], chunk: int = 64) -> list[int]:
        """The given rows (ascending) that are damaged or unreadable on disk; reads them in runs."""
        damaged: list[int] = []
        rows = sorted(rows)
        i = 0
        while i < len(rows):
            j = i + 1
            while j < len(rows) and rows[j] == rows[j - 1] + 1 and j - i < chunk:
                j += 1
            try:
                damaged += self.damaged_rows(self._read(rows[i], rows[j - 1] + 1), rows[i])
            except (OSError, ValueError):
                damaged += rows[i:j]
            i = j
        return damaged


class DamagedPixelsError(ValueError):
    """Stored pixel bytes do not match their checksum (or the file is shorter than its index)."""


@dataclass
class ShardWriteSummary:
    images: int
    ok: int
    failed: int
    reused: int  # images whose stored pixels were kept
    decoded: int  # images decoded in this call (ok or failed)
    rewritten: bool  # False when the stored shard was already up to date
    seconds: float
    bytes_written: int
    warnings: list[str] = dataclasses.field(default_factory=list)  # e.g. damaged stored pixels that were rebuilt


def _prepare(
    preprocessing: Preprocessing,
    uri: str,
    listing_error: str | None,
    max_pixels: int | None,
    opener: Callable[[str], object] | None,
) -> tuple[np.ndarray | None, str | None, str | None]:
    """(pixels, None, None) or (None, stage, reason): one bad image never fails a partition."""
    if listing_error is not None:
        stage = STAGE_LIST if listing_error.startswith(LIST_ERROR_PREFIX) else STAGE_READ
        return None, stage, without_locations(listing_error, uri)
    try:
        image = uri if opener is None else opener(uri)  # fetches remote bytes; a local path as is
    except Exception as exc:
        return None, STAGE_READ, describe_error(exc, uri)
    try:
        decoded = load_rgb(image, max_pixels, preprocessing.draft_request, preprocessing.resized_size)
        return preprocessing.resize_crop(decoded), None, None
    except Exception as exc:
        stage = STAGE_READ if isinstance(exc, OSError) and exc.filename is not None else STAGE_DECODE
        return None, stage, describe_error(exc, uri)


def _reusable_rows(previous: PixelShard | None) -> dict[tuple, int]:
    """(image_id, uri, content_hash) -> stored row, for the images that decoded before."""
    if previous is None:
        return {}
    columns = previous.index.select(["row", "image_id", "uri", "content_hash", "status"]).to_pydict()
    return {
        (image_id, uri, content_hash): row
        for row, image_id, uri, content_hash, status in zip(*columns.values(), strict=True)
        if status == STATUS_OK and content_hash is not None
    }


def write_pixel_shard(
    entries: pa.Table,
    preprocessing: Preprocessing,
    shard_dir: Path,
    partition: str,
    workers: int,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    reuse: bool = True,
    progress: Callable[[int], None] | None = None,
    opener: Callable[[str], object] | None = None,
) -> ShardWriteSummary:
    """Decode and resize/crop the manifest ``entries`` of one partition into the shard folder.

    ``opener(uri)`` gives what to decode (a local path, or a binary file of the image's bytes:
    the source's ``open``); without it ``uri`` is a local path. ``progress(n)`` is told of every
    ``n`` images done (decoded, failed or reused).

    Stored rows are verified against their checksums before they are reused: damaged ones are
    decoded again, and the summary's ``warnings`` name the file. The partition's lock file is
    held throughout, so a second writer of the same partition waits, then reuses this one's work.
    """
    progress = progress or (lambda n: None)
    start = time.perf_counter()
    keep_freed_memory()  # large decoded images: reuse freed heap instead of fresh zeroed pages
    shard_dir.mkdir(parents=True, exist_ok=True)
    with _partition_lock(shard_dir, partition):
        return _write_locked(
            entries, preprocessing, shard_dir, partition, workers, max_pixels, reuse, progress, opener, start
        )


@contextlib.contextmanager
def _partition_lock(shard_dir: Path, partition: str, shared: bool = False):
    """A ``flock`` on ``.<partition>.lock``: exclusive for the one writer of a partition at a time,
    shared for readers opening its index and pixels file (so they never see a half-replaced pair)."""
    with open(shard_dir / f".{partition}.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _write_locked(entries, preprocessing, shard_dir, partition, workers, max_pixels, reuse, progress, opener, start):
    remove_orphaned_temporaries(shard_dir, f"{partition}.")
    height, width = preprocessing.input_size
    count = entries.num_rows
    keys = list(
        zip(
            entries.column("image_id").to_pylist(),
            entries.column("uri").to_pylist(),
            entries.column("content_hash").to_pylist(),
            strict=True,
        )
    )
    listing_errors = entries.column("error").to_pylist() if "error" in entries.column_names else [None] * count
    warnings: list[str] = []
    previous = _read_if_complete(shard_dir, partition, warnings) if reuse else None
    reusable = _reusable_rows(previous)
    plan = [reusable.get(key) for key in keys]
    damaged = set(previous.verify([row for row in plan if row is not None])) if previous is not None else set()
    if damaged:
        warnings.append(
            f"pixels file {str(previous.path)!r}: {len(damaged)} stored row(s) do not match their checksum "
            "(damaged on disk); those images are decoded again"
        )
        plan = [None if row in damaged else row for row in plan]
    if previous is not None and previous.shape[0] == count and plan == list(range(count)):
        progress(count)
        return ShardWriteSummary(count, count, 0, count, 0, False, time.perf_counter() - start, 0, warnings)

    def produce(item):
        (_, uri, _), listing_error, stored_row = item
        if stored_row is not None:
            try:
                return previous.read_rows(stored_row, stored_row + 1)[0], None, None
            except (OSError, ValueError):  # damaged since it was verified: decode it again
                pass
        return _prepare(preprocessing, uri, listing_error, max_pixels, opener)

    pixels_path = new_pixels_path(shard_dir, partition)
    tmp_pixels = temporary_sibling(pixels_path)
    blank = bytes(3 * height * width)
    header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": (count, 3, height, width)}
    statuses, stages, errors, checksums = [], [], [], []
    try:
        with open(tmp_pixels, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            for array, stage, error in bounded_map(produce, zip(keys, listing_errors, plan), workers):
                if array is not None and array.shape != (3, height, width):
                    stage, error = STAGE_DECODE, f"ValueError: preprocessed shape {array.shape} != (3, {height}, {width})"
                    array = None
                data = blank if array is None else np.ascontiguousarray(array).data
                fh.write(data)
                checksums.append(zlib.crc32(data))
                progress(1)
                statuses.append(STATUS_FAILED if array is None else STATUS_OK)
                stages.append(stage)
                errors.append(error)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_pixels, pixels_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_pixels.unlink()

    index = pa.table(
        {
            "row": pa.array(range(count), pa.int32()),
            "image_id": entries.column("image_id"),
            "uri": entries.column("uri"),
            "content_hash": entries.column("content_hash"),
            "status": pa.array(statuses, pa.string()),
            "stage": pa.array(stages, pa.string()),
            "error": pa.array(errors, pa.string()),
            "crc32": pa.array(checksums, pa.uint32()),
        },
        schema=INDEX_SCHEMA,
    ).replace_schema_metadata(
        {
            PIXELS_FILE_KEY: pixels_path.name,
            "preprocessing": preprocessing.fingerprint,
            "shape": json.dumps([count, 3, height, width]),
        }
    )
    with atomic_output(index_path(shard_dir, partition)) as tmp:
        pq.write_table(index, tmp)
    _remove_stale_pixel_files(shard_dir, partition)
    ok = statuses.count(STATUS_OK)
    reused = sum(row is not None for row in plan)
    return ShardWriteSummary(
        images=count,
        ok=ok,
        failed=count - ok,
        reused=reused,
        decoded=count - reused,
        rewritten=True,
        seconds=time.perf_counter() - start,
        bytes_written=pixels_path.stat().st_size,
        warnings=warnings,
    )


def _remove_stale_pixel_files(shard_dir: Path, partition: str) -> None:
    """Remove the partition's pixels files that its current index does not name (called with the
    partition's lock held; temporaries being written are hidden ``.``-names, never matched here)."""
    try:
        keep = pixels_file_named_by(index_path(shard_dir, partition))
    except (OSError, KeyError, TypeError, ValueError):
        return  # no readable index: nothing is known to be stale
    for path in shard_dir.glob(f"{partition}.*.npy"):
        if path.name != keep and is_pixels_file(path.name, partition):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _read_if_complete(shard_dir: Path, partition: str, warnings: list[str]) -> PixelShard | None:
    """The stored shard, or None (nothing stored yet; or unusable, which adds a warning): then
    everything is decoded again."""
    try:
        return _open_shard(shard_dir, partition)  # this writer holds the partition's lock already
    except FileNotFoundError as exc:
        if index_path(shard_dir, partition).exists():  # an index naming a missing pixels file
            warnings.append(f"stored pixels of partition {partition!r} cannot be used ({exc}); rebuilding them")
        return None
    except (ValueError, OSError, KeyError) as exc:
        warnings.append(
            f"stored pixels of partition {partition!r} in {str(shard_dir)!r} cannot be used "
            f"({type(exc).__name__}: {' '.join(str(exc).split())}); rebuilding them"
        )
        return None


def read_pixel_shard(shard_dir: Path, partition: str) -> PixelShard:
    """The complete stored shard of a partition; raises FileNotFoundError if there is none.

    Opened while no writer replaces the partition (a shared lock), and its pixels file is kept
    open, so a writer that replaces the partition afterwards cannot take the rows from under it."""
    if not index_path(shard_dir, partition).exists():
        return _open_shard(shard_dir, partition)  # raises the one-line "materialize ... first"
    with _partition_lock(shard_dir, partition, shared=True):
        return _open_shard(shard_dir, partition)


def _npy_layout(fh) -> tuple[tuple[int, ...], int]:
    """(shape, offset of the first byte of data) of an open uint8 ``.npy`` file holding all its data."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, fortran_order, dtype = read_header(fh)
    offset = fh.tell()
    if dtype != np.uint8 or fortran_order:
        raise ValueError(f"pixels file {fh.name!r} is not C-ordered uint8")
    if os.fstat(fh.fileno()).st_size < offset + int(np.prod(shape)):
        raise ValueError(f"pixels file {fh.name!r} is shorter than its header says")
    return tuple(int(n) for n in shape), offset


def _open_shard(shard_dir: Path, partition: str) -> PixelShard:
    path = index_path(shard_dir, partition)
    if not path.exists():
        raise FileNotFoundError(
            f"no preprocessed pixels for partition {partition!r} in {str(shard_dir)!r}: "
            "materialize preprocessed_images for this partition first"
        )
    index = pq.read_table(path)
    if index.schema.names != INDEX_SCHEMA.names:
        raise ValueError(
            f"preprocessed pixels for partition {partition!r} in {str(shard_dir)!r} were written by an older "
            "version (columns differ): materialize preprocessed_images for this partition again"
        )
    meta = {k.decode(): v.decode() for k, v in (index.schema.metadata or {}).items()}
    pixels_file = open(shard_dir / meta[PIXELS_FILE_KEY.decode()], "rb", buffering=0)
    try:
        shape, offset = _npy_layout(pixels_file)
        if list(shape) != json.loads(meta["shape"]) or shape[0] != index.num_rows:
            raise ValueError(f"pixels file for partition {partition!r} does not match its index; re-run preprocessing")
    except BaseException:
        pixels_file.close()
        raise
    return PixelShard(
        index=index,
        path=shard_dir / meta[PIXELS_FILE_KEY.decode()],
        offset=offset,
        shape=shape,
        preprocessing=meta["preprocessing"],
        _file=pixels_file,
    )

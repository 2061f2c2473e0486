"""Per-partition preprocessed pixels: a uint8 ``(N, 3, H, W)`` ``.npy`` file plus a Parquet index.

Layout for partition ``P`` under a shard folder::

    P.<token>.npy   memory-mappable pixels, row i = index row i (zeros where decoding failed)
    P.parquet       index: row, image_id, uri, content_hash, status ('ok'|'failed'), error

The index is written last, atomically, and names its pixels file, so a killed run
leaves the previous complete pair in place; nothing half-written is ever read.
Pixels are decoded on a thread pool and appended row by row with plain file writes, and
read back in batches with positional reads, so neither a partition's pixels nor its mapped
pages accumulate in the process's memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_output, temporary_sibling
from .decoding import describe_error, load_rgb
from .parallel import bounded_map
from .preprocessing import Preprocessing

INDEX_SCHEMA = pa.schema(
    [
        ("row", pa.int32()),
        ("image_id", pa.string()),
        ("uri", pa.string()),
        ("content_hash", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)

STATUS_OK = "ok"
STATUS_FAILED = "failed"


@dataclass
class PixelShard:
    """A stored partition: its index table and its pixels file."""

    index: pa.Table
    path: Path  # the .npy file
    offset: int  # where row 0 starts in it
    shape: tuple[int, int, int, int]  # (N, 3, H, W)
    preprocessing: str  # fingerprint it was made with
    inputs: str  # inputs fingerprint (images + preprocessing)

    @property
    def ok_rows(self) -> np.ndarray:
        status = self.index.column("status").to_numpy(zero_copy_only=False)
        return np.flatnonzero(status == STATUS_OK)

    @property
    def pixels(self) -> np.ndarray:
        """A read-only memory map of all rows, for random access."""
        return np.load(self.path, mmap_mode="r")

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a fresh array, read with one positional read (no mapping kept)."""
        row_bytes = int(np.prod(self.shape[1:]))
        out = np.empty((stop - start, *self.shape[1:]), dtype=np.uint8)
        if out.size == 0:
            return out
        with open(self.path, "rb", buffering=0) as fh:
            fh.seek(self.offset + start * row_bytes)
            if fh.readinto(memoryview(out).cast("B")) != out.nbytes:
                raise ValueError(f"pixels file {str(self.path)!r} is shorter than its index says")
        return out


@dataclass
class ShardWriteSummary:
    images: int
    ok: int
    failed: int
    seconds: float
    bytes_written: int


def index_path(shard_dir: Path, partition: str) -> Path:
    return shard_dir / f"{partition}.parquet"


def inputs_fingerprint(entries: pa.Table, preprocessing: Preprocessing) -> str:
    """Identifies what a shard is made from: its images (id, path, content) and the preprocessing."""
    digest = hashlib.sha256(preprocessing.fingerprint.encode())
    for image_id, uri, content_hash in zip(
        entries.column("image_id").to_pylist(),
        entries.column("uri").to_pylist(),
        entries.column("content_hash").to_pylist(),
        strict=True,
    ):
        digest.update(f"\n{image_id}|{uri}|{content_hash}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:24]


def stored_inputs_fingerprint(shard_dir: Path, partition: str) -> str | None:
    """The inputs fingerprint of the complete stored shard, or None when there is none."""
    path = index_path(shard_dir, partition)
    if not path.exists():
        return None
    metadata = pq.read_schema(path).metadata or {}
    value = metadata.get(b"inputs")
    return value.decode() if value else None


def _prepare(preprocessing: Preprocessing, uri: str) -> tuple[np.ndarray | None, str | None]:
    try:
        return preprocessing.resize_crop(load_rgb(uri)), None
    except Exception as exc:  # one bad image never fails a partition
        return None, describe_error(exc)


def write_pixel_shard(
    entries: pa.Table,
    preprocessing: Preprocessing,
    shard_dir: Path,
    partition: str,
    workers: int,
) -> ShardWriteSummary:
    """Decode and resize/crop the manifest ``entries`` of one partition into the shard folder."""
    start = time.perf_counter()
    shard_dir.mkdir(parents=True, exist_ok=True)
    height, width = preprocessing.input_size
    count = entries.num_rows
    uris = entries.column("uri").to_pylist()
    pixels_path = shard_dir / f"{partition}.{uuid.uuid4().hex[:12]}.npy"
    tmp_pixels = temporary_sibling(pixels_path)
    statuses, errors = [], []
    blank = bytes(3 * height * width)
    header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": (count, 3, height, width)}
    try:
        with open(tmp_pixels, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            results = bounded_map(lambda uri: _prepare(preprocessing, uri), uris, workers)
            for array, error in results:
                if array is not None and array.shape != (3, height, width):
                    array, error = None, f"ValueError: preprocessed shape {array.shape} != (3, {height}, {width})"
                fh.write(blank if array is None else np.ascontiguousarray(array).data)
                statuses.append(STATUS_FAILED if array is None else STATUS_OK)
                errors.append(error if array is None else None)
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
            "error": pa.array(errors, pa.string()),
        },
        schema=INDEX_SCHEMA,
    ).replace_schema_metadata(
        {
            "pixels_file": pixels_path.name,
            "preprocessing": preprocessing.fingerprint,
            "inputs": inputs_fingerprint(entries, preprocessing),
            "shape": json.dumps([count, 3, height, width]),
        }
    )
    with atomic_output(index_path(shard_dir, partition)) as tmp:
        pq.write_table(index, tmp)
    _remove_stale_pixel_files(shard_dir, partition, keep=pixels_path.name)
    ok = statuses.count(STATUS_OK)
    return ShardWriteSummary(
        images=count,
        ok=ok,
        failed=count - ok,
        seconds=time.perf_counter() - start,
        bytes_written=pixels_path.stat().st_size,
    )


def _remove_stale_pixel_files(shard_dir: Path, partition: str, keep: str) -> None:
    for path in shard_dir.glob(f"{partition}.*.npy"):
        if path.name != keep:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def read_pixel_shard(shard_dir: Path, partition: str) -> PixelShard:
    """The complete stored shard of a partition; raises FileNotFoundError if there is none."""
    path = index_path(shard_dir, partition)
    if not path.exists():
        raise FileNotFoundError(
            f"no preprocessed pixels for partition {partition!r} in {str(shard_dir)!r}: "
            "materialize preprocessed_images for this partition first"
        )
    index = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (index.schema.metadata or {}).items()}
    pixels = np.load(shard_dir / meta["pixels_file"], mmap_mode="r")
    if list(pixels.shape) != json.loads(meta["shape"]) or pixels.shape[0] != index.num_rows:
        raise ValueError(f"pixels file for partition {partition!r} does not match its index; re-run preprocessing")
    return PixelShard(
        index=index,
        path=shard_dir / meta["pixels_file"],
        offset=pixels.offset,
        shape=tuple(pixels.shape),
        preprocessing=meta["preprocessing"],
        inputs=meta["inputs"],
    )

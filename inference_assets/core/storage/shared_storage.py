"""Per-partition files on shared storage (a bucket, or any URI pyarrow's filesystems write), so
steps on different machines cooperate: each step works in its machine's local work folder,
fetches the files it reads from the shared location first, and publishes what it writes.

Completeness carries over: an object store's upload makes an object appear whole (on other
filesystems a file is uploaded under a temporary name and renamed); a pixel shard's ``.npy`` is
published before the index that names it, and fetched after it, so a reader never pairs an
index with a missing or partial pixels file. A local copy is replaced only when the shared one
differs in size or modification time, and always through a local temporary and a rename.

Relative names are the same under both roots (see :mod:`.layout`).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from inference_assets.core.storage.atomic import atomic_output
from inference_assets.core.storage.filesystems import FileSystems
from inference_assets.core.storage.layout import index_path, is_pixels_file, pixels_file_named_by

_OBJECT_STORES = {"s3", "gcs"}


class SharedStorage:
    """Mirror of a local work folder at ``uri`` (``None``: not configured, every call is a no-op)."""

    def __init__(self, uri: str | None, work_dir: Path, filesystems: FileSystems | None = None):
        self.uri = uri.rstrip("/") if uri else None
        self.work_dir = Path(work_dir)
        if self.uri:
            self._fs, self._base = (filesystems or FileSystems()).resolve(self.uri)
            self._atomic_put = self._fs.type_name in _OBJECT_STORES

    @property
    def enabled(self) -> bool:
        return self.uri is not None

    def _remote(self, local: Path) -> str:
        return f"{self._base}/{local.resolve().relative_to(self.work_dir.resolve()).as_posix()}"

    def publish(self, local: Path) -> None:
        """Upload a complete local file to its place under the shared root."""
        if not self.enabled:
            return
        remote = self._remote(local)
        current = self._fs.get_file_info(remote)
        stat = local.stat()
        if current.type == pafs.FileType.File and current.size == stat.st_size and current.mtime_ns == stat.st_mtime_ns:
            return  # this very copy was published (or fetched) before
        self._fs.create_dir(remote.rpartition("/")[0], recursive=True)
        target = remote if self._atomic_put else f"{remote}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(local, "rb") as src, self._fs.open_output_stream(target) as dst:
            for block in iter(lambda: src.read(8 << 20), b""):
                dst.write(block)
        if not self._atomic_put:
            self._fs.move(target, remote)
        self._mirror_mtime(local, self._fs.get_file_info(remote))

    def fetch(self, local: Path) -> bool:
        """Bring the shared copy of ``local`` here if it exists and differs; True if one exists."""
        if not self.enabled:
            return local.exists()
        info = self._fs.get_file_info(self._remote(local))
        if info.type != pafs.FileType.File:
            return local.exists()
        if local.exists():
            stat = local.stat()
            if stat.st_size == info.size and info.mtime_ns is not None and stat.st_mtime_ns == info.mtime_ns:
                return True
        with atomic_output(local) as tmp:
            with self._fs.open_input_stream(info.path) as src, open(tmp, "wb") as dst:
                for block in iter(lambda: src.read(8 << 20), b""):
                    dst.write(block)
        self._mirror_mtime(local, info)
        return True

    @staticmethod
    def _mirror_mtime(local: Path, info: pafs.FileInfo) -> None:
        if info.mtime_ns is not None:
            os.utime(local, ns=(info.mtime_ns, info.mtime_ns))

    def publish_pixel_shard(self, shard_dir: Path, partition: str) -> None:
        """The shard's pixels file, then its index (which names it); older pixels files are removed."""
        if not self.enabled:
            return
        index = index_path(shard_dir, partition)
        if not index.exists():
            return
        pixels = pixels_file_named_by(index)
        self.publish(shard_dir / pixels)
        self.publish(index)
        folder = self._remote(index).rpartition("/")[0]
        for info in self._fs.get_file_info(pafs.FileSelector(folder)):
            name = info.path.rpartition("/")[2]
            if is_pixels_file(name, partition) and name != pixels:
                with contextlib.suppress(FileNotFoundError, OSError):
                    self._fs.delete_file(info.path)

    def fetch_pixel_shard(self, shard_dir: Path, partition: str) -> bool:
        """The shard's index and the pixels file it names; the index is put in place last."""
        index = index_path(shard_dir, partition)
        if not self.enabled:
            return index.exists()
        info = self._fs.get_file_info(self._remote(index))
        if info.type != pafs.FileType.File:
            return index.exists()
        if index.exists() and index.stat().st_size == info.size and index.stat().st_mtime_ns == info.mtime_ns:
            return True
        staged = shard_dir / f".{partition}.index-{uuid.uuid4().hex[:8]}.parquet"
        shard_dir.mkdir(parents=True, exist_ok=True)
        try:
            with self._fs.open_input_stream(info.path) as src:
                staged.write_bytes(src.read())
            self.fetch(shard_dir / pixels_file_named_by(staged))
            os.replace(staged, index)
            self._mirror_mtime(index, info)
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
        return True

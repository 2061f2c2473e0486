"""What every image source provides: a sorted listing of entries, and a way to open one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class SourceEntry:
    """One image as a source lists it (before hashing).

    ``key`` is the image's stable name inside the source (its relative path, object key or
    row id) as exact bytes; the image id is derived from it. ``size``/``mtime_ns`` are what
    the listing knows (``None`` where the source has no such notion): an unchanged pair lets
    the manifest keep an earlier content hash without reading the image again.
    ``content_hash`` is set when the listing had to read the bytes anyway (database BLOBs).
    ``version`` is what else changes when the content changes without size or mtime changing
    (local files: inode and ctime, which a rewrite in place or a replace-by-rename changes and
    ``os.utime`` cannot set back); ``None`` where the source offers nothing more (objects:
    pyarrow's listing gives no ETag, so size + mtime are trusted).
    ``unlisted`` marks a folder that could not be listed (``error`` says why): the manifest
    keeps the images it knew under it, as failures, or records the folder itself.
    """

    key: bytes
    uri: str
    size: int | None = None
    mtime_ns: int | None = None
    label: str | None = None
    error: str | None = None
    content_hash: str | None = None
    version: str | None = None
    unlisted: bool = False


class ImageSource(Protocol):
    """A collection of images."""

    description: str

    def entries(self) -> Iterator[SourceEntry]:
        """Every image, in a deterministic order (sorted by key)."""

    def open(self, uri: str) -> str | bytes | BinaryIO:
        """The image behind ``uri``: a local path, or a readable binary file (raises on failure)."""

    def content_hash(self, uri: str) -> str:
        """``sha256:<hex>`` of the image's bytes."""


def parent_label(key: str) -> str | None:
    """The name of the folder an image sits in, or None directly under the root."""
    parent = key.rpartition("/")[0].rpartition("/")[2]
    return parent or None

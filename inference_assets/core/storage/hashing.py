"""Content hashes of files."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO


def stream_sha256(readable: BinaryIO) -> str:
    """The SHA-256 of everything left in a binary stream, as hex, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    for block in iter(lambda: readable.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    with open(path, "rb") as fh:
        return stream_sha256(fh)

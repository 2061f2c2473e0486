"""Parquet files this project writes and reads back: page checksums written, and verified on read.

A damaged file (truncated, unreadable, a page failing its checksum) raises on read; callers treat
it as absent and say so with :func:`damaged`.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WRITE_OPTIONS = {"write_page_checksum": True}  # for pq.ParquetWriter
READ_ERRORS = (OSError, pa.ArrowException)  # what reading a damaged file raises


def read_verified(path: Path, columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
    """The table at ``path``, its page checksums verified (raises one of READ_ERRORS if damaged)."""
    return pq.read_table(path, columns=columns, schema=schema, page_checksum_verification=True)


def damaged(what: str, path: Path, exc: BaseException) -> str:
    """The start of a one-line message: ``<what> '<path>' is damaged (<reason>)``."""
    return f"{what} {str(path)!r} is damaged ({' '.join(str(exc).split())[:200]})"

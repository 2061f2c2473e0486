"""Images from a SQL database through SQLAlchemy (SQLite, PostgreSQL, ...).

The query decides the kind of source:

- columns ``id`` and ``image`` (BLOB / bytea), optionally ``label``: the images themselves.
  Listing streams every row once, hashing the bytes; decoding fetches one image by id with
  ``SELECT image FROM (<query>) AS q WHERE q.id = :id``.
- a ``uri`` column (optionally ``id`` and ``label``): a table of image locations, read like
  a Parquet/CSV one (:mod:`.table`).

A NULL ``image`` or ``id`` is listed with an error (a failure row downstream). The database
URL is shown with its password hidden in every message and URI.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from urllib.parse import quote, unquote

import sqlalchemy as sa

from inference_assets.core.errors import ConfigError
from inference_assets.core.sources.base import SourceEntry
from inference_assets.core.sources.table import LocationTableSource
from inference_assets.core.storage.filesystems import FileSystems


def make_engine(url: str) -> sa.Engine:
    try:
        return sa.create_engine(url, pool_pre_ping=True)
    except Exception as exc:
        raise ConfigError(
            f"cannot use database URL {_safe(url)!r}: {' '.join(str(exc).split())} "
            "(set database_url to a SQLAlchemy URL such as sqlite:////path/images.db or "
            "postgresql+psycopg://user@host/db; PostgreSQL needs pip install -e '.[postgres]')",
            settings=["database_url"],
        ) from None


def _safe(url: str) -> str:
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def _query_error(url: str, exc: Exception) -> ConfigError:
    first = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
    return ConfigError(
        f"the image query failed on {_safe(url)}: {first} "
        "(check database_url and image_query)",
        settings=["database_url", "image_query"],
    )


def sql_source(url: str, query: str, filesystems: FileSystems | None = None):
    """The source a query describes: image BLOBs, or a table of image locations."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            columns = [c.lower() for c in conn.execute(sa.text(f"SELECT * FROM ({query}) AS q WHERE 1 = 0")).keys()]
            if "image" in columns and "id" in columns:
                return DatabaseBlobSource(engine, url, query)
            if "uri" in columns:
                rows = [dict(zip(columns, row)) for row in conn.execute(sa.text(query))]
                return LocationTableSource(rows, f"image query on {_safe(url)}", filesystems)
    except ConfigError:
        raise
    except Exception as exc:
        raise _query_error(url, exc) from None
    raise ConfigError(
        f"the image query on {_safe(url)} returns columns {', '.join(columns)}: return either id and image "
        "(the image bytes) or uri (a location), optionally with label"
    )


class DatabaseBlobSource:
    def __init__(self, engine: sa.Engine, url: str, query: str):
        self.engine = engine
        self.query = query
        self.description = f"{_safe(url)} ({query.strip().splitlines()[0][:80]})"
        self._uri_prefix = f"{_safe(url)}#"
        self._url = url

    def uri_for(self, ident) -> str:
        kind = "int" if isinstance(ident, int) else "str"
        return f"{self._uri_prefix}{kind}={quote(str(ident), safe='')}"

    def _ident(self, uri: str):
        kind, _, value = uri.rpartition("#")[2].partition("=")
        value = unquote(value)
        return int(value) if kind == "int" else value

    def entries(self) -> Iterator[SourceEntry]:
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=256).execute(sa.text(self.query))
                columns = [c.lower() for c in result.keys()]
                rows = []
                for number, values in enumerate(result, start=1):
                    rows.append(self._entry(dict(zip(columns, values)), number))
        except Exception as exc:
            raise _query_error(self._url, exc) from None
        rows.sort(key=lambda entry: entry.key)
        yield from rows

    def _entry(self, row: dict, number: int) -> SourceEntry:
        ident, data, label = row.get("id"), row.get("image"), row.get("label")
        label = None if label is None else str(label)
        if ident is None:
            return SourceEntry(f"<row {number} with NULL id>".encode(), "", label=label, error="the row's id is NULL")
        key = str(ident).encode("utf-8", "surrogateescape")
        uri = self.uri_for(ident)
        if data is None:
            return SourceEntry(key, uri, label=label, error="the image bytes are NULL")
        data = bytes(data)
        if not data:
            return SourceEntry(key, uri, size=0, label=label, error="the image bytes are empty")
        return SourceEntry(
            key, uri, size=len(data), label=label, content_hash=f"sha256:{hashlib.sha256(data).hexdigest()}"
        )

    def read_bytes(self, uri: str) -> bytes:
        statement = sa.text(f"SELECT image FROM ({self.query}) AS q WHERE q.id = :id")
        with self.engine.connect() as conn:
            row = conn.execute(statement, {"id": self._ident(uri)}).first()
        if row is None:
            raise FileNotFoundError(2, "no row with this id any more", uri)
        if row[0] is None:
            raise ValueError("the image bytes are NULL")
        return bytes(row[0])

    def open(self, uri: str):
        return io.BytesIO(self.read_bytes(uri))

    def content_hash(self, uri: str) -> str:
        return f"sha256:{hashlib.sha256(self.read_bytes(uri)).hexdigest()}"

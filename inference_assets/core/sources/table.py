"""A table of image locations: a Parquet or CSV file, or a SQL query, with a ``uri`` column.

Optional columns: ``id`` (the image's stable name; default: the URI itself) and ``label``.
URIs may be local paths or any URI :mod:`.filesystems` opens (``s3://bucket/key``...). Each
location is looked up (size, modification time) when listed: a missing object, an empty or
NULL ``uri`` or an unreachable location is listed with an error, not skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from inference_assets.core.errors import ConfigError
from inference_assets.core.sources.base import SourceEntry
from inference_assets.core.storage.filesystems import FileSystems, is_uri


def read_location_file(location: str, filesystems: FileSystems) -> pa.Table:
    """A Parquet or CSV file (local or a URI) as a table."""
    suffix = Path(location.split("?")[0]).suffix.lower()
    try:
        fs, path = filesystems.resolve(location)
        with fs.open_input_file(path) as fh:
            if suffix == ".parquet":
                return pq.read_table(fh)
            if suffix in (".csv", ".tsv"):
                options = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
                convert = pacsv.ConvertOptions(column_types={"id": pa.string(), "uri": pa.string(), "label": pa.string()})
                return pacsv.read_csv(fh, parse_options=options, convert_options=convert)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigError(
            f"cannot read the image table {location!r}: {' '.join(str(exc).split())} "
            "(set image_table to a readable .parquet or .csv file)",
            settings=["image_table"],
        ) from None
    raise ConfigError(f"image table {location!r} is neither .parquet nor .csv: give a file with one of those endings")


def rows_from_table(table: pa.Table, what: str) -> list[dict]:
    columns = {name.lower(): name for name in table.column_names}
    if "uri" not in columns:
        raise ConfigError(
            f"{what} has no 'uri' column (columns: {', '.join(table.column_names)}): "
            "return the image location as a column named uri (optionally id and label)"
        )
    wanted = [columns[c] for c in ("uri", "id", "label") if c in columns]
    table = table.select(wanted).rename_columns([c.lower() for c in wanted])
    return table.to_pylist()


class LocationTableSource:
    def __init__(self, rows: list[dict], description: str, filesystems: FileSystems | None = None):
        self.filesystems = filesystems or FileSystems()
        self.description = description
        self._rows = rows

    @classmethod
    def from_file(cls, location: str, filesystems: FileSystems | None = None) -> LocationTableSource:
        filesystems = filesystems or FileSystems()
        table = read_location_file(location, filesystems)
        return cls(rows_from_table(table, f"image table {location!r}"), location, filesystems)

    def entries(self) -> Iterator[SourceEntry]:
        keyed = []
        seen: dict[bytes, int] = {}
        for number, row in enumerate(self._rows, start=1):
            uri = row.get("uri")
            uri = str(uri).strip() if uri is not None else ""
            ident = row.get("id")
            key_text = str(ident) if ident is not None and str(ident) != "" else (uri or f"<row {number}>")
            key = key_text.encode("utf-8", "surrogateescape")
            if key in seen:
                raise ConfigError(
                    f"{self.description}: rows {seen[key]} and {number} have the same id {key_text!r}: "
                    "ids (or URIs, when there is no id column) must be unique"
                )
            seen[key] = number
            label = row.get("label")
            keyed.append((key, uri, None if label is None else str(label)))
        for key, uri, label in sorted(keyed, key=lambda item: item[0]):
            yield self._entry(key, uri, label)

    def _entry(self, key: bytes, uri: str, label: str | None) -> SourceEntry:
        if not uri:
            return SourceEntry(key, uri, label=label, error="the table row has no uri (NULL or empty)")
        try:
            info = self.filesystems.info(uri)
        except Exception as exc:  # an unknown scheme, an unreachable bucket...
            return SourceEntry(key, uri, label=label, error=f"cannot reach: {' '.join(str(exc).split())}"[:500])
        if info.type == pafs.FileType.NotFound:
            return SourceEntry(key, uri, label=label, error="missing: no object or file at this uri")
        if info.type != pafs.FileType.File:
            return SourceEntry(key, uri, label=label, error="not a file (a folder or prefix)")
        return SourceEntry(key, uri, size=info.size, mtime_ns=info.mtime_ns, label=label)

    def open(self, uri: str):
        return uri if not is_uri(uri) else self.filesystems.open(uri)

    def content_hash(self, uri: str) -> str:
        return self.filesystems.content_hash(uri)

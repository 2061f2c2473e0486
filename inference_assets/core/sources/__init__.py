"""Where images come from: a source lists its images and opens each one by its ``uri``.

Sources (pick one with :func:`open_source`):

- :class:`~.folder.FolderSource`: a local folder tree (the label is the parent folder).
- :class:`~.object_store.ObjectStoreSource`: a bucket prefix or any URI pyarrow's filesystems
  understand (``s3://bucket/prefix``, ``gs://...``, ``file://...``; the label is the parent "folder").
- :class:`~.table.LocationTableSource`: a table of image locations (a Parquet or CSV file, or a
  SQL query) with a ``uri`` column and optional ``id`` and ``label`` columns.
- :class:`~.database.DatabaseBlobSource`: images stored in a database, from a SQL query
  returning ``id`` and ``image`` (BLOB/bytea) and optionally ``label``.

A row that cannot be read (a missing object, NULL bytes, a bad URI) is listed with an
``error``, so it becomes a failure row downstream instead of stopping the listing.
"""

from inference_assets.core.sources.base import ImageSource, SourceEntry
from inference_assets.core.sources.config import SourceConfig, open_source

__all__ = ["ImageSource", "SourceConfig", "SourceEntry", "open_source"]

"""Which source a configuration names (a folder, a bucket URI, an image table, or a SQL query)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from inference_assets.core.sources.base import ImageSource
from inference_assets.core.storage.filesystems import FileSystems, S3Options, is_uri

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class SourceConfig:
    """In order of precedence: ``image_query`` (with ``database_url``), ``image_table``, ``image_root``."""

    image_root: str = ""
    image_table: str | None = None
    database_url: str | None = None
    image_query: str | None = None
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    follow_external_symlinks: bool = False
    s3: S3Options = field(default_factory=S3Options)

    @property
    def kind(self) -> str:
        if self.image_query:
            return "query"
        if self.image_table:
            return "table"
        return "bucket" if is_uri(self.image_root) and not self.image_root.startswith("file://") else "folder"


def open_source(config: SourceConfig) -> ImageSource:
    """The source for ``config``; raises a one-line ConfigError when it cannot be used."""
    from ..errors import ConfigError
    from .database import sql_source
    from .folder import FolderSource
    from .object_store import ObjectStoreSource
    from .table import LocationTableSource

    filesystems = FileSystems(config.s3)
    if config.kind == "query":
        if not config.database_url:
            raise ConfigError(
                "image_query is set but database_url is not: set database_url "
                "(a SQLAlchemy URL such as sqlite:////path/images.db)",
                settings=["database_url"],
            )
        return sql_source(config.database_url, config.image_query, filesystems)
    if config.kind == "table":
        return LocationTableSource.from_file(config.image_table, filesystems)
    if config.kind == "bucket":
        return ObjectStoreSource(config.image_root, config.extensions, filesystems)
    root = config.image_root[len("file://") :] if config.image_root.startswith("file://") else config.image_root
    return FolderSource(Path(root), config.extensions, config.follow_external_symlinks)

"""The ``source`` resource: where images come from (a folder, a bucket prefix, an image table or a
SQL query)."""

from collections.abc import Iterator

from dagster import ConfigurableResource
from pydantic import Field

from inference_assets.core.sources import ImageSource, SourceConfig, SourceEntry, open_source
from inference_assets.core.sources.config import IMAGE_EXTENSIONS
from inference_assets.resources.object_store import ObjectStoreResource, resolved_value, s3_options
from inference_assets.settings import variables_named


class ImageSourceResource(ConfigurableResource):
    """The image source: a folder tree, a bucket prefix, a table of image locations, or a SQL
    query (of locations or of the images' bytes); objects are read with ``object_store``."""

    image_root: str = Field(
        default="",
        description="Folder tree of images to classify (recursive), or a bucket URI such as s3://bucket/prefix "
        "(any URI pyarrow's filesystems understand). Used when neither image_table nor image_query is set.",
    )
    image_table: str | None = Field(
        default=None,
        description="A Parquet or CSV file (local path or URI) listing images: a 'uri' column, optional 'id' and "
        "'label' columns.",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL for image_query, e.g. sqlite:////data/images.db or "
        "postgresql+psycopg://user:pass@host/db (give it as an EnvVar to keep the password out of the UI)."
    )
    image_query: str | None = Field(
        default=None,
        description="SQL returning either 'id' and 'image' (the bytes, BLOB/bytea) or 'uri' (a location), "
        "optionally 'label'.",
    )
    extensions: list[str] = Field(
        default=list(IMAGE_EXTENSIONS), description="File name endings that count as images (case-insensitive)."
    )
    follow_external_symlinks: bool = Field(
        default=False, description="Follow symbolic links whose target lies outside image_root."
    )
    always_rehash: bool = Field(
        default=False,
        description="Read and hash every image on each manifest build, instead of trusting an unchanged "
        "size + mtime + inode + ctime (local files) or size + mtime (objects) to mean unchanged content.",
    )
    # a nested resource, not a config field: the S3 endpoint and credentials objects are read with
    object_store: ObjectStoreResource

    def check_configuration(self) -> None:
        """Before any run (``make run``'s preflight): a source that can be opened (a missing folder,
        an unusable URL or query); each problem is a one-line ConfigError."""
        self.open_source()

    @property
    def source_config(self) -> SourceConfig:
        return SourceConfig(
            image_root=self.image_root,
            image_table=self.image_table or None,
            database_url=resolved_value(self.database_url) or None,  # an EnvVar outside a run: its value
            image_query=self.image_query or None,
            extensions=tuple(self.extensions),
            follow_external_symlinks=self.follow_external_symlinks,
            s3=s3_options(self.object_store),
        )

    def open_source(self) -> ImageSource:
        """The configured source (raises a one-line ConfigError when it cannot be used)."""
        with variables_named():
            return open_source(self.source_config)

    def entries(self) -> Iterator[SourceEntry]:
        """The source's listing; one that cannot be listed stops with a one-line ConfigError naming the
        variable to set (the sensor and the schedule list through this)."""
        with variables_named():
            yield from self.open_source().entries()

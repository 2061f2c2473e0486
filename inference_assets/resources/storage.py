"""Where images come from and where intermediate files go."""

from pathlib import Path

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field

from inference_assets.core.images.decoding import DEFAULT_MAX_PIXELS
from inference_assets.core.sources import ImageSource, SourceConfig, open_source
from inference_assets.core.sources.config import IMAGE_EXTENSIONS
from inference_assets.core.storage.filesystems import FileSystems, S3Options
from inference_assets.core.storage.layout import Layout, check_work_dir
from inference_assets.core.storage.shared_storage import SharedStorage
from inference_assets.core.storage.work_area import WorkArea


class StorageResource(ConfigurableResource):
    """The image source (a folder, a bucket prefix, an image table or a SQL query) and the work
    folder for manifests, pixels and result files."""

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
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, ...); default: AWS_ENDPOINT_URL or AWS itself."
    )
    s3_region: str | None = Field(default=None, description="S3 region; default: AWS_REGION / AWS_DEFAULT_REGION.")
    s3_access_key_id: str | None = Field(default=None, description="Default: AWS_ACCESS_KEY_ID (or a profile).")
    s3_secret_access_key: str | None = Field(
        default=None, description="Default: AWS_SECRET_ACCESS_KEY (give it as an EnvVar)."
    )
    work_dir: str = Field(description="Folder for the manifest, preprocessed pixels and per-partition results.")
    shared_dir: str | None = Field(
        default=None,
        description="Shared location (e.g. s3://bucket/inference-work) mirroring work_dir, so steps on different "
        "machines cooperate: each step fetches the files it reads from there and publishes what it writes.",
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
    max_image_pixels: int | None = Field(
        default=DEFAULT_MAX_PIXELS,
        description="Decompression-bomb guard: images with more pixels (width x height), or whose model resize "
        "would have more (extreme aspect ratios), fail from their header instead of being decoded; null disables it.",
    )

    def setup_for_execution(self, context: InitResourceContext) -> None:
        check_work_dir(self.layout.work_dir)  # a file, or a folder this user cannot write: one line

    def check_configuration(self) -> None:
        """Before any run (``make run``'s preflight): the work folder, and a source that can be opened
        (a missing folder, an unusable URL or query); each problem is a one-line ConfigError."""
        check_work_dir(self.layout.work_dir)
        self.open_source()

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.work_dir).expanduser())

    @property
    def source_config(self) -> SourceConfig:
        return SourceConfig(
            image_root=self.image_root,
            image_table=self.image_table or None,
            database_url=self.database_url or None,
            image_query=self.image_query or None,
            extensions=tuple(self.extensions),
            follow_external_symlinks=self.follow_external_symlinks,
            s3=S3Options(
                endpoint_url=self.s3_endpoint_url or None,
                region=self.s3_region or None,
                access_key_id=self.s3_access_key_id or None,
                secret_access_key=self.s3_secret_access_key or None,
            ),
        )

    @property
    def shared(self) -> SharedStorage:
        """The shared mirror of the work folder (a no-op when shared_dir is not set)."""
        return SharedStorage(self.shared_dir or None, self.layout.work_dir, FileSystems(self.source_config.s3))

    @property
    def work_area(self) -> WorkArea:
        """The work folder's files, with the shared mirror built in."""
        return WorkArea(self.layout, self.shared)

    def open_source(self) -> ImageSource:
        """The configured source (raises a one-line ConfigError when it cannot be used)."""
        return open_source(self.source_config)

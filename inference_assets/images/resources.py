"""Where images come from and where intermediate files go."""

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from inference_assets.core.decoding import DEFAULT_MAX_PIXELS
from inference_assets.core.layout import Layout
from inference_assets.core.manifest import IMAGE_EXTENSIONS


class StorageResource(ConfigurableResource):
    """The image source folder and the work folder for manifests, pixels and result files."""

    image_root: str = Field(description="Folder tree of images to classify (recursive).")
    work_dir: str = Field(description="Folder for the manifest, preprocessed pixels and per-partition results.")
    extensions: list[str] = Field(
        default=list(IMAGE_EXTENSIONS), description="File name endings that count as images (case-insensitive)."
    )
    follow_external_symlinks: bool = Field(
        default=False, description="Follow symbolic links whose target lies outside image_root."
    )
    max_image_pixels: int | None = Field(
        default=DEFAULT_MAX_PIXELS,
        description="Decompression-bomb guard: images with more pixels (width x height) fail instead of "
        "being decoded; null disables the guard.",
    )

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.work_dir).expanduser())

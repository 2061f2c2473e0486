"""Where images come from and where intermediate files go."""

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from inference_assets.core.layout import Layout
from inference_assets.core.manifest import IMAGE_EXTENSIONS


class StorageResource(ConfigurableResource):
    """The image source folder and the work folder for manifests, pixels and result files."""

    image_root: str = Field(description="Folder tree of images to classify (recursive).")
    work_dir: str = Field(description="Folder for the manifest, preprocessed pixels and per-partition results.")
    extensions: list[str] = Field(
        default=list(IMAGE_EXTENSIONS), description="File name endings that count as images (case-insensitive)."
    )

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.work_dir).expanduser())

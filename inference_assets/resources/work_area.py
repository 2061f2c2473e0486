"""The ``work_area`` resource: the work folder the intermediate files go to (manifest, pixels,
per-partition results, report), and its shared mirror."""

from pathlib import Path

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field

from inference_assets.core.storage.filesystems import FileSystems
from inference_assets.core.storage.layout import Layout, check_work_dir
from inference_assets.core.storage.shared_storage import SharedStorage
from inference_assets.core.storage.work_area import WorkArea
from inference_assets.resources.object_store import ObjectStoreResource, s3_options
from inference_assets.settings import variables_named


class WorkAreaResource(ConfigurableResource):
    """The work folder for manifests, pixels and result files, and the shared location mirroring
    it for steps on different machines (read and written with ``object_store``)."""

    work_dir: str = Field(description="Folder for the manifest, preprocessed pixels and per-partition results.")
    shared_dir: str | None = Field(
        default=None,
        description="Shared location (e.g. s3://bucket/inference-work) mirroring work_dir, so steps on different "
        "machines cooperate: each step fetches the files it reads from there and publishes what it writes.",
    )
    # a nested resource, not a config field: the S3 endpoint and credentials shared_dir is used with
    object_store: ObjectStoreResource

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self.check_configuration()  # a file, or a folder this user cannot write: one line

    def check_configuration(self) -> None:
        """Before any run (``make run``'s preflight): a work folder this user can write."""
        with variables_named():
            check_work_dir(self.layout.work_dir)

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.work_dir).expanduser())

    @property
    def filesystems(self) -> FileSystems:
        """What opens shared_dir (with the object store's endpoint and credentials)."""
        return FileSystems(s3_options(self.object_store))

    @property
    def shared(self) -> SharedStorage:
        """The shared mirror of the work folder (a no-op when shared_dir is not set)."""
        return SharedStorage(self.shared_dir or None, self.layout.work_dir, self.filesystems)

    @property
    def files(self) -> WorkArea:
        """The work folder's files, with the shared mirror built in."""
        return WorkArea(self.layout, self.shared)

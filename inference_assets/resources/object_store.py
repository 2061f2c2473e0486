"""The ``object_store`` resource: the S3 (or S3-compatible) endpoint and credentials, in one place.

Both the image source (``source``: an ``s3://`` root or table, locations in a table) and the work
area's shared mirror (``work_area.shared_dir``) read objects with them: each of those resources
takes it as a nested resource (Dagster's "resources that depend on other resources").
``definitions.default_resources`` hands both the same one, configurable at launch under its own
key, so a run sets the endpoint and credentials once.
"""

from typing import Any

from dagster import ConfigurableResource, EnvVar
from pydantic import Field

from inference_assets.core.storage.filesystems import S3Options


def resolved_value(value: Any) -> Any:
    """A field's value; an ``EnvVar`` (read by Dagster when a run starts) is read here when the
    resource is used outside a run (``make run``'s preflight, a script)."""
    return value.get_value() if isinstance(value, EnvVar) else value


class ObjectStoreResource(ConfigurableResource):
    """S3 endpoint and credentials; each one unset falls back to the usual ``AWS_*`` variables (or
    a profile) of the process that reads the objects."""

    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, ...); default: AWS_ENDPOINT_URL or AWS itself."
    )
    region: str | None = Field(default=None, description="S3 region; default: AWS_REGION / AWS_DEFAULT_REGION.")
    access_key_id: str | None = Field(default=None, description="Default: AWS_ACCESS_KEY_ID (or a profile).")
    secret_access_key: str | None = Field(
        default=None, description="Default: AWS_SECRET_ACCESS_KEY (give it as an EnvVar)."
    )

    @property
    def options(self) -> S3Options:
        return S3Options(
            endpoint_url=resolved_value(self.endpoint_url) or None,
            region=resolved_value(self.region) or None,
            access_key_id=resolved_value(self.access_key_id) or None,
            secret_access_key=resolved_value(self.secret_access_key) or None,
        )


def s3_options(store: Any) -> S3Options:
    """The options of a nested ``object_store``. In a run (or a sensor or schedule tick) Dagster
    hands it over configured; outside one, the one ``default_resources`` made is still the
    launch-time placeholder (``configure_at_launch``): the values it was given."""
    if isinstance(store, ObjectStoreResource):
        return store.options
    return ObjectStoreResource(**store.data).options

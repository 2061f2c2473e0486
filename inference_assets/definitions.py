"""The Dagster code location: assets, checks and resources."""

from dagster import Definitions, EnvVar, load_asset_checks_from_modules, load_assets_from_modules
from pydantic import ValidationError

from inference_assets.automation.schedules import nightly_pending_work
from inference_assets.automation.sensors import new_images, refresh_results
from inference_assets.core.errors import ConfigError
from inference_assets.core.models.loading import DEFAULT_MODEL, DEFAULT_WEIGHTS
from inference_assets.core.models.versions import asset_versions
from inference_assets.executor import steps_executor
from inference_assets.images import assets as image_assets
from inference_assets.images import checks as image_checks
from inference_assets.inference import assets as prediction_assets
from inference_assets.jobs import PIPELINE
from inference_assets.kubernetes import kubernetes_executor  # imports dagster_k8s only when called
from inference_assets.report import assets as report_assets
from inference_assets.resources import (
    DeviceResource,
    ImageSourceResource,
    ModelResource,
    ObjectStoreResource,
    PreprocessingResource,
    WarehouseResource,
    WorkAreaResource,
)
from inference_assets.settings import DATA_DIR, duckdb_path, env, flag_env, number_env, optional_env
from inference_assets.warehouse import assets as warehouse_assets
from inference_assets.warehouse import checks as warehouse_checks

ASSET_CHECKS = load_asset_checks_from_modules([image_checks, warehouse_checks])

# the environment variable behind each resource field default_resources() sets, for error messages
_ENV_OF = {
    "image_root": "INFERENCE_IMAGE_ROOT", "image_table": "INFERENCE_IMAGE_TABLE", "image_query": "INFERENCE_IMAGE_QUERY",
    "work_dir": "INFERENCE_WORK_DIR", "shared_dir": "INFERENCE_SHARED_DIR", "name": "INFERENCE_MODEL",
    "weights": "INFERENCE_WEIGHTS", "class_names": "INFERENCE_CLASS_NAMES", "card": "INFERENCE_MODEL_CARD",
    "device": "INFERENCE_DEVICE", "precision": "INFERENCE_PRECISION", "runtime": "INFERENCE_RUNTIME",
    "converted_dir": "INFERENCE_CONVERTED_DIR",
    "database": "INFERENCE_DUCKDB_PATH",
}


def _from_env(resource: type, **fields):
    """``resource(**fields)``; a value its fields refuse is one line naming the environment variable."""
    try:
        return resource(**fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        raise ConfigError(
            f"{_ENV_OF.get(field, field)}={error.get('input')!r} is not valid: {error['msg']}"
        ) from None


def default_resources() -> dict:
    """Resources configured from the environment (see ``settings.py``)."""
    # the S3 endpoint and credentials: set at launch under their own key, shared by source and work_area
    object_store = ObjectStoreResource.configure_at_launch()
    return {
        "work_area": _from_env(
            WorkAreaResource,
            work_dir=env("INFERENCE_WORK_DIR", DATA_DIR / "work"),
            shared_dir=optional_env("INFERENCE_SHARED_DIR"),
            object_store=object_store,
        ),
        "source": _from_env(
            ImageSourceResource,
            image_root=env("INFERENCE_IMAGE_ROOT", DATA_DIR / "images"),
            image_table=optional_env("INFERENCE_IMAGE_TABLE"),
            # an EnvVar: the URL (and its password) is read at run time, never shown in the UI
            database_url=EnvVar("INFERENCE_DATABASE_URL") if optional_env("INFERENCE_DATABASE_URL") else None,
            image_query=optional_env("INFERENCE_IMAGE_QUERY"),
            always_rehash=flag_env("INFERENCE_ALWAYS_REHASH"),
            object_store=object_store,
        ),
        "object_store": object_store,
        "model": _from_env(
            ModelResource,
            name=env("INFERENCE_MODEL", DEFAULT_MODEL),
            weights=env("INFERENCE_WEIGHTS", DEFAULT_WEIGHTS),
            class_names=optional_env("INFERENCE_CLASS_NAMES"),
            card=optional_env("INFERENCE_MODEL_CARD"),
        ),
        "device": _from_env(
            DeviceResource,
            device=env("INFERENCE_DEVICE", "auto"),
            precision=env("INFERENCE_PRECISION", "fp32"),
            runtime=env("INFERENCE_RUNTIME", "auto"),
            converted_dir=optional_env("INFERENCE_CONVERTED_DIR") or "",
        ),
        "preprocessing": _from_env(
            PreprocessingResource,
            # in a container os.cpu_count() is the node's cores, not the pod's limit: set this there
            decode_workers=number_env("INFERENCE_DECODE_WORKERS", 0, minimum=0),
        ),
        "duckdb": _from_env(WarehouseResource, database=duckdb_path()),
    }


def default_executor():
    """``INFERENCE_EXECUTOR=k8s``: each step in its own Kubernetes Job (deploy/k8s/executor.yaml);
    default: Dagster's own, its step processes forked from one that imported this code location
    (``executor.py``)."""
    name = env("INFERENCE_EXECUTOR", "multiprocess")
    if name == "k8s":
        return kubernetes_executor()
    if name != "multiprocess":
        raise ConfigError(f"INFERENCE_EXECUTOR={name!r} is not known: use 'multiprocess' (default) or 'k8s'")
    return steps_executor


def with_model_versions(assets: list, model: ModelResource, preprocessing: PreprocessingResource) -> list:
    """``assets`` with the code versions of the configured model (``core/models/versions.py``) on
    preprocessed_images and prediction_files: a partition made with another model, weights, class
    names or preprocessing shows in the UI as stale ("has a new code version"), before any run."""
    versions = asset_versions(model.spec, jpeg_draft=preprocessing.jpeg_draft)
    by_key = {
        image_assets.preprocessed_images.key: versions.pixels,
        prediction_assets.prediction_files.key: versions.predictions,
    }

    def versioned(spec):
        return spec.replace_attributes(code_version=by_key[spec.key]) if spec.key in by_key else spec

    return [asset.map_asset_specs(versioned) for asset in assets]


RESOURCES = default_resources()
ASSETS = with_model_versions(
    load_assets_from_modules([image_assets, prediction_assets, warehouse_assets, report_assets]),
    RESOURCES["model"],
    RESOURCES["preprocessing"],
)

defs = Definitions(
    assets=ASSETS,
    asset_checks=ASSET_CHECKS,
    jobs=list(PIPELINE),
    sensors=[new_images, refresh_results],
    schedules=[nightly_pending_work],
    resources=RESOURCES,
    executor=default_executor(),
)


def partitioned_inference():
    """The resolved job, for ``reconstructable`` (runs launched from Python with the multiprocess executor)."""
    return defs.resolve_job_def("partitioned_inference")

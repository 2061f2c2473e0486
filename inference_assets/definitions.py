"""The Dagster code location: assets, checks and resources."""

from dagster import AssetKey, Definitions, EnvVar, load_asset_checks_from_modules, load_assets_from_modules
from pydantic import ValidationError

from inference_assets.automation.schedules import nightly_pending_work
from inference_assets.comparison import assets as comparison_assets
from inference_assets.automation.sensors import new_images, refresh_results
from inference_assets.core.errors import ConfigError
from inference_assets.core.models.loading import DEFAULT_WEIGHTS, ModelSpec
from inference_assets.core.models.model_list import ModelList
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
    ModelListResource,
    ModelResource,
    ObjectStoreResource,
    PreprocessingResource,
    WarehouseResource,
    WorkAreaResource,
)
from inference_assets.settings import RESOURCE_FIELDS, SETTINGS, VARIABLES, Settings
from inference_assets.warehouse import assets as warehouse_assets
from inference_assets.warehouse import checks as warehouse_checks

ASSET_CHECKS = load_asset_checks_from_modules([image_checks, warehouse_checks])


def _configured(key: str, resource: type, **fields):
    """``resource(**fields)``, without the fields left unset (``None``: the resource's own default);
    a value its fields refuse is one line naming the environment variable."""
    try:
        return resource(**{name: value for name, value in fields.items() if value is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        setting = {where: name for name, where in RESOURCE_FIELDS.items()}.get(f"{key}.{field}")
        variable = VARIABLES.get(setting, field)
        raise ConfigError(f"{variable}={error.get('input')!r} is not valid: {error['msg']}") from None


def default_resources(settings: Settings | None = None) -> dict:
    """The resources of ``settings`` (default: read from the environment now, see ``settings.py``)."""
    settings = settings or Settings.from_environment()
    # the S3 endpoint and credentials: set at launch under their own key, shared by source and work_area
    object_store = ObjectStoreResource.configure_at_launch()
    return {
        "work_area": _configured(
            "work_area",
            WorkAreaResource,
            work_dir=settings.work_dir,
            shared_dir=settings.shared_dir,
            object_store=object_store,
        ),
        "source": _configured(
            "source",
            ImageSourceResource,
            image_root=settings.image_root,
            image_table=settings.image_table,
            # an EnvVar: the URL (and its password) is read at run time, never shown in the UI
            database_url=EnvVar(VARIABLES["database_url"]) if settings.database_url else None,
            image_query=settings.image_query,
            always_rehash=settings.always_rehash,
            object_store=object_store,
        ),
        "object_store": object_store,
        "model": _configured(
            "model",
            ModelResource,
            name=settings.model,
            weights=settings.weights,
            class_names=settings.class_names,
            card=settings.model_card,
        ),
        "models": _configured("models", ModelListResource, entries=settings.models),
        "device": _configured(
            "device",
            DeviceResource,
            device=settings.device,
            precision=settings.precision,
            runtime=settings.runtime,
            converted_dir=settings.converted_dir,
            gpu_lock_dir=settings.gpu_lock_dir,
        ),
        "preprocessing": _configured(
            "preprocessing",
            PreprocessingResource,
            decode_workers=settings.decode_workers,
        ),
        "duckdb": _configured("duckdb", WarehouseResource, database=settings.duckdb_path),
    }


def default_executor(settings: Settings):
    """``INFERENCE_EXECUTOR=k8s``: each step in its own Kubernetes Job (deploy/k8s/executor.yaml);
    default: Dagster's own, its step processes forked from one that imported this code location
    (``executor.py``)."""
    return kubernetes_executor() if settings.executor == "k8s" else steps_executor


def with_model_versions(
    assets: list, model: ModelResource, preprocessing: PreprocessingResource, model_list: ModelList = ModelList()
) -> list:
    """``assets`` with the code versions of the configured models (``core/models/versions.py``) on
    preprocessed_images and each model's prediction_files: a partition made with another model, weights,
    class names or preprocessing shows in the UI as stale ("has a new code version"), before any run.
    preprocessed_images' version is the set of the models' pixel versions: a model whose preprocessing
    another has already does not make it stale."""
    versions = asset_versions(model.spec, jpeg_draft=preprocessing.jpeg_draft)
    by_key = {prediction_assets.prediction_files.key: _with_tta(versions.predictions, model.tta)}
    pixels = {versions.pixels}
    for listed in model_list.models:
        spec = ModelSpec(name=listed.model, weights=listed.weights or DEFAULT_WEIGHTS,
                         class_names=listed.class_names, card=listed.card)
        listed_versions = asset_versions(spec, jpeg_draft=preprocessing.jpeg_draft)
        pixels.add(listed_versions.pixels)
        by_key[AssetKey([listed.name, "prediction_files"])] = _with_tta(listed_versions.predictions, listed.tta)
    by_key[image_assets.preprocessed_images.key] = (
        versions.pixels if len(pixels) == 1 else "+".join(sorted(pixels))
    )

    def versioned(spec):
        return spec.replace_attributes(code_version=by_key[spec.key]) if spec.key in by_key else spec

    return [asset.map_asset_specs(versioned) for asset in assets]


def _with_tta(version: str, tta: str | None) -> str:
    return f"{version}-{tta}" if tta else version


RESOURCES = default_resources(SETTINGS)
ASSETS = with_model_versions(
    [*load_assets_from_modules([image_assets, prediction_assets, warehouse_assets, comparison_assets, report_assets]),
     *prediction_assets.MODEL_LIST_ASSETS],
    RESOURCES["model"],
    RESOURCES["preprocessing"],
    SETTINGS.model_list,
)

defs = Definitions(
    assets=ASSETS,
    asset_checks=ASSET_CHECKS,
    jobs=list(PIPELINE),
    sensors=[new_images, refresh_results],
    schedules=[nightly_pending_work],
    resources=RESOURCES,
    executor=default_executor(SETTINGS),
)


def partitioned_inference():
    """The resolved job, for ``reconstructable`` (runs launched from Python with the multiprocess executor)."""
    return defs.resolve_job_def("partitioned_inference")

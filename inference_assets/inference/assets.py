"""Assets: partitioned batch predictions, one Parquet file per partition and model.

``prediction_files`` is the primary model's (the ``model`` resource). The model list
(``$INFERENCE_MODELS``, the ``models`` resource) adds ``<name>/prediction_files`` per listed model and
per ensemble, in the ``models`` group: each shows its own progress over the partitions in the UI.
"""


import time

from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from inference_assets.core.images.pixel_store import read_pixel_shard
from inference_assets.core.inference.batches import InferenceSettings
from inference_assets.core.inference.ensembles import Member, ensemble_identity, predict_ensemble_partition
from inference_assets.core.inference.partitions import predict_partitions, runtime_for_partitions
from inference_assets.core.models.converted_models import describe_choice
from inference_assets.core.models.loading import DEFAULT_MODEL
from inference_assets.core.models.model_list import Ensemble, ListedModel, ModelList, default_primary_name
from inference_assets.core.system.progress import Progress, rate
from inference_assets.images.assets import preprocessed_images
from inference_assets.inference.metadata import prediction_metadata
from inference_assets.partitions import BACKFILL_POLICY, IMAGE_SHARDS
from inference_assets.pools import GPU_POOL
from inference_assets.resources import (
    DeviceResource,
    ImageSourceResource,
    ModelResource,
    PreprocessingResource,
    WorkAreaResource,
)
from inference_assets.resources.models import ModelListResource
from inference_assets.settings import SETTINGS, variables_named


class PredictConfig(Config):
    force: bool = Field(
        default=False, description="Predict every image again, even those whose stored prediction is up to date."
    )


_DESCRIPTION = ("Top-k classes and probabilities (and every class's probability) for every preprocessed image of "
                "the partition, or the reason it failed; one Parquet file per partition and model, written atomically.")


@asset(
    group_name="inference",
    partitions_def=IMAGE_SHARDS,
    backfill_policy=BACKFILL_POLICY,
    deps=[preprocessed_images],
    pool=GPU_POOL,
    kinds={"pytorch", "parquet"},
    description=_DESCRIPTION + " The primary model (the model resource).",
)
def prediction_files(
    context: AssetExecutionContext,
    config: PredictConfig,
    source: ImageSourceResource,
    work_area: WorkAreaResource,
    model: ModelResource,
    device: DeviceResource,
    preprocessing: PreprocessingResource,
) -> MaterializeResult:
    return predict(context, config, source, work_area, model, device, preprocessing)


def predict(
    context: AssetExecutionContext,
    config: PredictConfig,
    source: ImageSourceResource,
    work_area: WorkAreaResource,
    model: ModelResource,
    device: DeviceResource,
    preprocessing: PreprocessingResource,
) -> MaterializeResult:
    """Predict the run's partitions with ``model`` into its result files."""
    files = work_area.files
    settings = InferenceSettings(
        device=device.acquire_device(),  # may wait for a free GPU
        precision=device.precision,
        channels_last=device.channels_last,
        batch_size=model.batch_size,
        top_k=model.top_k,
        compile=device.compile,
        tta=model.tta,
    )
    fingerprint = preprocessing.pixels(model.preprocessing).fingerprint
    start = time.perf_counter()
    shards = [(key, read_pixel_shard(files.pixels(fingerprint, key), key)) for key in context.partition_keys]
    choice = runtime_for_partitions(model.load(settings.device), shards, device.runtime,
                                    device.converted_dir or files.converted_dir, settings)
    if device.runtime != "torch":
        context.log.info(describe_choice(choice))
    if settings.device.type == "cuda" and choice.classifier.runtime.startswith("onnxruntime (CPU"):
        context.log.warning("this onnxruntime has no CUDA provider, so the ONNX model runs on the CPU: "
                            "pip install onnxruntime-gpu for the GPU")
    with Progress("predictions", sum(shard.index.num_rows for _, shard in shards), context.log.info) as progress:
        outcome = predict_partitions(
            choice.classifier, shards, settings, files, model.slug, reuse=not config.force, warn=context.log.warning,
            info=lambda line, shown: (context.log.info if shown else context.log.debug)(line),
            progress=progress.advance,
        )
    seconds = time.perf_counter() - start
    return MaterializeResult(
        metadata=prediction_metadata(outcome, seconds, choice, settings, model, device, preprocessing,
                                     opener=source.open_source().open, results_dir=files.results_dir(model.slug))
    )


def listed_model_predictions(listed: ListedModel) -> AssetsDefinition:
    """``<name>/prediction_files``: the predictions of a model of the model list (``models`` resource)."""

    @asset(
        name="prediction_files",
        key_prefix=[listed.name],
        group_name="models",
        partitions_def=IMAGE_SHARDS,
        backfill_policy=BACKFILL_POLICY,
        deps=[preprocessed_images],
        pool=GPU_POOL,
        kinds={"pytorch", "parquet"},
        description=f"{_DESCRIPTION} Model {listed.name!r} of the model list ({listed.model}"
        + (f", test-time augmentation {listed.tta}" if listed.tta else "") + ").",
    )
    def _predictions(
        context: AssetExecutionContext,
        config: PredictConfig,
        source: ImageSourceResource,
        work_area: WorkAreaResource,
        models: ModelListResource,
        device: DeviceResource,
        preprocessing: PreprocessingResource,
    ) -> MaterializeResult:
        return predict(context, config, source, work_area, models.model(listed.name), device, preprocessing)

    return _predictions


def ensemble_predictions(ensemble: Ensemble, primary_name: str) -> AssetsDefinition:
    """``<name>/prediction_files``: an ensemble's predictions, the weighted mean of its members' stored
    probabilities, per partition (``core/inference/ensembles.py``)."""
    member_keys = [prediction_files.key if m == primary_name else AssetKey([m, "prediction_files"])
                   for m in ensemble.members]

    @asset(
        name="prediction_files",
        key_prefix=[ensemble.name],
        group_name="models",
        partitions_def=IMAGE_SHARDS,
        backfill_policy=BACKFILL_POLICY,
        deps=member_keys,
        kinds={"parquet"},
        description=f"Ensemble {ensemble.name!r}: {ensemble.description}, the weighted mean of its members' stored "
        "probabilities (no forward pass); one Parquet file per partition, as a model's.",
    )
    def _ensemble(
        context: AssetExecutionContext, work_area: WorkAreaResource, model: ModelResource, models: ModelListResource
    ) -> MaterializeResult:
        files = work_area.files
        slug = results_slug(ensemble.name, model, models)
        member_slugs = [results_slug(name, model, models) for name in ensemble.members]
        identity = ensemble_identity(list(zip(ensemble.members, member_slugs, ensemble.weights)))
        start, totals = time.perf_counter(), {"images": 0, "predicted": 0, "failed": 0}
        for key in context.partition_keys:
            members = []
            for name, member_slug, weight in zip(ensemble.members, member_slugs, ensemble.weights):
                files.result_files(member_slug, [key])  # fetched from the shared mirror first, when there is one
                members.append(Member(name, weight, files.layout.result_file(member_slug, key)))
            with files.updating_results(slug, key) as output:
                summary = predict_ensemble_partition(members, output, key, ensemble.description, identity[:16])
            context.log.info(f"{ensemble.name} {key}: {summary.predicted} predicted, {summary.failed} failed "
                             f"in {summary.seconds:.2f}s")
            for name in totals:
                totals[name] += getattr(summary, name)
        seconds = time.perf_counter() - start
        return MaterializeResult(metadata={
            **totals, "partitions": len(context.partition_keys), "members": ", ".join(ensemble.members),
            "weights": ", ".join(f"{w:g}" for w in ensemble.weights), "model": ensemble.description,
            "seconds": round(seconds, 3), "images_per_second": rate(totals["images"], seconds),
            "path": MetadataValue.path(str(files.results_dir(slug))),
        })

    return _ensemble


def results_slug(name: str, model: ModelResource, models: ModelListResource) -> str:
    """The folder name of model ``name``'s result files: the primary model's, a listed model's, an ensemble's."""
    if name == models.primary_name(model):
        return model.slug
    try:
        ensemble = models.ensemble(name)
    except KeyError:
        return models.model(name).slug
    slugs = [results_slug(m, model, models) for m in ensemble.members]
    return f"ensemble-{name}-{ensemble_identity(list(zip(ensemble.members, slugs, ensemble.weights)))[:10]}"


def model_list_assets(model_list: ModelList, primary_name: str) -> list[AssetsDefinition]:
    """The assets of the model list: one per listed model, one per ensemble."""
    return [*(listed_model_predictions(listed) for listed in model_list.models),
            *(ensemble_predictions(ensemble, primary_name) for ensemble in model_list.ensembles)]


# The model list's assets, from the settings read when the code location loads.
PRIMARY_NAME = SETTINGS.model_list.primary or default_primary_name(SETTINGS.model, DEFAULT_MODEL)
with variables_named():  # an ensemble of models that are not listed: one line when the code location loads
    SETTINGS.model_list.check_ensembles(PRIMARY_NAME)
MODEL_LIST_ASSETS = tuple(model_list_assets(SETTINGS.model_list, PRIMARY_NAME))

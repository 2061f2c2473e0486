"""Asset: partitioned batch predictions, one Parquet file per partition."""


import time

from dagster import AssetExecutionContext, Config, MaterializeResult, asset
from pydantic import Field

from inference_assets.core.images.pixel_store import read_pixel_shard
from inference_assets.core.inference.batches import InferenceSettings
from inference_assets.core.inference.partitions import predict_partitions, runtime_for_partitions
from inference_assets.core.models.converted_models import describe_choice
from inference_assets.core.system.progress import Progress
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


class PredictConfig(Config):
    force: bool = Field(
        default=False, description="Predict every image again, even those whose stored prediction is up to date."
    )


@asset(
    group_name="inference",
    partitions_def=IMAGE_SHARDS,
    backfill_policy=BACKFILL_POLICY,
    deps=[preprocessed_images],
    pool=GPU_POOL,
    kinds={"pytorch", "parquet"},
    description="Top-k classes and probabilities for every preprocessed image of the partition, "
    "or the reason it failed; one Parquet file per partition and model, written atomically.",
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
    files = work_area.files
    settings = InferenceSettings(
        device=device.acquire_device(),  # may wait for a free GPU
        precision=device.precision,
        channels_last=device.channels_last,
        batch_size=model.batch_size,
        top_k=model.top_k,
        compile=device.compile,
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

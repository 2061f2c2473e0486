"""Asset: partitioned batch predictions, one Parquet file per partition."""


import time
from collections import Counter

import pyarrow.compute as pc
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from inference_assets.core.inference import InferenceSettings, predict_shard, prediction_inputs
from inference_assets.core.pixel_store import read_pixel_shard
from inference_assets.core.results import read_results, stored_inputs_fingerprint
from inference_assets.images.assets import preprocessed_images
from inference_assets.images.resources import StorageResource
from inference_assets.metadata import markdown_table, rate
from inference_assets.partitions import IMAGE_SHARDS, SINGLE_RUN

from .resources import DeviceResource, ModelResource


class PredictConfig(Config):
    force: bool = False  # re-predict partitions even when pixels, model and settings are unchanged


@asset(
    group_name="inference",
    partitions_def=IMAGE_SHARDS,
    backfill_policy=SINGLE_RUN,
    deps=[preprocessed_images],
    description="Top-k classes and probabilities for every preprocessed image of the partition, "
    "or the reason it failed; one Parquet file per partition and model, written atomically.",
)
def predictions(
    context: AssetExecutionContext,
    config: PredictConfig,
    storage: StorageResource,
    model: ModelResource,
    device: DeviceResource,
) -> MaterializeResult:
    layout = storage.layout
    settings = InferenceSettings(
        device=device.torch_device,
        precision=device.precision,
        channels_last=device.channels_last,
        batch_size=model.batch_size,
        top_k=model.top_k,
    )
    weights = model.weights_id
    shard_dir = layout.pixel_dir(model.preprocessing.fingerprint)
    start = time.perf_counter()
    predicted = failed = reused = 0
    forward_seconds = 0.0
    labels: Counter = Counter()
    for key in context.partition_keys:
        shard = read_pixel_shard(shard_dir, key)
        output = layout.result_file(model.slug, key)
        inputs = prediction_inputs(shard.inputs, model.spec.name, weights, settings)
        if not config.force and stored_inputs_fingerprint(output) == inputs:
            reused += 1
            context.log.info(f"{key}: pixels, model and settings unchanged, stored predictions reused")
            continue
        summary = predict_shard(model.load(settings.device), shard, settings, output, key)
        predicted += summary.predicted
        failed += summary.failed
        forward_seconds += summary.seconds
        predicted_labels = read_results(output).column("class_label").drop_null()
        labels.update(dict(zip(*[v.to_pylist() for v in pc.value_counts(predicted_labels).flatten()])))
        (context.log.info if summary.images else context.log.debug)(
            f"{key}: {summary.predicted} predicted, {summary.failed} failed in {summary.seconds:.1f}s "
            f"({summary.images_per_second:.1f} img/s on {settings.device}, {settings.precision})"
        )
    seconds = time.perf_counter() - start
    return MaterializeResult(
        metadata={
            "partitions": len(context.partition_keys),
            "partitions_reused": reused,
            "predicted": predicted,
            "failed": failed,
            "seconds": round(seconds, 3),
            "images_per_second": rate(predicted, forward_seconds),
            "model": model.spec.name,
            "weights": weights,
            "device": str(settings.device),
            "precision": settings.precision,
            "channels_last": settings.channels_last,
            "batch_size": settings.effective_batch_size,
            "top_k": settings.top_k,
            "top_labels": markdown_table(("label", "images"), labels.most_common(10)),
            "path": MetadataValue.path(str(layout.results_dir(model.slug))),
        }
    )

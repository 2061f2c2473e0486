"""Asset: partitioned batch predictions, one Parquet file per partition."""


import time

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from inference_assets.core.images.pixel_store import read_pixel_shard
from inference_assets.core.inference.batches import InferenceSettings
from inference_assets.core.inference.partitions import predict_partitions, runtime_for_partitions
from inference_assets.core.models.converted_models import describe_choice
from inference_assets.core.reporting.thumbnails import markdown_image, thumbnail_uri
from inference_assets.core.system.progress import Progress
from inference_assets.images.assets import preprocessed_images
from inference_assets.metadata import markdown_table, rate
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
    classifier, parity = choice.classifier, choice.parity
    if device.runtime != "torch":
        context.log.info(describe_choice(choice))
    if settings.device.type == "cuda" and classifier.runtime.startswith("onnxruntime (CPU"):
        context.log.warning("this onnxruntime has no CUDA provider, so the ONNX model runs on the CPU: "
                            "pip install onnxruntime-gpu for the GPU")
    with Progress("predictions", sum(shard.index.num_rows for _, shard in shards), context.log.info) as progress:
        outcome = predict_partitions(
            classifier, shards, settings, files, model.slug, reuse=not config.force, warn=context.log.warning,
            info=lambda line, shown: (context.log.info if shown else context.log.debug)(line),
            progress=progress.advance,
        )
    seconds = time.perf_counter() - start
    batch_size = outcome.batch_size
    image_source = source.open_source()
    sample_rows = [
        (markdown_image(thumbnail_uri(image_source.open, row["uri"], 64), "image"), row["uri"].rpartition("/")[2],
         row["class_label"], f"{row['confidence']:.3f}")
        for row in outcome.samples
    ]
    return MaterializeResult(
        metadata={
            "partitions": len(context.partition_keys),
            "predicted": outcome.predicted,
            "reused": outcome.reused,
            "failed": outcome.failed,
            "seconds": round(seconds, 3),
            "images_per_second": rate(outcome.predicted, outcome.forward_seconds),
            "model": model.spec.name,
            "weights": model.weights_id,
            "model_format": model.info.format,
            "model_id": model.info.identity,
            "runtime": classifier.runtime,
            "runtime_asked": device.runtime,
            "runtime_parity": MetadataValue.null() if parity is None else parity.describe(),
            # images near a tie that PyTorch predicted instead of the converted network (null: PyTorch ran all)
            "runtime_settled_by_pytorch": getattr(classifier.module, "settled", MetadataValue.null()),
            "classes": len(model.info.labels),
            "class_names": ", ".join(model.info.labels[:20]) + (" ..." if len(model.info.labels) > 20 else ""),
            "multi_label": model.info.multi_label,
            "device": str(settings.device),
            "precision": settings.precision,
            "channels_last": settings.channels_last,
            "compiled": settings.compile,
            "jpeg_draft": preprocessing.jpeg_draft,
            "batch_size": MetadataValue.null() if batch_size is None else batch_size,  # null: all reused
            "top_k": settings.top_k,
            "top_labels": markdown_table(("label", "images"), outcome.labels.most_common(10)),
            "sample_predictions": markdown_table(("", "image", "class", "confidence"), sample_rows),
            "predict_seconds": round(outcome.forward_seconds, 3),  # reading pixels + forward passes + writing
            # where that time went: waiting for pixels, the model, writing result files
            **{f"{stage}_seconds": value for stage, value in outcome.stages.as_dict().items()},
            "per_partition": markdown_table(
                ("partition", "images", "predicted", "reused", "failed", "seconds", "img/s"), outcome.per_partition()
            ),
            "path": MetadataValue.path(str(files.results_dir(model.slug))),
        }
    )

"""Assets: the image manifest and the partitioned preprocessed pixels."""


import time

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from inference_assets.core.collection.manifest import (
    build_manifest,
    first_images_without_error,
    read_manifest_partitions,
)
from inference_assets.core.images.partitions import preprocess_partitions
from inference_assets.core.reporting.thumbnails import thumbnails_markdown
from inference_assets.core.system.progress import Progress, rate
from inference_assets.metadata import markdown_table
from inference_assets.partitions import BACKFILL_POLICY, IMAGE_SHARDS, NUM_PARTITIONS
from inference_assets.resources import ImageSourceResource, ModelResource, PreprocessingResource, WorkAreaResource
from inference_assets.settings import variables_named


@asset(
    group_name="images",
    kinds={"parquet"},
    description="Every image of the source (a folder, a bucket prefix, an image table or a SQL query): "
    "stable id, key, location, size, mtime, content hash, label, and the partition it belongs to. Parquet.",
)
def image_manifest(
    context: AssetExecutionContext, source: ImageSourceResource, work_area: WorkAreaResource
) -> MaterializeResult:
    image_source = source.open_source()
    # the previous manifest's hashes are reused for unchanged images
    with (work_area.files.updating_manifest() as path, Progress("manifest", None, context.log.info) as progress,
          variables_named()):  # a source that cannot be listed, no images: one line naming the variable
        summary = build_manifest(
            image_source, path, NUM_PARTITIONS, source.extensions,
            progress=progress.advance, rehash=source.always_rehash,
        )
    for warning in summary.warnings_to_log():
        context.log.warning(warning)
    context.log.info(summary.describe(path))
    samples = thumbnails_markdown(image_source.open, first_images_without_error(path, 12), count=4, size=64)
    return MaterializeResult(
        metadata={
            "images": summary.images,
            "total_bytes": summary.total_bytes,
            "files_hashed": summary.hashed,
            "hashes_reused": summary.hash_reused,
            "unreadable": summary.unreadable,
            "unlistable_folders": summary.unlistable_folders,
            "images_under_unlistable_folders": summary.images_under_unlistable_folders,
            "vanished_images": len(summary.vanished),
            "labelled_images": sum(summary.labels.values()),
            "distinct_labels": len(summary.labels),
            "partitions": NUM_PARTITIONS,
            "source": image_source.description,
            "source_kind": source.source_config.kind,
            "per_partition": markdown_table(("partition", "images"), summary.images_per_partition(NUM_PARTITIONS)),
            "sample_images": MetadataValue.md(samples or "no readable image"),
            "path": MetadataValue.path(str(path)),
        }
    )


class PreprocessConfig(Config):
    force: bool = Field(
        default=False, description="Decode every image again, even those whose stored pixels are up to date."
    )


@asset(
    group_name="images",
    partitions_def=IMAGE_SHARDS,
    backfill_policy=BACKFILL_POLICY,
    deps=[image_manifest],
    kinds={"numpy", "parquet"},
    description="Each partition's images decoded (EXIF orientation, RGB) and resized/cropped exactly as "
    "the model's own transform does, stored as uint8 in a memory-mappable .npy with a per-image status.",
)
def preprocessed_images(
    context: AssetExecutionContext,
    config: PreprocessConfig,
    source: ImageSourceResource,
    work_area: WorkAreaResource,
    model: ModelResource,
    preprocessing: PreprocessingResource,
) -> MaterializeResult:
    files = work_area.files
    image_source = source.open_source()
    # a remote source spends most of an image's time waiting on the network: more fetches in flight
    workers = preprocessing.workers * (1 if source.source_config.kind == "folder" else 4)
    pixels = preprocessing.pixels(model.preprocessing)
    start = time.perf_counter()
    partitions = read_manifest_partitions(files.manifest(), context.partition_keys)
    with Progress("preprocessing", sum(entries.num_rows for _, entries in partitions), context.log.info) as progress:
        outcome = preprocess_partitions(
            partitions, pixels, files, workers, preprocessing.max_image_pixels, reuse=not config.force,
            opener=image_source.open, warn=context.log.warning,
            info=lambda line, shown: (context.log.info if shown else context.log.debug)(line),
            progress=progress.advance,
        )
    seconds = time.perf_counter() - start
    return MaterializeResult(
        metadata={
            "partitions": len(context.partition_keys),
            "images": outcome.images,
            "ok": outcome.ok,
            "failed": outcome.failed,
            "reused": outcome.reused,
            "computed": outcome.decoded,
            "seconds": round(seconds, 3),
            "images_per_second": rate(outcome.decoded, seconds),
            "decode_workers": workers,
            "input_size": f"{pixels.input_size[0]}x{pixels.input_size[1]}",
            "jpeg_draft": pixels.jpeg_draft,
            "preprocessing": pixels.description,
            "path": MetadataValue.path(str(files.pixel_dir(pixels.fingerprint))),
        }
    )

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
from inference_assets.resources.models import ModelListResource
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
    "the model's own transform does, stored as uint8 in a memory-mappable .npy with a per-image status; "
    "one set per distinct preprocessing of the models (models of the list that preprocess alike share theirs).",
)
def preprocessed_images(
    context: AssetExecutionContext,
    config: PreprocessConfig,
    source: ImageSourceResource,
    work_area: WorkAreaResource,
    model: ModelResource,
    models: ModelListResource,
    preprocessing: PreprocessingResource,
) -> MaterializeResult:
    files = work_area.files
    image_source = source.open_source()
    # a remote source spends most of an image's time waiting on the network: more fetches in flight
    workers = preprocessing.workers * (1 if source.source_config.kind == "folder" else 4)
    # one set of pixels per distinct preprocessing among the models (the primary model's first)
    needed = [model.preprocessing, *(models.model(m.name).preprocessing for m in models.model_list.models)]
    pixel_sets = list({p.fingerprint: p for p in (preprocessing.pixels(n) for n in needed)}.values())
    start = time.perf_counter()
    partitions = read_manifest_partitions(files.manifest(), context.partition_keys)
    total = sum(entries.num_rows for _, entries in partitions) * len(pixel_sets)
    with Progress("preprocessing", total, context.log.info) as progress:
        outcomes = [
            preprocess_partitions(
                partitions, pixels, files, workers, preprocessing.max_image_pixels, reuse=not config.force,
                opener=image_source.open, warn=context.log.warning,
                info=lambda line, shown: (context.log.info if shown else context.log.debug)(line),
                progress=progress.advance,
            )
            for pixels in pixel_sets
        ]
    seconds = time.perf_counter() - start
    outcome, decoded = outcomes[0], sum(o.decoded for o in outcomes)
    return MaterializeResult(
        metadata={
            "partitions": len(context.partition_keys),
            "images": outcome.images,
            "ok": outcome.ok,
            "failed": outcome.failed,
            "reused": sum(o.reused for o in outcomes),
            "computed": decoded,
            "seconds": round(seconds, 3),
            "images_per_second": rate(decoded, seconds),
            "decode_workers": workers,
            "input_size": ", ".join(f"{p.input_size[0]}x{p.input_size[1]}" for p in pixel_sets),
            "jpeg_draft": pixel_sets[0].jpeg_draft,
            "preprocessing": "; ".join(p.description for p in pixel_sets),
            "pixel_sets": len(pixel_sets),
            "path": MetadataValue.path(str(files.pixel_dir(pixel_sets[0].fingerprint))),
        }
    )

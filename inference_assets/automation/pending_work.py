"""The run requests for pending work, shared by the sensor and the schedule."""

from dagster import AssetKey, RunRequest

from inference_assets.core.pending import MissingResults, partitions_missing_results
from inference_assets.images.resources import StorageResource
from inference_assets.predictions.resources import ModelResource

MANIFEST = [AssetKey("image_manifest")]
PARTITION_WORK = [
    AssetKey("preprocessed_images"),
    AssetKey("prediction_files"),
    AssetKey("prediction_results"),
    AssetKey("evaluation"),
]
EVERYTHING = [AssetKey("image_manifest"), *PARTITION_WORK]


def missing_results(storage: StorageResource, model: ModelResource) -> list[MissingResults]:
    layout = storage.layout
    return partitions_missing_results(layout.manifest_path, lambda key: layout.result_file(model.slug, key))


def partition_run_requests(pending: list[MissingResults]) -> list[RunRequest]:
    """One run per partition with pending work: its pixels, its predictions, then the DuckDB
    refresh and the evaluation (the ``duckdb`` pool lets one of them write at a time)."""
    return [
        RunRequest(
            run_key=f"{item.partition}:{item.digest}",
            partition_key=item.partition,
            asset_selection=PARTITION_WORK,
            tags={"inference_assets/pending_images": str(item.missing)},
        )
        for item in pending
    ]

"""The run requests for pending work, shared by the sensor and the schedule."""

from dagster import RunRequest

from inference_assets.core.collection.pending import MissingResults, partitions_missing_results
from inference_assets.jobs import MANIFEST_ASSETS, PARTITIONED_ASSETS
from inference_assets.resources import ModelResource, WorkAreaResource

MANIFEST = [asset.key for asset in MANIFEST_ASSETS]
# the downstream (prediction_results, evaluation, report) follows by declarative automation
# (warehouse/conditions.py): once, after every requested partition is done
PARTITION_WORK = [asset.key for asset in PARTITIONED_ASSETS]
EVERYTHING = [*MANIFEST, *PARTITION_WORK]


def missing_results(work_area: WorkAreaResource, model: ModelResource) -> list[MissingResults]:
    layout = work_area.layout
    return partitions_missing_results(layout.manifest_path, lambda key: layout.result_file(model.slug, key))


def partition_run_requests(pending: list[MissingResults]) -> list[RunRequest]:
    """One run per partition with pending work: its pixels and its predictions. The DuckDB
    refresh, the evaluation and the report follow once all of them are done (warehouse/conditions.py)."""
    return [
        RunRequest(
            run_key=f"{item.partition}:{item.digest}",
            partition_key=item.partition,
            asset_selection=PARTITION_WORK,
            tags={"inference_assets/pending_images": str(item.missing)},
        )
        for item in pending
    ]

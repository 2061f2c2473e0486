"""The run requests for pending work, shared by the sensor and the schedule."""

import hashlib

from dagster import RunRequest

from inference_assets.core.collection.pending import MissingResults, partitions_missing_results
from inference_assets.inference.assets import results_slug
from inference_assets.jobs import MANIFEST_ASSETS, PARTITIONED_ASSETS
from inference_assets.resources import ModelListResource, ModelResource, WorkAreaResource

MANIFEST = [asset.key for asset in MANIFEST_ASSETS]
# the downstream (prediction_results, evaluation, report) follows by declarative automation
# (warehouse/conditions.py): once, after every requested partition is done
PARTITION_WORK = [asset.key for asset in PARTITIONED_ASSETS]
EVERYTHING = [*MANIFEST, *PARTITION_WORK]


def missing_results(
    work_area: WorkAreaResource, model: ModelResource, models: ModelListResource
) -> list[MissingResults]:
    """The partitions with manifest images that a model (the primary one, or one of the model list's,
    an ensemble included) has no current result for."""
    layout = work_area.layout
    slugs = [results_slug(name, model, models) for name in models.names(model)]
    return partitions_missing_results(layout.manifest_path, lambda key: [layout.result_file(s, key) for s in slugs])


def work_key(model: ModelResource, models: ModelListResource) -> str:
    """Names the models a run request is for, when there is a model list: a model added to it makes new
    requests ("" without one: the run keys of a single-model deployment are as they were)."""
    if not models.model_list:
        return ""
    slugs = [results_slug(name, model, models) for name in models.names(model)]
    return hashlib.sha256(" ".join(slugs).encode()).hexdigest()[:8]


def partition_run_requests(pending: list[MissingResults], models_key: str = "") -> list[RunRequest]:
    """One run per partition with pending work: its pixels and its predictions. The DuckDB
    refresh, the evaluation and the report follow once all of them are done (warehouse/conditions.py)."""
    return [
        RunRequest(
            run_key=f"{item.partition}:{item.digest}" + (f":{models_key}" if models_key else ""),
            partition_key=item.partition,
            asset_selection=PARTITION_WORK,
            tags={"inference_assets/pending_images": str(item.missing)},
        )
        for item in pending
    ]

"""Sensors: ``new_images`` notices new and changed images and requests runs only for partitions with
pending work; ``refresh_results`` (declarative automation, ``warehouse/conditions.py``) refreshes the DuckDB
tables, the evaluation and the report once new prediction files are in.

``new_images``:

Each tick lists the source for at most ``INFERENCE_SENSOR_LISTING_SECONDS`` (default 20 s),
keeping its place in the cursor, so a huge collection is listed over several ticks. When a
listing pass is complete and differs from the manifest, it requests one ``image_manifest``
run. On every tick it also requests a run for each partition whose manifest images lack
current results (pixels + predictions). Run keys name the exact work, so a tick never requests
the same work twice. The DuckDB tables, the evaluation and the report follow by themselves, once,
when every requested partition is done (``refresh_results``).
"""

import json

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from inference_assets.core.collection.pending import (
    ListingScan,
    changed_partitions,
    listing_digest,
    manifest_digests,
    scan_listing,
)
from inference_assets.jobs import REFRESHED_ASSETS
from inference_assets.partitions import NUM_PARTITIONS
from inference_assets.resources import ImageSourceResource, ModelListResource, ModelResource, WorkAreaResource
from inference_assets.settings import SETTINGS

from .pending_work import EVERYTHING, MANIFEST, missing_results, partition_run_requests, work_key

LISTING_SECONDS = SETTINGS.sensor_listing_seconds
INTERVAL_SECONDS = SETTINGS.sensor_interval_seconds


@sensor(
    name="new_images",
    minimum_interval_seconds=INTERVAL_SECONDS,
    asset_selection=EVERYTHING,
    default_status=DefaultSensorStatus.STOPPED,
    description="Lists the image source (a bounded time per tick, resuming from its cursor); requests a "
    "manifest run when images were added, changed or removed, and a run per partition with pending work.",
)
def new_images(
    context: SensorEvaluationContext, source: ImageSourceResource, work_area: WorkAreaResource, model: ModelResource,
    models: ModelListResource,
):
    state = json.loads(context.cursor) if context.cursor else {}
    scan = scan_listing(
        source.entries(),
        NUM_PARTITIONS,
        ListingScan.from_json(state.get("scan")),
        budget_seconds=LISTING_SECONDS,
    )
    requests: list[RunRequest] = []
    if not scan.complete:
        context.log.info(f"listed {scan.scanned} images so far; going on next tick")
        state["scan"] = scan.to_json()
    else:
        state.pop("scan", None)
        changed = changed_partitions(scan.digests, manifest_digests(work_area.layout.manifest_path, NUM_PARTITIONS))
        if changed:
            context.log.info(f"{scan.scanned} images listed; {len(changed)} partitions changed: {', '.join(changed)}")
            requests.append(RunRequest(run_key=f"manifest:{listing_digest(scan.digests)}", asset_selection=MANIFEST))
    if not requests:  # the manifest is current: work on what it lists
        requests = partition_run_requests(missing_results(work_area, model, models), work_key(model, models))
    cursor = json.dumps(state)
    if not requests:
        return SensorResult(skip_reason=SkipReason("no new images and no partition with pending work"), cursor=cursor)
    return SensorResult(run_requests=requests, cursor=cursor)


AUTOMATION_INTERVAL_SECONDS = 30  # Dagster's default for automation sensors

refresh_results = AutomationConditionSensorDefinition(
    "refresh_results",
    target=AssetSelection.assets(*REFRESHED_ASSETS),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=AUTOMATION_INTERVAL_SECONDS,
    description="Declarative automation: once new prediction files are in (from any run or backfill) and no "
    "upstream partition is still in progress, one run refreshes prediction_results, evaluation, model_comparison, "
    "calibration, review_queue and report. "
    "Needs the daemon (make dev); stop it here to refresh by hand.",
)

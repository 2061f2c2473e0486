"""Schedule: the nightly "scheduled backfill" of every partition with pending work.

Cron from ``INFERENCE_SCHEDULE_CRON`` (default ``0 2 * * *``, 02:00 every night) in
``INFERENCE_SCHEDULE_TIMEZONE`` (default UTC). A tick lists the whole source:

- when the listing differs from the manifest, one run refreshes the manifest and then works
  through the partitions that changed (a range run from the first to the last of them: the
  others in between reuse everything, so they cost a check);
- otherwise, one run per partition whose manifest images lack current results;
- nothing pending: the tick is skipped with the reason.

Then the ``refresh_results`` automation sensor (sensors.py, warehouse/conditions.py) refreshes the
DuckDB tables, the evaluation and the report once, when all of these runs are done.

Not a backfill: in Dagster 1.13 a schedule can only launch runs (the scheduler has no path for a
run request over an asset graph subset; only sensors turn those into backfills). Its runs carry
the tag ``dagster/schedule_name=nightly_pending_work``: the UI lists them on the schedule's page
(its ticks, each with the runs it launched) and under Runs, filtered by that tag.
"""


from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from inference_assets.core.collection.pending import changed_partitions, listing_digest, manifest_digests, scan_listing
from inference_assets.partitions import NUM_PARTITIONS, range_tags
from inference_assets.resources import ImageSourceResource, ModelListResource, ModelResource, WorkAreaResource
from inference_assets.settings import SETTINGS

from .pending_work import EVERYTHING, missing_results, partition_run_requests, work_key

CRON = SETTINGS.schedule_cron
TIMEZONE = SETTINGS.schedule_timezone


@schedule(
    name="nightly_pending_work",
    cron_schedule=CRON,
    execution_timezone=TIMEZONE,
    target=EVERYTHING,
    default_status=DefaultScheduleStatus.STOPPED,
    description="Every night: a manifest refresh and the partitions it changed, or a run per partition "
    "with pending work (runs, not a backfill); skipped when there is nothing to do. The DuckDB tables, "
    "evaluation and report follow once (refresh_results).",
)
def nightly_pending_work(
    context: ScheduleEvaluationContext, source: ImageSourceResource, work_area: WorkAreaResource, model: ModelResource,
    models: ModelListResource,
):
    scan = scan_listing(source.entries(), NUM_PARTITIONS)
    changed = changed_partitions(scan.digests, manifest_digests(work_area.layout.manifest_path, NUM_PARTITIONS))
    if changed:
        return RunRequest(
            run_key=f"nightly:{listing_digest(scan.digests)}",
            asset_selection=EVERYTHING,
            tags=range_tags(changed[0], changed[-1]),
        )
    requests = partition_run_requests(missing_results(work_area, model, models), work_key(model, models))
    return requests or SkipReason(f"nothing pending: {scan.scanned} images listed, all predicted")

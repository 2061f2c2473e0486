"""Schedule: the nightly "scheduled backfill" of every partition with pending work.

Cron from ``INFERENCE_SCHEDULE_CRON`` (default ``0 2 * * *``, 02:00 every night) in
``INFERENCE_SCHEDULE_TIMEZONE`` (default UTC). A tick lists the whole source:

- when the listing differs from the manifest, one run refreshes the manifest and then works
  through the partitions that changed (a range run from the first to the last of them: the
  others in between reuse everything, so they cost a check), ending with the DuckDB refresh;
- otherwise, one run per partition whose manifest images lack current results;
- nothing pending: the tick is skipped with the reason.
"""


from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from inference_assets.core.pending import changed_partitions, listing_digest, manifest_digests, scan_listing
from inference_assets.images.resources import StorageResource
from inference_assets.partitions import NUM_PARTITIONS, range_tags
from inference_assets.predictions.resources import ModelResource
from inference_assets.settings import cron_env, timezone_env

from .pending_work import EVERYTHING, missing_results, partition_run_requests

CRON = cron_env("INFERENCE_SCHEDULE_CRON", "0 2 * * *")
TIMEZONE = timezone_env("INFERENCE_SCHEDULE_TIMEZONE", "UTC")


@schedule(
    name="nightly_pending_work",
    cron_schedule=CRON,
    execution_timezone=TIMEZONE,
    target=EVERYTHING,
    default_status=DefaultScheduleStatus.STOPPED,
    description="Every night: a manifest refresh and the partitions it changed, or a run per partition "
    "with pending work; skipped when there is nothing to do.",
)
def nightly_pending_work(context: ScheduleEvaluationContext, storage: StorageResource, model: ModelResource):
    scan = scan_listing(storage.open_source().entries(), NUM_PARTITIONS)
    changed = changed_partitions(scan.digests, manifest_digests(storage.layout.manifest_path, NUM_PARTITIONS))
    if changed:
        return RunRequest(
            run_key=f"nightly:{listing_digest(scan.digests)}",
            asset_selection=EVERYTHING,
            tags=range_tags(changed[0], changed[-1]),
        )
    requests = partition_run_requests(missing_results(storage, model))
    return requests or SkipReason(f"nothing pending: {scan.scanned} images listed, all predicted")

"""Asset: a static, self-contained HTML report of the results (open it in any browser, offline)."""

from functools import partial

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset
from dagster_duckdb import DuckDBResource

from inference_assets.core.reporting.report import build_report, write_report
from inference_assets.core.reporting.thumbnails import thumbnail_uri
from inference_assets.pools import DUCKDB_POOL
from inference_assets.resources import ImageSourceResource, WorkAreaResource
from inference_assets.comparison.assets import REVIEW_FILES, calibration, model_comparison, review_queue
from inference_assets.warehouse.assets import evaluation, prediction_results
from inference_assets.warehouse.conditions import AFTER_UPSTREAM


@asset(
    group_name="report",
    deps=[prediction_results, evaluation, model_comparison, calibration, review_queue],
    pool=DUCKDB_POOL,
    automation_condition=AFTER_UPSTREAM,
    kinds={"html"},
    description="A self-contained HTML page (no network needed): summary numbers, charts, predictions "
    "grouped by class with thumbnails, the least confident predictions, failures, and the evaluation; with "
    "several models their comparison (thumbnails of the changed images) and calibration; the review queue.",
)
def report(
    context: AssetExecutionContext, source: ImageSourceResource, work_area: WorkAreaResource, duckdb: DuckDBResource
) -> MaterializeResult:
    image_source = source.open_source()
    with duckdb.get_connection() as conn:
        review = {name: str(work_area.files.layout.review_dir / name) for name in REVIEW_FILES}
        text, summary = build_report(conn, partial(thumbnail_uri, image_source.open), review_files=review)
    with work_area.files.updating_report() as path:
        write_report(path, text)
    context.log.info(f"report: {path} ({summary.bytes / 1e6:.1f} MB, {summary.thumbnails} thumbnails)")
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(path)),
            "open": MetadataValue.url(path.resolve().as_uri()),
            "bytes": summary.bytes,
            "images": summary.images,
            "predicted": summary.predicted,
            "failed": summary.failed,
            "classes": summary.classes,
            "thumbnails": summary.thumbnails,
            "evaluated_images": summary.evaluated,
        }
    )

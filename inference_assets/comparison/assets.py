"""Assets: the models side by side (agreement, changed images, accuracy), their calibration, and the
review queue, from the DuckDB tables ``models`` and ``model_predictions`` (and, for calibration, every
class's stored probability in the result files)."""

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from dagster_duckdb import DuckDBResource
from pydantic import Field

from inference_assets.core.reporting.calibration import (
    CALIBRATION_TABLES,
    calibrate_result_files,
    calibrated_rows,
    store_calibrated_predictions,
    store_calibration,
)
from inference_assets.core.reporting.comparison import COMPARISON_TABLES, compare_models, comparison_markdown
from inference_assets.core.reporting.review_queue import (
    LOW_CONFIDENCE,
    REVIEW_TABLES,
    build_review_queue,
    local_files_url,
    review_markdown,
    write_label_studio_config,
    write_label_studio_tasks,
    write_review_csv,
)
from inference_assets.core.warehouse.database import catalog_name, current_catalog
from inference_assets.metadata import markdown_table, tables_metadata
from inference_assets.pools import DUCKDB_POOL
from inference_assets.resources import ModelResource, WorkAreaResource
from inference_assets.resources.models import ModelListResource
from inference_assets.settings import SETTINGS
from inference_assets.warehouse.assets import every_model_results, prediction_results
from inference_assets.warehouse.conditions import AFTER_UPSTREAM

_CATALOG = catalog_name(SETTINGS.duckdb_path)

# The review queue's files, in the work folder's review/ (and its shared mirror).
REVIEW_FILES = ("review_queue.csv", "label_studio_tasks.jsonl", "label_studio_config.xml")


@asset(
    group_name="comparison",
    deps=[prediction_results],
    pool=DUCKDB_POOL,
    automation_condition=AFTER_UPSTREAM,
    kinds={"duckdb"},
    description="Every pair of models side by side: top-1 agreement overall and per class, the images whose top-1 "
    "changed (both labels and confidences), each model's top-1/top-5 on labelled images and the images one gets "
    "right and the other wrong. DuckDB tables comparison_pairs, comparison_classes, comparison_changes, "
    "model_accuracy, comparison_correctness.",
    metadata=tables_metadata(COMPARISON_TABLES, "comparison_pairs", _CATALOG),
)
def model_comparison(context: AssetExecutionContext, duckdb: DuckDBResource) -> MaterializeResult:
    with duckdb.get_connection() as conn:
        summary = compare_models(conn)
        accuracy = conn.execute(
            "SELECT model_name, kind, evaluated, round(top1_accuracy, 4), round(top5_accuracy, 4) FROM model_accuracy "
            "ORDER BY position").fetchall()
        pairs = comparison_markdown(conn)
        tables = tables_metadata(COMPARISON_TABLES, "comparison_pairs", current_catalog(conn), conn)
    for pair in summary.pairs:
        context.log.info(f"{pair.model_a} vs {pair.model_b}: top-1 agrees on {pair.agreements} of {pair.images} "
                         f"images, {pair.changed} changed")
    return MaterializeResult(metadata={
        "models": len(summary.models),
        "pairs": len(summary.pairs),
        "changed_images": sum(pair.changed for pair in summary.pairs),
        "agreement": MetadataValue.md(pairs or "fewer than two models: nothing to compare"),
        "accuracy": markdown_table(("model", "kind", "labelled images evaluated", "top-1", "top-5"), accuracy),
        **tables,
    })


class CalibrationConfig(Config):
    temperature_scaling: bool = Field(
        default=False,
        description="Fit one temperature per model on the labelled images and store the rescaled top-1 "
        "confidences in calibrated_predictions (the stored probabilities are never replaced).",
    )


@asset(
    group_name="comparison",
    deps=[prediction_results],
    pool=DUCKDB_POOL,
    automation_condition=AFTER_UPSTREAM,
    kinds={"duckdb"},
    description="Per model, on labelled images: expected calibration error (ECE), negative log-likelihood and a "
    "reliability diagram; with temperature_scaling, a temperature fitted on the labelled images (and measured "
    "held out: each half of them scaled by the other half's temperature) and every prediction's rescaled top-1 "
    "confidence in calibrated_predictions, beside the stored one. DuckDB tables "
    "calibration_summary, calibration_bins (and calibrated_predictions).",
    metadata=tables_metadata(CALIBRATION_TABLES, "calibration_summary", _CATALOG),
)
def calibration(
    context: AssetExecutionContext,
    config: CalibrationConfig,
    work_area: WorkAreaResource,
    model: ModelResource,
    models: ModelListResource,
    duckdb: DuckDBResource,
) -> MaterializeResult:
    with duckdb.get_connection() as conn:
        labels = dict(conn.execute("SELECT image_id, label FROM images WHERE label IS NOT NULL").fetchall())
    results, scaled = {}, {}
    for entry in every_model_results(work_area, model, models, context.log.warning):
        result = calibrate_result_files(entry.files, labels, fit=config.temperature_scaling)
        results[entry.name] = result
        if result.temperature is not None:
            scaled[entry.name] = (result.temperature, calibrated_rows(entry.files, result.temperature))
        context.log.info(f"calibration of {entry.name}: {result.images} labelled images, ECE "
                         + (f"{result.ece_before:.4f}" if result.ece_before is not None else "not measured")
                         + (f", temperature {result.temperature:.3f}, ECE after {result.ece_after:.4f}"
                            if result.temperature is not None else "")
                         + (f", held out {result.ece_held_out:.4f}" if result.ece_held_out is not None else "")
                         + (f" ({result.note})" if result.note else ""))
    with duckdb.get_connection() as conn:
        store_calibration(conn, results)
        calibrated = store_calibrated_predictions(conn, scaled)  # empty without temperature scaling
        tables = tables_metadata(CALIBRATION_TABLES, "calibration_summary", current_catalog(conn), conn)

    def number(value):
        return "" if value is None else round(value, 4)

    rows = [(name, r.images, number(r.ece_before), number(r.temperature), number(r.ece_after),
             number(r.ece_held_out), r.note or "") for name, r in results.items()]
    return MaterializeResult(metadata={
        "models": len(results),
        "temperature_scaling": config.temperature_scaling,
        "calibrated_predictions": calibrated,
        "calibration": markdown_table(("model", "labelled images", "ECE", "temperature", "ECE after scaling",
                                       "ECE after scaling, held out", "note"), rows),
        **tables,
    })


class ReviewConfig(Config):
    low_confidence: float = Field(
        default=LOW_CONFIDENCE, ge=0, le=1,
        description="An image whose primary model's top-1 confidence is below this joins the queue.",
    )
    label_studio_root: str = Field(
        default="",
        description="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: local images under it are given to "
        "Label Studio as /data/local-files/?d=<path under it>; empty: each image's location as it is.",
    )


@asset(
    group_name="comparison",
    deps=[prediction_results],
    pool=DUCKDB_POOL,
    automation_condition=AFTER_UPSTREAM,
    kinds={"duckdb", "csv"},
    description="The images a person should look at, ranked: the prediction differs from the image's label, the "
    "models disagree, or the confidence is low. DuckDB table review_queue, and in the work folder's review/: a "
    "CSV, Label Studio tasks (JSON Lines, the models' top-1 as pre-annotations) and its labelling config.",
    metadata=tables_metadata(REVIEW_TABLES, "review_queue", _CATALOG),
)
def review_queue(
    context: AssetExecutionContext, config: ReviewConfig, work_area: WorkAreaResource, duckdb: DuckDBResource
) -> MaterializeResult:
    with duckdb.get_connection() as conn:
        summary = build_review_queue(conn, low_confidence=config.low_confidence)
        with work_area.files.updating_review(REVIEW_FILES) as paths:
            write_review_csv(conn, paths["review_queue.csv"])
            image_url = local_files_url(config.label_studio_root) if config.label_studio_root else None
            write_label_studio_tasks(conn, paths["label_studio_tasks.jsonl"], image_url)
            write_label_studio_config(conn, paths["label_studio_config.xml"])
        table = review_markdown(conn)
        tables = tables_metadata(REVIEW_TABLES, "review_queue", current_catalog(conn), conn)
    context.log.info(f"review queue: {summary.queued} of {summary.considered} images "
                     f"({dict(summary.reasons)}); files in {work_area.files.layout.review_dir}")
    return MaterializeResult(metadata={
        "queued": summary.queued,
        "considered": summary.considered,
        **{f"reason_{reason}": count for reason, count in sorted(summary.reasons.items())},
        "low_confidence": config.low_confidence,
        "queue": MetadataValue.md(table),
        **{name.replace(".", "_"): MetadataValue.path(str(path)) for name, path in paths.items()},
        **tables,
    })

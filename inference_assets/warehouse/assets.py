"""Asset: the DuckDB results database, refreshed from every partition's result file."""


from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset
from dagster_duckdb import DuckDBResource

from inference_assets.core.collection.manifest import read_manifest
from inference_assets.core.reporting.evaluation import EVALUATION_TABLES, evaluate
from inference_assets.core.storage.results import intact_result_files
from inference_assets.core.warehouse.database import (
    WAREHOUSE_TABLES,
    ModelResults,
    catalog_name,
    current_catalog,
    refresh_warehouse,
    top_labels,
)
from inference_assets.images.assets import image_manifest
from inference_assets.inference.assets import MODEL_LIST_ASSETS, prediction_files, results_slug
from inference_assets.metadata import markdown_table, results_pictures, tables_metadata
from inference_assets.partitions import IMAGE_SHARDS
from inference_assets.pools import DUCKDB_POOL
from inference_assets.resources import ModelResource, WorkAreaResource
from inference_assets.resources.models import ModelListResource
from inference_assets.settings import SETTINGS
from inference_assets.warehouse.conditions import AFTER_NEW_PREDICTIONS, AFTER_UPSTREAM

# Each asset's tables, named as DuckDB names them in the configured database file (the UI shows
# this before any run; each materialization then reports the real tables of the database it used).
_CATALOG = catalog_name(SETTINGS.duckdb_path)


def loaded_result_files(work_area: WorkAreaResource, model: ModelResource):
    """The complete per-partition result files of the configured model, and the manifest beside them
    (both fetched from the shared storage first when it is configured)."""
    work_area.files.manifest()
    return work_area.files.result_files(model.slug, IMAGE_SHARDS.get_partition_keys())


def every_model_results(
    work_area: WorkAreaResource, model: ModelResource, models: ModelListResource, warn
) -> list[ModelResults]:
    """Every model's intact result files, the primary model first, then the model list's models and ensembles."""
    keys = IMAGE_SHARDS.get_partition_keys()
    listed = {m.name: m for m in models.model_list.models}
    entries = []
    for position, name in enumerate(models.names(model)):
        files = intact_result_files(work_area.files.result_files(results_slug(name, model, models), keys), warn)
        if position == 0:
            entries.append(ModelResults(name, files, model.name, tta=model.tta))
        elif name in listed:
            entries.append(ModelResults(name, files, listed[name].model, tta=listed[name].tta))
        else:
            ensemble = models.ensemble(name)
            entries.append(ModelResults(name, files, ensemble.description, "ensemble",
                                        members=ensemble.members, member_weights=ensemble.weights))
    return entries


@asset(
    group_name="warehouse",
    deps=[image_manifest, prediction_files, *MODEL_LIST_ASSETS],
    pool=DUCKDB_POOL,
    automation_condition=AFTER_NEW_PREDICTIONS,
    kinds={"duckdb"},
    description="DuckDB tables images, predictions, failures and model_classes (the primary model), models and "
    "model_predictions (every model of the model list and ensemble), replaced in one transaction from the manifest "
    "and the per-partition result files (single writer).",
    metadata=tables_metadata(WAREHOUSE_TABLES, "predictions", _CATALOG),
)
def prediction_results(
    context: AssetExecutionContext,
    work_area: WorkAreaResource,
    model: ModelResource,
    models: ModelListResource,
    duckdb: DuckDBResource,
) -> MaterializeResult:
    manifest = work_area.files.manifest()  # fetched from the shared storage first, when there is one
    read_manifest(manifest)  # a missing or damaged manifest: a one-line error, not DuckDB's
    # every model's intact result files, each read and verified once; the primary model's come first
    every_model = every_model_results(work_area, model, models, context.log.warning)
    files = every_model[0].files
    with duckdb.get_connection() as conn:
        summary = refresh_warehouse(conn, manifest, files, every_model)
        per_model = conn.execute("SELECT model_name, kind, model, predictions FROM models ORDER BY position").fetchall()
        labels = top_labels(conn, limit=10)
        pictures = results_pictures(conn)
        tables = tables_metadata(WAREHOUSE_TABLES, "predictions", current_catalog(conn), conn)
    context.log.info(
        f"{duckdb.database}: {summary.predictions} predictions, {summary.failures} failures "
        f"from {summary.partitions_loaded} partition files; {summary.images} images in the manifest"
    )
    return MaterializeResult(
        metadata={
            "images": summary.images,
            "predictions": summary.predictions,
            "failures": summary.failures,
            "partitions_loaded": summary.partitions_loaded,
            "model": model.spec.name,
            "models": markdown_table(("name", "kind", "model", "predictions"), per_model),
            "top_labels": markdown_table(("label", "images"), labels),
            **pictures,
            **tables,
            "database": MetadataValue.path(duckdb.database),
            "sample_query": MetadataValue.md(
                f"```\nduckdb {duckdb.database} \"select class_label, count(*) from predictions "
                "group by 1 order by 2 desc\"\n```"
            ),
        }
    )


@asset(
    group_name="warehouse",
    deps=[prediction_results],
    pool=DUCKDB_POOL,
    automation_condition=AFTER_UPSTREAM,
    kinds={"duckdb"},
    description="Accuracy against the images' own labels (folder names, ImageNet WordNet ids or a table's "
    "label column): top-1/top-5, per class, and the most confused pairs, as DuckDB tables evaluation_classes, "
    "evaluation_images, evaluation_confusions and evaluation_summary.",
    metadata=tables_metadata(EVALUATION_TABLES, "evaluation_classes", _CATALOG),
)
def evaluation(context: AssetExecutionContext, duckdb: DuckDBResource) -> MaterializeResult:
    with duckdb.get_connection() as conn:
        summary = evaluate(conn)
        classes = conn.execute(
            "SELECT label, images, round(top1_accuracy, 3), round(top5_accuracy, 3) FROM evaluation_classes "
            "ORDER BY top1_accuracy, images DESC LIMIT 20"
        ).fetchall()
        confusions = conn.execute("SELECT label, predicted, images FROM evaluation_confusions LIMIT 10").fetchall()
        tables = tables_metadata(EVALUATION_TABLES, "evaluation_classes", current_catalog(conn), conn)
    if summary.evaluated:
        context.log.info(
            f"evaluation: {summary.evaluated} labelled images, top-1 {summary.top1_accuracy:.3f}, "
            f"top-5 {summary.top5_accuracy:.3f}"
        )
    else:
        context.log.info(f"evaluation: no image carries a known class label ({summary.labelled} labelled)")
    unknown = summary.unknown_labels.most_common(10)
    return MaterializeResult(
        metadata={
            "labelled_images": summary.labelled,
            "evaluated_images": summary.evaluated,
            "unknown_labels": sum(summary.unknown_labels.values()),
            "top1_accuracy": MetadataValue.float(summary.top1_accuracy) if summary.evaluated else MetadataValue.null(),
            "top5_accuracy": MetadataValue.float(summary.top5_accuracy) if summary.evaluated else MetadataValue.null(),
            "per_class": markdown_table(("label", "images", "top-1", "top-5"), classes),
            "most_confused": markdown_table(("label", "predicted as", "images"), confusions),
            "labels_not_in_the_model": markdown_table(("label", "images"), unknown),
            **tables,
        }
    )

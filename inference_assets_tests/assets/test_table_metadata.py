"""The DuckDB tables as the Dagster UI names and describes them: each asset's tables with their
fully qualified names, column schemas (types, constraints, descriptions) and row counts, before
any run (definition metadata) and after one (from the real tables)."""

import duckdb
import pytest
from dagster import AssetKey, materialize

from inference_assets.core.collection.manifest import build_manifest
from inference_assets.core.reporting.calibration import (
    CALIBRATION_TABLES,
    store_calibrated_predictions,
    store_calibration,
)
from inference_assets.core.reporting.comparison import COMPARISON_TABLES, compare_models
from inference_assets.core.reporting.evaluation import EVALUATION_TABLES, evaluate
from inference_assets.core.reporting.review_queue import REVIEW_TABLES, build_review_queue
from inference_assets.core.storage.layout import Layout
from inference_assets.core.warehouse.database import WAREHOUSE_TABLES, catalog_name, refresh_warehouse, table_columns
from inference_assets.definitions import ASSETS, defs
from inference_assets_tests.conftest import cpu_resources, source_resource, work_area_resource

# each asset that makes DuckDB tables: its main table (dagster/table_name) and all its tables
ASSET_TABLES = {
    "prediction_results": ("predictions", WAREHOUSE_TABLES),
    "evaluation": ("evaluation_classes", EVALUATION_TABLES),
    "model_comparison": ("comparison_pairs", COMPARISON_TABLES),
    "calibration": ("calibration_summary", CALIBRATION_TABLES),
    "review_queue": ("review_queue", REVIEW_TABLES),
}
EVERY_TABLE = {name: table for _, tables in ASSET_TABLES.values() for name, table in tables.items()}


def _shape(columns):
    """(name, type, nullable, unique) of each column."""
    return [(c.name, c.type, c.nullable, c.unique) for c in columns]


@pytest.mark.fast
def test_the_described_tables_are_the_tables_the_warehouse_and_the_evaluation_make(image_root, tmp_path):
    layout = Layout(tmp_path / "work")
    build_manifest(image_root, layout.manifest_path, num_partitions=2)
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as conn:
        refresh_warehouse(conn, layout.manifest_path, [])
        evaluate(conn)  # nothing predicted: empty tables, typed all the same
        compare_models(conn)
        store_calibration(conn, {})
        store_calibrated_predictions(conn, {})
        build_review_queue(conn)
        made = {name for (name,) in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        assert made == set(EVERY_TABLE), "a table made but not described, or the reverse"
        for tables in (tables for _, tables in ASSET_TABLES.values()):
            for name, table in tables.items():
                assert _shape(table_columns(conn, name)) == _shape(table.columns), f"{name}: described != DuckDB's"
                assert all(column.description.strip() for column in table.columns), name
                assert table.description.strip(), name


@pytest.mark.fast
def test_before_any_run_each_asset_names_and_describes_its_tables():
    catalog = catalog_name(defs.resources["duckdb"].database)
    assert catalog == "warehouse"  # data/warehouse.duckdb, as DuckDB names it
    for asset, (main, tables) in ASSET_TABLES.items():
        spec = defs.resolve_assets_def(AssetKey(asset)).specs_by_key[AssetKey(asset)]
        metadata = spec.metadata
        assert metadata["dagster/table_name"] == f"{catalog}.main.{main}"
        schema = metadata["dagster/column_schema"]
        assert [c.name for c in schema.columns] == [c.name for c in tables[main].columns]
        assert all(c.description and c.type for c in schema.columns), asset
        for name, table in tables.items():
            if name != main:
                other = metadata[f"{name}_table"].schema
                assert [(c.name, c.type) for c in other.columns] == [(c.name, c.type) for c in table.columns]
            escaped = name.replace("_", "\\_")  # Markdown
            assert f"| {escaped} | {catalog}.main.{escaped} | " in metadata["tables"].md_str, name
            assert name in spec.description, f"{asset}'s description does not name its table {name}"


def test_a_materialization_reports_the_real_tables_with_row_counts(image_root, tmp_path, instance):
    (image_root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    source, work_area = source_resource(image_root=str(image_root)), work_area_resource(tmp_path / "work")
    resources = cpu_resources(source, work_area, tmp_path / "results.v2.duckdb")  # DuckDB names this database "results"
    assert materialize(ASSETS, selection=["image_manifest"], resources=resources, instance=instance).success
    steps = ["preprocessed_images", "prediction_files"]
    keys = defs.resolve_assets_def(AssetKey("prediction_files")).partitions_def.get_partition_keys()
    tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    assert materialize(ASSETS, selection=steps, resources=resources, instance=instance, tags=tags).success
    result = materialize(ASSETS, selection=list(ASSET_TABLES), resources=resources, instance=instance)
    assert result.success

    expected_rows = {"images": 7, "predictions": 6, "failures": 1, "model_classes": 1000, "evaluation_classes": 4,
                     "evaluation_images": 4, "evaluation_confusions": 1, "evaluation_summary": 1,
                     "models": 1, "model_predictions": 6,  # the primary model alone
                     "comparison_pairs": 0, "comparison_classes": 0, "comparison_changes": 0, "model_accuracy": 1,
                     "comparison_correctness": 0, "calibration_summary": 1, "calibration_bins": 15,
                     "calibrated_predictions": 0}
    with duckdb.connect(str(tmp_path / "results.v2.duckdb"), read_only=True) as conn:  # its own rules' outcome
        expected_rows["review_queue"] = conn.execute("SELECT count(*) FROM review_queue").fetchone()[0]
    for asset, (main, tables) in ASSET_TABLES.items():
        metadata = {k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}
        assert metadata["dagster/table_name"] == f"results.main.{main}"
        assert metadata["dagster/row_count"] == expected_rows[main]
        schema = metadata["dagster/column_schema"]
        assert [(c.name, c.type) for c in schema.columns] == [(c.name, c.type) for c in tables[main].columns]
        described = {c.name: c for c in tables[main].columns}
        for column in schema.columns:  # from duckdb_columns(): constraints as DuckDB has them
            assert column.description == described[column.name].description
            assert column.constraints.nullable == described[column.name].nullable, column.name
            assert column.constraints.unique == described[column.name].unique, column.name
        for name in tables:
            if name != main:
                assert [c.name for c in metadata[f"{name}_table"].columns] == [c.name for c in tables[name].columns]
            escaped = name.replace("_", "\\_")
            assert f"| {escaped} | {expected_rows[name]} | results.main.{escaped} |" in metadata["tables"], name
    warehouse = result.asset_materializations_for_node("prediction_results")[0].metadata
    columns = {c.name: c for c in warehouse["dagster/column_schema"].schema.columns}
    assert columns["label"].constraints.nullable and not columns["confidence"].constraints.nullable
    assert columns["image_id"].constraints.unique and columns["confidence"].type == "FLOAT"

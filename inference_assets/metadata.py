"""Small helpers that turn counts into Dagster metadata values."""


from collections.abc import Iterable

from dagster import MetadataValue, TableColumn, TableColumnConstraints, TableRecord, TableSchema

from inference_assets.core.reporting import charts, markdown
from inference_assets.core.reporting.report import results_charts
from inference_assets.core.reporting.thumbnails import png_data_uri
from inference_assets.core.warehouse.database import (
    Column,
    TableDescription,
    failure_reasons,
    qualified_name,
    table_columns,
    table_rows,
)


def markdown_table(headers: tuple[str, ...], rows: Iterable[tuple]) -> MetadataValue:
    """A Markdown table for the UI; cells from user data (names, labels, reasons) are escaped."""
    return MetadataValue.md(markdown.table(headers, rows))


def table_schema(table: TableDescription, columns: list[Column] | None = None) -> TableSchema:
    """The Dagster column schema of ``table``: its described columns, or the real table's ``columns``
    (``core.warehouse.database.table_columns``) with the descriptions of the described ones."""
    described = {column.name: column.description for column in table.columns}
    return TableSchema(
        columns=[
            TableColumn(
                column.name,
                column.type,
                description=described.get(column.name) or None,
                constraints=TableColumnConstraints(nullable=column.nullable, unique=column.unique),
            )
            for column in (table.columns if columns is None else columns)
        ]
    )


def tables_metadata(tables: dict[str, TableDescription], main: str, catalog: str, conn=None) -> dict:
    """Metadata that names and describes an asset's DuckDB tables: ``dagster/table_name`` and
    ``dagster/column_schema`` for the ``main`` one, ``<table>_table`` (column schema) for each other
    one, and ``tables`` (each one's full name and what it holds). With a connection (at
    materialization) the schemas are the real tables' and row counts are added: ``dagster/row_count``
    (the main table's) and a ``rows`` column in ``tables``; without one, the described schemas
    (definition metadata, shown before any run)."""
    rows = table_rows(conn, tables) if conn is not None else None
    metadata: dict = {"dagster/table_name": qualified_name(catalog, main)}
    for name, table in tables.items():
        schema = table_schema(table, table_columns(conn, name) if conn is not None else None)
        if name == main:
            metadata["dagster/column_schema"] = schema
        else:
            metadata[f"{name}_table"] = MetadataValue.table_schema(schema)
    if rows is None:
        listing = [(name, qualified_name(catalog, name), table.description) for name, table in tables.items()]
        metadata["tables"] = markdown_table(("table", "full name", "holds"), listing)
    else:
        metadata["dagster/row_count"] = rows[main]
        listing = [(name, rows[name], qualified_name(catalog, name), t.description) for name, t in tables.items()]
        metadata["tables"] = markdown_table(("table", "rows", "full name", "holds"), listing)
    return metadata


def results_pictures(conn) -> dict:
    """What the UI shows for the DuckDB tables: charts, failures by reason, a preview."""
    reasons = failure_reasons(conn, limit=10)
    preview = conn.execute(
        "SELECT uri, class_label, round(confidence, 4) AS confidence, partition FROM predictions ORDER BY uri LIMIT 10"
    ).fetchall()
    metadata = {
        "failures_by_reason": markdown_table(("stage", "reason", "images"), reasons) if reasons else MetadataValue.md("none"),
        "preview": MetadataValue.table(
            records=[TableRecord({"uri": u, "class_label": c, "confidence": float(p), "partition": k}) for u, c, p, k in preview],
            schema=TableSchema(columns=[TableColumn("uri", "string"), TableColumn("class_label", "string"),
                                        TableColumn("confidence", "float"), TableColumn("partition", "string")]),
        ),
    }
    drawn = results_charts(conn)
    if drawn is not None:
        chart, histogram = (png_data_uri(png) for png in drawn)
        metadata["class_distribution"] = MetadataValue.md(f"![predicted classes]({chart})")
        metadata["confidence_histogram"] = MetadataValue.md(f"![confidence histogram]({histogram})")
    elif not charts.available():
        metadata["charts"] = charts.MISSING
    return metadata

"""Small helpers that turn counts into Dagster metadata values."""


from collections.abc import Iterable

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from inference_assets.core import markdown
from inference_assets.core.report import results_charts
from inference_assets.core.thumbnails import png_data_uri
from inference_assets.core.warehouse import failure_reasons


def markdown_table(headers: tuple[str, ...], rows: Iterable[tuple]) -> MetadataValue:
    """A Markdown table for the UI; cells from user data (names, labels, reasons) are escaped."""
    return MetadataValue.md(markdown.table(headers, rows))


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 2) if seconds > 0 else 0.0


def results_pictures(conn) -> dict:
    """What the UI shows for the DuckDB tables: charts, failures by reason, a preview, counts, schema."""
    reasons = failure_reasons(conn, limit=10)
    preview = conn.execute(
        "SELECT uri, class_label, round(confidence, 4) AS confidence, partition FROM predictions ORDER BY uri LIMIT 10"
    ).fetchall()
    columns = conn.execute(
        "SELECT column_name, data_type, is_nullable FROM duckdb_columns() WHERE table_name = 'predictions' ORDER BY column_index"
    ).fetchall()
    rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("images", "predictions", "failures")}
    metadata = {
        "row_counts": markdown_table(("table", "rows"), rows.items()),
        "failures_by_reason": markdown_table(("stage", "reason", "images"), reasons) if reasons else MetadataValue.md("none"),
        "preview": MetadataValue.table(
            records=[TableRecord({"uri": u, "class_label": c, "confidence": float(p), "partition": k}) for u, c, p, k in preview],
            schema=TableSchema(columns=[TableColumn("uri", "string"), TableColumn("class_label", "string"),
                                        TableColumn("confidence", "float"), TableColumn("partition", "string")]),
        ),
        "dagster/column_schema": TableSchema(
            columns=[TableColumn(name, kind.lower(), description=None if nullable == "YES" else "not null")
                     for name, kind, nullable in columns]
        ),
    }
    charts = results_charts(conn)
    if charts is not None:
        chart, histogram = (png_data_uri(png) for png in charts)
        metadata["class_distribution"] = MetadataValue.md(f"![predicted classes]({chart})")
        metadata["confidence_histogram"] = MetadataValue.md(f"![confidence histogram]({histogram})")
    return metadata

"""The DuckDB results database, refreshed from the manifest and the per-partition result files.

Tables (each replaced as a whole inside one transaction, so readers see the old or the
new contents, never a mix, and re-running never duplicates a row):

- ``images``: the manifest.
- ``predictions``: one row per image predicted by the primary model (primary key ``image_id``).
- ``failures``: one row per image that could not be predicted, with the stage and error (stage
  ``list`` for an image under a folder that could not be listed, see :mod:`.manifest`).
- ``model_classes``: the model's classes (index, name), in output order.
- ``models``: every model loaded (the primary one, the model list's, the ensembles), in order.
- ``model_predictions``: every model's predictions, one row per model and image (key
  ``model_name``, ``image_id``); the primary model's are those of ``predictions``.

A result row counts only while it matches the manifest (same ``image_id`` and content
hash): results for deleted or changed files drop out until their partition is re-run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from inference_assets.core.errors import ConfigError
from inference_assets.core.storage.results import read_class_names

_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")


class WarehouseWriteError(RuntimeError):
    """The refresh could not be written (disk full, file too large...): the message says why."""


class WarehouseLockedError(RuntimeError):
    """Another process kept the DuckDB file locked for longer than we were willing to wait."""


def check_database_path(database: str) -> None:
    """A one-line error when the database path is a folder, or its folder does not exist (DuckDB would not create it)."""
    if database == ":memory:" or database.startswith("md:"):
        return
    path = Path(database).expanduser().resolve()
    if path.is_dir():
        raise ConfigError(
            f"DuckDB database {database!r} is a folder: set duckdb_path to a file path such as "
            f"{str(path / 'warehouse.duckdb')!r}",
            settings=["duckdb_path"],
        )
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(
            f"DuckDB database {database!r} is in a folder that does not exist ({folder}): "
            "create the folder or set duckdb_path to a path in an existing one",
            settings=["duckdb_path"],
        )


def connect_waiting_for_lock(
    database: str,
    timeout: float = 120.0,
    on_wait: Callable[[str], None] | None = None,
    config: dict | None = None,
    poll: float = 0.25,
    read_only: bool = False,
) -> duckdb.DuckDBPyConnection:
    """Open ``database``; while another process holds its lock, wait and retry up to ``timeout``.

    ``on_wait`` gets a line naming the holder when waiting starts and every 10 s after. Past
    the timeout, :class:`WarehouseLockedError` names the file and the holding process.
    Other errors are raised at once.
    """
    check_database_path(database)
    deadline = time.monotonic() + timeout
    next_report = 0.0
    while True:
        try:
            return duckdb.connect(database, read_only=read_only, config=config or {})
        except duckdb.IOException as exc:
            match = _LOCK_HOLDER.search(str(exc))
            if match is None:
                raise
            holder = f"{match['program']} (PID {match['pid']})"
            now = time.monotonic()
            if now >= deadline:
                raise WarehouseLockedError(
                    f"DuckDB file {database!r} is still locked by {holder} after {timeout:.0f}s: "
                    "close that process's connection (or stop it) and run again"
                ) from None
            if on_wait is not None and now >= next_report:
                on_wait(
                    f"DuckDB file {database!r} is locked by {holder}; waiting up to "
                    f"{deadline - now:.0f}s more for it to be released"
                )
                next_report = now + 10.0
            time.sleep(poll)


@dataclass(frozen=True)
class Column:
    """One column of a table this project makes: its DuckDB type as ``duckdb_columns()`` names it."""

    name: str
    type: str
    description: str
    nullable: bool = True
    unique: bool = False  # the table's primary key


@dataclass(frozen=True)
class TableDescription:
    """What one of our DuckDB tables holds, column by column (shown in the Dagster UI before any run)."""

    name: str
    description: str
    columns: tuple[Column, ...]


def _key(name: str, description: str) -> Column:
    return Column(name, "VARCHAR", description, nullable=False, unique=True)


def tables_by_name(*tables: TableDescription) -> dict[str, TableDescription]:
    """``tables`` keyed by their names, in order."""
    return {table.name: table for table in tables}


_TIME = "TIMESTAMP WITH TIME ZONE"
_PARTITION = "The image's partition (shard key, e.g. shard-03)."
_URI = "How the source reopens the image: a local path, s3://bucket/key, or a database row reference."
_WRITTEN_AT = "When the row was written to the partition's result file (UTC)."

# The tables refresh_warehouse makes; a test checks them against the real tables (duckdb_columns()).
WAREHOUSE_TABLES: dict[str, TableDescription] = tables_by_name(
    TableDescription("images", "The image manifest: one row per image of the source.", (
        _key("image_id", "Stable id from the image's key (path under the root, object key, or table/database id)."),
        Column("relative_path", "VARCHAR", "The image's key as text (a folder that could not be listed ends with /).",
               nullable=False),
        Column("uri", "VARCHAR", _URI, nullable=False),
        Column("size_bytes", "BIGINT", "File size in bytes; null when the image cannot be read."),
        Column("modified_at", _TIME, "Last modification time; null when the image cannot be read."),
        Column("content_hash", "VARCHAR", "sha256:<hex> of the image's bytes; null when it cannot be read."),
        Column("label", "VARCHAR", "The image's own label: its parent folder's name or the table's label column."),
        Column("partition", "VARCHAR", _PARTITION, nullable=False),
        Column("error", "VARCHAR", "Why the image cannot be read (missing, no permission, folder not listable...); "
               "null when it can."),
    )),
    TableDescription(
        "predictions", "One row per predicted image whose result matches the manifest (same id and content hash).", (
            _key("image_id", "The image (images.image_id)."),
            Column("uri", "VARCHAR", _URI, nullable=False),
            Column("partition", "VARCHAR", _PARTITION, nullable=False),
            Column("label", "VARCHAR", "The image's own label from the manifest; null when it has none."),
            Column("class_index", "INTEGER", "Index of the top-1 class in the model's output (model_classes).",
                   nullable=False),
            Column("class_label", "VARCHAR", "Name of the top-1 class.", nullable=False),
            Column("confidence", "FLOAT", "Probability of the top-1 class (0 to 1).", nullable=False),
            Column("topk_indices", "INTEGER[]", "Indices of the top-k classes, most probable first.",
                   nullable=False),
            Column("topk_labels", "VARCHAR[]", "Names of the top-k classes, most probable first.", nullable=False),
            Column("topk_probs", "FLOAT[]", "Probabilities of the top-k classes.", nullable=False),
            Column("positive_labels", "VARCHAR[]", "Multi-label models: every class at or above the threshold, "
                   "most probable first; null for single-label models."),
            Column("model", "VARCHAR", "The model's name (architecture or model file).", nullable=False),
            Column("weights", "VARCHAR", "What exactly was loaded: kind, file name and sha256 prefix.",
                   nullable=False),
            Column("model_id", "VARCHAR", "The model's identity: weights, class names, preprocessing, activation."),
            Column("device", "VARCHAR", "The device that ran the forward pass (cpu, cuda:0...)."),
            Column("precision", "VARCHAR", "fp32, bf16 or fp16."),
            Column("runtime", "VARCHAR", "What ran the forward pass: pytorch (its format), openvino (CPU), "
                   "onnxruntime (its providers); null for predictions made before it was recorded."),
            Column("content_hash", "VARCHAR", "Hash of the image bytes the prediction was made from.",
                   nullable=False),
            Column("predicted_at", _TIME, _WRITTEN_AT + " A reused prediction keeps the time it was made."),
        ),
    ),
    TableDescription("failures", "One row per image that could not be predicted: its stage and a one-line reason.", (
        _key("image_id", "The image (images.image_id)."),
        Column("uri", "VARCHAR", _URI, nullable=False),
        Column("partition", "VARCHAR", _PARTITION, nullable=False),
        Column("stage", "VARCHAR", "Where it failed: list (folder not listable), read or decode.", nullable=False),
        Column("error", "VARCHAR", "One-line reason.", nullable=False),
        Column("model", "VARCHAR", "The model whose partition run recorded the failure.", nullable=False),
        Column("content_hash", "VARCHAR", "Hash of the image bytes; null when they could not be read."),
        Column("failed_at", _TIME, _WRITTEN_AT),
    )),
    TableDescription("model_classes", "The model's classes in output order (empty until a partition has results).", (
        Column("class_index", "INTEGER", "Index in the model's output.", nullable=False, unique=True),
        Column("class_label", "VARCHAR", "The class name.", nullable=False),
    )),
    TableDescription("models", "Every model whose predictions are loaded: the primary one (the predictions table), the "
                     "models of the model list and the ensembles, in configuration order.", (
        _key("model_name", "The model's name (model_predictions.model_name)."),
        Column("position", "INTEGER", "Its place in the configuration: 0 for the primary model.", nullable=False),
        Column("kind", "VARCHAR", "model (a forward pass) or ensemble (a mean of members' stored probabilities).",
               nullable=False),
        Column("is_primary", "BOOLEAN", "Whether it is the primary model, whose rows the predictions table holds.",
               nullable=False),
        Column("model", "VARCHAR", "The architecture or model file; ensemble(members) for an ensemble.",
               nullable=False),
        Column("tta", "VARCHAR", "Test-time augmentation (flip); null when none."),
        Column("members", "VARCHAR[]", "An ensemble's members; null for a model."),
        Column("member_weights", "DOUBLE[]", "An ensemble's members' weights, as configured; null for a model."),
        Column("predictions", "BIGINT", "Its rows in model_predictions.", nullable=False),
    )),
    TableDescription("model_predictions", "Every model's predictions, one row per model and predicted image whose "
                     "result matches the manifest; the primary model's rows are those of the predictions table.", (
        Column("model_name", "VARCHAR", "The model's name (models.model_name).", nullable=False),
        Column("image_id", "VARCHAR", "The image (images.image_id).", nullable=False),
        Column("uri", "VARCHAR", _URI, nullable=False),
        Column("partition", "VARCHAR", _PARTITION, nullable=False),
        Column("label", "VARCHAR", "The image's own label from the manifest; null when it has none."),
        Column("class_index", "INTEGER", "Index of the top-1 class in the model's output.", nullable=False),
        Column("class_label", "VARCHAR", "Name of the top-1 class.", nullable=False),
        Column("confidence", "FLOAT", "Probability of the top-1 class (0 to 1).", nullable=False),
        Column("topk_indices", "INTEGER[]", "Indices of the top-k classes, most probable first.", nullable=False),
        Column("topk_labels", "VARCHAR[]", "Names of the top-k classes, most probable first.", nullable=False),
        Column("topk_probs", "FLOAT[]", "Probabilities of the top-k classes.", nullable=False),
        Column("model", "VARCHAR", "The architecture or model file; ensemble(members) for an ensemble.",
               nullable=False),
        Column("model_id", "VARCHAR", "The model's identity: weights, class names, preprocessing, activation."),
        Column("runtime", "VARCHAR", "What ran the forward pass; 'ensemble of stored probabilities' for an ensemble."),
        Column("content_hash", "VARCHAR", "Hash of the image bytes the prediction was made from.", nullable=False),
        Column("predicted_at", _TIME, _WRITTEN_AT),
    )),
)


def has_table(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the connection's current database and schema hold a table (or view) ``name``."""
    return bool(conn.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = current_schema() AND table_name = ?", [name]).fetchone()[0]
        or conn.execute("SELECT count(*) FROM duckdb_views() WHERE database_name = current_database() "
                        "AND schema_name = current_schema() AND view_name = ?", [name]).fetchone()[0])


@contextmanager
def one_transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Everything inside committed together, or nothing (rolled back on any error): readers see the
    old tables or the new ones, never a mix."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def replace_tables(conn: duckdb.DuckDBPyConnection, tables: dict[str, pa.Table]) -> None:
    """Replace each table ``name`` with the rows of its Arrow table, all in one transaction."""
    with one_transaction(conn):
        for name, table in tables.items():
            conn.register("_replacing_rows", table)
            conn.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _replacing_rows")
            conn.unregister("_replacing_rows")


def catalog_name(database: str) -> str:
    """The name DuckDB gives the database of file ``database`` (what ``current_database()`` says):
    its file name up to the first dot; ``memory`` for ``:memory:``. At run time ask the connection."""
    if database == ":memory:":
        return "memory"
    return Path(database).name.split(".")[0]


def current_catalog(conn: duckdb.DuckDBPyConnection) -> str:
    """The name of the connection's database (``<catalog>.main.<table>``)."""
    return conn.execute("SELECT current_database()").fetchone()[0]


def qualified_name(catalog: str, table: str) -> str:
    """``<database>.main.<table>``: a table's fully qualified name, as ``dagster/table_name`` expects."""
    return f"{catalog}.main.{table}"


def table_columns(conn: duckdb.DuckDBPyConnection, table: str) -> list[Column]:
    """The columns of ``table`` in the current database's ``main`` schema as DuckDB has them (name,
    type, nullable, primary key or unique), in order, with no description; empty when there is no
    such table."""
    unique = {
        names[0]
        for (names,) in conn.execute(
            "SELECT constraint_column_names FROM duckdb_constraints() WHERE database_name = current_database() "
            "AND schema_name = 'main' AND table_name = ? AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')",
            [table],
        ).fetchall()
        if len(names) == 1
    }
    rows = conn.execute(
        "SELECT column_name, data_type, is_nullable FROM duckdb_columns() "
        "WHERE database_name = current_database() AND schema_name = 'main' AND table_name = ? ORDER BY column_index",
        [table],
    ).fetchall()
    return [Column(name, kind, "", nullable=nullable, unique=name in unique) for name, kind, nullable in rows]


def table_rows(conn: duckdb.DuckDBPyConnection, tables) -> dict[str, int]:
    """Rows in each of ``tables`` (names of tables that exist)."""
    return {name: conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in tables}


_CREATE_TABLES = """
CREATE OR REPLACE TABLE images (
    image_id VARCHAR PRIMARY KEY,
    relative_path VARCHAR NOT NULL,
    uri VARCHAR NOT NULL,
    size_bytes BIGINT,
    modified_at TIMESTAMPTZ,
    content_hash VARCHAR,
    label VARCHAR,
    partition VARCHAR NOT NULL,
    error VARCHAR
);
CREATE OR REPLACE TABLE predictions (
    image_id VARCHAR PRIMARY KEY,
    uri VARCHAR NOT NULL,
    partition VARCHAR NOT NULL,
    label VARCHAR,
    class_index INTEGER NOT NULL,
    class_label VARCHAR NOT NULL,
    confidence FLOAT NOT NULL,
    topk_indices INTEGER[] NOT NULL,
    topk_labels VARCHAR[] NOT NULL,
    topk_probs FLOAT[] NOT NULL,
    positive_labels VARCHAR[],
    model VARCHAR NOT NULL,
    weights VARCHAR NOT NULL,
    model_id VARCHAR,
    device VARCHAR,
    precision VARCHAR,
    runtime VARCHAR,
    content_hash VARCHAR NOT NULL,
    predicted_at TIMESTAMPTZ
);
CREATE OR REPLACE TABLE model_classes (
    class_index INTEGER PRIMARY KEY,
    class_label VARCHAR NOT NULL
);
CREATE OR REPLACE TABLE models (
    model_name VARCHAR PRIMARY KEY,
    position INTEGER NOT NULL,
    kind VARCHAR NOT NULL,
    is_primary BOOLEAN NOT NULL,
    model VARCHAR NOT NULL,
    tta VARCHAR,
    members VARCHAR[],
    member_weights DOUBLE[],
    predictions BIGINT NOT NULL
);
CREATE OR REPLACE TABLE model_predictions (
    model_name VARCHAR NOT NULL,
    image_id VARCHAR NOT NULL,
    uri VARCHAR NOT NULL,
    partition VARCHAR NOT NULL,
    label VARCHAR,
    class_index INTEGER NOT NULL,
    class_label VARCHAR NOT NULL,
    confidence FLOAT NOT NULL,
    topk_indices INTEGER[] NOT NULL,
    topk_labels VARCHAR[] NOT NULL,
    topk_probs FLOAT[] NOT NULL,
    model VARCHAR NOT NULL,
    model_id VARCHAR,
    runtime VARCHAR,
    content_hash VARCHAR NOT NULL,
    predicted_at TIMESTAMPTZ,
    PRIMARY KEY (model_name, image_id)
);
CREATE OR REPLACE TABLE failures (
    image_id VARCHAR PRIMARY KEY,
    uri VARCHAR NOT NULL,
    partition VARCHAR NOT NULL,
    stage VARCHAR NOT NULL,
    error VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    content_hash VARCHAR,
    failed_at TIMESTAMPTZ
);
"""

_INSERT_IMAGES = """
INSERT INTO images
SELECT image_id, relative_path, uri, size_bytes, modified_at, content_hash, label, partition, error
FROM read_parquet($manifest)
"""

_INSERT_PREDICTIONS = """
INSERT INTO predictions
SELECT r.image_id, r.uri, r.partition, m.label, r.class_index, r.class_label, r.confidence,
       r.topk_indices, r.topk_labels, r.topk_probs, r.positive_labels, r.model, r.weights, r.model_id,
       r.device, r.precision, {runtime},
       r.content_hash, r.predicted_at
FROM read_parquet($files, union_by_name = true) r
JOIN images m ON m.image_id = r.image_id AND m.content_hash = r.content_hash
WHERE r.status = 'predicted'
"""

_INSERT_FAILURES = """
INSERT INTO failures
SELECT r.image_id, r.uri, r.partition, r.stage, r.error, r.model, r.content_hash, r.predicted_at
FROM read_parquet($files, union_by_name = true) r
JOIN images m ON m.image_id = r.image_id AND m.content_hash IS NOT DISTINCT FROM r.content_hash
WHERE r.status = 'failed'
"""


_INSERT_MODEL_PREDICTIONS = """
INSERT INTO model_predictions
SELECT $name, r.image_id, r.uri, r.partition, m.label, r.class_index, r.class_label, r.confidence,
       r.topk_indices, r.topk_labels, r.topk_probs, r.model, r.model_id, {runtime}, r.content_hash, r.predicted_at
FROM read_parquet($files, union_by_name = true) r
JOIN images m ON m.image_id = r.image_id AND m.content_hash = r.content_hash
WHERE r.status = 'predicted'
"""


@dataclass(frozen=True)
class ModelResults:
    """A model's result files to load into ``model_predictions``, and what ``models`` says of it."""

    name: str
    files: list[Path]
    model: str = ""
    kind: str = "model"  # or "ensemble"
    tta: str | None = None
    members: tuple[str, ...] | None = None
    member_weights: tuple[float, ...] | None = None


def _runtime_column(files: list[Path]) -> str:
    # files written before `runtime` was recorded have no such column (null for their rows)
    return "r.runtime" if any("runtime" in pq.read_schema(p).names for p in files) else "NULL"


def _load_models(conn: duckdb.DuckDBPyConnection, models: list[ModelResults]) -> None:
    for position, entry in enumerate(models):
        if entry.files:
            files = [str(p) for p in entry.files]
            conn.execute(_INSERT_MODEL_PREDICTIONS.format(runtime=_runtime_column(entry.files)),
                         {"name": entry.name, "files": files})
        count = conn.execute("SELECT count(*) FROM model_predictions WHERE model_name = ?", [entry.name]).fetchone()[0]
        conn.execute(
            "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [entry.name, position, entry.kind, position == 0, entry.model, entry.tta,
             list(entry.members) if entry.members else None,
             list(entry.member_weights) if entry.member_weights else None, count],
        )


@dataclass
class WarehouseSummary:
    images: int
    predictions: int
    failures: int
    partitions_loaded: int


def refresh_warehouse(
    conn: duckdb.DuckDBPyConnection, manifest_path: Path, result_files: list[Path],
    models: list[ModelResults] | None = None,
) -> WarehouseSummary:
    """Replace the ``images``, ``predictions``, ``failures``, ``model_classes``, ``models`` and
    ``model_predictions`` tables in one transaction. ``result_files`` are the primary model's;
    ``models`` every model's, the primary one first (default: the primary model alone, named
    ``primary``): a model no longer listed leaves no row."""
    models = models if models is not None else [ModelResults("primary", result_files)]
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(_CREATE_TABLES)
        conn.execute(_INSERT_IMAGES, {"manifest": str(manifest_path)})
        if result_files:
            files = [str(p) for p in result_files]
            conn.execute(_INSERT_PREDICTIONS.format(runtime=_runtime_column(result_files)), {"files": files})
            conn.execute(_INSERT_FAILURES, {"files": files})
            names = read_class_names(result_files[0]) or []
            classes = pa.table({"class_index": pa.array(range(len(names)), pa.int32()), "class_label": names})
            conn.register("_model_classes", classes)
            conn.execute("INSERT INTO model_classes SELECT * FROM _model_classes")
            conn.unregister("_model_classes")
        _load_models(conn, models)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except duckdb.Error as exc:  # a failed COMMIT rolls back by itself; its cause (disk full...) is the message
        cause = " ".join(str(exc).split()).replace("TransactionContext Error: ", "")
        raise WarehouseWriteError(
            f"the DuckDB refresh could not be committed: {cause}; the tables keep their previous contents "
            "(free space or fix the file's folder, then materialize prediction_results again)"
        ) from exc
    counts = outcome_counts(conn)
    return WarehouseSummary(
        images=counts.images, predictions=counts.predicted, failures=counts.failed, partitions_loaded=len(result_files)
    )


class OutcomeCounts(NamedTuple):
    images: int  # in the manifest
    predicted: int
    failed: int


def outcome_counts(conn: duckdb.DuckDBPyConnection) -> OutcomeCounts:
    """How many images the tables hold, and how many of them were predicted and failed."""
    return OutcomeCounts(
        *conn.execute(
            "SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM predictions), (SELECT count(*) FROM failures)"
        ).fetchone()
    )


def failure_reasons(conn: duckdb.DuckDBPyConnection, limit: int = 10) -> list[tuple[str, str, int]]:
    """(stage, error, images) for the most frequent failure reasons."""
    return conn.execute(
        "SELECT stage, error, count(*) FROM failures GROUP BY ALL ORDER BY 3 DESC, 2 LIMIT ?", [limit]
    ).fetchall()


def top_labels(conn: duckdb.DuckDBPyConnection, limit: int = 10) -> list[tuple[str, int]]:
    """The most frequent predicted labels with their counts."""
    return conn.execute(
        "SELECT class_label, count(*) AS n FROM predictions GROUP BY 1 ORDER BY n DESC, class_label LIMIT ?",
        [limit],
    ).fetchall()

"""The DuckDB results database, refreshed from the manifest and the per-partition result files.

Tables (each replaced as a whole inside one transaction, so readers see the old or the
new contents, never a mix, and re-running never duplicates a row):

- ``images``: the manifest.
- ``predictions``: one row per predicted image (primary key ``image_id``).
- ``failures``: one row per image that could not be predicted, with the stage and error (stage
  ``list`` for an image under a folder that could not be listed, see :mod:`.manifest`).
- ``model_classes``: the model's classes (index, name), in output order.

A result row counts only while it matches the manifest (same ``image_id`` and content
hash): results for deleted or changed files drop out until their partition is re-run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from .errors import ConfigError
from .results import read_class_names

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
            f"DuckDB database {database!r} is a folder: set INFERENCE_DUCKDB_PATH to a file path such as "
            f"{str(path / 'warehouse.duckdb')!r}"
        )
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(
            f"DuckDB database {database!r} is in a folder that does not exist ({folder}): "
            "create the folder or set INFERENCE_DUCKDB_PATH to a path in an existing one"
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
    content_hash VARCHAR NOT NULL,
    predicted_at TIMESTAMPTZ
);
CREATE OR REPLACE TABLE model_classes (
    class_index INTEGER PRIMARY KEY,
    class_label VARCHAR NOT NULL
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
       r.device, r.precision,
       r.content_hash, r.predicted_at
FROM read_parquet($files) r
JOIN images m ON m.image_id = r.image_id AND m.content_hash = r.content_hash
WHERE r.status = 'predicted'
"""

_INSERT_FAILURES = """
INSERT INTO failures
SELECT r.image_id, r.uri, r.partition, r.stage, r.error, r.model, r.content_hash, r.predicted_at
FROM read_parquet($files) r
JOIN images m ON m.image_id = r.image_id AND m.content_hash IS NOT DISTINCT FROM r.content_hash
WHERE r.status = 'failed'
"""


@dataclass
class WarehouseSummary:
    images: int
    predictions: int
    failures: int
    partitions_loaded: int


def refresh_warehouse(
    conn: duckdb.DuckDBPyConnection, manifest_path: Path, result_files: list[Path]
) -> WarehouseSummary:
    """Replace the ``images``, ``predictions`` and ``failures`` tables in one transaction."""
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(_CREATE_TABLES)
        conn.execute(_INSERT_IMAGES, {"manifest": str(manifest_path)})
        if result_files:
            files = [str(p) for p in result_files]
            conn.execute(_INSERT_PREDICTIONS, {"files": files})
            conn.execute(_INSERT_FAILURES, {"files": files})
            names = read_class_names(result_files[0]) or []
            classes = pa.table({"class_index": pa.array(range(len(names)), pa.int32()), "class_label": names})
            conn.register("_model_classes", classes)
            conn.execute("INSERT INTO model_classes SELECT * FROM _model_classes")
            conn.unregister("_model_classes")
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
    counts = conn.execute(
        "SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM predictions), (SELECT count(*) FROM failures)"
    ).fetchone()
    return WarehouseSummary(
        images=counts[0], predictions=counts[1], failures=counts[2], partitions_loaded=len(result_files)
    )


def outcome_counts(conn: duckdb.DuckDBPyConnection) -> tuple[int, int, int]:
    """(images in the manifest, predicted, failed)."""
    return conn.execute(
        "SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM predictions), (SELECT count(*) FROM failures)"
    ).fetchone()


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

"""Per-partition result files: one Parquet row per image, predicted or failed.

Written atomically (temporary name, then rename), streamed batch by batch, with Parquet page
checksums; read back with the checksums verified, so a damaged file is never reused silently: it
counts as absent (its partition is predicted again) with a warning naming it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from inference_assets.core.storage.atomic import atomic_output, remove_orphaned_temporaries
from inference_assets.core.storage.verified_parquet import READ_ERRORS, WRITE_OPTIONS, damaged, read_verified

STATUS_PREDICTED = "predicted"
STATUS_FAILED = "failed"
CLASS_NAMES_KEY = "class_names"

logger = logging.getLogger(__name__)

RESULT_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("uri", pa.string()),
        ("partition", pa.string()),
        ("content_hash", pa.string()),
        ("status", pa.string()),
        ("stage", pa.string()),
        ("error", pa.string()),
        ("class_index", pa.int32()),
        ("class_label", pa.string()),
        ("confidence", pa.float32()),
        ("topk_indices", pa.list_(pa.int32())),
        ("topk_labels", pa.list_(pa.string())),
        ("topk_probs", pa.list_(pa.float32())),
        ("positive_labels", pa.list_(pa.string())),  # multi-label models: classes at or above the threshold
    # every class's probability, in output order (ensembles, calibration); null for failures and for
    # files written before it was kept
    ("probabilities", pa.list_(pa.float32())),
        ("model", pa.string()),
        ("weights", pa.string()),
        ("model_id", pa.string()),  # ModelInfo.identity: weights, class names, preprocessing, activation
        ("device", pa.string()),
        ("precision", pa.string()),
        # what ran the forward pass: "pytorch (timm)", "openvino (CPU)", "onnxruntime (CPUExecutionProvider)";
        # null in files written before it was recorded
        ("runtime", pa.string()),
        ("predicted_at", pa.timestamp("us", tz="UTC")),
    ]
)


# Rows per Parquet row group of a result file. Rows arrive a batch (8 images on CPU) at a time; one
# row group per batch made files of 150+ row groups a partition, which DuckDB's refresh loaded at about
# 25 KB of memory a row (+480 MiB at 20,000 images). A row is about 500 bytes, so the rows waiting for
# their row group stay under a few MiB; with every class's probability (4 KB a row for 1000 classes) under 40 MiB.
ROW_GROUP_ROWS = 8192


class ResultFileWriter:
    """Streams result rows for one partition into a Parquet file that appears only when complete
    (rows are written in row groups of up to ``ROW_GROUP_ROWS``)."""

    def __init__(
        self,
        path: Path,
        partition: str,
        model: str,
        weights: str,
        device: str,
        precision: str,
        top_k: int,
        pixels: str,
        identity: str,
        class_names: list[str],
        runtime: str | None = None,
    ):
        self.path = path
        self._schema = RESULT_SCHEMA.with_metadata(
            {"settings": settings_key(precision, top_k, pixels), CLASS_NAMES_KEY: json.dumps(class_names)}
        )
        self._constants = {
            "partition": partition,
            "model": model,
            "weights": weights,
            "model_id": identity,
            "device": device,
            "precision": precision,
            "runtime": runtime,
        }
        self._atomic = atomic_output(path)
        self.predicted = 0  # computed in this run
        self.reused = 0  # carried over from the previous file
        self.failed = 0

    def __enter__(self) -> ResultFileWriter:
        remove_orphaned_temporaries(self.path.parent, self.path.name)
        tmp = self._atomic.__enter__()
        self._writer = pq.ParquetWriter(tmp, self._schema, **WRITE_OPTIONS)
        self._pending: list[pa.Table] = []  # rows carried over, as read
        self._columns: dict[str, list] = {name: [] for name in RESULT_SCHEMA.names}  # rows written since
        self._pending_rows = 0
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if exc_info[0] is None:
                self._flush()
        finally:
            self._writer.close()
            self._atomic.__exit__(*exc_info)

    def _append(self, table: pa.Table) -> None:
        self._table_pending_columns()
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _table_pending_columns(self) -> None:
        if self._columns["image_id"]:
            self._pending.append(pa.table(self._columns, schema=self._schema))
            self._columns = {name: [] for name in RESULT_SCHEMA.names}

    def _flush(self) -> None:
        self._table_pending_columns()
        if self._pending_rows:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=ROW_GROUP_ROWS)
        self._pending, self._pending_rows = [], 0

    def _write(self, columns: dict, count: int) -> None:
        # Rows wait as plain Python values, not as a small Arrow table per batch: during a CPU forward pass
        # (allocator.keep_freed_memory) hundreds of small tables interleaved with each batch's activations
        # kept the heap from reusing them: +420 MiB over a 1264-image shard, for 0.6 MiB of rows.
        now = datetime.now(timezone.utc)
        for name, pending in self._columns.items():
            value = columns.get(name)
            if name in self._constants:
                pending.extend([self._constants[name]] * count)
            elif name == "predicted_at":
                pending.extend([now] * count)
            elif name == "probabilities" and value is not None:
                pending.extend(np.asarray(value, dtype=np.float32))  # one float32 row each, converted by Arrow
            else:
                pending.extend([None] * count if value is None else value)
        self._pending_rows += count
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def write_rows(self, rows: pa.Table) -> None:
        """Carry rows over unchanged from an earlier result file (reused predictions)."""
        if rows.num_rows:
            self._append(rows.cast(self._schema))
            self.reused += rows.num_rows

    def write_predictions(
        self,
        image_ids: list[str],
        uris: list[str],
        content_hashes: list[str],
        top_indices: np.ndarray,
        top_probs: np.ndarray,
        labels: list[str],
        positives: list[list[int]] | None = None,
        probabilities: np.ndarray | None = None,
    ) -> None:
        """One row per image; ``positives``: a multi-label model's classes at or above its threshold;
        ``probabilities``: every class's probability, one row per image."""
        count = len(image_ids)
        if count == 0:
            return
        top_labels = [[labels[i] for i in row] for row in top_indices.tolist()]
        positive_labels = [[labels[i] for i in row] for row in positives] if positives is not None else None
        self._write(
            {
                "image_id": image_ids,
                "uri": uris,
                "content_hash": content_hashes,
                "status": [STATUS_PREDICTED] * count,
                "class_index": top_indices[:, 0].tolist(),
                "class_label": [row[0] for row in top_labels],
                "confidence": top_probs[:, 0].astype(np.float32).tolist(),
                "topk_indices": top_indices.astype(np.int32).tolist(),
                "topk_labels": top_labels,
                "topk_probs": top_probs.astype(np.float32).tolist(),
                "positive_labels": positive_labels,
                "probabilities": probabilities,
            },
            count,
        )
        self.predicted += count

    def write_failures(
        self, image_ids: list[str], uris: list[str], content_hashes: list, stages: list[str], errors: list[str]
    ) -> None:
        count = len(image_ids)
        if count == 0:
            return
        self._write(
            {
                "image_id": image_ids,
                "uri": uris,
                "content_hash": content_hashes,
                "status": [STATUS_FAILED] * count,
                "stage": stages,
                "error": errors,
            },
            count,
        )
        self.failed += count


def read_class_names(path: Path) -> list[str] | None:
    """The model's class names, in output order, as recorded in a result file."""
    metadata = pq.read_schema(path).metadata or {}
    value = metadata.get(CLASS_NAMES_KEY.encode())
    return json.loads(value) if value else None


def stored_probabilities(column: pa.Array | pa.ChunkedArray, rows: list[int] | None = None) -> np.ndarray | None:
    """A result file's ``probabilities`` column (the ``rows`` of it, or all) as an (N, classes) float32
    array; None when one of them is null: a file written before every class's probability was kept."""
    if rows is not None:
        column = column.take(pa.array(rows, pa.int64()))
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        return None
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(column), len(values) // max(len(column), 1))


def read_results(path: Path) -> pa.Table:
    """The rows of a result file, page checksums verified (raises OSError/ArrowException if damaged).

    A file written by an earlier version, without a column added since (``runtime``), reads with
    that column null: it stays valid, and its predictions are reused and loaded as they are.
    """
    present = set(pq.read_schema(path).names)
    table = read_verified(path, schema=pa.schema([f for f in RESULT_SCHEMA if f.name in present]))
    for field in RESULT_SCHEMA:
        if field.name not in present:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(RESULT_SCHEMA.names)


def intact_result_files(paths: list[Path], warn: Callable[[str], None] | None = None) -> list[Path]:
    """The files of ``paths`` that read back whole (page checksums verified); each damaged one is
    left out (as if absent: its partition is predicted again by the next predictions run) after a
    warning naming it."""
    intact = []
    for path in paths:
        try:
            read_results(path)
        except READ_ERRORS as exc:
            (warn or logger.warning)(
                f"{damaged('result file', path, exc)}: not loaded; materialize predictions for its partition again"
            )
        else:
            intact.append(path)
    return intact


# What a result file keeps (2: every class's probability too); files of an earlier version are not reused.
OUTPUTS_VERSION = "2"


def settings_key(precision: str, top_k: int, pixels: str) -> str:
    """The settings a stored prediction must share with the current run to be reused.

    ``pixels`` is the preprocessing fingerprint of the stored pixels predicted from (exact or
    JPEG draft mode decoding, say).
    """
    return f"precision={precision};top_k={top_k};pixels={pixels};outputs={OUTPUTS_VERSION}"


def read_reusable(
    path: Path, precision: str, top_k: int, pixels: str, warn: Callable[[str], None] | None = None
) -> pa.Table | None:
    """A complete earlier result file made with the same settings, or None.

    A damaged file (unreadable, truncated, a page failing its checksum) is None too, after a
    warning naming it (``warn``, default this module's logger).
    """
    if not path.exists():
        return None
    try:
        metadata = pq.read_schema(path).metadata or {}
        if metadata.get(b"settings", b"").decode() != settings_key(precision, top_k, pixels):
            return None
        return read_results(path)
    except READ_ERRORS as exc:  # damaged: everything is predicted again
        (warn or logger.warning)(f"{damaged('result file', path, exc)}: ignored, its partition is predicted again")
        return None

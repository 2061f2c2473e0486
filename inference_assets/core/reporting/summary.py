"""The few lines ``make run`` prints at the end: images, predictions, failures, top labels,
accuracy, the time each step took, where the results and the report are, a query to try."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import duckdb

from inference_assets.core.reporting.evaluation import stored_summary
from inference_assets.core.warehouse.database import failure_reasons, has_table, outcome_counts, top_labels


def print_summary(
    database: str, timings: dict[str, float], report_path: Path | None = None, not_built: list[str] = ()
) -> None:
    """The outcome in a few lines; results of assets in ``not_built`` (a blocking check failed) are marked stale."""
    with duckdb.connect(database, read_only=True) as conn:
        images, predicted, failed = outcome_counts(conn)
        labels = top_labels(conn, limit=5)
        reasons = failure_reasons(conn, limit=3)
        evaluation = stored_summary(conn)
    print()
    print(f"images seen: {images}   predicted: {predicted}   failed: {failed}")
    if labels:
        print("top labels:  " + "; ".join(f"{label} ({n})" for label, n in labels))
    if evaluation and evaluation.evaluated and "evaluation" in not_built:
        print("accuracy:    not evaluated in this run (a blocking check failed)")
    elif evaluation and evaluation.evaluated:
        print(f"accuracy:    top-1 {evaluation.top1_accuracy:.1%}, top-5 {evaluation.top5_accuracy:.1%} "
              f"on {evaluation.evaluated} labelled images"
              + (f" ({evaluation.unknown_labels} with labels the model does not know)"
                 if evaluation.unknown_labels else ""))
    for line in _models_lines(database):
        print(line)
    for stage, error, n in reasons:
        print(f"failures:    {n} at {stage}: {error}")
    print(f"time:        {sum(timings.values()):.1f}s (" + ", ".join(f"{k}: {v:.1f}s" for k, v in timings.items()) + ")")
    print(f"results:     {database}")
    if report_path is not None and report_path.exists() and "report" in not_built:
        print(f"report:      {report_path}  (not refreshed in this run: a blocking check failed)")
    elif report_path is not None and report_path.exists():
        print(f"report:      {report_path}  (open it in a browser; it needs no network)")
    duckdb_cli = shutil.which("duckdb") and "duckdb" or os.path.relpath(Path(sys.executable).parent / "duckdb")
    print(f'try:         {duckdb_cli} {database} "select class_label, count(*) from predictions group by 1 order by 2 desc"')


def _models_lines(database: str) -> list[str]:
    """With a model list: each model's top-1 on the labelled images, and its agreement with the primary one."""
    with duckdb.connect(database, read_only=True) as conn:
        if not all(has_table(conn, name) for name in ("models", "model_accuracy", "comparison_pairs")):
            return []
        rows = conn.execute(
            "SELECT m.model_name, m.kind, a.top1_accuracy, p.agreement FROM models m "
            "LEFT JOIN model_accuracy a USING (model_name) "
            "LEFT JOIN comparison_pairs p ON p.model_b = m.model_name "
            "AND p.model_a = (SELECT model_name FROM models WHERE is_primary) ORDER BY m.position"
        ).fetchall()
    if len(rows) < 2:
        return []
    parts = [f"{name}{' (ensemble)' if kind == 'ensemble' else ''}"
             + (f" top-1 {top1:.1%}" if top1 is not None else "")
             + (f", agrees with {rows[0][0]} on {agreement:.1%}" if agreement is not None else "")
             for name, kind, top1, agreement in rows]
    return ["models:      " + "; ".join(parts)]

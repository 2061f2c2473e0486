"""Data-quality checks on the DuckDB results.

Every check is blocking: when one fails, the run fails and the assets downstream of the checked
asset are not materialized (``evaluation`` and ``report`` keep their previous state), so
``make run``, ``make ci`` and ``dagster asset materialize`` exit non-zero on bad data.

Three must always hold (every image accounted for, valid probabilities, unique ids); three are the
gates a CI sets (``QualityGateResource``, resource key ``quality_gate``): a maximum failure rate,
a minimum top-1 accuracy on labelled images, and a maximum share of one class among the
predictions. Each check's result says, in one line (its description), what it measured against
what it allows; its metadata holds both numbers.
"""

from dagster import AssetCheckResult, asset_check
from dagster_duckdb import DuckDBResource

from inference_assets.core.collection.manifest import vanished_images
from inference_assets.core.reporting.evaluation import stored_summary
from inference_assets.resources import ModelResource, QualityGateResource, WorkAreaResource
from inference_assets.settings import SETTINGS

from .assets import evaluation, loaded_result_files, prediction_results

# The settings read when the code location loads, like every other INFERENCE_* value; the Launchpad (resource
# `quality_gate`) or a run config file (`dagster asset materialize -c`) can change them per run.
QUALITY_GATE = QualityGateResource(
    max_failure_rate=SETTINGS.max_failure_rate,
    min_top1_accuracy=SETTINGS.min_top1,
    max_class_share=SETTINGS.max_class_share,
)
_GATE = {"quality_gate": QUALITY_GATE}  # the checks' own resource: every caller's resources work as they are


def _versus(measured: float, passed: bool, limit: float, at_most: bool) -> str:
    """``0.333 > max 0.2``: the measured value, how it compares, and the threshold."""
    op = ("<=" if passed else ">") if at_most else (">=" if passed else "<")
    return f"{measured:.3f} {op} {'max' if at_most else 'min'} {limit:g}"


def _result_partitions(work_area: WorkAreaResource, model: ModelResource) -> list[str]:
    return [path.stem for path in loaded_result_files(work_area, model)]


@asset_check(
    asset=prediction_results,
    blocking=True,
    description="Every manifest image of each predicted partition has exactly one prediction or one failure, "
    "and no image of the previous manifest vanished without being known deleted (e.g. under a folder that "
    "could not be listed).",
)
def every_image_accounted_for(
    work_area: WorkAreaResource, model: ModelResource, duckdb: DuckDBResource
) -> AssetCheckResult:
    partitions = _result_partitions(work_area, model)
    with duckdb.get_connection() as conn:
        rows = conn.execute(
            """
            WITH outcomes AS (
                SELECT image_id FROM predictions UNION ALL SELECT image_id FROM failures
            )
            SELECT m.image_id, m.relative_path, m.partition, count(o.image_id) AS outcomes
            FROM images m LEFT JOIN outcomes o USING (image_id)
            WHERE list_contains($partitions, m.partition)
            GROUP BY ALL
            HAVING count(o.image_id) <> 1
            ORDER BY m.relative_path
            """,
            {"partitions": partitions},
        ).fetchall()
        checked = conn.execute(
            "SELECT count(*) FROM images WHERE list_contains($p, partition)", {"p": partitions}
        ).fetchone()[0]
        unlisted = conn.execute("SELECT count(*) FROM failures WHERE stage = 'list'").fetchone()[0]
    vanished = vanished_images(work_area.layout.manifest_path)
    return AssetCheckResult(
        passed=not rows and vanished == 0,
        description=f"{len(rows)} of {checked} images without exactly one outcome, {vanished} vanished "
        "(0 allowed)",
        metadata={
            "vanished_images": vanished,
            "failures_at_list": unlisted,
            "images_checked": checked,
            "partitions_checked": len(partitions),
            "images_without_exactly_one_outcome": len(rows),
            "examples": "; ".join(f"{r[1]} ({r[2]}): {r[3]} outcomes" for r in rows[:10]) or "none",
        },
    )


@asset_check(
    asset=prediction_results,
    blocking=True,
    description="Probabilities lie in [0, 1], top-k is ordered by probability and its first entry "
    "is the predicted class.",
)
def probabilities_valid(duckdb: DuckDBResource) -> AssetCheckResult:
    with duckdb.get_connection() as conn:
        bad = conn.execute(
            """
            SELECT count(*) FROM predictions
            WHERE confidence < 0 OR confidence > 1 OR confidence IS NULL
               OR list_min(topk_probs) < 0 OR list_max(topk_probs) > 1
               OR topk_probs <> list_reverse_sort(topk_probs)
               OR topk_probs[1] <> confidence OR topk_indices[1] <> class_index
               OR len(topk_probs) <> len(topk_indices) OR len(topk_labels) <> len(topk_indices)
            """
        ).fetchone()[0]
        total = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
    return AssetCheckResult(
        passed=bad == 0,
        description=f"{bad} of {total} predictions with invalid probabilities (0 allowed)",
        metadata={"predictions_checked": total, "invalid_rows": bad},
    )


@asset_check(
    asset=prediction_results,
    blocking=True,
    description="No image_id appears twice across predictions and failures.",
)
def unique_image_ids(duckdb: DuckDBResource) -> AssetCheckResult:
    with duckdb.get_connection() as conn:
        duplicates = conn.execute(
            """
            SELECT count(*) FROM (
                SELECT image_id FROM (SELECT image_id FROM predictions UNION ALL SELECT image_id FROM failures)
                GROUP BY image_id HAVING count(*) > 1
            )
            """
        ).fetchone()[0]
    return AssetCheckResult(
        passed=duplicates == 0,
        description=f"{duplicates} image ids with more than one row (0 allowed)",
        metadata={"duplicated_image_ids": duplicates},
    )


@asset_check(
    asset=prediction_results,
    blocking=True,
    resource_defs=_GATE,
    description="At most quality_gate.max_failure_rate of the images failed (INFERENCE_MAX_FAILURE_RATE; "
    "default 1: off).",
)
def failure_rate_within_limit(quality_gate: QualityGateResource, duckdb: DuckDBResource) -> AssetCheckResult:
    limit = quality_gate.max_failure_rate
    with duckdb.get_connection() as conn:
        predicted, failed = conn.execute(
            "SELECT (SELECT count(*) FROM predictions), (SELECT count(*) FROM failures)"
        ).fetchone()
    rate = failed / (predicted + failed) if predicted + failed else 0.0
    passed = rate <= limit
    return AssetCheckResult(
        passed=passed,
        description=f"failure rate {_versus(rate, passed, limit, at_most=True)} "
        f"({failed} of {predicted + failed} images failed; INFERENCE_MAX_FAILURE_RATE)",
        metadata={"failure_rate": rate, "max_failure_rate": limit, "failed": failed, "images": predicted + failed},
    )


@asset_check(
    asset=prediction_results,
    blocking=True,
    resource_defs=_GATE,
    description="No class takes more than quality_gate.max_class_share of the predictions "
    "(INFERENCE_MAX_CLASS_SHARE; default 1: off).",
)
def no_class_collapse(quality_gate: QualityGateResource, duckdb: DuckDBResource) -> AssetCheckResult:
    limit = quality_gate.max_class_share
    with duckdb.get_connection() as conn:
        total = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
        top = conn.execute(
            "SELECT class_label, count(*) AS n FROM predictions GROUP BY 1 ORDER BY n DESC, class_label LIMIT 1"
        ).fetchone()
    label, count = top if top else ("none", 0)
    share = count / total if total else 0.0
    passed = share <= limit
    return AssetCheckResult(
        passed=passed,
        description=f"largest class share {_versus(share, passed, limit, at_most=True)} "
        f"({label!r}: {count} of {total} predictions; INFERENCE_MAX_CLASS_SHARE)",
        metadata={"largest_class_share": share, "max_class_share": limit, "largest_class": label,
                  "largest_class_predictions": count, "predictions": total},
    )


@asset_check(
    asset=evaluation,
    blocking=True,
    resource_defs=_GATE,
    description="Top-1 accuracy on labelled images is at least quality_gate.min_top1_accuracy "
    "(INFERENCE_MIN_TOP1; default 0: off).",
)
def top1_accuracy_at_least(quality_gate: QualityGateResource, duckdb: DuckDBResource) -> AssetCheckResult:
    limit = quality_gate.min_top1_accuracy
    with duckdb.get_connection() as conn:
        summary = stored_summary(conn)
    evaluated, top1 = (summary.evaluated, summary.top1_accuracy) if summary else (0, None)
    if not evaluated:
        return AssetCheckResult(
            passed=limit == 0,
            description=f"top-1 accuracy not measured: no labelled image the model knows (min {limit:g}; "
            "INFERENCE_MIN_TOP1)",
            metadata={"evaluated_images": 0, "min_top1_accuracy": limit},
        )
    passed = top1 >= limit
    return AssetCheckResult(
        passed=passed,
        description=f"top-1 accuracy {_versus(top1, passed, limit, at_most=False)} "
        f"(on {evaluated} labelled images; INFERENCE_MIN_TOP1)",
        metadata={"top1_accuracy": top1, "min_top1_accuracy": limit, "evaluated_images": evaluated},
    )

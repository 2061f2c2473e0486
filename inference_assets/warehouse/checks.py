"""Data-quality checks on the DuckDB results."""


from dagster import AssetCheckResult, asset_check
from dagster_duckdb import DuckDBResource

from inference_assets.core.manifest import vanished_images
from inference_assets.images.resources import StorageResource
from inference_assets.predictions.resources import ModelResource

from .assets import loaded_result_files, prediction_results


def _result_partitions(storage: StorageResource, model: ModelResource) -> list[str]:
    return [path.stem for path in loaded_result_files(storage, model)]


@asset_check(
    asset=prediction_results,
    description="Every manifest image of each predicted partition has exactly one prediction or one failure, "
    "and no image of the previous manifest vanished without being known deleted (e.g. under a folder that "
    "could not be listed).",
)
def every_image_accounted_for(
    storage: StorageResource, model: ModelResource, duckdb: DuckDBResource
) -> AssetCheckResult:
    partitions = _result_partitions(storage, model)
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
    vanished = vanished_images(storage.layout.manifest_path)
    return AssetCheckResult(
        passed=not rows and vanished == 0,
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
    return AssetCheckResult(passed=bad == 0, metadata={"predictions_checked": total, "invalid_rows": bad})


@asset_check(
    asset=prediction_results,
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
    return AssetCheckResult(passed=duplicates == 0, metadata={"duplicated_image_ids": duplicates})

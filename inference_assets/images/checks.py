"""Data-quality checks on the image manifest."""


import pyarrow.compute as pc
from dagster import AssetCheckResult, asset_check

from inference_assets.core.collection.manifest import read_manifest
from inference_assets.partitions import IMAGE_SHARDS
from inference_assets.resources import WorkAreaResource

from .assets import image_manifest


@asset_check(
    asset=image_manifest,
    blocking=True,  # a failure stops the run: nothing downstream is computed from a bad manifest
    description="Image ids are unique and every image belongs to one of the defined partitions.",
)
def manifest_ids_unique_and_partitioned(work_area: WorkAreaResource) -> AssetCheckResult:
    table = read_manifest(work_area.layout.manifest_path)
    ids = table.column("image_id")
    duplicates = len(ids) - len(pc.unique(ids))
    known = set(IMAGE_SHARDS.get_partition_keys())
    unknown = sum(1 for key in pc.unique(table.column("partition")).to_pylist() if key not in known)
    return AssetCheckResult(
        passed=duplicates == 0 and unknown == 0,
        description=f"{duplicates} duplicate image ids, {unknown} unknown partitions (0 allowed)",
        metadata={"images": table.num_rows, "duplicate_ids": duplicates, "unknown_partitions": unknown},
    )

"""Partitions: fixed shards of the image manifest, and how backfills over them run.

The shard count is the ``partitions`` setting (``$INFERENCE_PARTITIONS``, default 16). An
image's shard is a hash of its stable id modulo the count, so a growing collection never moves
an image; changing the count reshuffles everything, so pick it once per collection.

The ``partitions_per_run`` setting (``$INFERENCE_PARTITIONS_PER_RUN``) sets how a backfill (or
``--partition-range``) over the partitioned assets is split into runs: ``0`` (default) runs the
whole range as one run (the model loads once); ``N`` runs at most N partitions per run, so the
run queue can spread them over processes, GPUs or Kubernetes pods.
"""

import warnings

from dagster import BackfillPolicy, BetaWarning, StaticPartitionsDefinition

from inference_assets.core.collection.partitioning import partition_keys
from inference_assets.settings import SETTINGS

# backfill_policy is marked beta in Dagster 1.x; we rely on it knowingly.
warnings.filterwarnings("ignore", category=BetaWarning)

NUM_PARTITIONS = SETTINGS.partitions

IMAGE_SHARDS = StaticPartitionsDefinition(partition_keys(NUM_PARTITIONS))

def range_tags(first: str, last: str) -> dict[str, str]:
    """Run tags that make one run cover the partitions ``first`` to ``last`` (a single-run range)."""
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


PARTITIONS_PER_RUN = SETTINGS.partitions_per_run

# How a range of partitions (a backfill, `--partition-range`) is split into runs.
BACKFILL_POLICY = (
    BackfillPolicy.multi_run(max_partitions_per_run=PARTITIONS_PER_RUN)
    if PARTITIONS_PER_RUN > 0
    else BackfillPolicy.single_run()
)

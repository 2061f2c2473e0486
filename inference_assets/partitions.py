"""Partitions: fixed shards of the image manifest, and how backfills over them run.

The shard count comes from ``$INFERENCE_PARTITIONS`` (default 16). An image's shard is a
hash of its stable id modulo the count, so a growing collection never moves an image;
changing the count reshuffles everything, so pick it once per collection.
"""

import os
import warnings

from dagster import BackfillPolicy, BetaWarning, StaticPartitionsDefinition

from inference_assets.core.partitioning import DEFAULT_NUM_PARTITIONS, partition_keys

# backfill_policy is marked beta in Dagster 1.x; we rely on it knowingly.
warnings.filterwarnings("ignore", category=BetaWarning)

NUM_PARTITIONS = int(os.environ.get("INFERENCE_PARTITIONS", DEFAULT_NUM_PARTITIONS))

IMAGE_SHARDS = StaticPartitionsDefinition(partition_keys(NUM_PARTITIONS))

# A range of partitions (`--partition-range`, a backfill) runs as one run: the model loads once.
SINGLE_RUN = BackfillPolicy.single_run()

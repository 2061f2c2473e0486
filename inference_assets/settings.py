"""Defaults read from the environment, so the same code location runs anywhere.

- ``INFERENCE_IMAGE_ROOT``: folder of images, or a bucket URI such as ``s3://bucket/prefix``
  (default ``data/images`` in the project). S3 credentials and endpoint: the usual ``AWS_*``
  variables (``AWS_ENDPOINT_URL`` for an S3-compatible server).
- ``INFERENCE_IMAGE_TABLE``: a Parquet/CSV file of image locations (``uri``, optional ``id``,
  ``label``) instead of a folder.
- ``INFERENCE_DATABASE_URL`` + ``INFERENCE_IMAGE_QUERY``: a SQLAlchemy URL and a query returning
  ``id`` and ``image`` (bytes) or ``uri``, optionally ``label``, instead of a folder.
- ``INFERENCE_ALWAYS_REHASH``: ``1`` reads and hashes every image on each manifest build instead of
  trusting unchanged size + mtime + inode + ctime (local files) or size + mtime (objects).
- ``INFERENCE_WORK_DIR``: manifest, pixels and per-partition results (default ``data/work``).
- ``INFERENCE_DUCKDB_PATH``: the results database (default ``data/warehouse.duckdb``).
- ``INFERENCE_DEVICE``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (default ``auto``).
- ``INFERENCE_PRECISION``: ``fp32``, ``bf16`` or ``fp16`` (default ``fp32``).
- ``INFERENCE_MODEL`` / ``INFERENCE_WEIGHTS``: architecture and weights (default the bundled
  EfficientNet-Lite0), or a model file or folder as ``INFERENCE_MODEL``;
  ``INFERENCE_CLASS_NAMES`` / ``INFERENCE_MODEL_CARD``: a class names file and a model card.
- ``INFERENCE_PARTITIONS``: number of shards (default 16; see ``partitions.py``);
  ``INFERENCE_PARTITIONS_PER_RUN``: 0 (default) runs a backfill as one run, N as runs of N.
- ``INFERENCE_SHARED_DIR``: a shared location (``s3://bucket/prefix``) mirroring the work folder,
  for steps on different machines.
- ``INFERENCE_DECODE_WORKERS``: decoding threads (default one per core; set it in containers).
- ``INFERENCE_EXECUTOR``: ``multiprocess`` (default) or ``k8s`` (a Kubernetes Job per step).
- ``INFERENCE_GPU_LOCK_DIR``: where concurrent steps lock GPUs (see ``core/gpu_assignment.py``).
- ``INFERENCE_SENSOR_LISTING_SECONDS`` / ``INFERENCE_SENSOR_INTERVAL_SECONDS``: the sensor's
  listing budget per tick (20) and its interval (60); ``INFERENCE_SCHEDULE_CRON`` /
  ``INFERENCE_SCHEDULE_TIMEZONE``: the nightly schedule (``0 2 * * *``, UTC).

Every value can also be changed per run in the Launchpad's resource config.
"""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"


def env(name: str, default: object) -> str:
    value = os.environ.get(name, "").strip()
    return value if value else str(default)


def optional_env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def flag_env(name: str) -> bool:
    """True for ``1``/``true``/``yes``/``on`` (any case), False when unset or anything else."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")

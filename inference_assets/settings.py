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
- ``INFERENCE_SLOT_WAIT_SECONDS``: how long a ``make run`` step waits for a pool slot held by
  another run before giving up (default 600; see ``instance_guard.py``).
- ``INFERENCE_DEVICE``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (default ``auto``).
- ``INFERENCE_PRECISION``: ``fp32``, ``bf16`` or ``fp16`` (default ``fp32``).
- ``INFERENCE_RUNTIME``: ``auto`` (default), ``torch``, ``openvino``, ``onnxruntime`` or ``openvino-int8`` (opt-in,
  approximate): what runs a
  PyTorch model's forward pass on the CPU (``core/models/converted_models.py``); ``auto`` takes the fastest
  runtime that matches PyTorch, else PyTorch.
- ``INFERENCE_CONVERTED_DIR``: where converted networks are cached (default ``<work dir>/converted``); one
  folder shared by several work folders converts each model once for all of them.
- ``INFERENCE_MODEL`` / ``INFERENCE_WEIGHTS``: architecture and weights (default the bundled
  EfficientNet-Lite0), or a model file or folder as ``INFERENCE_MODEL``;
  ``INFERENCE_CLASS_NAMES`` / ``INFERENCE_MODEL_CARD``: a class names file and a model card.
- ``INFERENCE_PARTITIONS``: number of shards (default 16; see ``partitions.py``);
  ``INFERENCE_PARTITIONS_PER_RUN``: 0 (default) runs a backfill as one run, N as runs of N.
- ``INFERENCE_SHARED_DIR``: a shared location (``s3://bucket/prefix``) mirroring the work folder,
  for steps on different machines.
- ``INFERENCE_DECODE_WORKERS``: decoding threads (default one per core; set it in containers).
- ``INFERENCE_EXECUTOR``: ``multiprocess`` (default) or ``k8s`` (a Kubernetes Job per step).
- ``INFERENCE_GPU_LOCK_DIR``: where concurrent steps lock GPUs (see ``core/inference/gpu_assignment.py``).
- ``INFERENCE_MAX_FAILURE_RATE`` / ``INFERENCE_MIN_TOP1`` / ``INFERENCE_MAX_CLASS_SHARE``: the
  quality gates, numbers from 0 to 1 (defaults 1, 0, 1: off): the blocking checks that fail a run
  when more images failed, top-1 on labelled images is lower, or one class takes a larger share of
  the predictions (see ``warehouse/checks.py``; ``make ci`` sets the failure rate to 0.5 unless set).
- ``INFERENCE_SENSOR_LISTING_SECONDS`` / ``INFERENCE_SENSOR_INTERVAL_SECONDS``: the sensor's
  listing budget per tick (20) and its interval (60); ``INFERENCE_SCHEDULE_CRON`` /
  ``INFERENCE_SCHEDULE_TIMEZONE``: the nightly schedule (``0 2 * * *``, UTC).

Every value can also be changed per run in the Launchpad's resource config.
"""

import math
import os
from pathlib import Path

from inference_assets.core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"


def env(name: str, default: object) -> str:
    value = os.environ.get(name, "").strip()
    return value if value else str(default)


def duckdb_path() -> str:
    """The results database: ``INFERENCE_DUCKDB_PATH``, default ``data/warehouse.duckdb``."""
    return env("INFERENCE_DUCKDB_PATH", DATA_DIR / "warehouse.duckdb")


def optional_env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def number_env(name: str, default: int | float, minimum: int | float, kind: type = int) -> int | float:
    """A whole (``kind=int``) or decimal number of at least ``minimum`` from the environment, or a
    one-line ConfigError naming the variable, its value and what it accepts."""
    value = env(name, default)
    try:
        number = kind(value)
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or number < minimum:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name}={value!r} is not valid: set it to {what} of at least {minimum} (default {default})")
    return number


def cron_env(name: str, default: str) -> str:
    """A cron expression from the environment, or a one-line ConfigError."""
    from dagster._utils.schedules import is_valid_cron_string

    value = env(name, default)
    if not is_valid_cron_string(value):
        raise ConfigError(f"{name}={value!r} is not a cron expression: use five fields, e.g. {default!r} (the default)")
    return value


def timezone_env(name: str, default: str) -> str:
    """An IANA time zone name from the environment, or a one-line ConfigError."""
    from zoneinfo import ZoneInfo

    value = env(name, default)
    try:
        ZoneInfo(value)
    except (ValueError, KeyError, OSError):
        raise ConfigError(f"{name}={value!r} is not a time zone: use an IANA name such as 'UTC' or 'Europe/Paris'") from None
    return value


def flag_env(name: str) -> bool:
    """On for ``1``/``true``/``yes``/``on``, off for ``0``/``false``/``no``/``off`` or unset (any case);
    anything else is a one-line ConfigError."""
    value = os.environ.get(name, "").strip()
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r} is not valid: set it to 1 (on) or 0 (off)")

"""Defaults read from the environment, so the same code location runs anywhere.

- ``INFERENCE_IMAGE_ROOT``: folder of images (default ``data/images`` in the project).
- ``INFERENCE_WORK_DIR``: manifest, pixels and per-partition results (default ``data/work``).
- ``INFERENCE_DUCKDB_PATH``: the results database (default ``data/warehouse.duckdb``).
- ``INFERENCE_DEVICE``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (default ``auto``).
- ``INFERENCE_PRECISION``: ``fp32``, ``bf16`` or ``fp16`` (default ``fp32``).
- ``INFERENCE_MODEL`` / ``INFERENCE_WEIGHTS``: architecture and weights (default the bundled
  EfficientNet-Lite0).
- ``INFERENCE_PARTITIONS``: number of shards (default 16; see ``partitions.py``).

Every value can also be changed per run in the Launchpad's resource config.
"""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"


def env(name: str, default: object) -> str:
    value = os.environ.get(name, "").strip()
    return value if value else str(default)

"""Where the project is, and the environment a pipeline subprocess (the CLI, ``make run``,
``dagster dev``) gets in the tests and in the dev scripts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_IMAGES = PROJECT_ROOT / "data" / "images"
INSTANCE_YAML = PROJECT_ROOT / "deploy" / "dagster.yaml"


def pipeline_env(image_root: Path, work: Path, database: Path | None = None) -> dict[str, str]:
    """Environment for a pipeline subprocess on CPU, with all outputs under ``work`` (its Dagster
    instance in ``work/dagster_home``); the caller's other ``INFERENCE_*`` settings are left out, except
    INFERENCE_CONVERTED_DIR, a cache that changes no output (the tests share one)."""
    (work / "dagster_home").mkdir(parents=True, exist_ok=True)
    inherited = {name: value for name, value in os.environ.items()
                 if not name.startswith("INFERENCE_") or name == "INFERENCE_CONVERTED_DIR"}
    return {
        **inherited,
        "INFERENCE_IMAGE_ROOT": str(image_root),
        "INFERENCE_WORK_DIR": str(work / "work"),
        "INFERENCE_DUCKDB_PATH": str(database or work / "warehouse.duckdb"),
        "INFERENCE_DEVICE": "cpu",
        "DAGSTER_HOME": str(work / "dagster_home"),
        "PYTHONWARNINGS": "ignore",
        "PYTHONUNBUFFERED": "1",
    }


def install_instance_config(env: dict[str, str]) -> dict[str, str]:
    """Puts the checked-in deploy/dagster.yaml (run queue, pools) in ``env``'s DAGSTER_HOME, as
    ``make dev`` does; returns ``env``."""
    shutil.copy(INSTANCE_YAML, Path(env["DAGSTER_HOME"]) / "dagster.yaml")
    return env

"""Kubernetes: dagster-k8s's ``k8s_job_executor`` configured from ``deploy/k8s/executor.yaml``.

Each step runs in its own pod, sized by its entry in that file's ``per_step_k8s_config`` (a step's key is
its asset's name; asset checks use ``step_k8s_config``). ``deploy/k8s/values.yaml`` has the Helm values
for the rest of the deployment. dagster-k8s is the optional extra ``k8s``, so it is imported only
when the executor is asked for. See docs/scaling.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from inference_assets.core.errors import ConfigError
from inference_assets.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from dagster import ExecutorDefinition

EXECUTOR_CONFIG_PATH = PROJECT_ROOT / "deploy" / "k8s" / "executor.yaml"


def load_executor_config(path: Path = EXECUTOR_CONFIG_PATH) -> dict:
    """The ``k8s_job_executor`` config in ``path`` (default ``deploy/k8s/executor.yaml``), as a dict."""
    with open(path, encoding="utf-8") as file:
        config = yaml.safe_load(file)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected the k8s_job_executor config as a mapping, got {type(config).__name__}")
    return config


def kubernetes_executor() -> ExecutorDefinition:
    """``k8s_job_executor`` configured with ``executor.yaml``: every step in its own Kubernetes Job."""
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as exc:
        raise ConfigError(
            "the Kubernetes executor needs dagster-k8s, which is not installed: pip install -e '.[k8s]'"
        ) from exc
    return k8s_job_executor.configured(load_executor_config())

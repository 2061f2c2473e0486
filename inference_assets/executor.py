"""The code location's executor: Dagster's default one, whose step processes start from a forkserver.

Dagster's default executor (``multi_or_in_process_executor``) starts each step in a fresh ``spawn``ed
Python that imports the whole code location again: torch, timm and Dagster, several seconds per
step on a small machine, paid again by every asset and every asset check of every run. With the
``forkserver`` start method, Dagster imports the code location once per run in a server process
and forks each step from it, so a step starts in a fraction of a second. Nothing in this project
starts threads or touches CUDA at import, which is what makes forking from that process safe.

The config is Dagster's own, unchanged (``multiprocess`` with ``max_concurrent``, ``retries``,
``tag_concurrency_limits``, ``start_method``; or ``in_process``): only the default start method
differs, and a run that names one (``start_method: {spawn: {}}``) gets it.
"""

from __future__ import annotations

from dagster import ExecutorDefinition, InitExecutorContext, multi_or_in_process_executor

# What a step process needs before its first line of work, imported once in the forkserver: the
# instance's SQLite storage (sqlalchemy, alembic: about a second per step otherwise), then the code
# location itself. A module that a later Dagster no longer has is skipped by multiprocessing.
STORAGE_MODULES = (
    "dagster._core.executor.multiprocess",
    "dagster._core.instance.factory",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.event_log.sqlite",
    "dagster._core.storage.runs.sqlite",
    "dagster._core.storage.schedules.sqlite",
)


def default_start_method(code_location_module: str | None) -> dict:
    """``start_method`` for a run whose config names none: a forkserver preloading the storage and
    ``code_location_module`` (the module the run's job was loaded from; none for a job built in Python)."""
    modules = [*STORAGE_MODULES, *([code_location_module] if code_location_module else ["dagster"])]
    return {"forkserver": {"preload_modules": modules}}


def _create(init_context: InitExecutorContext):
    config = dict(init_context.executor_config)
    if "multiprocess" in config:
        multiprocess = dict(config["multiprocess"] or {})
        if not multiprocess.get("start_method"):
            multiprocess["start_method"] = default_start_method(getattr(init_context.job, "get_module", lambda: None)())
        config["multiprocess"] = multiprocess
    create = multi_or_in_process_executor.executor_creation_fn
    return create(init_context._replace(executor_config=config))


steps_executor = ExecutorDefinition(
    name="multi_or_in_process_executor",
    config_schema=multi_or_in_process_executor.config_schema,
    requirements=multi_or_in_process_executor.get_requirements,
    executor_creation_fn=_create,
    description="Dagster's default executor (each step in its own process, or all in one with "
    "`in_process`), with step processes forked from a server that has imported the code location once "
    "per run (`start_method: forkserver`) unless the run config names another start method.",
)

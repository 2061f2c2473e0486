"""The code location's executor (inference_assets/executor.py): Dagster's default one, forkserver by default.

The runs through it are the CLI, daemon and UI tests (test_end_to_end.py, test_backfills.py,
test_concurrency.py, ...); these check what it builds for each run config.
"""

import subprocess
import sys

import pytest
from dagster import DagsterInstance, reconstructable
from dagster._core.executor.in_process import InProcessExecutor
from dagster._core.executor.init import InitExecutorContext
from dagster._core.executor.multiprocess import MultiprocessExecutor
from dagster._core.system_config.objects import ResolvedRunConfig

from inference_assets.definitions import defs, partitioned_inference
from inference_assets.executor import STORAGE_MODULES, steps_executor

from inference_assets_tests.support.environment import PROJECT_ROOT


def _executor(execution: dict | None):
    """The executor a run of partitioned_inference gets with this ``execution`` run config (None: none)."""
    job = defs.resolve_job_def("partitioned_inference")
    run_config = {} if execution is None else {"execution": {"config": execution}}
    executor_config = ResolvedRunConfig.build(job, run_config).execution.execution_engine_config
    with DagsterInstance.ephemeral() as instance:
        context = InitExecutorContext(
            job=reconstructable(partitioned_inference),
            executor_def=job.executor_def,
            executor_config=executor_config,
            instance=instance,
        )
        return job.executor_def.executor_creation_fn(context)


@pytest.mark.fast
def test_every_job_of_the_code_location_uses_it():
    for job in (defs.resolve_job_def("partitioned_inference"), defs.resolve_implicit_global_asset_job_def()):
        assert job.executor_def is steps_executor


@pytest.mark.fast
def test_steps_fork_from_a_server_that_preloaded_the_storage_and_the_code_location():
    executor = _executor(None)  # no execution config: the default
    assert isinstance(executor, MultiprocessExecutor)
    assert executor._start_method == "forkserver"
    assert executor._explicit_forkserver_preload == [*STORAGE_MODULES, "inference_assets.definitions"]

    # the rest of Dagster's multiprocess config passes through
    executor = _executor({"multiprocess": {"max_concurrent": 3, "retries": {"disabled": {}}}})
    assert (executor._start_method, executor._max_concurrent) == ("forkserver", 3)


@pytest.mark.fast
def test_a_run_config_that_names_a_start_method_or_in_process_gets_it():
    assert _executor({"multiprocess": {"start_method": {"spawn": {}}}})._start_method == "spawn"
    executor = _executor({"multiprocess": {"start_method": {"forkserver": {"preload_modules": ["dagster"]}}}})
    assert executor._explicit_forkserver_preload == ["dagster"]
    assert isinstance(_executor({"in_process": {}}), InProcessExecutor)


@pytest.mark.fast
def test_importing_the_code_location_asks_nothing_of_cuda():
    """The forkserver imports the code location and forks steps from it: had the import initialised
    CUDA (even ``is_available()`` may start the driver), a step could not use the GPU."""
    code = (
        "import torch\n"
        "def asked(*args, **kwargs): raise SystemExit('CUDA was asked at import')\n"
        "torch.cuda.is_available = torch.cuda.device_count = torch.cuda.init = torch.cuda.current_device = asked\n"
        "import inference_assets.definitions\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT_ROOT)

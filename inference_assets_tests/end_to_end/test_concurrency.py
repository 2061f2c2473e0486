"""Several partitions materialized at the same time, in separate processes, into one DuckDB file."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance, execute_job, reconstructable

from inference_assets.core.collection.manifest import read_manifest

from inference_assets_tests.support.environment import PROJECT_ROOT, pipeline_env

BIN = Path(sys.executable).parent
DAGSTER = [str(BIN / "dagster"), "asset", "materialize", "-m", "inference_assets.definitions"]


@pytest.fixture
def env(image_root, tmp_path, monkeypatch):
    values = {**pipeline_env(image_root, tmp_path), "OMP_NUM_THREADS": "1"}  # several processes share two cores
    for name, value in values.items():
        monkeypatch.setenv(name, value)  # execute_job's step processes inherit this environment
    return values


def _cli(args, env):
    return subprocess.Popen([*DAGSTER, *args], env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_all(processes):
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    return outputs


def _busy_partitions(env) -> list[str]:
    manifest = read_manifest(Path(env["INFERENCE_WORK_DIR"]) / "manifest" / "image_manifest.parquet")
    return sorted(set(manifest.column("partition").to_pylist()))


def _assert_complete(env):
    with duckdb.connect(env["INFERENCE_DUCKDB_PATH"], read_only=True) as conn:
        images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
        outcomes = conn.execute(
            "SELECT count(*), count(DISTINCT image_id) FROM (SELECT image_id FROM predictions UNION ALL SELECT image_id FROM failures)"
        ).fetchone()
    assert images == 6 and outcomes == (6, 6)


def test_separate_cli_processes_on_different_partitions_then_concurrent_refreshes(env):
    _wait_all([_cli(["--select", "image_manifest"], env)])
    partitions = _busy_partitions(env)
    assert len(partitions) >= 3
    runs = [_cli(["--select", "preprocessed_images,prediction_files", "--partition", key], env) for key in partitions]
    _wait_all(runs)
    outputs = _wait_all([_cli(["--select", "prediction_results"], env) for _ in range(2)])
    for output in outputs:
        assert "Asset check 'every_image_accounted_for' on 'prediction_results' passed" in output
    _assert_complete(env)


def test_concurrent_runs_with_the_multiprocess_executor(env):
    from inference_assets.definitions import partitioned_inference

    _wait_all([_cli(["--select", "image_manifest"], env)])
    partitions = _busy_partitions(env)
    job = reconstructable(partitioned_inference)
    with DagsterInstance.get() as instance:

        def run(key):
            with execute_job(job, instance=instance, tags={"dagster/partition": key}) as result:
                return result.success, {e.step_key for e in result.all_events if e.is_step_success}

        with ThreadPoolExecutor(max_workers=len(partitions)) as pool:
            outcomes = list(pool.map(run, partitions))
    assert all(success for success, _ in outcomes)
    assert all(steps == {"preprocessed_images", "prediction_files"} for _, steps in outcomes)
    _wait_all([_cli(["--select", "prediction_results"], env)])
    _assert_complete(env)

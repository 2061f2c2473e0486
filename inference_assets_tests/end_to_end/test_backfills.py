"""Backfills over every partition with the checked-in instance config (deploy/dagster.yaml).

Each test starts ``dagster dev`` (webserver + daemon, as ``make dev``) on a free local port and
launches a backfill with the UI's own GraphQL mutation (``launchPartitionBackfill``, what
"Materialize" > "Launch backfill" sends), next to the CLI's way of doing the same:

- multi-run (``INFERENCE_PARTITIONS_PER_RUN=1``): the UI's backfill, and ``dagster job backfill``
  (``make backfill``) into the same run queue: one run per partition; the queue
  (``max_concurrent_runs: 2``) and the ``gpu`` pool (1 slot) are checked from the run and step
  timestamps the instance recorded;
- single run (the variable unset): the UI's backfill and ``dagster asset materialize
  --partition-range`` (no daemon needed): one run each over the four partitions; both get past
  a ``gpu`` slot left taken by an ended run (the daemon's run monitoring frees it).

In both, the automation sensor ``refresh_results`` is stopped first (``dagster sensor stop``, the
way to turn it off), and prediction_results is materialized by hand. A third test leaves it
running: after ``make backfill``'s job backfill, the daemon refreshes prediction_results,
evaluation and report by itself, exactly once, after the last partition run.

Four partitions and the six sample photos keep it affordable: each run is three processes (run
worker, one per step) that import torch, and the daemon looks at backfills every 30 seconds.
"""

import re
import shutil
import subprocess
import time
from pathlib import Path

import duckdb
import pytest
import yaml
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from inference_assets.core.collection.partitioning import partition_keys
from inference_assets.core.storage.layout import Layout
from inference_assets.jobs import REFRESHED_ASSETS

from inference_assets_tests.support.dagster_ui import DAGSTER, DagsterDev, dagster_dev
from inference_assets_tests.support.environment import (
    INSTANCE_YAML,
    PROJECT_ROOT,
    install_instance_config,
    pipeline_env,
)

MATERIALIZE = [DAGSTER, "asset", "materialize", "-m", "inference_assets.definitions"]
KEYS = partition_keys(4)
MAX_CONCURRENT_RUNS = yaml.safe_load(INSTANCE_YAML.read_text())["concurrency"]["runs"]["max_concurrent_runs"]
BACKFILL_TIMEOUT = 360  # seconds, from launch to every run finished

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
BACKFILL_TAG = "dagster/backfill"
AUTOMATION = "refresh_results"  # the automation condition sensor (inference_assets/automation/sensors.py)
REFRESH_TIMEOUT = 240  # seconds, from the last partition run's end to the refresh run's end
JOB_BACKFILL = [DAGSTER, "job", "backfill", "-w", "workspace.yaml", "-j", "partitioned_inference"]


def _env(image_root: Path, work: Path, **extra: str) -> dict[str, str]:
    """A pipeline environment with 4 partitions and the checked-in dagster.yaml in its DAGSTER_HOME."""
    env = install_instance_config(pipeline_env(image_root, work))
    env.update(INFERENCE_PARTITIONS=str(len(KEYS)), OMP_NUM_THREADS="1", **extra)  # runs share two cores
    return env


def _cli(args, env, check=True) -> str:
    done = subprocess.run(args, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    if check:
        assert done.returncode == 0, f"{args} failed:\n{output[-4000:]}"
    return output


def _instance(env) -> DagsterInstance:
    """The instance in env's DAGSTER_HOME, its storage created (before any other process opens it)."""
    instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
    instance.get_run_records(limit=1)
    instance.event_log_storage.get_concurrency_keys()
    return instance


def _runs(instance, backfill_id: str):
    return instance.get_run_records(filters=RunsFilter(tags={BACKFILL_TAG: backfill_id}))


def _max_overlap(intervals) -> int:
    """Most intervals open at one moment (an interval ending when another starts does not overlap it)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = most = 0
    for _, step in edges:
        open_now += step
        most = max(most, open_now)
    return most


def _step_intervals(instance, run_ids, step_key: str) -> list[tuple[float, float]]:
    intervals = []
    for run_id in run_ids:
        logs = instance.all_logs(run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS})
        times = {e.dagster_event.event_type: e.timestamp for e in logs if e.step_key == step_key}
        intervals.append((times[DagsterEventType.STEP_START], times[DagsterEventType.STEP_SUCCESS]))
    return intervals


def _automation_ticks(instance) -> list:
    """The refresh_results sensor's finished ticks (none before the daemon's first evaluation)."""
    states = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.instigator_name == AUTOMATION]
    ticks = instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id) if states else []
    return [tick for tick in ticks if tick.status != TickStatus.STARTED]


def _wait_for_automation_tick(server: DagsterDev, instance, after: float = 0.0, timeout: float = 120) -> None:
    """Until the automation sensor has evaluated once after ``after`` (a timestamp)."""
    deadline = time.monotonic() + timeout
    while not any(tick.timestamp > after for tick in _automation_ticks(instance)):
        if time.monotonic() > deadline:
            pytest.fail(f"the {AUTOMATION} sensor did not tick in {timeout}s:\n{server.log_tail()}")
        time.sleep(2)


def _refresh_runs(instance) -> list:
    """The runs the automation sensor launched, oldest first."""
    records = instance.get_run_records(filters=RunsFilter(tags={"dagster/sensor_name": AUTOMATION}))
    return sorted(records, key=lambda r: r.create_timestamp)


def _wait_for_refresh(server: DagsterDev, instance, after: float):
    """The automation's refresh run (prediction_results + evaluation + report and their checks) that
    started after ``after`` (the last partition run's end), once it succeeded."""
    deadline = time.monotonic() + REFRESH_TIMEOUT
    while True:
        runs = [r.dagster_run for r in _refresh_runs(instance)]
        if any(run.status == DagsterRunStatus.FAILURE for run in runs):
            pytest.fail(f"a refresh run failed:\n{server.log_tail()}")
        done = [r for r in _refresh_runs(instance) if r.start_time and r.start_time >= after and r.dagster_run.is_finished]
        if done:
            assert done[0].dagster_run.status == DagsterRunStatus.SUCCESS
            assert done[0].dagster_run.asset_selection == {asset.key for asset in REFRESHED_ASSETS}
            return done[0]
        if time.monotonic() > deadline:
            seen = [(run.run_id[:8], run.status.value) for run in runs]
            pytest.fail(f"no refresh of the downstream assets in {REFRESH_TIMEOUT}s: {seen}\n{server.log_tail()}")
        time.sleep(2)


def _check_refreshed_duckdb(env, instance, refresh) -> None:
    """The refresh run passed its checks; all six photos are in DuckDB, each predicted or failed exactly once."""
    checks = instance.all_logs(refresh.dagster_run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    passed = {e.dagster_event.event_specific_data.check_name for e in checks if e.dagster_event.event_specific_data.passed}
    assert "every_image_accounted_for" in passed and len(passed) == len(checks), [e.message for e in checks]
    _check_duckdb(env)


def _refresh_and_check_duckdb(env) -> None:
    """Materialize prediction_results; all six photos are in DuckDB, each predicted or failed exactly once."""
    log = _cli([*MATERIALIZE, "--select", "prediction_results"], env)
    assert "Asset check 'every_image_accounted_for' on 'prediction_results' passed" in log
    _check_duckdb(env)


def _check_duckdb(env) -> None:
    """All six photos are in DuckDB, each predicted or failed exactly once."""
    with duckdb.connect(env["INFERENCE_DUCKDB_PATH"], read_only=True) as conn:
        images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
        outcomes = conn.execute(
            "SELECT count(*), count(DISTINCT image_id) FROM "
            "(SELECT image_id FROM predictions UNION ALL SELECT image_id FROM failures)"
        ).fetchone()
        predicted = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
    assert images == 6 and outcomes == (6, 6) and predicted == 6


def _stop_automation(env) -> None:
    """``dagster sensor stop refresh_results``: the downstream assets are then refreshed by hand only."""
    assert f"Stopped sensor {AUTOMATION}" in _cli([DAGSTER, "sensor", "stop", AUTOMATION, "-w", "workspace.yaml"], env)


def test_checked_in_instance_config(tmp_path):
    """deploy/dagster.yaml loads; `make instance` installs it only where dagster.yaml is missing or empty."""
    if not shutil.which("make"):
        pytest.skip("no `make` on this machine")
    home = tmp_path / "home"

    def make_instance() -> str:
        command = ["make", "-s", "-C", str(PROJECT_ROOT), "instance", f"DAGSTER_HOME={home}"]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return (home / "dagster.yaml").read_text()

    assert make_instance() == INSTANCE_YAML.read_text()  # missing: installed
    (home / "dagster.yaml").write_text("")
    assert make_instance() == INSTANCE_YAML.read_text()  # empty (what `make dev` used to leave): installed
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    assert make_instance() == "telemetry:\n  enabled: false\n"  # a user's own: kept

    (home / "dagster.yaml").write_text(INSTANCE_YAML.read_text())
    with DagsterInstance.from_config(str(home)) as instance:
        config = instance.get_concurrency_config()
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert config.run_queue_config.max_concurrent_runs == MAX_CONCURRENT_RUNS == 2
    assert config.pool_config.default_pool_limit == 1
    assert config.pool_config.pool_granularity.value == "op"


def _ui_backfill_params() -> dict:
    """What the UI sends for "Materialize" on preprocessed_images + predictions with every partition chosen."""
    return {
        "tags": [{"key": "dagster/from_ui", "value": "true"}],
        "assetSelection": [{"path": ["preprocessed_images"]}, {"path": ["prediction_files"]}],
        "partitionNames": KEYS,
        "fromFailure": False,
    }


def _wait_for_runs(server: DagsterDev, instance, expected: dict[str, int]) -> dict[str, list]:
    """The run records of each backfill, once it has its expected number of runs and all are finished."""
    deadline = time.monotonic() + BACKFILL_TIMEOUT
    while True:
        records = {backfill_id: _runs(instance, backfill_id) for backfill_id in expected}
        runs = [r.dagster_run for records_of_one in records.values() for r in records_of_one]
        if all(len(records[b]) == n for b, n in expected.items()) and all(run.is_finished for run in runs):
            return records
        if any(run.status == DagsterRunStatus.FAILURE for run in runs):
            pytest.fail(f"a backfill run failed:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            seen = [(run.tags.get(BACKFILL_TAG), run.tags.get(RANGE_START), run.status.value) for run in runs]
            pytest.fail(f"backfill runs not finished after {BACKFILL_TIMEOUT}s: {seen}\n{server.log_tail()}")
        time.sleep(2)


def _wait_for_backfill_status(server: DagsterDev, backfill_id: str, timeout: float = 90) -> str:
    """The asset backfill's final status; the daemon sets it on its next pass (every 30s) after the last run."""
    deadline = time.monotonic() + timeout
    while (status := server.backfill_status(backfill_id)) in ("REQUESTED", "CANCELING", "FAILING"):
        if time.monotonic() > deadline:
            pytest.fail(f"backfill {backfill_id} still {status} {timeout}s after its runs:\n{server.log_tail()}")
        time.sleep(2)
    return status


def test_multi_run_backfills_from_the_ui_and_the_cli_through_the_daemon(image_root, tmp_path):
    env = _env(image_root, tmp_path, INFERENCE_PARTITIONS_PER_RUN="1")
    with _instance(env):  # its storage created first
        _stop_automation(env)
    with _instance(env) as instance, dagster_dev(env, tmp_path / "dagster_dev.log") as server:
        _cli([*MATERIALIZE, "--select", "image_manifest"], env)  # while the server starts
        server.wait_until_loaded()

        # as the UI: "Materialize" on the two partitioned assets, every partition, "Launch backfill"
        ui_backfill = server.launch_backfill(_ui_backfill_params())
        # as `make backfill`: a job backfill from the CLI, one run per partition, into the same queue
        submitted = _cli([*JOB_BACKFILL, "--all", "--noprompt"], env)
        cli_backfill = re.search(r"Launched backfill job `(\w+)`", submitted).group(1)

        records = _wait_for_runs(server, instance, {ui_backfill: len(KEYS), cli_backfill: len(KEYS)})
        all_runs = records[ui_backfill] + records[cli_backfill]
        assert all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in all_runs)
        _refresh_and_check_duckdb(env)
        assert not _refresh_runs(instance)  # the automation sensor is stopped
        assert _wait_for_backfill_status(server, ui_backfill) == "COMPLETED_SUCCESS"

        # one run per partition in each: one-partition ranges (asset backfill), partition tags (job backfill)
        ui_runs = [r.dagster_run for r in records[ui_backfill]]
        assert sorted(r.tags[RANGE_START] for r in ui_runs) == KEYS
        assert all(r.tags[RANGE_START] == r.tags[RANGE_END] and r.tags["dagster/from_ui"] == "true" for r in ui_runs)
        assert sorted(r.dagster_run.tags["dagster/partition"] for r in records[cli_backfill]) == KEYS

        # the run queue: never more than max_concurrent_runs in progress, and it did run that many at once
        assert _max_overlap([(r.start_time, r.end_time) for r in all_runs]) == MAX_CONCURRENT_RUNS
        # the gpu pool (default_limit 1): one `prediction_files` step at a time across all runs
        predictions = _step_intervals(instance, [r.dagster_run.run_id for r in all_runs], "prediction_files")
        assert _max_overlap(predictions) == 1
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1
        assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots


def test_single_run_backfills_from_the_ui_and_the_cli(image_root, tmp_path):
    env = _env(image_root, tmp_path)  # INFERENCE_PARTITIONS_PER_RUN unset: the single-run backfill policy
    with _instance(env):  # its storage created first
        _stop_automation(env)
    with _instance(env) as instance, dagster_dev(env, tmp_path / "dagster_dev.log") as server:
        _cli([*MATERIALIZE, "--select", "image_manifest"], env)
        # the gpu slot left taken by a run that ended (as one killed mid-step, then marked failed):
        # the daemon's run monitoring frees it, else every run below would wait for it for good
        (ended,) = instance.get_run_records()
        instance.event_log_storage.initialize_concurrency_limit_to_default("gpu")
        instance.event_log_storage.claim_concurrency_slot("gpu", ended.dagster_run.run_id, "prediction_files")
        assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots

        server.wait_until_loaded()
        ui_backfill = server.launch_backfill(_ui_backfill_params())

        # meanwhile (the daemon takes the backfill up within 30s) the CLI's own single run: no daemon needed
        selection = ["--select", "preprocessed_images,prediction_files"]
        partition_range = [*MATERIALIZE, *selection, "--partition-range", f"{KEYS[0]}...{KEYS[-1]}"]
        # with a multi-run policy Dagster's CLI refuses a range (it would need the daemon)
        refused = _cli(partition_range, {**env, "INFERENCE_PARTITIONS_PER_RUN": "1"}, check=False)
        assert "Partition ranges with the CLI require all selected assets to have a BackfillPolicy" in refused
        _cli(partition_range, env)

        (ui_run,) = _wait_for_runs(server, instance, {ui_backfill: 1})[ui_backfill]
        _refresh_and_check_duckdb(env)
        assert not _refresh_runs(instance)  # the automation sensor is stopped
        assert _wait_for_backfill_status(server, ui_backfill) == "COMPLETED_SUCCESS"

        ranged = [r for r in instance.get_run_records() if RANGE_START in r.dagster_run.tags]
        assert len(ranged) == 2 and ui_run.dagster_run.run_id in {r.dagster_run.run_id for r in ranged}
        for record in ranged:  # one run each over the four partitions: the UI's backfill, the CLI's run
            assert record.dagster_run.status == DagsterRunStatus.SUCCESS
            assert (record.dagster_run.tags[RANGE_START], record.dagster_run.tags[RANGE_END]) == (KEYS[0], KEYS[-1])
        # the gpu pool holds for a daemon-launched run and a CLI run alike
        predictions = _step_intervals(instance, [r.dagster_run.run_id for r in ranged], "prediction_files")
        assert _max_overlap(predictions) == 1
        assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots  # the stale one too


def test_after_a_backfill_the_daemon_refreshes_the_downstream_assets_exactly_once(image_root, tmp_path):
    """`make backfill` over two partitions, one run each: once both are done (not after the first),
    the automation sensor launches one run of prediction_results + evaluation + report; nothing more
    on its next ticks."""
    env = _env(image_root, tmp_path, INFERENCE_PARTITIONS_PER_RUN="1")
    env["INFERENCE_PARTITIONS"] = "2"
    with _instance(env) as instance, dagster_dev(env, tmp_path / "dagster_dev.log") as server:
        _cli([*MATERIALIZE, "--select", "image_manifest"], env)  # as make backfill, while the server starts
        server.wait_until_loaded()
        _wait_for_automation_tick(server, instance)  # its first evaluation: what came before it is not seen
        assert not _refresh_runs(instance)  # a manifest alone refreshes nothing

        submitted = _cli([*JOB_BACKFILL, "--all", "--noprompt"], env)
        backfill = re.search(r"Launched backfill job `(\w+)`", submitted).group(1)
        partition_runs = _wait_for_runs(server, instance, {backfill: 2})[backfill]
        assert all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in partition_runs)
        last_end = max(r.end_time for r in partition_runs)
        refresh = _wait_for_refresh(server, instance, after=last_end)
        _check_refreshed_duckdb(env, instance, refresh)
        assert Layout(Path(env["INFERENCE_WORK_DIR"])).report_path.is_file()

        _wait_for_automation_tick(server, instance, after=refresh.end_time)  # a tick that saw the refresh
        assert [r.dagster_run.run_id for r in _refresh_runs(instance)] == [refresh.dagster_run.run_id]
        for asset in REFRESHED_ASSETS:  # each materialized exactly once, by that run
            (event,) = instance.fetch_materializations(asset.key, limit=10).records
            assert event.run_id == refresh.dagster_run.run_id, asset.key
        assert not [r for r in instance.get_run_records() if not r.dagster_run.is_finished]

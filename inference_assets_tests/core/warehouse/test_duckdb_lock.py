"""Another process holding the DuckDB file: the refresh waits with a log line, then succeeds or fails clearly."""

import subprocess
import sys
import time

import duckdb
import pytest
from dagster import AssetSelection, DagsterInstance, materialize

from inference_assets.core.warehouse.database import WarehouseLockedError, connect_waiting_for_lock
from inference_assets.definitions import ASSET_CHECKS, ASSETS
from inference_assets.partitions import IMAGE_SHARDS
from inference_assets.resources import DeviceResource, ModelListResource, ModelResource, PreprocessingResource, WarehouseResource
from inference_assets_tests.conftest import source_resource, work_area_resource

HOLD = "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(float(sys.argv[2]))"


def _hold_lock(database, seconds) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(database), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_connect_waits_for_a_lock_and_reports_the_holder(tmp_path):
    database = tmp_path / "w.duckdb"
    duckdb.connect(str(database)).close()
    holder = _hold_lock(database, 2)
    lines = []
    start = time.monotonic()
    conn = connect_waiting_for_lock(str(database), timeout=30, on_wait=lines.append)
    conn.close()
    holder.wait()
    assert time.monotonic() - start >= 1
    assert lines and f"(PID {holder.pid})" in lines[0] and "waiting up to" in lines[0]


@pytest.mark.fast
def test_connect_gives_up_naming_the_file_and_the_holder(tmp_path):
    database = tmp_path / "w.duckdb"
    duckdb.connect(str(database)).close()
    holder = _hold_lock(database, 30)
    try:
        with pytest.raises(WarehouseLockedError) as err:
            connect_waiting_for_lock(str(database), timeout=1.5)
        assert str(err.value).startswith(f"DuckDB file '{database}' is still locked by ")
        assert f"(PID {holder.pid}) after 2s" in str(err.value) and "\n" not in str(err.value)
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture
def pipeline(image_root, tmp_path):
    database = tmp_path / "warehouse.duckdb"
    resources = {
        "source": source_resource(image_root=str(image_root)),
        "work_area": work_area_resource(tmp_path / "work"),
        "model": ModelResource(),
        "models": ModelListResource(),
        "device": DeviceResource(device="cpu"),
        "preprocessing": PreprocessingResource(decode_workers=2),
        "duckdb": WarehouseResource(database=str(database), lock_timeout_seconds=60),
    }
    keys = IMAGE_SHARDS.get_partition_keys()
    with DagsterInstance.ephemeral() as instance:
        all_defs = [*ASSETS, *ASSET_CHECKS]
        materialize(all_defs, selection=["image_manifest"], resources=resources, instance=instance)
        materialize(
            all_defs,
            selection=["preprocessed_images", "prediction_files"],
            resources=resources,
            instance=instance,
            tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        )

        def refresh(**overrides):
            run_resources = {**resources, "duckdb": WarehouseResource(database=str(database), **overrides)}
            selection = AssetSelection.assets("prediction_results") | AssetSelection.checks_for_assets("prediction_results")
            return materialize(all_defs, selection=selection, resources=run_resources, instance=instance, raise_on_error=False)

        yield database, refresh, instance


def test_refresh_waits_for_another_process_then_succeeds(pipeline):
    database, refresh, instance = pipeline
    assert refresh().success
    holder = _hold_lock(database, 3)
    result = refresh(lock_timeout_seconds=60)
    holder.wait()
    assert result.success
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("is locked by" in m and f"(PID {holder.pid})" in m for m in logs)
    with duckdb.connect(str(database), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 6


def test_refresh_fails_clearly_when_the_lock_is_kept_and_the_database_survives(pipeline):
    database, refresh, instance = pipeline
    assert refresh().success
    holder = _hold_lock(database, 60)
    try:
        result = refresh(lock_timeout_seconds=2)
        assert not result.success
        messages = [
            event.event_specific_data.error.cause.message
            for event in result.all_events
            if event.is_step_failure and event.event_specific_data.error.cause
        ]
        assert any(f"DuckDB file '{database}' is still locked by" in m and f"(PID {holder.pid})" in m for m in messages)
    finally:
        holder.kill()
        holder.wait()
    with duckdb.connect(str(database), read_only=True) as conn:  # intact: the earlier refresh's tables
        assert conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 6
    assert refresh().success

"""The sensor and the schedule, evaluated with build_sensor_context / build_schedule_context on a
real instance and real files; each requested run is then executed through Dagster."""

import pytest
import shutil

import duckdb
from dagster import (
    AssetKey,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    evaluate_automation_conditions,
    materialize,
)

from inference_assets.automation import sensors
from inference_assets.jobs import REFRESHED_ASSETS

# what the automation requests after new predictions: the DuckDB refresh and everything downstream of it
DOWNSTREAM = ("prediction_results", "evaluation", "model_comparison", "calibration", "review_queue", "report")
from inference_assets.automation.schedules import nightly_pending_work
from inference_assets.automation.sensors import new_images
from inference_assets.core.collection.partitioning import image_id_for, partition_for
from inference_assets.core.collection.pending import ListingScan, scan_listing
from inference_assets.core.sources.folder import FolderSource
from inference_assets.core.sources.config import IMAGE_EXTENSIONS
from inference_assets.core.collection.manifest import read_manifest
from inference_assets.definitions import ASSET_CHECKS, ASSETS, defs
from inference_assets.partitions import NUM_PARTITIONS
from inference_assets.run import materialize_step, pipeline_steps



def _automation_resources(resources) -> dict:
    """The resources the sensor and the schedule take."""
    return {key: resources[key] for key in ("source", "work_area", "model", "models")}


def _sensor_tick(instance, resources, cursor=None):
    # entered: the source and the work area nest the object store, so Dagster builds them in a context
    with build_sensor_context(instance=instance, cursor=cursor, resources=_automation_resources(resources)) as context:
        return new_images(context)


def _schedule_tick(instance, resources):
    with build_schedule_context(instance=instance, resources=_automation_resources(resources)) as context:
        return nightly_pending_work(context)


def _execute(request: RunRequest, resources, instance):
    result = materialize(
        [*ASSETS, *ASSET_CHECKS],
        selection=AssetSelection.assets(*request.asset_selection),
        partition_key=request.partition_key,
        tags=request.tags,
        resources=resources,
        instance=instance,
    )
    assert result.success


def _predicted(resources) -> int:
    with duckdb.connect(resources["duckdb"].database, read_only=True) as conn:
        return conn.execute("SELECT count(*) FROM predictions").fetchone()[0]


def _make_run(resources, instance):
    for title, selection, tags in pipeline_steps():
        assert materialize_step(selection, tags, resources, instance, "WARNING").success, title


def test_the_sensor_requests_a_manifest_run_then_only_the_partitions_with_new_images(resources, instance, image_root):
    _make_run(resources, instance)
    automation = _tick(instance)
    first = _sensor_tick(instance, resources)
    assert first.run_requests == [] and "no new images" in first.skip_reason.skip_message

    new = image_root / "more" / "coffee-again.jpg"
    new.parent.mkdir()
    shutil.copy(image_root / "espresso" / "coffee.jpg", new)
    tick = _sensor_tick(instance, resources, first.cursor)
    assert [r.asset_selection for r in tick.run_requests] == [[sensors.MANIFEST[0]]]
    assert _sensor_tick(instance, resources, tick.cursor).run_requests[0].run_key == tick.run_requests[0].run_key
    _execute(tick.run_requests[0], resources, instance)

    tick = _sensor_tick(instance, resources, tick.cursor)
    expected_partition = partition_for(image_id_for("more/coffee-again.jpg"), NUM_PARTITIONS)
    assert [r.partition_key for r in tick.run_requests] == [expected_partition]
    request = tick.run_requests[0]
    assert {k.to_user_string() for k in request.asset_selection} == {"preprocessed_images", "prediction_files"}
    _execute(request, resources, instance)
    assert _predicted(resources) == 6  # DuckDB is refreshed by automation, next
    _refresh_by_automation(resources, instance, automation.cursor)
    assert _predicted(resources) == 7

    done = _sensor_tick(instance, resources, tick.cursor)
    assert done.run_requests == [] and done.skip_reason is not None


def test_the_sensor_lists_a_bounded_slice_per_tick_and_resumes_from_its_cursor(resources, instance, monkeypatch):
    _make_run(resources, instance)
    monkeypatch.setattr(sensors, "LISTING_SECONDS", 0.0)  # every tick stops after one image
    cursor, ticks = None, 0
    while True:
        ticks += 1
        result = _sensor_tick(instance, resources, cursor)
        cursor = result.cursor
        if '"scan"' not in cursor:
            break
        assert result.run_requests == []
    assert ticks == 6  # one image per tick, complete on the sixth; nothing changed
    assert result.run_requests == []


@pytest.mark.fast
def test_a_resumed_scan_gives_the_same_digests_as_one_pass(image_root):
    source = FolderSource(image_root, IMAGE_EXTENSIONS)
    whole = scan_listing(source.entries(), 4)
    scan, steps = ListingScan(), 0
    while not scan.complete:
        scan = scan_listing(source.entries(), 4, ListingScan.from_json(scan.to_json()), budget_seconds=0.0)
        steps += 1
    assert scan.digests == whole.digests and steps == 6


def test_the_schedule_runs_changed_partitions_then_skips(resources, instance, image_root):
    _make_run(resources, instance)
    automation = _tick(instance)
    assert isinstance(_schedule_tick(instance, resources), SkipReason)

    for name in ("a/one.jpg", "b/two.jpg"):
        (image_root / name).parent.mkdir()
        shutil.copy(image_root / "missile" / "rocket.jpg", image_root / name)
    request = _schedule_tick(instance, resources)
    # a run, not a backfill: Dagster 1.13's scheduler launches runs only (see schedules.py)
    assert isinstance(request, RunRequest) and not request.requires_backfill_daemon()
    assert {k.to_user_string() for k in request.asset_selection} == {"image_manifest", "preprocessed_images", "prediction_files"}
    changed = sorted(partition_for(image_id_for(n), NUM_PARTITIONS) for n in ("a/one.jpg", "b/two.jpg"))
    assert (request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"]) == (
        changed[0], changed[-1])
    _execute(request, resources, instance)
    _refresh_by_automation(resources, instance, automation.cursor)
    assert _predicted(resources) == 8
    assert isinstance(_schedule_tick(instance, resources), SkipReason)

    # results lost for one partition: the schedule asks for that partition alone
    layout = resources["work_area"].layout
    result_files = sorted((layout.work_dir / "predictions").rglob("shard-*.parquet"))
    result_files[0].unlink()
    requests = _schedule_tick(instance, resources)
    assert [r.partition_key for r in requests] == [result_files[0].stem]


# --- declarative automation: the downstream refreshes itself, once ---------------------------

REFRESHED = {asset.key for asset in REFRESHED_ASSETS}


def _materialize(resources, instance, names, partition=None):
    result = materialize(
        [*ASSETS, *ASSET_CHECKS], selection=AssetSelection.assets(*names), partition_key=partition,
        resources=resources, instance=instance,
    )
    assert result.success


def _tick(instance, cursor=None):
    """One evaluation of the code location's automation conditions, as the refresh_results sensor does."""
    return evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)


def _requested(result) -> dict[str, int]:
    return {key.to_user_string(): result.get_num_requested(key) for key in REFRESHED if result.get_num_requested(key)}


def _queued_run(instance, partition: str):
    """A run of preprocessed_images + prediction_files for ``partition``, created and not yet started
    (as the sensor's or a backfill's runs are before the queue launches them): its planned
    materializations make the partition in progress."""
    job = defs.resolve_implicit_global_asset_job_def()
    selection = {AssetKey("preprocessed_images"), AssetKey("prediction_files")}
    return instance.create_run_for_job(
        job.get_subset(asset_selection=selection), asset_selection=selection,
        status=DagsterRunStatus.NOT_STARTED, tags={"dagster/partition": partition},
    )


def _refresh_by_automation(resources, instance, cursor):
    """The next automation tick requests prediction_results, evaluation and report once; they are materialized."""
    result = _tick(instance, cursor)
    assert _requested(result) == {name: 1 for name in DOWNSTREAM}
    _materialize(resources, instance, REFRESHED_ASSETS)
    return result.cursor


@pytest.mark.fast
def test_the_downstream_assets_are_requested_once_after_every_pending_partition_is_done(resources, instance):
    result = _tick(instance)  # the sensor's first evaluation: nothing has happened yet
    assert result.total_requested == 0

    _materialize(resources, instance, ["image_manifest"])
    result = _tick(instance, result.cursor)
    assert result.total_requested == 0  # a manifest alone: its new images have no outcome yet

    manifest = read_manifest(resources["work_area"].layout.manifest_path)
    first, second = sorted(set(manifest["partition"].to_pylist()))[:2]
    waiting = _queued_run(instance, second)  # e.g. the sensor requested both partitions
    _materialize(resources, instance, ["preprocessed_images", "prediction_files"], first)
    result = _tick(instance, result.cursor)
    assert result.total_requested == 0  # the second partition is still in progress

    _materialize(resources, instance, ["preprocessed_images", "prediction_files"], second)
    instance.report_run_canceled(waiting)  # ended (its work was done by the run above)
    result = _tick(instance, result.cursor)
    assert _requested(result) == {name: 1 for name in DOWNSTREAM}

    result = _tick(instance, result.cursor)
    assert result.total_requested == 0  # requested once: not again while nothing changed
    _materialize(resources, instance, REFRESHED_ASSETS)  # what the requested run does
    for _ in range(2):
        result = _tick(instance, result.cursor)
        assert result.total_requested == 0  # its own materializations do not trigger it again

    _materialize(resources, instance, ["preprocessed_images", "prediction_files"], first)
    result = _tick(instance, result.cursor)
    assert _requested(result) == {name: 1 for name in DOWNSTREAM}  # new predictions: again


@pytest.mark.fast
def test_a_run_that_materializes_the_downstream_itself_triggers_nothing(resources, instance):
    result = _tick(instance)
    _make_run(resources, instance)  # make run: partitions, then prediction_results + evaluation + report
    result = _tick(instance, result.cursor)
    assert result.total_requested == 0


@pytest.mark.fast
def test_the_automation_sensor_runs_by_default_on_the_downstream_assets():
    (sensor,) = [s for s in defs.get_repository_def().sensor_defs if isinstance(s, AutomationConditionSensorDefinition)]
    assert sensor.name == "refresh_results" and sensor.default_status == DefaultSensorStatus.RUNNING
    assert sensor.asset_selection.resolve(defs.resolve_asset_graph()) == REFRESHED
    conditions = {spec.key: spec.automation_condition for spec in defs.resolve_all_asset_specs()}
    # the downstream follows by itself; the partitioned work is requested (sensor, schedule, you)
    assert {key for key, condition in conditions.items() if condition is not None} == REFRESHED

"""The sensor and the schedule, evaluated with build_sensor_context / build_schedule_context on a
real instance and real files; each requested run is then executed through Dagster."""

import pytest
import shutil

import duckdb
from dagster import AssetSelection, RunRequest, SkipReason, build_schedule_context, build_sensor_context, materialize

from inference_assets.automation import sensors
from inference_assets.automation.schedules import nightly_pending_work
from inference_assets.automation.sensors import new_images
from inference_assets.core.partitioning import image_id_for, partition_for
from inference_assets.core.pending import ListingScan, scan_listing
from inference_assets.core.sources.folder import FolderSource
from inference_assets.core.sources.config import IMAGE_EXTENSIONS
from inference_assets.definitions import ASSET_CHECKS, ASSETS
from inference_assets.partitions import NUM_PARTITIONS
from inference_assets.run import materialize_step, pipeline_steps



def _sensor_tick(instance, resources, cursor=None):
    context = build_sensor_context(
        instance=instance, cursor=cursor, resources={"storage": resources["storage"], "model": resources["model"]}
    )
    return new_images(context)


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
    assert {k.to_user_string() for k in request.asset_selection} == {"preprocessed_images", "prediction_files", "prediction_results", "evaluation"}
    _execute(request, resources, instance)
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


def test_the_schedule_backfills_changed_partitions_then_skips(resources, instance, image_root):
    _make_run(resources, instance)
    context = build_schedule_context(instance=instance, resources={"storage": resources["storage"], "model": resources["model"]})
    assert isinstance(nightly_pending_work(context), SkipReason)

    for name in ("a/one.jpg", "b/two.jpg"):
        (image_root / name).parent.mkdir()
        shutil.copy(image_root / "missile" / "rocket.jpg", image_root / name)
    request = nightly_pending_work(context)
    assert isinstance(request, RunRequest)
    changed = sorted(partition_for(image_id_for(n), NUM_PARTITIONS) for n in ("a/one.jpg", "b/two.jpg"))
    assert (request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"]) == (
        changed[0], changed[-1])
    _execute(request, resources, instance)
    assert _predicted(resources) == 8
    assert isinstance(nightly_pending_work(context), SkipReason)

    # results lost for one partition: the schedule asks for that partition alone
    layout = resources["storage"].layout
    result_files = sorted((layout.work_dir / "predictions").rglob("shard-*.parquet"))
    result_files[0].unlink()
    requests = nightly_pending_work(context)
    assert [r.partition_key for r in requests] == [result_files[0].stem]

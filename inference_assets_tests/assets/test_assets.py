"""Assets materialized through Dagster, partition by partition (as in project_fully_featured)."""

import shutil

import duckdb
import pytest
import torch
from dagster import AssetKey, AssetSelection, BackfillPolicy, materialize

from inference_assets.core.collection.manifest import read_manifest
from inference_assets.core.collection.partitioning import image_id_for, partition_for
from inference_assets.core.storage.hashing import file_sha256
from inference_assets.definitions import ASSET_CHECKS, ASSETS, defs
from inference_assets.partitions import IMAGE_SHARDS
from inference_assets.resources import ModelResource

ALL = [*ASSETS, *ASSET_CHECKS]

# the metadata keys each asset's materialization shows (the UI, the browser tests and users rely on them)
MANIFEST_METADATA = {
    "images", "total_bytes", "files_hashed", "hashes_reused", "unreadable", "unlistable_folders",
    "images_under_unlistable_folders", "vanished_images", "labelled_images", "distinct_labels", "partitions",
    "source", "source_kind", "per_partition", "sample_images", "path",
}
PREPROCESSED_METADATA = {
    "partitions", "images", "ok", "failed", "reused", "computed", "seconds", "images_per_second",
    "decode_workers", "input_size", "jpeg_draft", "preprocessing", "pixel_sets", "path",
}
PREDICTION_METADATA = {
    "partitions", "predicted", "reused", "failed", "seconds", "images_per_second", "model", "weights",
    "model_format", "model_id", "runtime", "runtime_asked", "runtime_parity", "runtime_settled_by_pytorch",
    "classes", "class_names", "multi_label", "device", "precision", "channels_last", "compiled", "jpeg_draft",
    "batch_size", "top_k", "top_labels", "sample_predictions", "predict_seconds", "read_seconds",
    "model_seconds", "write_seconds", "per_partition", "path",
}



def _metadata(result, asset_name):
    materialization = result.asset_materializations_for_node(asset_name)[0]
    return {k: v.value for k, v in materialization.metadata.items()}


def _busy_partition(resources) -> tuple[str, int]:
    manifest = read_manifest(resources["work_area"].layout.manifest_path).to_pylist()
    counts = {}
    for row in manifest:
        counts[row["partition"]] = counts.get(row["partition"], 0) + 1
    return max(counts.items(), key=lambda kv: kv[1])


def _with_checks(*names):
    return AssetSelection.assets(*names) | AssetSelection.checks_for_assets(*names)


@pytest.mark.fast
def test_definitions_load_with_partitions_and_single_run_backfills():
    assert len(IMAGE_SHARDS.get_partition_keys()) == 16
    graph = defs.resolve_asset_graph()
    for name in ("preprocessed_images", "prediction_files"):
        node = graph.get(AssetKey(name))
        assert node.partitions_def == IMAGE_SHARDS
        assert node.backfill_policy == BackfillPolicy.single_run()
    assert graph.get(AssetKey("prediction_results")).partitions_def is None
    check_names = {key.name for key in defs.resolve_asset_graph().asset_check_keys}
    assert {"every_image_accounted_for", "probabilities_valid", "unique_image_ids"} <= check_names


@pytest.mark.fast
def test_manifest_asset_metadata(resources, instance):
    result = materialize(ALL, selection=_with_checks("image_manifest"), resources=resources, instance=instance)
    assert result.success
    metadata = _metadata(result, "image_manifest")
    assert metadata["images"] == 6 and metadata["labelled_images"] == 4 and metadata["partitions"] == 16
    assert metadata["total_bytes"] > 1_000_000
    assert "| shard-00 |" in metadata["per_partition"]
    assert set(metadata) == MANIFEST_METADATA
    assert all(check.passed for check in result.get_asset_check_evaluations())


@pytest.mark.fast
def test_one_partition_end_to_end_then_results_and_checks(resources, instance, tmp_path):
    assert materialize(ALL, selection=["image_manifest"], resources=resources, instance=instance).success
    key, count = _busy_partition(resources)
    result = materialize(
        ALL, selection=["preprocessed_images", "prediction_files"], partition_key=key, resources=resources, instance=instance
    )
    assert result.success
    assert _metadata(result, "preprocessed_images")["ok"] == count
    assert set(_metadata(result, "preprocessed_images")) == PREPROCESSED_METADATA
    predicted = _metadata(result, "prediction_files")
    assert set(predicted) == PREDICTION_METADATA
    assert predicted["partitions"] == 1 and f"| {key} | {count} | {count} | 0 | 0 |" in predicted["per_partition"]
    assert predicted["predicted"] == count and predicted["failed"] == 0
    assert predicted["device"] == "cpu" and predicted["precision"] == "fp32" and predicted["batch_size"] == 4
    assert {m.partition for m in result.get_asset_materialization_events() if m.partition} == {key}

    result = materialize(ALL, selection=_with_checks("prediction_results"), resources=resources, instance=instance)
    assert result.success
    assert _metadata(result, "prediction_results")["predictions"] == count
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"every_image_accounted_for": True, "probabilities_valid": True, "unique_image_ids": True,
                      "failure_rate_within_limit": True, "no_class_collapse": True}
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(DISTINCT partition) FROM predictions").fetchone()[0] == 1


@pytest.mark.fast
def test_rerunning_a_partition_reuses_unchanged_work_and_force_recomputes(resources, instance):
    materialize(ALL, selection=["image_manifest"], resources=resources, instance=instance)
    key, count = _busy_partition(resources)
    selection = ["preprocessed_images", "prediction_files"]
    materialize(ALL, selection=selection, partition_key=key, resources=resources, instance=instance)
    again = materialize(ALL, selection=selection, partition_key=key, resources=resources, instance=instance)
    assert (_metadata(again, "preprocessed_images")["reused"], _metadata(again, "preprocessed_images")["computed"]) == (
        count,
        0,
    )
    assert (_metadata(again, "prediction_files")["reused"], _metadata(again, "prediction_files")["predicted"]) == (count, 0)
    forced = materialize(
        ALL,
        selection=selection,
        partition_key=key,
        resources=resources,
        instance=instance,
        run_config={"ops": {"prediction_files": {"config": {"force": True}}}},
    )
    assert (_metadata(forced, "prediction_files")["reused"], _metadata(forced, "prediction_files")["predicted"]) == (0, count)


@pytest.mark.fast
def test_run_config_overrides_device_settings_like_the_launchpad(resources, instance):
    materialize(ALL, selection=["image_manifest"], resources=resources, instance=instance)
    key, count = _busy_partition(resources)
    result = materialize(
        ALL,
        selection=["preprocessed_images", "prediction_files"],
        partition_key=key,
        resources=resources,
        instance=instance,
        run_config={"resources": {"device": {"config": {"precision": "bf16", "channels_last": True}}}},
    )
    metadata = _metadata(result, "prediction_files")
    assert metadata["precision"] == "bf16" and metadata["channels_last"] is True
    assert metadata["predicted"] == count


def test_check_fails_when_a_partition_is_stale(resources, instance, image_root):
    materialize(ALL, selection=["image_manifest"], resources=resources, instance=instance)
    key, _ = _busy_partition(resources)
    materialize(ALL, selection=["preprocessed_images", "prediction_files"], partition_key=key, resources=resources,
                instance=instance)
    # a new image lands in that partition; its result file predates it
    name = next(f"new_{i}.jpg" for i in range(10_000) if partition_for(image_id_for(f"new_{i}.jpg"), 16) == key)
    shutil.copy(image_root / "espresso" / "coffee.jpg", image_root / name)
    materialize(ALL, selection=["image_manifest"], resources=resources, instance=instance)
    result = materialize(ALL, selection=_with_checks("prediction_results"), resources=resources, instance=instance,
                         raise_on_error=False)
    assert not result.success  # the check is blocking: its failure fails the run
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["every_image_accounted_for"].passed
    assert checks["every_image_accounted_for"].metadata["images_without_exactly_one_outcome"].value == 1


def test_partition_range_in_one_run(resources, instance):
    materialize(ALL, selection=["image_manifest"], resources=resources, instance=instance)
    keys = IMAGE_SHARDS.get_partition_keys()
    result = materialize(
        ALL,
        selection=["preprocessed_images", "prediction_files"],
        resources=resources,
        instance=instance,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
    )
    assert result.success
    metadata = _metadata(result, "prediction_files")
    assert metadata["partitions"] == 16 and metadata["predicted"] == 6
    assert len(instance.get_materialized_partitions(AssetKey("prediction_files"))) == 16


def test_added_and_changed_images_are_the_only_work_and_a_new_model_recomputes(resources, instance, image_root, tmp_path, classifier):
    keys = IMAGE_SHARDS.get_partition_keys()
    rng = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    steps = ["preprocessed_images", "prediction_files"]
    materialize(ALL, selection=["image_manifest"], resources=resources, instance=instance)
    materialize(ALL, selection=steps, resources=resources, instance=instance, tags=rng)

    shutil.copy(image_root / "espresso" / "coffee.jpg", image_root / "espresso" / "coffee_copy.jpg")  # added
    camera = image_root / "tripod" / "camera.png"
    camera.write_bytes(camera.read_bytes() + b"\0")  # same path, new content
    materialize(ALL, selection=["image_manifest"], resources=resources, instance=instance)
    again = materialize(ALL, selection=steps, resources=resources, instance=instance, tags=rng)
    pre, pred = _metadata(again, "preprocessed_images"), _metadata(again, "prediction_files")
    assert (pre["reused"], pre["computed"]) == (5, 2)
    assert (pred["reused"], pred["predicted"]) == (5, 2)

    # other weights (a local file, so another weights id): that model's predictions are computed
    weights = tmp_path / "lite0.pth"
    torch.save(classifier.module.state_dict(), weights)
    other = {**resources, "model": ModelResource(weights=str(weights))}
    switched = materialize(ALL, selection=steps, resources=other, instance=instance, tags=rng)
    assert (_metadata(switched, "prediction_files")["reused"], _metadata(switched, "prediction_files")["predicted"]) == (0, 7)
    assert _metadata(switched, "preprocessed_images")["computed"] == 0  # same preprocessing: pixels reused
    materialize(ALL, selection=["prediction_results"], resources=other, instance=instance)
    with duckdb.connect(resources["duckdb"].database, read_only=True) as conn:
        weights_ids = conn.execute("SELECT DISTINCT weights FROM predictions").fetchall()
        assert conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 7
    assert weights_ids == [(f"file:lite0.pth@{file_sha256(weights)[:12]}",)]

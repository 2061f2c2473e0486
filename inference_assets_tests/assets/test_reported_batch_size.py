"""The batch size prediction_files reports is the one its forward passes ran at: on CUDA the probed
size (not the 256 used before probing), and nothing when every prediction was reused."""

import pytest
from dagster import materialize

from inference_assets.core.collection.manifest import read_manifest
from inference_assets.core.inference.batches import ShardPredictionSummary, batch_size_used
from inference_assets.definitions import ASSETS


def _summary(predicted: int, batch_size: int) -> ShardPredictionSummary:
    return ShardPredictionSummary(images=6, predicted=predicted, reused=6 - predicted, failed=0, rewritten=True,
                                  seconds=1.0, batch_size=batch_size)


@pytest.mark.fast
def test_the_batch_size_used_is_the_one_the_partitions_that_predicted_ran_at():
    # a CUDA step: the probe picked 1024 where something was predicted; a reused partition ran no
    # batch and says 256 (devices.default_batch_size, the size before any probe)
    assert batch_size_used([_summary(6, 1024), _summary(0, 256), _summary(3, 1024)]) == 1024
    assert batch_size_used([_summary(6, 1024), _summary(2, 512)]) == 512  # out-of-memory back-off in one
    assert batch_size_used([_summary(0, 256), _summary(0, 8)]) is None  # nothing predicted: no batch ran
    assert batch_size_used([]) is None


@pytest.mark.fast
def test_prediction_files_reports_the_batch_size_it_ran_at_and_none_when_all_reused(resources, instance):
    assert materialize(ASSETS, selection=["image_manifest"], resources=resources, instance=instance).success
    key = read_manifest(resources["work_area"].layout.manifest_path)["partition"][0].as_py()
    steps = ["preprocessed_images", "prediction_files"]

    def batch_size() -> object:
        result = materialize(ASSETS, selection=steps, partition_key=key, resources=resources, instance=instance)
        assert result.success
        metadata = result.asset_materializations_for_node("prediction_files")[0].metadata
        assert metadata["predicted"].value + metadata["reused"].value > 0
        return metadata["batch_size"].value

    assert batch_size() == 4  # cpu_resources: ModelResource(batch_size=4)
    assert batch_size() is None  # the same partition again: every prediction reused, no batch ran

"""Temperature scaling through the ``calibration`` asset, on enough labelled photos to fit it: a
temperature is fitted only when asked for, and each prediction's rescaled top-1 confidence in
``calibrated_predictions`` is softmax(log p / T) of the probabilities stored in its result file,
beside the stored confidence, which stays as it was."""

import shutil

import duckdb
import numpy as np
from dagster import materialize

from inference_assets.core.reporting.calibration import halves
from inference_assets.core.storage.results import read_results
from inference_assets.definitions import ASSETS
from inference_assets.partitions import IMAGE_SHARDS
from inference_assets_tests.conftest import cpu_resources, source_resource, work_area_resource

LABELLED = ("espresso", "tabby", "tripod", "missile")


def test_temperature_scaling_is_opt_in_and_rescales_the_stored_probabilities(image_root, tmp_path, instance):
    for label in LABELLED:  # 6 copies of each labelled photo: 24 labelled images, enough to fit a temperature
        photo = next((image_root / label).iterdir())
        for copy in range(5):
            shutil.copy(photo, image_root / label / f"copy{copy}{photo.suffix}")
    database = tmp_path / "warehouse.duckdb"
    work_area = work_area_resource(tmp_path / "work")
    resources = cpu_resources(source_resource(image_root=str(image_root)), work_area, database)
    keys = IMAGE_SHARDS.get_partition_keys()
    tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    assert materialize(ASSETS, selection=["image_manifest"], resources=resources, instance=instance).success
    assert materialize(ASSETS, selection=["preprocessed_images", "prediction_files"], resources=resources,
                       instance=instance, tags=tags).success
    assert materialize(ASSETS, selection=["prediction_results", "calibration"], resources=resources,
                       instance=instance).success
    with duckdb.connect(str(database), read_only=True) as conn:  # not asked for: measured, not fitted
        assert conn.execute("SELECT images, temperature FROM calibration_summary").fetchall() == [(24, None)]
        assert conn.execute("SELECT count(*) FROM calibrated_predictions").fetchone()[0] == 0

    config = {"ops": {"calibration": {"config": {"temperature_scaling": True}}}}
    result = materialize(ASSETS, selection=["calibration"], resources=resources, instance=instance,
                         run_config=config)
    assert result.success
    metadata = {k: v.value for k, v in result.asset_materializations_for_node("calibration")[0].metadata.items()}
    assert metadata["temperature_scaling"] is True and metadata["calibrated_predictions"] == 26
    assert "ECE after scaling, held out" in metadata["calibration"]
    with duckdb.connect(str(database), read_only=True) as conn:
        (temperature, nll, nll_after, ece_after, ece_held_out, nll_held_out), = conn.execute(
            "SELECT temperature, nll, nll_after_scaling, ece_after_scaling, ece_held_out, nll_held_out "
            "FROM calibration_summary").fetchall()
        labelled = [i for (i,) in conn.execute("SELECT image_id FROM images WHERE label IS NOT NULL").fetchall()]
        rows = {image_id: (t, confidence, calibrated) for image_id, t, confidence, calibrated in conn.execute(
            "SELECT image_id, temperature, confidence, calibrated_confidence FROM calibrated_predictions").fetchall()}
        stored = dict(conn.execute("SELECT image_id, confidence FROM predictions").fetchall())
    # held out: each half of the 24 labelled images (by image id) scaled by the other half's temperature,
    # measured when both halves hold 10 images
    split = halves(labelled)
    if min(split.sum(), len(split) - split.sum()) >= 10:
        assert 0 <= ece_held_out <= 1 and nll_held_out > 0
    else:
        assert ece_held_out is None and nll_held_out is None
    # T minimizes the labels' negative log-likelihood: no worse than T = 1, the stored probabilities
    assert temperature > 0 and ece_after is not None and nll_after <= nll + 1e-9
    assert len(rows) == len(stored) == 26
    for path in sorted((tmp_path / "work" / "predictions").rglob("*.parquet")):
        for row in read_results(path).to_pylist():
            if row["status"] != "predicted":
                continue
            logits = np.log(np.clip(np.array(row["probabilities"], dtype=np.float64), 1e-12, None)) / temperature
            scaled = np.exp(logits - logits.max())
            scaled /= scaled.sum()
            t, confidence, calibrated = rows[row["image_id"]]
            assert t == temperature and confidence == stored[row["image_id"]]  # the stored one, unchanged
            assert np.isclose(calibrated, scaled.max(), atol=1e-6)
            assert int(np.argmax(scaled)) == row["class_index"]  # scaling never changes the class

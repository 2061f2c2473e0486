"""The model list in the Dagster UI (``dagster dev`` as ``make dev`` starts it, pages in a real headless
Chromium): each listed model and the ensemble are assets of their own, with their own partitions; after
runs launched as the UI launches them, the comparison's agreement table is on ``model_comparison``'s page."""

from inference_assets_tests.browser.test_ui import _load
from inference_assets_tests.support.dagster_ui import dagster_dev
from inference_assets_tests.support.environment import install_instance_config, pipeline_env

MODELS_FILE = """\
primary: lite0
models:
  lite1: {model: tf_efficientnet_lite1}
ensembles:
  lite_mean: {members: [lite0, lite1]}
"""
PARTITIONED = ["preprocessed_images", "prediction_files", "lite1/prediction_files", "lite_mean/prediction_files"]
DOWNSTREAM = ["prediction_results", "evaluation", "model_comparison", "calibration", "review_queue", "report"]


def test_each_model_has_its_partitions_and_the_comparison_shows_in_the_ui(image_root, tmp_path):
    models_file = tmp_path / "models.yaml"
    models_file.write_text(MODELS_FILE)
    env = install_instance_config(pipeline_env(image_root, tmp_path))
    env.update(INFERENCE_PARTITIONS="2", INFERENCE_MODELS=str(models_file))
    with dagster_dev(env, tmp_path / "dagster_dev.log") as server:
        server.wait_until_loaded()
        server.skip_welcome_dialog()
        base = server.base_url

        # each model's own asset, with its own partitions, none materialized yet
        for asset in ("lite1/prediction_files", "lite_mean/prediction_files"):
            page = _load(f"{base}/assets/{asset}?view=partitions").text
            assert " | shard-00 | " in page and " | Missing (2) | " in page, asset

        assert server.wait_for_run(server.launch_run(["image_manifest"])) == "SUCCESS", server.log_tail()
        run_id = server.launch_run(PARTITIONED, partition="shard-00")
        assert server.wait_for_run(run_id) == "SUCCESS", server.log_tail()
        for asset in PARTITIONED[1:]:  # one partition of each model done: its progress is its own
            page = _load(f"{base}/assets/{asset}?view=partitions&partition=shard-00").text
            assert " | Materialized (1) | " in page and " | Missing (1) | " in page, asset
        assert server.wait_for_run(server.launch_run(DOWNSTREAM), timeout=600) == "SUCCESS", server.log_tail()

        # the comparison on model_comparison's page: the pair, its agreement and each model's accuracy
        page = _load(f"{base}/assets/model_comparison").text
        for name in ("agreement", "accuracy", "changed_images", "comparison_pairs"):
            assert f" | {name} | " in page, name
        assert " | lite0 | lite1 | " in page and " | lite_mean | " in page
        review = _load(f"{base}/assets/review_queue").text
        assert " | queued | " in review and " | review_queue_csv | " in review

"""The code location's jobs: the three runs ``make run`` launches, in order, and what each selects.

- ``refresh_manifest``: ``image_manifest`` and its checks;
- ``partitioned_inference``: ``preprocessed_images`` + ``prediction_files`` (and each model list's
  ``<name>/prediction_files``) for the chosen partitions (one, a range, or all of them as a backfill; the sensor and the schedule request the
  same selection per partition);
- ``load_results``: ``prediction_results``, ``evaluation``, ``model_comparison``, ``calibration``,
  ``review_queue``, ``report`` and their checks (what the
  ``refresh_results`` automation sensor requests by itself once new prediction files are in).

Assets are referenced by object, so a renamed asset cannot leave a selection behind.
"""

from dagster import AssetSelection, define_asset_job

from inference_assets.comparison.assets import calibration, model_comparison, review_queue
from inference_assets.images.assets import image_manifest, preprocessed_images
from inference_assets.inference.assets import MODEL_LIST_ASSETS, prediction_files
from inference_assets.report.assets import report
from inference_assets.warehouse.assets import evaluation, prediction_results

MANIFEST_ASSETS = (image_manifest,)
PARTITIONED_ASSETS = (preprocessed_images, prediction_files, *MODEL_LIST_ASSETS)  # the model list's too
# downstream of every partition
REFRESHED_ASSETS = (prediction_results, evaluation, model_comparison, calibration, review_queue, report)


def with_checks(*assets) -> AssetSelection:
    return AssetSelection.assets(*assets) | AssetSelection.checks_for_assets(*assets)


manifest_job = define_asset_job(
    "refresh_manifest",
    selection=with_checks(*MANIFEST_ASSETS),
    description="List the image source into the manifest (ids, content hashes, labels, partitions) and check it.",
)

partitioned_inference_job = define_asset_job(
    "partitioned_inference",
    selection=AssetSelection.assets(*PARTITIONED_ASSETS),
    description="Preprocessed pixels and predictions for the chosen image partitions (one, a range, or all of "
    "them as a backfill).",
)

results_job = define_asset_job(
    "load_results",
    selection=with_checks(*REFRESHED_ASSETS),
    description="Load every partition's prediction files into DuckDB, evaluate against the labels, write the "
    "HTML report, and run their checks.",
)

PIPELINE = (manifest_job, partitioned_inference_job, results_job)  # make run's order

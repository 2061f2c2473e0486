"""Declarative automation: the DuckDB tables, the evaluation and the report bring themselves up to date.

After partitions of ``prediction_files`` are materialized by anything (a run launched in the UI,
a backfill, the ``new_images`` sensor, the nightly schedule, the CLI), the automation sensor
``refresh_results`` (``sensors.py``; running by default; evaluated by the daemon of ``make dev``) requests
``prediction_results``, ``evaluation`` and ``report`` together in one run, once:

- only when no partition of their upstream assets is still queued or running (a backfill of
  16 partitions gives one refresh at its end, not 16), and the asset is not in progress itself;
- once per batch of new prediction files: "handled" (requested or materialized since) clears it,
  so an unchanged graph requests nothing, and a refresh whose blocking check fails is not retried
  until new predictions arrive;
- ``prediction_results`` follows ``prediction_files`` only: a manifest refresh alone (the sensor's
  first run for new images, before their predictions) does not refresh DuckDB with images that
  have no outcome yet. ``evaluation`` and ``report`` follow ``prediction_results`` in the same tick
  (an upstream that will be requested counts as updated), so the three land in one run;
- a run that materializes them itself (``make run``'s last step) does not trigger them again.

Materializations made before the sensor's first evaluation (with no daemon running) are not
seen: materialize the downstream assets by hand then (``make run`` does everything itself).
"""

from dagster import AssetSelection, AutomationCondition

from inference_assets.inference.assets import MODEL_LIST_ASSETS, prediction_files


def _once_upstream_settles(updated: AutomationCondition) -> AutomationCondition:
    return (
        updated.since_last_handled()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    )


# prediction_results: new prediction files (a manifest refresh alone is not enough)
AFTER_NEW_PREDICTIONS = _once_upstream_settles(
    AutomationCondition.any_deps_updated().allow(AssetSelection.assets(prediction_files, *MODEL_LIST_ASSETS))
).with_label("after new prediction files, once no upstream partition is in progress")

# evaluation, report: prediction_results (or evaluation) updated or requested in the same tick
AFTER_UPSTREAM = _once_upstream_settles(AutomationCondition.any_deps_updated()).with_label(
    "after its upstream, once nothing upstream is in progress"
)

"""``make run``: materialize every asset over every partition, then print a short summary.

Runs through Dagster itself (``materialize`` with the code location's own assets, checks and
resources), so runs land in ``$DAGSTER_HOME`` and show up in ``make dev``'s UI when it is set.

Steps: ``image_manifest``; ``preprocessed_images`` + ``prediction_files`` over the whole partition
range in one run (their backfill policy is single-run); ``prediction_results``, ``evaluation``,
``report`` and their checks.

Exit status: 0 when every step succeeded and every asset check passed; 1 when a check failed
(every check is blocking: the run stops there, the summary is still printed, and the last line,
on stderr, names each failed check with what it measured against its threshold); other failures
end with one line naming the step.

In a terminal (stderr a TTY) the long stages show a progress bar each and the console log shows
warnings and errors only (the whole log is in the run's event log); otherwise plain log lines.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

from dagster import AssetSelection, DagsterInstance, materialize

from inference_assets.core.errors import ConfigError
from inference_assets.core.reporting.summary import print_summary
from inference_assets.core.system.progress import progress_bars, progress_display
from inference_assets.core.warehouse.database import WarehouseLockedError, WarehouseWriteError

try:  # the code location reads its settings (settings.py: partitions, schedule...) when it loads
    from inference_assets.definitions import ASSET_CHECKS, ASSETS, default_resources
    from inference_assets.instance_guard import SlotWatch, free_dead_runs, identity_tags, open_instance, say
    from inference_assets.jobs import PIPELINE
    from inference_assets.partitions import IMAGE_SHARDS, range_tags
    from inference_assets.settings import Settings
except ConfigError as exc:
    raise SystemExit(f"configuration error: {exc}") from None


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM outside a run (a run's own are handled by Dagster and SlotWatch)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum, _frame) -> None:
    raise Interrupted(signum)


def _instance() -> DagsterInstance:
    return open_instance()  # $DAGSTER_HOME's, initialised once under a lock; else ephemeral


def _configuration_error(result) -> str | None:
    """The one-line message of a ConfigError (or a held lock, a failed commit) behind a failed step, if that is what failed."""
    known = (ConfigError, *ConfigError.__subclasses__(), WarehouseLockedError, WarehouseWriteError)
    names = {cls.__name__ for cls in known}
    for event in result.all_events:  # step failures and resource-initialization failures alike
        error = getattr(event.event_specific_data, "error", None)
        while error is not None:
            if error.cls_name in names:
                return error.message.split(": ", 1)[-1].strip()
            error = error.cause or error.context
    return None


def preflight(resources: dict) -> None:
    """Check the configuration before any work, with each resource's own checks (work_area, source,
    model, device, duckdb, in that order): each problem is one line naming it, its environment
    variable (each check names it) and the fix."""
    for resource in resources.values():
        check = getattr(resource, "check_configuration", None)
        if check is not None:
            check()


def pipeline_steps() -> list[tuple[str, AssetSelection, dict[str, str]]]:
    """The three runs, the selections of the code location's jobs (``jobs.PIPELINE``): manifest; pixels +
    predictions over the whole partition range; DuckDB refresh, evaluation and report."""
    keys = IMAGE_SHARDS.get_partition_keys()
    manifest, partitioned, results = PIPELINE
    return [
        ("image manifest", manifest.selection, {}),
        (f"preprocess + predict ({len(keys)} partitions, one run)", partitioned.selection,
         range_tags(keys[0], keys[-1])),
        ("DuckDB refresh + checks + evaluation + report", results.selection, {}),
    ]


def materialize_step(selection: AssetSelection, tags: dict, resources: dict, instance, log_level: str = "INFO"):
    """One run of the code location's assets and checks (failures are returned, not raised)."""
    return materialize(
        [*ASSETS, *ASSET_CHECKS],
        selection=selection,
        resources=resources,
        instance=instance,
        tags=tags,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        raise_on_error=False,
    )


def run_pipeline(log_level: str = "INFO") -> dict:
    """Materialize the whole graph; return the resources used and per-step seconds."""
    try:
        settings = Settings.from_environment()  # this process's environment, read when it starts
        resources = default_resources(settings)
        preflight(resources)
    except ConfigError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    timings = {}
    failed = []  # evaluations of failed checks; a failed blocking check ends the pipeline after its step
    not_built = []  # the assets that step and the later ones did not materialize
    own_tags = identity_tags()  # lets a later run see that this process is gone, if it is killed
    with _instance() as instance:
        steps = pipeline_steps()
        for number, (title, selection, tags) in enumerate(steps):
            print(f"==> {title}", flush=True)
            start = time.perf_counter()
            for line in free_dead_runs(instance):  # slots a killed run still holds would block this step
                say(line)
            with SlotWatch(instance, own_tags, settings.slot_wait_seconds) as watch:
                result = materialize_step(selection, {**tags, **own_tags}, resources, instance, log_level)
            timings[title] = time.perf_counter() - start
            if watch.outcome and watch.outcome[0] == "signal":
                print(watch.outcome[2], file=sys.stderr, flush=True)
                raise SystemExit(128 + watch.outcome[1])
            if watch.signal_received:
                print(f"interrupted ({signal.Signals(watch.signal_received).name}) in step '{title}'"
                      f" (run {result.run_id})", file=sys.stderr, flush=True)
                raise SystemExit(128 + watch.signal_received)
            if watch.outcome:
                raise SystemExit(f"step '{title}' failed (run {result.run_id}): {watch.outcome[1]}")
            checks = result.get_asset_check_evaluations()
            failed_checks = [c for c in checks if not c.passed]
            if not result.success and not (failed_checks and _only_checks_failed(result)):
                reason = _configuration_error(result) or "see the log above"
                raise SystemExit(f"step '{title}' failed (run {result.run_id}): {reason}")
            if checks:
                print(f"    checks: {len(checks) - len(failed_checks)}/{len(checks)} passed"
                      + (f"; FAILED: {', '.join(c.check_name for c in failed_checks)}" if failed_checks else ""),
                      flush=True)
            failed += failed_checks
            if not result.success:  # a blocking check failed: nothing downstream of its asset is built
                not_built = _not_materialized(result, selection) + [
                    key.to_user_string() for _, later, _ in steps[number + 1:] for key in sorted(later.resolve(ASSETS))
                ]
                print(f"    stopped (a blocking check failed); not materialized: {', '.join(not_built) or 'none'}",
                      flush=True)
                break
    return {"resources": resources, "timings": timings, "failed_checks": failed, "not_built": not_built}


def _only_checks_failed(result) -> bool:
    """Whether every failed step of the run failed because a blocking asset check failed."""
    failures = [event for event in result.all_events if event.is_step_failure]
    return all(getattr(event.event_specific_data.error, "cls_name", None) == "DagsterAssetCheckFailedError"
               for event in failures)


def _not_materialized(result, selection: AssetSelection) -> list[str]:
    """The step's assets that its run did not materialize (skipped after a failed blocking check)."""
    done = {event.asset_key for event in result.get_asset_materialization_events()}
    return sorted(key.to_user_string() for key in selection.resolve(ASSETS) if key not in done)


def failed_checks_line(failed: list) -> str:
    """One line naming each failed check with what it measured against its threshold."""
    return "checks failed: " + "; ".join(
        f"{c.check_name} on {c.asset_key.to_user_string()}: {c.description or 'see its metadata in the UI'}"
        for c in failed
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--progress", choices=("auto", "bar", "log"), default="auto",
        help="bar: a progress bar per long stage; log: plain log lines; auto (default): bar if stderr is a terminal",
    )
    parser.add_argument("--log-level", help="Dagster console log level (default INFO; WARNING with progress bars)")
    args = parser.parse_args(argv)
    bars = args.progress == "bar" or (args.progress == "auto" and sys.stderr.isatty())
    log_level = args.log_level or ("WARNING" if bars else "INFO")
    if bars and args.log_level is None:
        in_ui = "the Dagster UI (make dev) or " if os.environ.get("DAGSTER_HOME") else ""
        print(f"log: warnings and errors only here; the full log: {in_ui}--log-level INFO", flush=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt)  # one line, not a traceback
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        with (progress_bars() if bars else nullcontext()) as display, progress_display(display):
            outcome = run_pipeline(log_level)
    except Interrupted as interrupt:
        print(f"interrupted ({signal.Signals(interrupt.signum).name})", file=sys.stderr, flush=True)
        return 128 + interrupt.signum
    resources = outcome["resources"]
    if Path(resources["duckdb"].database).exists():  # not yet when the manifest's check failed on a first run
        print_summary(resources["duckdb"].database, outcome["timings"], resources["work_area"].layout.report_path,
                      outcome["not_built"])
    if outcome["failed_checks"]:  # last, so a CI log ends with it
        print(failed_checks_line(outcome["failed_checks"]), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

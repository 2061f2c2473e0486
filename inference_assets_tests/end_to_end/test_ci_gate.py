"""The CI gate: blocking asset checks, the configurable gates (failure rate, top-1, class share),
and the exit status of `make run`, `make ci` and `dagster asset materialize` on bad data; the
GitHub Actions workflow runs only commands that exist."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterEventType, DagsterInstance

from inference_assets.definitions import ASSET_CHECKS, defs

from inference_assets_tests.support.environment import PROJECT_ROOT, pipeline_env

BIN = Path(sys.executable).parent
VENV = BIN.parent
# `make` with the running interpreter's environment; `-o` keeps make from reinstalling it
MAKE = ["make", f"VENV={VENV}", "-o", str(VENV / ".installed")]
DAGSTER = [str(BIN / "dagster"), "asset", "materialize", "-m", "inference_assets.definitions"]
# the README's CLI recipe: the partition range from the first to the last partition
PARTITION_RANGE = (
    "from inference_assets.partitions import IMAGE_SHARDS as s; k = s.get_partition_keys(); print(f'{k[0]}...{k[-1]}')"
)
WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "inference.yml"
GATES = {"failure_rate_within_limit", "no_class_collapse", "top1_accuracy_at_least"}
MUST_HOLD = {"manifest_ids_unique_and_partitioned", "every_image_accounted_for", "probabilities_valid", "unique_image_ids"}


def _run(args, env, timeout=600) -> tuple[int, str, str]:
    done = subprocess.run(args, env=env, cwd=PROJECT_ROOT, capture_output=True, timeout=timeout)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def _ok(args, env) -> str:
    code, out, err = _run(args, env)
    assert code == 0, f"{args} failed:\n{out[-3000:]}\n{err[-3000:]}"
    return out + err


def _latest_run_ids(env) -> dict[str, str | None]:
    """The run that last materialized each warehouse asset, in the subprocesses' instance."""
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        latest = {}
        for name in ("prediction_results", "evaluation", "report"):
            event = instance.get_latest_materialization_event(AssetKey(name))
            latest[name] = event.run_id if event else None
    return latest


def _checks_of_last_run(env) -> dict[str, tuple[bool, str]]:
    """Each check of the instance's latest run: (passed, its one-line description)."""
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        [run] = instance.get_runs(limit=1)
        entries = instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    evaluations = [entry.dagster_event.event_specific_data for entry in entries]
    return {e.check_name: (e.passed, e.description) for e in evaluations}


@pytest.fixture
def env(image_root, tmp_path):
    return pipeline_env(image_root, tmp_path)


def test_every_check_is_blocking_and_the_gates_are_a_launchpad_resource():
    specs = {spec.name: spec for checks in ASSET_CHECKS for spec in checks.check_specs}
    assert set(specs) == MUST_HOLD | GATES
    assert all(spec.blocking for spec in specs.values()), [n for n, s in specs.items() if not s.blocking]
    assert specs["top1_accuracy_at_least"].asset_key == AssetKey("evaluation")
    # the thresholds are the config of the resource `quality_gate`, defaults off, in every job's run config
    job = defs.resolve_implicit_global_asset_job_def()
    fields = job.run_config_schema.config_type.fields["resources"].config_type.fields["quality_gate"]
    config = fields.config_type.fields["config"].config_type.fields
    assert {name: config[name].default_value for name in config} == {
        "max_failure_rate": 1.0, "min_top1_accuracy": 0.0, "max_class_share": 1.0
    }


@pytest.mark.parametrize(
    "name, value, says",
    [
        ("INFERENCE_MAX_FAILURE_RATE", "half", "INFERENCE_MAX_FAILURE_RATE='half' is not valid: set it to a number from 0 to 1 (default 1.0)"),
        ("INFERENCE_MIN_TOP1", "90", "INFERENCE_MIN_TOP1='90' is not valid: set it to a number from 0 to 1 (default 0.0)"),
        ("INFERENCE_MAX_CLASS_SHARE", "-0.5", "INFERENCE_MAX_CLASS_SHARE='-0.5' is not valid: set it to a number from 0 to 1 (default 1.0)"),
    ],
)
def test_a_bad_gate_setting_is_one_line(env, name, value, says):
    code, out, err = _run([sys.executable, "-m", "inference_assets.run"], {**env, name: value}, timeout=120)
    assert code != 0 and "Traceback" not in out + err
    assert err.strip().splitlines() == [f"configuration error: {says}"]


def test_make_ci_passes_on_the_sample_photos_and_fails_on_a_gate_naming_it(env, tmp_path):
    # default settings (make ci's own failure-rate limit of 0.5 included): everything passes, exit 0
    output = _ok([*MAKE, "ci"], env)
    assert "dagster definitions validate" in output and "checks: 6/6 passed" in output
    assert "images seen: 6   predicted: 6   failed: 0" in output and "checks failed" not in output
    report = tmp_path / "work" / "report" / "index.html"
    built = report.stat().st_mtime_ns
    before = _latest_run_ids(env)

    # `make run` with a top-1 minimum above the sample photos' 3 of 4: the summary, then one line, exit 1
    code, out, err = _run([sys.executable, "-m", "inference_assets.run"], {**env, "INFERENCE_MIN_TOP1": "0.9"})
    assert code == 1, out[-3000:] + err[-3000:]
    assert "images seen: 6   predicted: 6   failed: 0" in out and "checks: 5/6 passed; FAILED: top1_accuracy_at_least" in out
    assert "stopped (a blocking check failed); not materialized: report" in out
    assert "accuracy:    top-1" in out and "not refreshed in this run" in out
    assert err.strip().splitlines()[-1] == (
        "checks failed: top1_accuracy_at_least on evaluation: top-1 accuracy 0.750 < min 0.9 "
        "(on 4 labelled images; INFERENCE_MIN_TOP1)"
    )
    assert report.stat().st_mtime_ns == built  # the report downstream of the failed check was not rebuilt
    after = _latest_run_ids(env)
    assert after["evaluation"] != before["evaluation"] and after["report"] == before["report"]

    # `make ci` with a class-share limit below the largest class's share: non-zero, naming the check
    code, out, err = _run([*MAKE, "ci"], {**env, "INFERENCE_MAX_CLASS_SHARE": "0.1"})
    assert code != 0
    assert "checks failed: no_class_collapse on prediction_results: largest class share 0.167 > max 0.1" in err
    # everything downstream of prediction_results (sorted): its DuckDB tables stay as they were
    assert "not materialized: calibration, evaluation, model_comparison, report, review_queue" in out
    assert _latest_run_ids(env)["evaluation"] == after["evaluation"]


def test_dagster_cli_fails_on_a_failed_blocking_check_and_materializes_nothing_downstream(env, image_root, tmp_path):
    broken = image_root / "broken"
    broken.mkdir()
    for number in range(3):  # 3 of 9 images fail to decode: failure rate 0.333
        (broken / f"note_{number}.jpg").write_text("not a JPEG\n")
    # steps in the run's own process (the default executor starts a Python process per step and
    # check: minutes on a small machine); which steps run after a failed check is the same
    in_process = tmp_path / "in_process.yaml"
    in_process.write_text(yaml.safe_dump({"execution": {"config": {"in_process": {}}}}))
    partition_range = _ok([sys.executable, "-c", PARTITION_RANGE], env).strip()
    _ok([*DAGSTER, "--select", "image_manifest", "-c", str(in_process)], env)
    _ok([*DAGSTER, "--select", "preprocessed_images,prediction_files", "--partition-range", partition_range,
         "-c", str(in_process)], env)
    warehouse = [*DAGSTER, "--select", "prediction_results,evaluation,report", "-c", str(in_process)]

    # the gate set in a run config file, as in the Launchpad: the failure rate is above it
    gate = tmp_path / "gate.yaml"
    gate.write_text(yaml.safe_dump({"resources": {"quality_gate": {"config": {"max_failure_rate": 0.2}}}}))
    code, out, err = _run([*warehouse, "-c", str(gate)], env)
    assert code != 0, out[-3000:] + err[-3000:]
    assert "blocking asset check failed" in err and "prediction_results: failure_rate_within_limit" in err
    checks = _checks_of_last_run(env)
    assert checks["failure_rate_within_limit"] == (
        False, "failure rate 0.333 > max 0.2 (3 of 9 images failed; INFERENCE_MAX_FAILURE_RATE)"
    )
    latest = _latest_run_ids(env)
    assert latest["prediction_results"] and latest["evaluation"] is None and latest["report"] is None
    assert not (tmp_path / "work" / "report" / "index.html").exists()

    # default settings: the broken files are failure rows, every check passes, the whole graph is built
    _ok(warehouse, env)
    checks = _checks_of_last_run(env)
    assert set(checks) == MUST_HOLD - {"manifest_ids_unique_and_partitioned"} | GATES
    assert all(passed for passed, _ in checks.values()), checks
    assert (tmp_path / "work" / "report" / "index.html").exists()
    built = _latest_run_ids(env)

    # a must-hold check: a damaged result file is left out, so its images have no outcome
    damaged = max((tmp_path / "work" / "predictions").rglob("*.parquet"), key=lambda p: p.stat().st_size)
    damaged.write_bytes(b"not a Parquet file")
    code, out, err = _run(warehouse, env)
    assert code != 0 and "prediction_results: every_image_accounted_for" in err, out[-3000:] + err[-3000:]
    assert not _checks_of_last_run(env)["every_image_accounted_for"][0]
    latest = _latest_run_ids(env)
    assert latest["prediction_results"] != built["prediction_results"]
    assert (latest["evaluation"], latest["report"]) == (built["evaluation"], built["report"])


def test_the_workflow_runs_make_targets_that_exist(tmp_path):
    workflow = yaml.safe_load(WORKFLOW.read_text())
    [job] = workflow["jobs"].values()
    commands = [line.strip() for step in job["steps"] if "run" in step for line in step["run"].splitlines() if line.strip()]
    assert commands == ["make install", "make ci"]
    for command in commands:
        done = subprocess.run([*MAKE, "-n", command.split()[1]], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(tmp_path)})
        assert done.returncode == 0, done.stderr
    dry_run = subprocess.run([*MAKE, "-n", "ci"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout
    assert "dagster definitions validate" in dry_run and "-m inference_assets.run" in dry_run
    setup = next(step for step in job["steps"] if step.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["python-version"] == "3.11"

"""The real command line: `dagster asset materialize` over all partitions, and `make run`'s entry point."""

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from inference_assets.partitions import IMAGE_SHARDS

from inference_assets_tests.conftest import KNOWN_TOP1
from inference_assets_tests.support.environment import PROJECT_ROOT, pipeline_env

BIN = Path(sys.executable).parent


@pytest.fixture
def env(image_root, tmp_path):
    return pipeline_env(image_root, tmp_path, database=tmp_path / "out" / "warehouse.duckdb")


def _run(args, env, timeout=600):
    done = subprocess.run(args, env=env, cwd=PROJECT_ROOT, capture_output=True, timeout=timeout)
    stdout, stderr = done.stdout.decode(), done.stderr.decode()  # not text=True: that turns a "\r" into "\n"
    assert done.returncode == 0, f"{args} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return stdout + stderr


def _contents(database):
    with duckdb.connect(database, read_only=True) as conn:
        return (
            conn.execute("SELECT * EXCLUDE (predicted_at) FROM predictions ORDER BY image_id").fetchall(),
            conn.execute("SELECT * FROM failures ORDER BY image_id").fetchall(),
        )


def test_dagster_cli_materializes_every_partition_into_duckdb(env, tmp_path):
    (tmp_path / "out").mkdir()
    keys = IMAGE_SHARDS.get_partition_keys()
    dagster = [str(BIN / "dagster"), "asset", "materialize", "-m", "inference_assets.definitions"]
    log = _run([*dagster, "--select", "image_manifest"], env)
    log += _run([*dagster, "--select", "preprocessed_images,prediction_files", "--partition-range", f"{keys[0]}...{keys[-1]}"], env)
    log += _run([*dagster, "--select", "prediction_results"], env)
    for check in ("every_image_accounted_for", "probabilities_valid", "unique_image_ids"):
        assert f"Asset check '{check}' on 'prediction_results' passed" in log

    database = env["INFERENCE_DUCKDB_PATH"]
    with duckdb.connect(database, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 6
        assert conn.execute("SELECT count(*), count(DISTINCT image_id) FROM predictions").fetchone() == (6, 6)
        assert conn.execute("SELECT count(*) FROM failures").fetchone()[0] == 0
        labels = dict(conn.execute("SELECT regexp_replace(uri, '.*/images/', ''), class_label FROM predictions").fetchall())
        for relative, label in KNOWN_TOP1.items():
            assert labels[relative] == label
        model, weights, k = conn.execute("SELECT any_value(model), any_value(weights), max(len(topk_probs)) FROM predictions").fetchone()
        assert (model, k) == ("tf_efficientnet_lite0", 5) and weights.startswith("bundled:")

    # materializing everything again changes nothing and duplicates nothing
    before = _contents(database)
    _run([*dagster, "--select", "preprocessed_images,prediction_files", "--partition-range", f"{keys[0]}...{keys[-1]}"], env)
    _run([*dagster, "--select", "prediction_results"], env)
    assert _contents(database) == before


def test_make_run_entry_point_prints_a_summary(env, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "dagster_home").mkdir(exist_ok=True)
    output = _run([sys.executable, "-m", "inference_assets.run"], env)
    assert "images seen: 6   predicted: 6   failed: 0" in output
    assert "top labels:" in output and "espresso (1)" in output
    assert "checks: 6/6 passed" in output
    assert Path(env["INFERENCE_DUCKDB_PATH"]).exists()
    # not a terminal: plain log lines, INFO included, and no progress bar (no carriage return)
    assert "==> preprocess + predict" in output and " - INFO - " in output and "\r" not in output


def test_make_run_stops_early_with_one_line_naming_the_bad_weights(env, tmp_path):
    env = {**env, "INFERENCE_WEIGHTS": str(tmp_path / "missing.pth")}
    done = subprocess.run(
        [sys.executable, "-m", "inference_assets.run"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 1
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("configuration error: ")  # the preflight, before any step
    assert f"weights file '{tmp_path / 'missing.pth'}' for model 'tf_efficientnet_lite0' not found" in last_line
    assert not (tmp_path / "work" / "preprocessed").exists()  # failed before decoding anything


@pytest.mark.fast
def test_core_imports_no_dagster():
    code = (
        "import sys, pkgutil, importlib, inference_assets.core as core\n"
        "names = [m.name for m in pkgutil.walk_packages(core.__path__, 'inference_assets.core.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('dagster', 'dagster_duckdb')], 'core imported dagster'\n"
        "print(len(names))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT_ROOT, capture_output=True, text=True)
    core_dir = PROJECT_ROOT / "inference_assets" / "core"
    on_disk = [p for p in core_dir.rglob("*.py") if p != core_dir / "__init__.py"]  # modules and subfolders
    assert int(done.stdout.split()[-1]) == len(on_disk)  # every one was imported


def test_workspace_yaml_loads_the_code_location(env):
    output = _run([str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"], env)
    assert "Validation successful for code location inference_assets" in output

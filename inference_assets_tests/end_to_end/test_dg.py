"""Dagster's `dg` command line on this project (its settings: pyproject.toml's [tool.dg]), run as a
user runs it from the project root: `dg check defs`, `dg list defs`, `dg launch` and `dg dev`."""

import json
import subprocess

from dagster import AssetKey, DagsterInstance

from inference_assets.core.storage.layout import Layout
from inference_assets.definitions import ASSETS

from inference_assets_tests.support.dagster_ui import DG, dagster_dev
from inference_assets_tests.support.environment import PROJECT_ROOT, pipeline_env

ASSET_NAMES = sorted(spec.key.to_user_string() for asset in ASSETS for spec in asset.specs)
ASSET_NODES = "{ assetNodes { assetKey { path } kinds } }"
# each run's steps in dg's own process (the default starts a process per step: the same result, slower)
IN_PROCESS = json.dumps({"execution": {"config": {"in_process": {}}}})


def _dg(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([DG, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _env(image_root, tmp_path) -> dict[str, str]:
    env = pipeline_env(image_root, tmp_path)
    env["INFERENCE_PARTITIONS"] = "2"
    return env


def test_dg_check_defs_passes_and_names_a_bad_setting(image_root, tmp_path):
    env = _env(image_root, tmp_path)
    done = _dg(env, "check", "defs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All definitions loaded successfully" in done.stdout + done.stderr

    broken = _dg({**env, "INFERENCE_PARTITIONS": "abc"}, "check", "defs")
    assert broken.returncode != 0
    message = "INFERENCE_PARTITIONS='abc' is not valid: set it to a whole number of at least 1"
    assert message in broken.stderr + broken.stdout


def test_dg_list_defs_lists_the_assets_with_their_kinds(image_root, tmp_path):
    done = _dg(_env(image_root, tmp_path), "list", "defs", "--json")
    assert done.returncode == 0, done.stderr
    listed = {asset["asset_key"]: asset for asset in json.loads(done.stdout)["assets"]}
    assert sorted(listed) == ASSET_NAMES and len(ASSET_NAMES) == 9
    assert all(asset["kinds"] and asset["description"] for asset in listed.values())
    assert set(listed["prediction_files"]["kinds"]) == {"pytorch", "parquet"}


def test_dg_launch_materializes_the_manifest_then_one_partition(image_root, tmp_path):
    env = _env(image_root, tmp_path)
    done = _dg(env, "launch", "--assets", "image_manifest", "--config-json", IN_PROCESS)
    assert done.returncode == 0, done.stderr[-3000:]
    layout = Layout(tmp_path / "work")  # pipeline_env's INFERENCE_WORK_DIR
    assert layout.manifest_path.is_file()

    done = _dg(env, "launch", "--assets", "preprocessed_images", "--partition", "shard-01", "--config-json", IN_PROCESS)
    assert done.returncode == 0, done.stderr[-3000:]
    shards = sorted(p.name for p in (layout.work_dir / "preprocessed").rglob("shard-*.parquet"))
    assert shards == ["shard-01.parquet"]

    # both runs are in the Dagster instance of DAGSTER_HOME, with the partition
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert instance.get_latest_materialization_event(AssetKey("image_manifest")) is not None
        assert instance.get_materialized_partitions(AssetKey("preprocessed_images")) == {"shard-01"}


def test_dg_dev_serves_the_code_location(image_root, tmp_path):
    with dagster_dev(_env(image_root, tmp_path), tmp_path / "dg_dev.log", command=[DG, "dev"]) as server:
        server.wait_until_loaded()
        nodes = server.graphql(ASSET_NODES)["assetNodes"]
    assert sorted("/".join(node["assetKey"]["path"]) for node in nodes) == ASSET_NAMES
    assert all(node["kinds"] for node in nodes)

"""Switching the model, its class names or its preprocessing shows the partitions made before as
needing work in the UI, before any run.

Two partitions are made with the default settings through the code location's own assets (as
`make run` makes them). Then the code location is loaded again, with other settings, by a code
server, as `dagster dev` loads it, and each partition's status and causes are read from it with the
GraphQL query of the UI's partition view.
"""

import shutil
import subprocess
import sys

import pytest

from dagster import AssetKey, DagsterInstance
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

from inference_assets.core.models.loading import ModelSpec
from inference_assets.core.collection.partitioning import DEFAULT_NUM_PARTITIONS, partition_keys
from inference_assets.core.models.versions import asset_versions

from inference_assets_tests.support.environment import PROJECT_ROOT, SAMPLE_IMAGES, pipeline_env

KEYS = partition_keys(DEFAULT_NUM_PARTITIONS)
MADE = KEYS[:2]  # made with the default settings
ASKED = [*MADE, KEYS[2]]  # and one never made

MAKE = """
import sys
from dagster import AssetSelection, DagsterInstance
from inference_assets.definitions import default_resources
from inference_assets.partitions import range_tags
from inference_assets.run import materialize_step

with DagsterInstance.get() as instance:
    resources = default_resources()
    steps = [(AssetSelection.assets("image_manifest"), {}),
             (AssetSelection.assets("preprocessed_images", "prediction_files"), range_tags(*sys.argv[1:]))]
    for selection, tags in steps:
        assert materialize_step(selection, tags, resources, instance, "WARNING").success, selection
"""

# The query of the UI's partition detail view (ui-core AssetPartitionDetail's ASSET_PARTITION_STALE_QUERY,
# as dagster-webserver 1.13's bundle has it): the status and causes it shows for one partition.
PARTITION_STALE = """
query AssetPartitionStaleQuery($assetKey: AssetKeyInput!, $partitionKey: String!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      staleStatus(partition: $partitionKey)
      staleCauses(partition: $partitionKey) { key { path } reason category dependency { path } }
    }
  }
}
"""
ASSETS = ("preprocessed_images", "prediction_files")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The pipeline environment (default settings) of a work area where MADE were materialized."""
    work = tmp_path_factory.mktemp("stale")
    image_root = work / "images"
    shutil.copytree(SAMPLE_IMAGES, image_root)
    env = pipeline_env(image_root, work)
    subprocess.run([sys.executable, "-c", MAKE, MADE[0], MADE[-1]], env=env, cwd=PROJECT_ROOT, check=True,
                   timeout=300)
    return env


def _stale_in_the_ui(made: dict, monkeypatch, **settings) -> dict:
    """{asset: [(status, causes) per partition of ASKED]} as the UI gets them from a code server
    that loads the code location with ``made``'s environment and ``settings`` over it."""
    for name, value in {**made, **settings}.items():
        if name.startswith("INFERENCE_") or name == "DAGSTER_HOME":
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(PROJECT_ROOT)
    stale = {}
    with DagsterInstance.get() as instance, define_out_of_process_context(
        str(PROJECT_ROOT / "workspace.yaml"), None, instance
    ) as context:
        for asset in ASSETS:
            stale[asset] = []
            for partition in ASKED:
                result = execute_dagster_graphql(
                    context, PARTITION_STALE, {"assetKey": {"path": [asset]}, "partitionKey": partition}
                )
                assert not result.errors, result.errors
                node = result.data["assetNodeOrError"]
                stale[asset].append((node["staleStatus"], sorted(cause["reason"] for cause in node["staleCauses"])))
    return stale


FRESH = [("FRESH", []), ("FRESH", []), ("MISSING", [])]
NEW_CODE = [("STALE", ["has a new code version"])] * 2 + [("MISSING", [])]


def test_other_class_names_make_the_predictions_stale_and_the_pixels_not(made, monkeypatch, tmp_path):
    assert _stale_in_the_ui(made, monkeypatch) == {"preprocessed_images": FRESH, "prediction_files": FRESH}
    versions = asset_versions(ModelSpec())  # each materialization recorded the version it was made with
    with DagsterInstance.get() as instance:
        for asset, version in (("preprocessed_images", versions.pixels), ("prediction_files", versions.predictions)):
            event = instance.get_latest_materialization_event(AssetKey(asset))
            assert event.asset_materialization.tags["dagster/code_version"] == version
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"class {i}" for i in range(1000)))
    stale = _stale_in_the_ui(made, monkeypatch, INFERENCE_CLASS_NAMES=str(names))
    assert stale == {"preprocessed_images": FRESH, "prediction_files": NEW_CODE}


@pytest.mark.parametrize(
    "settings",
    [
        {"INFERENCE_MODEL": "resnet50", "INFERENCE_WEIGHTS": "IMAGENET1K_V2"},  # another model
        {"INFERENCE_MODEL_CARD": "crop.json"},  # the same model, its preprocessing overridden by a card
    ],
    ids=["model", "card"],
)
def test_another_model_or_preprocessing_makes_pixels_and_predictions_stale(made, monkeypatch, tmp_path, settings):
    if "INFERENCE_MODEL_CARD" in settings:
        (tmp_path / "crop.json").write_text('{"crop_pct": 1.0}')
        settings = {"INFERENCE_MODEL_CARD": str(tmp_path / "crop.json")}
    stale = _stale_in_the_ui(made, monkeypatch, **settings)
    assert stale == {"preprocessed_images": NEW_CODE, "prediction_files": NEW_CODE}

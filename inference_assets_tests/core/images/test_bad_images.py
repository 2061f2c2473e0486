"""Bad and awkward input: every image gets a correct prediction or exactly one failure row."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from dagster import AssetSelection, DagsterInstance, materialize
from dagster_duckdb import DuckDBResource

from inference_assets.core.collection.manifest import build_manifest, read_manifest
from inference_assets.core.images.pixel_store import read_pixel_shard, write_pixel_shard
from inference_assets.core.inference.batches import InferenceSettings, predict_shard
from inference_assets.core.storage.results import read_results
from inference_assets.definitions import ASSET_CHECKS, ASSETS
from inference_assets.partitions import IMAGE_SHARDS
from inference_assets.resources import DeviceResource, ModelListResource, ModelResource, PreprocessingResource
from inference_assets_tests.conftest import KNOWN_TOP1, source_resource, work_area_resource
from inference_assets_tests.support.corpus import make_corpus
from inference_assets_tests.support.environment import PROJECT_ROOT, SAMPLE_IMAGES

ALL = [*ASSETS, *ASSET_CHECKS]
KEYS = IMAGE_SHARDS.get_partition_keys()
RANGE = {"dagster/asset_partition_range_start": KEYS[0], "dagster/asset_partition_range_end": KEYS[-1]}


def _clean_run_probabilities(classifier, tmp_path) -> dict[str, tuple[list, list]]:
    """Top-5 of the sample photos alone, as a reference for 'unaffected'."""
    root = tmp_path / "clean"
    shutil.copytree(SAMPLE_IMAGES, root)
    build_manifest(root, tmp_path / "clean.parquet", 1)
    write_pixel_shard(read_manifest(tmp_path / "clean.parquet"), classifier.preprocessing, tmp_path / "cpx", "s", 2)
    out = tmp_path / "clean_results.parquet"
    predict_shard(classifier, read_pixel_shard(tmp_path / "cpx", "s"), InferenceSettings(torch.device("cpu")), out, "s")
    return {
        str(Path(r["uri"]).relative_to(root)): (r["topk_indices"], r["topk_probs"])
        for r in read_results(out).to_pylist()
    }


def test_every_awkward_file_gets_a_prediction_or_exactly_one_failure(image_root, tmp_path, classifier):
    expect = make_corpus(image_root)
    database = tmp_path / "warehouse.duckdb"
    resources = {
        "source": source_resource(image_root=str(image_root)),
        "work_area": work_area_resource(tmp_path / "work"),
        "model": ModelResource(batch_size=64),
        "models": ModelListResource(),
        "device": DeviceResource(device="cpu"),
        "preprocessing": PreprocessingResource(decode_workers=2, max_image_pixels=10_000_000),
        "duckdb": DuckDBResource(database=str(database)),
    }
    with DagsterInstance.ephemeral() as instance:
        assert materialize(ALL, selection=["image_manifest"], resources=resources, instance=instance).success
        (image_root / "awkward" / "deleted_after_listing.jpg").unlink()  # gone before preprocessing
        run = materialize(
            ALL, selection=["preprocessed_images", "prediction_files"], resources=resources, instance=instance, tags=RANGE
        )
        assert run.success  # the partitions succeed although some of their images are bad
        results = materialize(
            ALL,
            selection=AssetSelection.assets("prediction_results") | AssetSelection.checks_for_assets("prediction_results"),
            resources=resources,
            instance=instance,
        )
    assert all(check.passed for check in results.get_asset_check_evaluations())

    with duckdb.connect(str(database), read_only=True) as conn:
        predicted = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT i.relative_path, p.class_label, p.topk_indices, p.topk_probs FROM predictions p JOIN images i USING (image_id)"
            ).fetchall()
        }
        failed = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT i.relative_path, f.stage, f.error FROM failures f JOIN images i USING (image_id)"
            ).fetchall()
        }
        images = [r[0] for r in conn.execute("SELECT relative_path FROM images").fetchall()]
    assert sorted(images) == sorted(set(predicted) | set(failed)) and not set(predicted) & set(failed)
    for name, outcome in expect.items():
        if outcome[0] == "failed":
            assert name in failed, f"{name} should have failed"
            stage, error = failed[name]
            assert stage == outcome[1] and outcome[2] in error and "\n" not in error, (name, stage, error)
        else:
            assert name in predicted, f"{name} should have a prediction, got {failed.get(name)}"
            wanted = outcome[1]
            if wanted and wanted.startswith("same as "):
                assert predicted[name][0] == predicted[wanted.removeprefix("same as ")][0], name
            elif wanted:
                assert predicted[name][0] == wanted, name

    # the good photos in the same partitions and batches are unaffected
    clean = _clean_run_probabilities(classifier, tmp_path)
    for relative, label in KNOWN_TOP1.items():
        assert predicted[relative][0] == label
    for relative, (indices, probs) in clean.items():
        assert predicted[relative][1] == indices
        assert np.allclose(predicted[relative][2], probs, atol=1e-5)


UNREADABLE_SCRIPT = """
import sys
from pathlib import Path
from inference_assets.core.collection.manifest import build_manifest, read_manifest
from inference_assets.core.models.loading import ModelSpec, resolve_preprocessing
from inference_assets.core.images.pixel_store import read_pixel_shard, write_pixel_shard
work = Path(sys.argv[1])
build_manifest(work / "images", work / "m.parquet", 1)
write_pixel_shard(read_manifest(work / "m.parquet"), resolve_preprocessing(ModelSpec()), work / "px", "s", 2)
for row in read_pixel_shard(work / "px", "s").index.to_pylist():
    print(Path(row["uri"]).name, row["status"], row["stage"], row["error"], sep="|")
"""


def test_an_unreadable_file_becomes_one_failure_row(tmp_path):
    """Root reads any file, so as root the listing runs without the capabilities that allow it."""
    (tmp_path / "images").mkdir()
    shutil.copy(SAMPLE_IMAGES / "espresso" / "coffee.jpg", tmp_path / "images" / "readable.jpg")
    shutil.copy(SAMPLE_IMAGES / "espresso" / "coffee.jpg", tmp_path / "images" / "locked.jpg")
    os.chmod(tmp_path / "images" / "locked.jpg", 0)
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv (util-linux): cannot make a file unreadable")
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", "--bounding-set", caps, "--inh-caps", caps, "--"]
    done = subprocess.run(
        [*prefix, sys.executable, "-c", UNREADABLE_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = dict(line.split("|", 1) for line in done.stdout.strip().splitlines())
    assert rows["readable.jpg"].startswith("ok|")
    assert rows["locked.jpg"] == "failed|read|cannot read: Permission denied"


@pytest.mark.parametrize("follow", [False, True])
def test_symlinks_leaving_the_root_are_not_followed_by_default(tmp_path, follow):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    shutil.copy(SAMPLE_IMAGES / "espresso" / "coffee.jpg", outside / "coffee.jpg")
    os.symlink(outside / "coffee.jpg", root / "link.jpg")
    os.symlink(outside, root / "linked_folder")
    build_manifest(root, tmp_path / "m.parquet", 1, follow_external_symlinks=follow)
    rows = {r["relative_path"]: r["error"] for r in read_manifest(tmp_path / "m.parquet").to_pylist()}
    if follow:
        assert rows == {"link.jpg": None, "linked_folder/coffee.jpg": None}
    else:
        assert set(rows) == {"link.jpg"} and "outside the source root" in rows["link.jpg"]

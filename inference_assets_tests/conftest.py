"""Shared fixtures: real sample photos, a temporary work area, the bundled classifier."""

import os
import shutil
from pathlib import Path

import pytest
import torch
from dagster import DagsterInstance
from dagster_duckdb import DuckDBResource

from inference_assets.core.models.loading import ModelSpec, load_classifier
from inference_assets.resources import (
    DeviceResource,
    ImageSourceResource,
    ModelListResource, ModelResource,
    ObjectStoreResource,
    PreprocessingResource,
    WorkAreaResource,
)

from inference_assets_tests.support.environment import SAMPLE_IMAGES

# What the bundled EfficientNet-Lite0 predicts for the committed photos (see data/README.md).
KNOWN_TOP1 = {
    "espresso/coffee.jpg": "espresso",
    "tripod/camera.png": "tripod",
    "missile/rocket.jpg": "missile",
    "tabby/chelsea.png": "tiger cat",
}


# The longest test files, longest first (seconds of `make test` on 2026-12-02, two processes): run first, so
# that `make test`'s two pytest-xdist processes (each file in one) do not end with one of them left alone
# on a long file while the other has nothing to do. By file name: no two test files share one, whatever
# their folder.
LONGEST_FIRST = (
    "test_backfills.py",  # 728 s
    "test_documented_commands.py",  # 514 s
    "test_own_models.py",  # 507 s
    "test_dead_runs.py",  # 332 s
    "test_concurrency.py",  # 300 s
    "test_end_to_end.py",  # 279 s
    "test_crashes.py",  # 279 s
    "test_bench.py",  # 250 s
    "test_ci_gate.py",  # 225 s
    "test_hardening_sources.py",  # 164 s
)


def pytest_collection_modifyitems(items):
    rank = {name: number for number, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def converted_networks(tmp_path_factory) -> Path:
    """One cache of converted networks for the session (INFERENCE_CONVERTED_DIR): the default runtime,
    ``auto``, converts the bundled model once for every test and Dagster process instead of once per
    work folder. Tests about the conversion itself use a folder of their own."""
    return tmp_path_factory.mktemp("converted")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path, converted_networks):
    """Tests never read or write the project's data/ outputs or a user's Dagster instance."""
    for name in [name for name in os.environ if name.startswith("INFERENCE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("INFERENCE_CONVERTED_DIR", str(converted_networks))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()


def source_resource(**fields) -> ImageSourceResource:
    """The ``source`` resource with ``fields``; S3 settings from the AWS_* variables (``s3_env``)."""
    return ImageSourceResource(object_store=ObjectStoreResource(), **fields)


def work_area_resource(work_dir: Path | str, **fields) -> WorkAreaResource:
    """The ``work_area`` resource in ``work_dir``; S3 settings from the AWS_* variables (``s3_env``)."""
    return WorkAreaResource(work_dir=str(work_dir), object_store=ObjectStoreResource(), **fields)


def cpu_resources(source: ImageSourceResource, work_area: WorkAreaResource, database: Path) -> dict:
    """The resources of a pipeline run in the tests: ``source`` and ``work_area`` as given, the
    bundled model at batch 4, CPU with two decoding threads, the default runtime (converted
    networks cached as INFERENCE_CONVERTED_DIR says), and the DuckDB file ``database``."""
    return {
        "source": source,
        "work_area": work_area,
        "model": ModelResource(batch_size=4),
        "models": ModelListResource(),
        "device": DeviceResource(device="cpu", converted_dir=os.environ.get("INFERENCE_CONVERTED_DIR", "")),
        "preprocessing": PreprocessingResource(decode_workers=2),
        "duckdb": DuckDBResource(database=str(database)),
    }


def run_all_steps(resources: dict, after_manifest=None) -> list:
    """The three runs of `make run` through Dagster on an ephemeral instance, each asserted to
    succeed; ``after_manifest()`` is called between the manifest run and the rest."""
    from inference_assets.run import materialize_step, pipeline_steps

    results = []
    with DagsterInstance.ephemeral() as instance:
        for number, (title, selection, tags) in enumerate(pipeline_steps()):
            result = materialize_step(selection, tags, resources, instance, "WARNING")
            assert result.success, title
            results.append(result)
            if number == 0 and after_manifest is not None:
                after_manifest()
    return results


@pytest.fixture
def resources(image_root, tmp_path):
    """The pipeline's resources over a private copy of the sample photos."""
    return cpu_resources(
        source_resource(image_root=str(image_root)), work_area_resource(tmp_path / "work"),
        tmp_path / "warehouse.duckdb",
    )


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def image_root(tmp_path) -> Path:
    """A private copy of the committed sample photos."""
    root = tmp_path / "images"
    shutil.copytree(SAMPLE_IMAGES, root)
    return root


@pytest.fixture(scope="session")
def classifier():
    """The bundled default classifier on CPU, loaded once per test session."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return load_classifier(ModelSpec(), "cpu")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (moto) on 127.0.0.1 for the whole session."""
    from inference_assets_tests.support.servers import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The usual AWS_* variables pointing at the test server."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL server on 127.0.0.1 for the whole session (skipped if not installed)."""
    from inference_assets_tests.support.servers import PostgresServer

    workdir = tmp_path_factory.mktemp("postgres")
    server = PostgresServer(workdir)
    yield server
    server.stop()

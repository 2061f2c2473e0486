"""Image sources on real servers: a bucket on an S3-compatible server (moto, over HTTP on
127.0.0.1), Parquet/CSV/SQL tables of image locations, and image BLOBs in SQLite and PostgreSQL.
Each runs the real pipeline through Dagster; every bad row ends as a failure row, not a crash."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from dagster import AssetSelection, DagsterInstance

from inference_assets.core.collection.manifest import build_manifest, read_manifest
from inference_assets.core.errors import ConfigError
from inference_assets.core.sources import SourceConfig, open_source
from inference_assets.core.storage.filesystems import S3Options
from inference_assets.resources import ImageSourceResource, WorkAreaResource
from inference_assets.run import materialize_step, pipeline_steps
from inference_assets_tests.conftest import (
    KNOWN_TOP1,
    cpu_resources,
    run_all_steps,
    source_resource,
    work_area_resource,
)
from inference_assets_tests.support.environment import SAMPLE_IMAGES

SAMPLES = sorted(p.relative_to(SAMPLE_IMAGES).as_posix() for p in SAMPLE_IMAGES.rglob("*") if p.is_file() and p.suffix != ".md")
GARBAGE = b"\xff\xd8\xff\xe0 this is not really a JPEG" * 10


def _run_pipeline(source: ImageSourceResource, tmp_path: Path, after_listing=None) -> tuple[list[tuple], list[tuple]]:
    """All three runs of `make run` through Dagster; returns (predictions, failures) from DuckDB.
    ``after_listing()`` is called between the manifest run and the rest."""
    database = tmp_path / "warehouse.duckdb"
    run_all_steps(cpu_resources(source, work_area_resource(tmp_path / "work"), database), after_manifest=after_listing)
    with duckdb.connect(str(database), read_only=True) as conn:
        predictions = conn.execute(
            "SELECT i.relative_path, p.class_label, i.label FROM predictions p JOIN images i USING (image_id) ORDER BY 1"
        ).fetchall()
        failures = conn.execute(
            "SELECT i.relative_path, f.stage, f.error FROM failures f JOIN images i USING (image_id) ORDER BY 1"
        ).fetchall()
    return predictions, failures


def _assert_known_predictions(predictions, key=lambda relative: relative):
    by_key = {row[0]: row[1] for row in predictions}
    for relative, label in KNOWN_TOP1.items():
        assert by_key[key(relative)] == label, relative


def _upload(s3, bucket: str, objects: dict[str, bytes]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()))


# --- object storage -------------------------------------------------------------------------


def test_bucket_listing_reads_every_page(s3_server, tmp_path):
    s3 = s3_server.client()
    s3.create_bucket(Bucket="many")
    objects = {f"photos/cls{i % 3}/img{i:04d}.jpg": f"image {i}".encode() for i in range(1003)}
    objects.update({"photos/notes.txt": b"not an image", "photos/.hidden/x.jpg": b"hidden", "other/y.jpg": b"elsewhere"})
    _upload(s3, "many", objects)
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket="many", Prefix="photos/"))
    assert len(pages) >= 2, "the listing must span more than one page of the server"

    # credentials and endpoint from the resource config here (not the environment)
    options = S3Options(endpoint_url=s3_server.endpoint, access_key_id="testing", secret_access_key="testing")
    source = open_source(SourceConfig(image_root="s3://many/photos", s3=options))
    summary = build_manifest(source, tmp_path / "m.parquet", num_partitions=4)
    rows = read_manifest(tmp_path / "m.parquet").to_pylist()
    assert summary.images == len(rows) == 1003
    assert [r["relative_path"] for r in rows] == sorted(k[len("photos/"):] for k in objects if k.startswith("photos/cls"))
    first = rows[0]
    assert first["uri"] == "s3://many/photos/cls0/img0000.jpg" and first["label"] == "cls0"
    assert first["size_bytes"] == len(b"image 0") and first["error"] is None and first["modified_at"] is not None
    # unchanged objects keep their hash on the next listing (no second read)
    again = build_manifest(source, tmp_path / "m.parquet", num_partitions=4)
    assert again.hash_reused == 1003 and again.hashed == 0


def test_a_bucket_prefix_through_the_whole_pipeline(s3_env, tmp_path):
    s3 = s3_env.client()
    s3.create_bucket(Bucket="photos")
    objects = {f"collection/{relative}": (SAMPLE_IMAGES / relative).read_bytes() for relative in SAMPLES}
    objects["collection/broken/garbage.jpg"] = GARBAGE
    _upload(s3, "photos", objects)

    # credentials and endpoint from the usual AWS_* environment variables
    source = source_resource(image_root="s3://photos/collection")
    # an object deleted after it was listed: a read failure for that image only
    deleted = lambda: s3.delete_object(Bucket="photos", Key="collection/missile/rocket.jpg")  # noqa: E731
    predictions, failures = _run_pipeline(source, tmp_path, after_listing=deleted)
    by_key = {row[0]: row[1] for row in predictions}
    assert {k: by_key[k] for k in KNOWN_TOP1 if k != "missile/rocket.jpg"} == {
        k: v for k, v in KNOWN_TOP1.items() if k != "missile/rocket.jpg"
    }
    assert len(predictions) == len(SAMPLES) - 1
    assert [(r[0], r[1]) for r in failures] == [("broken/garbage.jpg", "decode"), ("missile/rocket.jpg", "read")]
    assert "FileNotFoundError" in failures[1][2] and "does not exist" in failures[1][2]


S3_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_PROFILE")


def test_the_object_store_set_once_at_launch_reaches_the_source_and_the_shared_work_area(
    s3_server, tmp_path, monkeypatch
):
    """No AWS_* variables: the endpoint and credentials are given once, in the run config of the
    code location's ``object_store`` resource (the secret as an env reference), and both the bucket
    source and the work area's shared mirror in another bucket use them."""
    for name in S3_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3 = s3_server.client()
    s3.create_bucket(Bucket="launch-photos")
    s3.create_bucket(Bucket="launch-work")
    _upload(s3, "launch-photos", {f"p/{relative}": (SAMPLE_IMAGES / relative).read_bytes() for relative in SAMPLES})
    monkeypatch.setenv("INFERENCE_IMAGE_ROOT", "s3://launch-photos/p")
    monkeypatch.setenv("INFERENCE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("INFERENCE_SHARED_DIR", "s3://launch-work/run")
    monkeypatch.setenv("INFERENCE_DUCKDB_PATH", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("TEST_S3_SECRET", "testing")
    from dagster import materialize

    from inference_assets.definitions import ASSET_CHECKS, ASSETS, default_resources

    store = {"endpoint_url": s3_server.endpoint, "region": "us-east-1", "access_key_id": "testing",
             "secret_access_key": {"env": "TEST_S3_SECRET"}}
    with DagsterInstance.ephemeral() as instance:
        result = materialize([*ASSETS, *ASSET_CHECKS], selection=["image_manifest"], resources=default_resources(),
                             instance=instance, run_config={"resources": {"object_store": {"config": store}}})
    assert result.success
    metadata = result.asset_materializations_for_node("image_manifest")[0].metadata
    assert metadata["images"].value == len(SAMPLES) and metadata["source_kind"].value == "bucket"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="launch-work", Prefix="run/")["Contents"]]
    assert "run/manifest/image_manifest.parquet" in keys


@pytest.mark.fast
def test_outside_a_run_the_object_store_gives_the_values_it_was_given(tmp_path, monkeypatch):
    """``make run``'s preflight and scripts use the resources without a run: the launch-time
    ``object_store`` of ``default_resources`` (or a configured one) gives its values, an EnvVar read then."""
    from dagster import EnvVar

    from inference_assets.resources import ObjectStoreResource

    monkeypatch.setenv("TEST_S3_SECRET", "s3cr3t")
    given = {"endpoint_url": "http://minio.local:9000", "secret_access_key": EnvVar("TEST_S3_SECRET")}
    expected = S3Options(endpoint_url="http://minio.local:9000", secret_access_key="s3cr3t")
    for store in (ObjectStoreResource.configure_at_launch(**given), ObjectStoreResource(**given)):
        assert ImageSourceResource(image_root="s3://b/p", object_store=store).source_config.s3 == expected
        assert WorkAreaResource(work_dir=str(tmp_path), object_store=store).filesystems.s3 == expected
    assert ImageSourceResource(object_store=ObjectStoreResource.configure_at_launch()).source_config.s3 == S3Options()


# --- tables of image locations --------------------------------------------------------------


def _location_rows(s3_server) -> list[dict]:
    s3 = s3_server.client()
    s3.create_bucket(Bucket="tables")
    s3.put_object(Bucket="tables", Key="rocket.jpg", Body=(SAMPLE_IMAGES / "missile/rocket.jpg").read_bytes())
    return [
        {"id": "coffee", "uri": str(SAMPLE_IMAGES / "espresso/coffee.jpg"), "label": "espresso"},
        {"id": "rocket", "uri": "s3://tables/rocket.jpg", "label": "missile"},
        {"id": "camera", "uri": f"file://{SAMPLE_IMAGES / 'tripod/camera.png'}", "label": "tripod"},
        {"id": "gone", "uri": "s3://tables/deleted.jpg", "label": None},
        {"id": "nobucket", "uri": "s3://no-such-bucket-here/x.jpg", "label": None},
        {"id": "nouri", "uri": None, "label": None},
        {"id": "badscheme", "uri": "nosuchscheme://host/x.jpg", "label": None},
    ]


EXPECTED_TABLE_FAILURES = {"gone": "missing", "nobucket": "", "nouri": "no uri", "badscheme": "cannot reach"}


def test_a_parquet_table_of_locations_through_the_whole_pipeline(s3_env, tmp_path):
    rows = _location_rows(s3_env)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "images.parquet")
    predictions, failures = _run_pipeline(source_resource(image_table=str(tmp_path / "images.parquet")), tmp_path)
    assert [(key, label) for key, _, label in predictions] == [("camera", "tripod"), ("coffee", "espresso"), ("rocket", "missile")]
    assert {key: cls for key, cls, _ in predictions} == {"camera": "tripod", "coffee": "espresso", "rocket": "missile"}
    assert {key for key, _, _ in failures} == set(EXPECTED_TABLE_FAILURES)
    for key, stage, error in failures:
        assert stage == "read" and EXPECTED_TABLE_FAILURES[key] in error, (key, error)


def test_a_csv_table_of_locations(s3_env, tmp_path):
    rows = [r for r in _location_rows(s3_env) if r["uri"] is not None]
    pacsv.write_csv(pa.Table.from_pylist(rows), tmp_path / "images.csv")
    source = open_source(SourceConfig(image_table=str(tmp_path / "images.csv")))
    build_manifest(source, tmp_path / "m.parquet", num_partitions=2)
    manifest = {r["relative_path"]: r for r in read_manifest(tmp_path / "m.parquet").to_pylist()}
    assert set(manifest) == {"coffee", "rocket", "camera", "gone", "nobucket", "badscheme"}
    assert manifest["rocket"]["content_hash"].startswith("sha256:") and manifest["rocket"]["label"] == "missile"
    assert "missing" in manifest["gone"]["error"] and manifest["coffee"]["error"] is None


@pytest.mark.fast
def test_a_table_without_a_uri_column_is_a_one_line_error(tmp_path):
    pq.write_table(pa.table({"path": ["a.jpg"]}), tmp_path / "t.parquet")
    with pytest.raises(ConfigError, match=r"has no 'uri' column \(columns: path\): return the image location"):
        list(open_source(SourceConfig(image_table=str(tmp_path / "t.parquet"))).entries())


# --- images stored in a database ------------------------------------------------------------


def _fill_blob_table(engine: sa.Engine, id_type: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE photos (pid {id_type} PRIMARY KEY, data {'BYTEA' if engine.dialect.name == 'postgresql' else 'BLOB'}, tag TEXT)"))
        for number, relative in enumerate(SAMPLES, start=1):
            pid = number if id_type == "INTEGER" else relative
            conn.execute(
                sa.text("INSERT INTO photos VALUES (:pid, :data, :tag)"),
                {"pid": pid, "data": (SAMPLE_IMAGES / relative).read_bytes(), "tag": relative.rpartition("/")[0] or None},
            )
        bad = [("null-bytes", None), ("garbage", GARBAGE), ("empty", b"")]
        for number, (name, data) in enumerate(bad, start=100):
            conn.execute(sa.text("INSERT INTO photos VALUES (:pid, :data, :tag)"),
                         {"pid": number if id_type == "INTEGER" else name, "data": data, "tag": name})


BLOB_QUERY = "SELECT pid AS id, data AS image, tag AS label FROM photos"


def _check_blob_results(predictions, failures, key_of):
    _assert_known_predictions(predictions, key_of)
    assert len(predictions) == len(SAMPLES)
    by_label = {label: (stage, error) for key, stage, error in failures for label in [key]}
    assert len(failures) == 3
    reasons = sorted((stage, error) for stage, error in by_label.values())
    assert [r[0] for r in reasons] == ["decode", "read", "read"]
    assert any("NULL" in e for _, e in reasons) and any("empty" in e for _, e in reasons)


def test_sqlite_blobs_through_the_whole_pipeline(tmp_path):
    url = f"sqlite:///{tmp_path / 'images.db'}"
    _fill_blob_table(sa.create_engine(url), "INTEGER")
    predictions, failures = _run_pipeline(source_resource(database_url=url, image_query=BLOB_QUERY), tmp_path)
    numbers = {relative: str(n) for n, relative in enumerate(SAMPLES, start=1)}
    _check_blob_results(predictions, failures, lambda relative: numbers[relative])
    labels = {key: label for key, _, label in predictions}
    assert labels[numbers["espresso/coffee.jpg"]] == "espresso"


def test_postgresql_blobs_through_the_whole_pipeline(postgres_server, tmp_path):
    engine = sa.create_engine(postgres_server.url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS photos"))
    _fill_blob_table(engine, "TEXT")
    source = source_resource(database_url=postgres_server.url, image_query=BLOB_QUERY)
    predictions, failures = _run_pipeline(source, tmp_path)
    _check_blob_results(predictions, failures, lambda relative: relative)


@pytest.mark.fast
def test_a_sql_query_of_locations(tmp_path):
    url = f"sqlite:///{tmp_path / 'locations.db'}"
    with sa.create_engine(url).begin() as conn:
        conn.execute(sa.text("CREATE TABLE files (path TEXT, cls TEXT)"))
        conn.execute(sa.text("INSERT INTO files VALUES (:p, 'espresso'), (:q, NULL)"),
                     {"p": str(SAMPLE_IMAGES / "espresso/coffee.jpg"), "q": str(tmp_path / "missing.jpg")})
    source = open_source(SourceConfig(database_url=url, image_query="SELECT path AS uri, cls AS label FROM files"))
    build_manifest(source, tmp_path / "m.parquet", num_partitions=2)
    rows = {Path(r["uri"]).name: r for r in read_manifest(tmp_path / "m.parquet").to_pylist()}
    assert rows["coffee.jpg"]["label"] == "espresso" and rows["coffee.jpg"]["error"] is None
    assert "missing" in rows["missing.jpg"]["error"]


@pytest.mark.fast
def test_a_bad_query_or_url_is_a_one_line_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    # the core names the settings; the source resource (the Dagster layer) names their variables too
    with pytest.raises(ConfigError, match=r"^the image query failed on sqlite:///.*no such table: photos "
                                          r"\(check database_url and image_query\)$"):
        open_source(SourceConfig(database_url=url, image_query=BLOB_QUERY))
    with pytest.raises(ConfigError, match=r"no such table: photos \(check INFERENCE_DATABASE_URL \(source.database_url\) "
                                          r"and INFERENCE_IMAGE_QUERY \(source.image_query\)\)$"):
        source_resource(database_url=url, image_query=BLOB_QUERY).open_source()
    with pytest.raises(ConfigError, match=r"returns columns x: return either id and image"):
        open_source(SourceConfig(database_url=url, image_query="SELECT 1 AS x"))
    with pytest.raises(ConfigError, match=r"^cannot use database URL .*\(set database_url to a SQLAlchemy URL"):
        open_source(SourceConfig(database_url="nosuchdialect://x", image_query="SELECT 1"))


# --- per-partition files on shared storage -------------------------------------------------


def test_steps_on_different_machines_cooperate_through_a_bucket(s3_env, image_root, tmp_path):
    """Three 'machines' (three local work folders) share s3://work/run: one lists and decodes,
    one predicts, one refreshes DuckDB; none of them sees another's local folder."""
    s3_env.client().create_bucket(Bucket="work")

    def machine(name):
        work_area = work_area_resource(tmp_path / name, shared_dir="s3://work/run")
        return cpu_resources(source_resource(image_root=str(image_root)), work_area, tmp_path / "warehouse.duckdb")

    steps = pipeline_steps()
    manifest_step, partition_step, refresh_step = steps
    cpu_node, gpu_node, db_node = machine("cpu-node"), machine("gpu-node"), machine("db-node")
    with DagsterInstance.ephemeral() as instance:
        assert materialize_step(manifest_step[1], manifest_step[2], cpu_node, instance, "WARNING").success
        assert materialize_step(AssetSelection.assets("preprocessed_images"), partition_step[2], cpu_node, instance, "WARNING").success
        assert not (tmp_path / "gpu-node").exists()
        assert materialize_step(AssetSelection.assets("prediction_files"), partition_step[2], gpu_node, instance, "WARNING").success
        assert materialize_step(refresh_step[1], refresh_step[2], db_node, instance, "WARNING").success
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as conn:
        rows = dict(conn.execute("SELECT i.relative_path, p.class_label FROM predictions p JOIN images i USING (image_id)").fetchall())
    assert len(rows) == len(SAMPLES) and all(rows[k] == v for k, v in KNOWN_TOP1.items())
    assert not list((tmp_path / "db-node").rglob("*.npy"))  # the refresh machine fetched only what it reads
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket="work", Prefix="run/")["Contents"]]
    assert "run/manifest/image_manifest.parquet" in keys
    result_files = [k for k in keys if k.startswith("run/predictions/") and k.endswith(".parquet")]
    index_files = [k for k in keys if k.startswith("run/preprocessed/") and k.endswith(".parquet")]
    pixel_files = [k for k in keys if k.startswith("run/preprocessed/") and k.endswith(".npy")]
    assert len(result_files) == len(index_files) == len(pixel_files) == 16


@pytest.mark.fast
def test_a_database_url_from_the_environment_passes_make_runs_preflight(monkeypatch, tmp_path):
    """default_resources gives the URL as an EnvVar (kept out of the UI); the preflight, outside a run,
    reads its value instead of taking the variable's name for a URL."""
    from inference_assets.definitions import default_resources
    from inference_assets.run import preflight
    from inference_assets.settings import Settings

    url = f"sqlite:///{tmp_path / 'images.db'}"
    _fill_blob_table(sa.create_engine(url), "INTEGER")
    monkeypatch.setenv("INFERENCE_DATABASE_URL", url)
    monkeypatch.setenv("INFERENCE_IMAGE_QUERY", BLOB_QUERY)
    monkeypatch.setenv("INFERENCE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("INFERENCE_DUCKDB_PATH", str(tmp_path / "w.duckdb"))
    resources = default_resources(Settings.from_environment())
    assert "sqlite" not in repr(resources["source"].database_url)  # the variable, not its value
    preflight(resources)
    assert len(list(resources["source"].open_source().entries())) == len(SAMPLES) + 3

"""The DuckDB tables: one refresh from the manifest and the result files, in one transaction."""

import subprocess
import sys

import duckdb
import pytest
import torch

from inference_assets.core.collection.manifest import build_manifest, read_manifest
from inference_assets.core.collection.partitioning import partition_keys
from inference_assets.core.images.pixel_store import read_pixel_shard, write_pixel_shard
from inference_assets.core.inference.batches import InferenceSettings, predict_shard
from inference_assets.core.storage.layout import Layout
from inference_assets.core.warehouse.database import refresh_warehouse, top_labels

from inference_assets_tests.support.environment import PROJECT_ROOT, pipeline_env

KEYS = partition_keys(2)


@pytest.fixture
def layout(image_root, tmp_path, classifier):
    (image_root / "tabby" / "bad.png").write_text("a text file named .png")
    layout = Layout(tmp_path / "work")
    build_manifest(image_root, layout.manifest_path, num_partitions=2)
    pixel_dir = layout.pixel_dir(classifier.preprocessing.fingerprint)
    for key in KEYS:
        write_pixel_shard(read_manifest(layout.manifest_path, key), classifier.preprocessing, pixel_dir, key, 2)
        shard = read_pixel_shard(pixel_dir, key)
        predict_shard(classifier, shard, InferenceSettings(torch.device("cpu")), layout.result_file("m", key), key)
    return layout


def _contents(conn):
    return (
        conn.execute("SELECT * FROM predictions ORDER BY image_id").fetchall(),
        conn.execute("SELECT * FROM failures ORDER BY image_id").fetchall(),
        conn.execute("SELECT * FROM images ORDER BY image_id").fetchall(),
    )


@pytest.mark.fast
def test_refresh_loads_predictions_and_failures_and_is_idempotent(layout, tmp_path):
    conn = duckdb.connect(str(tmp_path / "wh.duckdb"))
    files = layout.result_files("m", KEYS)
    first = refresh_warehouse(conn, layout.manifest_path, files)
    assert (first.images, first.predictions, first.failures) == (7, 6, 1)
    before = _contents(conn)
    second = refresh_warehouse(conn, layout.manifest_path, files)
    assert (second.predictions, second.failures) == (6, 1)
    assert _contents(conn) == before
    failure = conn.execute("SELECT uri, stage, error FROM failures").fetchone()
    assert failure[0].endswith("bad.png") and failure[1] == "decode" and "UnidentifiedImageError" in failure[2]
    label, truth = conn.execute("SELECT class_label, label FROM predictions WHERE uri LIKE '%coffee.jpg'").fetchone()
    assert (label, truth) == ("espresso", "espresso")
    assert ("espresso", 1) in top_labels(conn)
    assert conn.execute("SELECT DISTINCT runtime FROM predictions").fetchall() == [("pytorch (timm)",)]


@pytest.mark.fast
def test_result_files_from_before_the_runtime_column_are_reused_and_loaded(layout, classifier, tmp_path):
    """An earlier version's result files (no ``runtime`` column) stay valid: read with it null,
    their predictions reused by the next run and loaded into DuckDB alongside new ones."""
    import pyarrow.parquet as pq

    from inference_assets.core.storage.results import read_results

    old, new = layout.result_files("m", KEYS)
    table = pq.read_table(old)
    pq.write_table(table.drop_columns(["runtime"]).replace_schema_metadata(table.schema.metadata), old)
    assert read_results(old).column("runtime").null_count == table.num_rows

    conn = duckdb.connect(str(tmp_path / "wh.duckdb"))
    refresh_warehouse(conn, layout.manifest_path, [old])  # no file has the column
    assert {r for (r,) in conn.execute("SELECT DISTINCT runtime FROM predictions").fetchall()} == {None}
    summary = refresh_warehouse(conn, layout.manifest_path, [old, new])  # one has it, one does not
    assert summary.predictions == 6
    runtimes = dict(conn.execute("SELECT partition, any_value(runtime) FROM predictions GROUP BY 1").fetchall())
    assert runtimes[KEYS[0]] is None and runtimes[KEYS[1]] == "pytorch (timm)"

    shard = read_pixel_shard(layout.pixel_dir(classifier.preprocessing.fingerprint), KEYS[0])
    rerun = predict_shard(classifier, shard, InferenceSettings(torch.device("cpu")), old, KEYS[0])
    predicted_before = table.column("status").to_pylist().count("predicted")
    assert (rerun.predicted, rerun.reused) == (0, predicted_before)  # nothing is predicted again


@pytest.mark.fast
def test_results_for_changed_or_deleted_images_drop_out(layout, image_root, tmp_path):
    conn = duckdb.connect(str(tmp_path / "wh.duckdb"))
    (image_root / "missile" / "rocket.jpg").unlink()
    coffee = image_root / "espresso" / "coffee.jpg"
    coffee.write_bytes(coffee.read_bytes() + b"changed")
    build_manifest(image_root, layout.manifest_path, num_partitions=2)
    summary = refresh_warehouse(conn, layout.manifest_path, layout.result_files("m", KEYS))
    assert summary.images == 6 and summary.predictions == 4
    uris = [r[0] for r in conn.execute("SELECT uri FROM predictions").fetchall()]
    assert not any(u.endswith(("rocket.jpg", "coffee.jpg")) for u in uris)


@pytest.mark.fast
def test_refresh_with_no_result_files_gives_empty_typed_tables(layout, tmp_path):
    conn = duckdb.connect(str(tmp_path / "wh.duckdb"))
    summary = refresh_warehouse(conn, layout.manifest_path, [])
    assert (summary.images, summary.predictions, summary.failures) == (7, 0, 0)
    columns = [r[0] for r in conn.execute("DESCRIBE predictions").fetchall()]
    assert {"image_id", "uri", "class_index", "class_label", "confidence", "topk_probs", "model", "partition"} <= set(
        columns
    )
    assert [r[0] for r in conn.execute("DESCRIBE failures").fetchall()][:4] == ["image_id", "uri", "partition", "stage"]


@pytest.mark.fast
def test_a_failed_refresh_leaves_the_previous_tables(layout, tmp_path):
    conn = duckdb.connect(str(tmp_path / "wh.duckdb"))
    files = layout.result_files("m", KEYS)
    refresh_warehouse(conn, layout.manifest_path, files)
    before = _contents(conn)
    with pytest.raises(duckdb.Error):
        refresh_warehouse(conn, layout.manifest_path, [*files, tmp_path / "missing.parquet"])
    assert _contents(conn) == before


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MB filesystem (tmpfs), for a disk that fills up; needs the right to mount (root)."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_failed_commit_says_why_and_keeps_the_previous_tables(small_disk, image_root, tmp_path):
    """Disk full at COMMIT: `make run` ends with the real cause, not "cannot rollback"; the tables stay."""
    database = small_disk / "warehouse.duckdb"
    env = {**pipeline_env(image_root, tmp_path, database), "INFERENCE_PARTITIONS": "2"}
    first = subprocess.run([sys.executable, "-m", "inference_assets.run"], env=env, cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    with duckdb.connect(str(database), read_only=True) as conn:
        before = conn.execute("SELECT image_id, class_label FROM predictions ORDER BY 1").fetchall()
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as out:  # take every free byte
        try:
            while True:
                out.write(b"\0" * 4096)
                out.flush()
        except OSError:
            pass
    second = subprocess.run([sys.executable, "-m", "inference_assets.run"], env=env, cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode != 0
    last = second.stderr.strip().splitlines()[-1]
    assert "the DuckDB refresh could not be committed" in last and "No space left on device" in last, last
    assert "cannot rollback" not in second.stderr + second.stdout
    filler.unlink()
    with duckdb.connect(str(database), read_only=True) as conn:
        assert conn.execute("SELECT image_id, class_label FROM predictions ORDER BY 1").fetchall() == before

"""Hardening of the sources and intermediates: no image vanishes under a folder that cannot be
listed, a same-size same-mtime rewrite is seen, damaged manifest and result files are rebuilt.

Root reads every folder, so as root the runs that must be denied a listing run under
``setpriv`` without the capabilities that bypass permissions (CAP_DAC_OVERRIDE /
CAP_DAC_READ_SEARCH): the kernel then really refuses ``chmod 000`` folders, as for any user.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance

from inference_assets.core.collection.manifest import build_manifest, read_manifest
from inference_assets.core.errors import ConfigError
from inference_assets.core.storage.hashing import file_sha256
from inference_assets.core.storage.results import read_reusable
from inference_assets_tests.conftest import KNOWN_TOP1, cpu_resources, source_resource, work_area_resource
from inference_assets_tests.support.environment import PROJECT_ROOT, SAMPLE_IMAGES

CAPS = "-dac_override,-dac_read_search"


def _unprivileged(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``args`` run where permissions apply (as root: without the capabilities that bypass them)."""
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv (util-linux): cannot make a folder unlistable")
        prefix = ["setpriv", "--bounding-set", CAPS, "--inh-caps", CAPS, "--"]
    return subprocess.run(
        [*prefix, *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=300,
        **kwargs,
    )


def _steps(resources: dict, failing_check: str | None = None) -> tuple[list, list[str]]:
    """The three runs of `make run` (each must succeed, unless the blocking check ``failing_check``
    failed it) and the warnings they logged."""
    from inference_assets.run import materialize_step, pipeline_steps

    results, warnings = [], []
    with DagsterInstance.ephemeral() as instance:
        for title, selection, tags in pipeline_steps():
            result = materialize_step(selection, tags, resources, instance, "WARNING")
            assert result.success or failing_check in {c.check_name for c in result.get_asset_check_evaluations()
                                                       if not c.passed}, title
            results.append(result)
            warnings += [
                entry.user_message
                for entry in instance.all_logs(result.run_id)
                if entry.level >= 30 and not entry.is_dagster_event
            ]
    return results, warnings


def _metadata(result, asset: str) -> dict:
    event = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset][0]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def _check(result, name: str):
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def _tables(database: Path) -> tuple[dict, dict, list]:
    with duckdb.connect(str(database), read_only=True) as conn:
        predicted = dict(
            conn.execute(
                "SELECT i.relative_path, p.class_label FROM predictions p JOIN images i USING (image_id)"
            ).fetchall()
        )
        failed = {
            r[0]: (r[1], r[2])
            for r in conn.execute(
                "SELECT i.relative_path, f.stage, f.error FROM failures f JOIN images i USING (image_id)"
            ).fetchall()
        }
        images = sorted(r[0] for r in conn.execute("SELECT relative_path FROM images").fetchall())
    return predicted, failed, images


# --- 1. every image accounted for, also under folders that cannot be listed ------------------

UNLISTED_RUN = """
import json, sys
from pathlib import Path
from dagster import DagsterInstance
from dagster_duckdb import DuckDBResource
from inference_assets.resources import (
    DeviceResource, ImageSourceResource, ModelListResource, ModelResource, ObjectStoreResource, PreprocessingResource, WorkAreaResource,
)
from inference_assets.run import materialize_step, pipeline_steps
root, work = Path(sys.argv[1]), Path(sys.argv[2])
resources = {
    "source": ImageSourceResource(image_root=str(root), object_store=ObjectStoreResource()),
    "work_area": WorkAreaResource(work_dir=str(work / "work"), object_store=ObjectStoreResource()),
    "model": ModelResource(batch_size=4),
    "models": ModelListResource(),
    "device": DeviceResource(device="cpu"),
    "preprocessing": PreprocessingResource(decode_workers=2),
    "duckdb": DuckDBResource(database=str(work / "warehouse.duckdb")),
}
out = {}
with DagsterInstance.ephemeral() as instance:
    for title, selection, tags in pipeline_steps():
        result = materialize_step(selection, tags, resources, instance, "WARNING")
        out.setdefault("success", []).append(result.success)
        for event in result.get_asset_materialization_events():
            if event.asset_key.to_user_string() == "image_manifest":
                out["manifest"] = {k: getattr(v, "value", None) for k, v in event.materialization.metadata.items()
                                   if isinstance(getattr(v, "value", None), (int, str))}
        for check in result.get_asset_check_evaluations():
            out[check.check_name] = [check.passed, {k: getattr(v, "value", None) for k, v in check.metadata.items()}]
        out.setdefault("warnings", []).extend(
            e.user_message for e in instance.all_logs(result.run_id) if e.level >= 30 and not e.is_dagster_event)
print("RESULT " + json.dumps(out))
"""


def test_images_under_an_unlistable_folder_stay_as_list_failures(image_root, tmp_path):
    """A folder that was listed before and one never seen, both chmod 000: a real Dagster run in a
    process the kernel refuses the listing; nothing vanishes, both show in `failures` at stage list."""
    resources = cpu_resources(
        source_resource(image_root=str(image_root)), work_area_resource(tmp_path / "work"),
        tmp_path / "warehouse.duckdb",
    )
    _steps(resources)  # every image known and predicted
    (image_root / "fresh").mkdir()
    shutil.copy(SAMPLE_IMAGES / "astronaut.jpg", image_root / "fresh" / "new.jpg")
    os.chmod(image_root / "espresso", 0)
    os.chmod(image_root / "fresh", 0)
    try:
        done = _unprivileged([sys.executable, "-c", UNLISTED_RUN, str(image_root), str(tmp_path)])
    finally:
        os.chmod(image_root / "espresso", 0o755)
        os.chmod(image_root / "fresh", 0o755)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert out["success"] == [True, True, True], done.stderr[-3000:]

    predicted, failed, images = _tables(tmp_path / "warehouse.duckdb")
    assert failed == {
        "espresso/coffee.jpg": ("list", "cannot list folder: Permission denied"),
        "fresh/": ("list", "cannot list folder: Permission denied"),
    }
    assert sorted([*predicted, *failed]) == images and len(images) == 7
    for relative, label in KNOWN_TOP1.items():
        if relative != "espresso/coffee.jpg":
            assert predicted[relative] == label

    manifest = out["manifest"]
    assert manifest["unlistable_folders"] == 2
    assert manifest["images_under_unlistable_folders"] == 1  # espresso/coffee.jpg, known from the first run
    assert manifest["images"] == 7 and manifest["unreadable"] == 2 and manifest["vanished_images"] == 0
    assert any("2 folder(s) could not be listed" in w for w in out["warnings"])
    passed, metadata = out["every_image_accounted_for"]
    assert passed and metadata["failures_at_list"] == 2 and metadata["vanished_images"] == 0
    assert out["manifest_ids_unique_and_partitioned"][0]  # the folder's own row is an ordinary manifest row


def test_an_image_that_vanishes_without_its_folder_being_listed_fails_the_check(image_root, tmp_path):
    """A folder replaced by a link leaving the root (not followed) hides its images: not a
    deletion, so the manifest counts them as vanished and the accounting check fails."""
    resources = cpu_resources(
        source_resource(image_root=str(image_root)), work_area_resource(tmp_path / "work"),
        tmp_path / "warehouse.duckdb",
    )
    _steps(resources)
    shutil.move(image_root / "tabby", tmp_path / "elsewhere")
    (image_root / "tabby").symlink_to(tmp_path / "elsewhere")
    (image_root / "missile" / "rocket.jpg").unlink()  # a real deletion: explained
    results, warnings = _steps(resources, failing_check="every_image_accounted_for")
    check = _check(results[2], "every_image_accounted_for")
    assert not check.passed and check.metadata["vanished_images"].value == 1
    assert _metadata(results[0], "image_manifest")["vanished_images"] == 1
    assert any("tabby/chelsea.png" in w for w in warnings)
    from inference_assets.core.collection.manifest import vanished_images

    assert vanished_images(Path(resources["work_area"].layout.manifest_path)) == 1


LISTING_ERRORS = """
import sys
from pathlib import Path
from inference_assets.core.errors import ConfigError
from inference_assets.core.collection.manifest import build_manifest
from inference_assets.core.sources.object_store import ObjectStoreSource
root, out = Path(sys.argv[1]), Path(sys.argv[2])
sources = {"root": lambda: root / "locked", "bucket": lambda: ObjectStoreSource(f"file://{root}/tree", [".jpg"])}
for what, source in sources.items():
    try:
        build_manifest(source(), out, 4)
        print(what, "|no error")
    except ConfigError as exc:
        print(what, "|" + str(exc))
"""


def test_an_unlistable_root_or_bucket_prefix_is_a_one_line_error_naming_the_os_reason(tmp_path):
    (tmp_path / "locked").mkdir()
    shutil.copy(SAMPLE_IMAGES / "astronaut.jpg", tmp_path / "locked" / "a.jpg")
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    shutil.copy(SAMPLE_IMAGES / "astronaut.jpg", tmp_path / "tree" / "a.jpg")
    shutil.copy(SAMPLE_IMAGES / "astronaut.jpg", tmp_path / "tree" / "sub" / "b.jpg")
    os.chmod(tmp_path / "locked", 0)
    os.chmod(tmp_path / "tree" / "sub", 0)
    try:
        done = _unprivileged([sys.executable, "-c", LISTING_ERRORS, str(tmp_path), str(tmp_path / "m.parquet")])
    finally:
        os.chmod(tmp_path / "locked", 0o755)
        os.chmod(tmp_path / "tree" / "sub", 0o755)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" |", 1) for line in done.stdout.strip().splitlines())
    assert "Permission denied" in lines["root"] and str(tmp_path / "locked") in lines["root"]
    assert "no images found" not in lines["root"] and "set image_root to a readable folder" in lines["root"]
    # a bucket-like listing never returns a partial listing: it stops with one line
    assert lines["bucket"].startswith("cannot list") and "Permission denied" in lines["bucket"]
    assert not (tmp_path / "m.parquet").exists()


# --- 2. content changes are seen even with the same size and mtime ----------------------------

def _rewrite_same_size_same_mtime(target: Path, donor: Path) -> None:
    """Put ``donor``'s picture in ``target`` in place (JPEG: trailing zeros are ignored), same
    size, then set the old mtime back."""
    before = target.stat()
    data = donor.read_bytes()
    assert len(data) <= before.st_size
    with open(target, "r+b") as fh:  # in place: same inode, new ctime
        fh.write(data + bytes(before.st_size - len(data)))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_a_same_size_same_mtime_rewrite_is_predicted_again(image_root, tmp_path, monkeypatch):
    resources = cpu_resources(
        source_resource(image_root=str(image_root)), work_area_resource(tmp_path / "work"),
        tmp_path / "warehouse.duckdb",
    )
    _steps(resources)
    rocket = image_root / "missile" / "rocket.jpg"
    _rewrite_same_size_same_mtime(rocket, SAMPLE_IMAGES / "espresso" / "coffee.jpg")
    results, _ = _steps(resources)
    manifest = _metadata(results[0], "image_manifest")
    assert manifest["files_hashed"] == 1 and manifest["hashes_reused"] == 5
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as conn:
        content_hash, label = conn.execute(
            "SELECT p.content_hash, p.class_label FROM predictions p JOIN images i USING (image_id) "
            "WHERE i.relative_path = 'missile/rocket.jpg'"
        ).fetchone()
    assert content_hash == "sha256:" + file_sha256(rocket)
    assert label == KNOWN_TOP1["espresso/coffee.jpg"]  # the new picture's class, not the old one's

    # the setting that trusts nothing: every file is read and hashed again
    rehash = cpu_resources(
        source_resource(image_root=str(image_root), always_rehash=True), work_area_resource(tmp_path / "work"),
        tmp_path / "warehouse.duckdb",
    )
    from inference_assets.run import materialize_step, pipeline_steps

    with DagsterInstance.ephemeral() as instance:
        title, selection, tags = pipeline_steps()[0]
        result = materialize_step(selection, tags, rehash, instance, "WARNING")
    manifest = _metadata(result, "image_manifest")
    assert manifest["files_hashed"] == manifest["images"] == 6 and manifest["hashes_reused"] == 0

    from inference_assets.definitions import default_resources

    monkeypatch.setenv("INFERENCE_ALWAYS_REHASH", "1")
    assert default_resources()["source"].always_rehash is True
    monkeypatch.delenv("INFERENCE_ALWAYS_REHASH")
    assert default_resources()["source"].always_rehash is False


def test_a_replace_by_rename_with_same_size_and_mtime_is_hashed_again(image_root, tmp_path):
    out = tmp_path / "m.parquet"
    build_manifest(image_root, out, 4)
    rocket = image_root / "missile" / "rocket.jpg"
    before = rocket.stat()
    replacement = image_root / "missile" / ".new"
    data = (SAMPLE_IMAGES / "espresso" / "coffee.jpg").read_bytes()
    replacement.write_bytes(data + bytes(before.st_size - len(data)))
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(replacement, rocket)  # a new inode under the old name
    assert (rocket.stat().st_size, rocket.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    summary = build_manifest(image_root, out, 4)
    assert summary.hashed == 1 and summary.hash_reused == 5
    row = [r for r in read_manifest(out).to_pylist() if r["relative_path"] == "missile/rocket.jpg"][0]
    assert row["content_hash"] == "sha256:" + file_sha256(rocket)


def test_a_manifest_without_versions_is_read_and_hashes_once_more(image_root, tmp_path):
    out = tmp_path / "m.parquet"
    build_manifest(image_root, out, 4)
    old = pq.read_table(out).drop_columns(["version"])  # as written before versions were recorded
    pq.write_table(old, out)
    summary = build_manifest(image_root, out, 4)
    assert summary.hashed == 6 and not summary.warnings
    assert build_manifest(image_root, out, 4).hash_reused == 6


# --- 3. damaged manifest and result files are rebuilt ----------------------------------------

def _flip_middle(path: Path, at_end: bool = False) -> None:
    """Damage 4 bytes of values inside the largest column chunk's pages, same size: in the middle of
    its dictionary page (a short header, then the values), or at the chunk's end (the last page's
    values, past the page header and its statistics).

    Not the middle of the whole chunk: with few rows and long strings (a uri column under a deep
    temporary folder) that lands in a data page header's min/max statistics, which lie outside the
    page checksum and which no reader here uses, so the values read back intact."""
    meta = pq.ParquetFile(path).metadata
    column = max(
        (meta.row_group(0).column(i) for i in range(meta.num_columns)), key=lambda c: c.total_compressed_size
    )
    if at_end or not column.dictionary_page_offset:
        start, length = column.data_page_offset, column.total_compressed_size
        length -= column.data_page_offset - (column.dictionary_page_offset or column.data_page_offset)
    else:
        start, length = column.dictionary_page_offset, column.data_page_offset - column.dictionary_page_offset
    middle = start + (length - 6 if at_end else length // 2)
    data = bytearray(path.read_bytes())
    size = len(data)
    for i in range(middle, middle + 4):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_flip_middle, _truncate], ids=["flipped", "truncated"])
def test_a_damaged_manifest_is_a_one_line_error_for_readers_and_rebuilt_by_the_next_build(
    image_root, tmp_path, damage
):
    out = tmp_path / "m.parquet"
    build_manifest(image_root, out, 4)
    intact = pq.read_table(out)
    damage(out)
    if damage is _flip_middle:  # the hazard: read without verification, damaged values pass as data
        assert not pq.read_table(out).equals(intact)
    with pytest.raises(ConfigError) as err:
        read_manifest(out)
    message = str(err.value)
    assert str(out) in message and "materialize the image_manifest asset again" in message and "\n" not in message
    summary = build_manifest(image_root, out, 4)
    assert summary.hashed == 6 and summary.hash_reused == 0
    assert len(summary.warnings) == 1 and str(out) in summary.warnings[0] and "\n" not in summary.warnings[0]
    assert read_manifest(out).num_rows == 6


def test_a_flipped_byte_in_a_result_file_is_not_reused(image_root, tmp_path, caplog):
    """Without page checksums the damaged values would read back as if they were fine."""
    resources = cpu_resources(
        source_resource(image_root=str(image_root)), work_area_resource(tmp_path / "work"),
        tmp_path / "warehouse.duckdb",
    )
    _steps(resources)
    [result_file] = sorted(
        (p for p in Path(tmp_path / "work" / "predictions").rglob("*.parquet") if pq.read_metadata(p).num_rows > 0),
        key=lambda p: -p.stat().st_size,
    )[:1]
    schema = pq.read_schema(result_file).metadata[b"settings"].decode()
    settings = dict(part.split("=", 1) for part in schema.split(";"))
    precision, top_k, pixels = settings["precision"], settings["top_k"], settings["pixels"]
    _flip_middle(result_file)
    assert read_reusable(result_file, precision, int(top_k), pixels) is None
    assert str(result_file) in caplog.text and "damaged" in caplog.text


@pytest.mark.parametrize("damage", [_flip_middle, _truncate], ids=["flipped", "truncated"])
def test_a_rerun_rebuilds_a_damaged_manifest_and_result_file_and_warns_naming_them(image_root, tmp_path, damage):
    resources = cpu_resources(
        source_resource(image_root=str(image_root)), work_area_resource(tmp_path / "work"),
        tmp_path / "warehouse.duckdb",
    )
    _steps(resources)
    manifest_path = resources["work_area"].layout.manifest_path
    result_files = sorted(
        (p for p in Path(tmp_path / "work" / "predictions").rglob("*.parquet") if pq.read_metadata(p).num_rows > 0),
        key=lambda p: -p.stat().st_size,
    )
    damaged_result = result_files[0]
    damage(manifest_path)
    damage(damaged_result)
    results, warnings = _steps(resources)
    assert any(str(manifest_path) in w and "damaged" in w for w in warnings), warnings
    assert any(str(damaged_result) in w and "damaged" in w for w in warnings), warnings
    manifest = _metadata(results[0], "image_manifest")
    assert manifest["files_hashed"] == 6 and manifest["hashes_reused"] == 0
    assert _metadata(results[1], "prediction_files")["predicted"] >= 1
    assert all(check.passed for check in results[2].get_asset_check_evaluations())
    predicted, failed, images = _tables(tmp_path / "warehouse.duckdb")
    assert not failed and len(images) == 6 and sorted(predicted) == images
    for relative, label in KNOWN_TOP1.items():
        assert predicted[relative] == label
    read_manifest(manifest_path)  # verified: whole again


# --- the sensor and the schedule: same checks on what is pending ----------------------------

def test_pending_work_sees_a_same_size_same_mtime_rewrite_and_survives_damaged_files(image_root, tmp_path):
    """The sensor's and the schedule's view (core.collection.pending) over real files: a rewrite that keeps
    size and mtime changes the listing's digest; a damaged manifest means "a manifest run is
    needed", a damaged result file "this partition is pending", never a traceback."""
    from inference_assets.core.collection.partitioning import image_id_for, partition_for
    from inference_assets.core.collection.pending import (
        changed_partitions,
        manifest_digests,
        partitions_missing_results,
        scan_listing,
    )
    from inference_assets.core.sources.config import IMAGE_EXTENSIONS
    from inference_assets.core.sources.folder import FolderSource

    manifest = tmp_path / "m.parquet"
    build_manifest(image_root, manifest, 4)
    source = FolderSource(image_root, IMAGE_EXTENSIONS)
    assert changed_partitions(scan_listing(source.entries(), 4).digests, manifest_digests(manifest, 4)) == []

    rocket = image_root / "missile" / "rocket.jpg"
    _rewrite_same_size_same_mtime(rocket, SAMPLE_IMAGES / "espresso" / "coffee.jpg")
    changed = changed_partitions(scan_listing(source.entries(), 4).digests, manifest_digests(manifest, 4))
    assert changed == [partition_for(image_id_for("missile/rocket.jpg"), 4)]

    # result files for every partition, then one damaged
    rows = read_manifest(manifest).select(["image_id", "content_hash", "partition"]).to_pylist()
    results = {}
    for partition in sorted({r["partition"] for r in rows}):
        results[partition] = tmp_path / f"{partition}.parquet"
        mine = [r for r in rows if r["partition"] == partition]
        table = pa.table({"image_id": [r["image_id"] for r in mine], "content_hash": [r["content_hash"] for r in mine]})
        pq.write_table(table, results[partition], write_page_checksum=True)
    assert partitions_missing_results(manifest, results.get) == []
    damaged = sorted(results)[0]
    _flip_middle(results[damaged], at_end=True)
    assert [m.partition for m in partitions_missing_results(manifest, results.get)] == [damaged]

    _truncate(manifest)
    assert manifest_digests(manifest, 4) == {}  # differs from the listing: a manifest run is asked for
    assert partitions_missing_results(manifest, results.get) == []


def test_the_warehouse_refresh_leaves_out_a_damaged_result_file_with_a_warning(image_root, tmp_path):
    """Refreshing DuckDB alone (e.g. from the UI) over a result file damaged since it was written:
    not loaded, named in a warning; the accounting check then fails for its images."""
    from inference_assets.run import materialize_step, pipeline_steps

    resources = cpu_resources(
        source_resource(image_root=str(image_root)), work_area_resource(tmp_path / "work"),
        tmp_path / "warehouse.duckdb",
    )
    _steps(resources)
    damaged = max(Path(tmp_path / "work" / "predictions").rglob("*.parquet"), key=lambda p: p.stat().st_size)
    images_in_it = pq.read_metadata(damaged).num_rows
    _flip_middle(damaged, at_end=True)
    with DagsterInstance.ephemeral() as instance:
        title, selection, tags = pipeline_steps()[2]
        result = materialize_step(selection, tags, resources, instance, "WARNING")
        warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level >= 30 and not e.is_dagster_event]
    assert not result.success  # the accounting check below is blocking: evaluation and report are not built
    assert any(str(damaged) in w and "damaged" in w for w in warnings), warnings
    predicted, failed, images = _tables(tmp_path / "warehouse.duckdb")
    assert len(images) == 6 and len(predicted) == 6 - images_in_it and not failed
    check = _check(result, "every_image_accounted_for")
    assert not check.passed and check.metadata["images_without_exactly_one_outcome"].value == images_in_it

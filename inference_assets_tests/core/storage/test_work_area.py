"""The work area hands out files with the shared mirror built in: what one machine writes, another
machine's work area fetches before it reads or updates it; without a mirror nothing is copied."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inference_assets.core.storage.layout import Layout
from inference_assets.core.storage.shared_storage import SharedStorage
from inference_assets.core.storage.work_area import WorkArea

pytestmark = pytest.mark.fast


def _area(root, mirror):
    return WorkArea(Layout(root), SharedStorage(str(mirror) if mirror else None, root))


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image_id": rows}), path)


def test_files_written_on_one_machine_are_read_on_another(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    first, second = _area(tmp_path / "a", mirror), _area(tmp_path / "b", mirror)
    with first.updating_manifest() as path:
        _write(path, ["x", "y"])
    with first.updating_results("m", "shard-00") as path:
        _write(path, ["x"])
    with first.updating_report() as path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("<html></html>")

    assert pq.read_table(second.manifest()).column("image_id").to_pylist() == ["x", "y"]
    (results,) = second.result_files("m", ["shard-00", "shard-01"])  # shard-01 exists nowhere
    assert results == tmp_path / "b" / "predictions" / "m" / "shard-00.parquet"
    assert pq.read_table(results).num_rows == 1
    assert (mirror / "report" / "index.html").read_text() == "<html></html>"


def test_a_failed_write_is_not_published(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    area = _area(tmp_path / "a", mirror)
    with pytest.raises(RuntimeError), area.updating_results("m", "shard-00") as path:
        _write(path, ["x"])
        raise RuntimeError("the step failed")
    assert not (mirror / "predictions").exists()


def test_without_a_mirror_the_local_files_are_used_as_they_are(tmp_path):
    area = _area(tmp_path / "a", None)
    with area.updating_results("m", "shard-00") as path:
        _write(path, ["x"])
    assert area.result_files("m", ["shard-00"]) == [path]
    assert area.manifest() == tmp_path / "a" / "manifest" / "image_manifest.parquet"

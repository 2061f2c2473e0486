"""Result files keep every class's probability (issue 17); files of the previous version are not reused."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inference_assets.core.storage.results import (
    RESULT_SCHEMA,
    ResultFileWriter,
    read_class_names,
    read_results,
    read_reusable,
    settings_key,
    stored_probabilities,
)

pytestmark = pytest.mark.fast

CLASSES = ["cat", "dog", "fox", "owl", "yak"]


def _writer(path, top_k=2):
    return ResultFileWriter(path, partition="p0", model="m", weights="w", device="cpu", precision="fp32",
                            top_k=top_k, pixels="px", identity="id", class_names=CLASSES)


def _predict(writer, images, probs, with_probabilities=True):
    indices = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    writer.write_predictions(images, [f"/{i}.jpg" for i in images], [f"h{i}" for i in images], indices,
                             np.take_along_axis(probs, indices, axis=1), CLASSES,
                             probabilities=probs if with_probabilities else None)


def test_probabilities_round_trip_as_float32_lists(tmp_path):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=5)  # float64 in: stored as float32
    path = tmp_path / "p0.parquet"
    with _writer(path) as writer:
        _predict(writer, ["a", "b", "c"], probs[:3])
        writer.write_failures(["x"], ["/x.jpg"], ["hx"], ["decode"], ["broken"])
        _predict(writer, ["d", "e"], probs[3:].astype(np.float32))
    table = read_results(path)
    assert table.schema.field("probabilities").type == pa.list_(pa.float32())
    rows = {row["image_id"]: row for row in table.to_pylist()}
    assert table.column("image_id").to_pylist() == ["a", "b", "c", "x", "d", "e"]
    for image, expected in zip("abcde", probs):
        stored = rows[image]["probabilities"]
        assert len(stored) == len(CLASSES)
        assert np.array_equal(np.array(stored, dtype=np.float32), expected.astype(np.float32))
        assert rows[image]["confidence"] == stored[rows[image]["class_index"]]
    assert rows["x"]["status"] == "failed" and rows["x"]["probabilities"] is None
    assert read_class_names(path) == CLASSES
    # as an (N, classes) float32 array: all the predicted rows, or some; a failure row has none
    column = table.column("probabilities")
    matrix = stored_probabilities(column, [0, 1, 2, 4, 5])
    assert matrix.dtype == np.float32 and np.array_equal(matrix, probs.astype(np.float32))
    assert np.array_equal(stored_probabilities(column, [5, 0]), probs[[4, 0]].astype(np.float32))
    assert stored_probabilities(column) is None and stored_probabilities(column, []).shape == (0, 0)


def test_predictions_written_without_probabilities_read_as_null(tmp_path):
    path = tmp_path / "p0.parquet"
    with _writer(path) as writer:
        _predict(writer, ["a"], np.array([[0.1, 0.2, 0.3, 0.3, 0.1]]), with_probabilities=False)
    assert read_results(path).column("probabilities").to_pylist() == [None]


def test_a_file_from_before_probabilities_reads_with_the_column_null(tmp_path):
    path = tmp_path / "p0.parquet"
    with _writer(path) as writer:
        _predict(writer, ["a", "b"], np.array([[0.1, 0.2, 0.3, 0.3, 0.1], [0.5, 0.1, 0.1, 0.2, 0.1]]))
    old = read_results(path).drop_columns(["probabilities"])
    pq.write_table(old.replace_schema_metadata(pq.read_schema(path).metadata), path, write_page_checksum=True)
    table = read_results(path)
    assert table.schema == RESULT_SCHEMA
    assert table.column("probabilities").to_pylist() == [None, None]


def test_the_settings_key_names_the_outputs_version():
    assert settings_key("fp32", 5, "px") == "precision=fp32;top_k=5;pixels=px;outputs=2"


def test_a_file_written_with_the_previous_settings_key_is_not_reused(tmp_path):
    path = tmp_path / "p0.parquet"
    with _writer(path, top_k=2) as writer:
        _predict(writer, ["a"], np.array([[0.1, 0.2, 0.3, 0.3, 0.1]]))
    assert read_reusable(path, "fp32", 2, "px").num_rows == 1  # the current key: reused
    assert read_reusable(path, "fp32", 3, "px") is None and read_reusable(path, "bf16", 2, "px") is None
    assert read_reusable(path, "fp32", 2, "other") is None

    # the same file as the previous version wrote it: its settings key without ";outputs=2"
    table = pq.read_table(path)
    metadata = dict(table.schema.metadata)
    assert metadata[b"settings"] == b"precision=fp32;top_k=2;pixels=px;outputs=2"
    metadata[b"settings"] = b"precision=fp32;top_k=2;pixels=px"
    pq.write_table(table.replace_schema_metadata(metadata), path, write_page_checksum=True)
    assert json.loads(pq.read_schema(path).metadata[b"class_names"]) == CLASSES
    warnings = []
    assert read_reusable(path, "fp32", 2, "px", warn=warnings.append) is None
    assert warnings == []  # not damaged: just made by other settings
    assert read_results(path).num_rows == 1  # still a valid file to load


def test_no_file_is_nothing_to_reuse(tmp_path):
    assert read_reusable(tmp_path / "missing.parquet", "fp32", 2, "px") is None

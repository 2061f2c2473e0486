"""The evaluation asset against labels: folder names, ImageNet WordNet ids and a table's label
column, on a labelled set built from the real sample photos."""

import shutil

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inference_assets.core.reporting.evaluation import evaluate, normalize, synonyms, truth_names
from inference_assets_tests.conftest import cpu_resources, run_all_steps, source_resource, work_area_resource
from inference_assets_tests.support.environment import SAMPLE_IMAGES


@pytest.mark.fast
def test_label_matching():
    assert synonyms("tabby, tabby cat") == {"tabby, tabby cat", "tabby", "tabby cat"}
    assert normalize("Tiger_Cat") == normalize("tiger-cat") == "tiger cat"
    assert truth_names("n02123159") == {"tiger cat"}  # ImageNet's WordNet id of 'tiger cat'
    assert truth_names("n01440764") == {"tench", "tench, tinca tinca", "tinca tinca"}
    assert truth_names("not a wnid") == {"not a wnid"}


@pytest.mark.fast
def test_accuracy_per_class_and_confusions_from_a_predictions_table():
    conn = duckdb.connect()
    conn.execute("CREATE TABLE predictions (image_id VARCHAR, label VARCHAR, class_label VARCHAR, topk_labels VARCHAR[])")
    rows = [
        ("a", "tabby", "tiger cat", ["tiger cat", "tabby, tabby cat"]),  # top-1 miss, top-5 hit
        ("b", "tabby", "tabby, tabby cat", ["tabby, tabby cat"]),  # hit
        ("c", "n02123159", "tiger cat", ["tiger cat"]),  # WordNet id, hit
        ("d", "espresso", "cup", ["cup", "coffee mug"]),  # miss both
        ("e", "holiday photos", "cup", ["cup"]),  # not a class: left out
        ("f", None, "cup", ["cup"]),  # unlabelled: left out
    ]
    conn.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?)", rows)
    summary = evaluate(conn)
    assert (summary.labelled, summary.evaluated, dict(summary.unknown_labels)) == (5, 4, {"holiday photos": 1})
    assert (summary.top1_correct, summary.top5_correct) == (2, 3)
    assert conn.execute("FROM evaluation_summary").fetchone() == (5, 4, 1, 0.5, 0.75)
    assert conn.execute("SELECT label, images, top1_accuracy, top5_accuracy FROM evaluation_classes ORDER BY label").fetchall() == [
        ("espresso", 1, 0.0, 0.0), ("n02123159", 1, 1.0, 1.0), ("tabby", 2, 0.5, 1.0)]
    assert conn.execute("FROM evaluation_confusions ORDER BY label").fetchall() == [("espresso", "cup", 1), ("tabby", "tiger cat", 1)]
    assert conn.execute("SELECT count(*) FROM evaluation_images").fetchone() == (4,)


def _run(source, tmp_path):
    results = run_all_steps(cpu_resources(source, work_area_resource(tmp_path / "work"), tmp_path / "warehouse.duckdb"))
    metadata = results[-1].asset_materializations_for_node("evaluation")[0].metadata
    return {k: v.value for k, v in metadata.items()}


def test_the_evaluation_asset_on_labelled_photos(image_root, tmp_path):
    # folder labels: class names (espresso, tabby, tripod, missile), a WordNet id, a spelling variant
    # and a folder name that is no class
    for folder, source in [("n02123159", "tabby/chelsea.png"), ("Tiger_Cat", "tabby/chelsea.png"),
                           ("holiday", "astronaut.jpg")]:
        (image_root / folder).mkdir()
        shutil.copy(image_root / source, image_root / folder / f"copy{(image_root / source).suffix}")
    metadata = _run(source_resource(image_root=str(image_root)), tmp_path)
    # chelsea is a tabby that the model calls 'tiger cat' (tabby is its third guess)
    assert (metadata["labelled_images"], metadata["evaluated_images"], metadata["unknown_labels"]) == (7, 6, 1)
    assert metadata["top1_accuracy"] == pytest.approx(5 / 6) and metadata["top5_accuracy"] == 1.0
    assert "| tabby | tiger cat | 1 |" in metadata["most_confused"]
    assert "| holiday | 1 |" in metadata["labels_not_in_the_model"]
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT label FROM evaluation_classes WHERE top1_accuracy < 1").fetchall() == [("tabby",)]


@pytest.mark.fast
def test_a_label_column_from_a_table(tmp_path):
    rows = [{"uri": str(SAMPLE_IMAGES / "espresso/coffee.jpg"), "label": "espresso"},
            {"uri": str(SAMPLE_IMAGES / "tripod/camera.png"), "label": "n04485082"},  # tripod's WordNet id
            {"uri": str(SAMPLE_IMAGES / "missile/rocket.jpg"), "label": "space shuttle"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "labelled.parquet")
    metadata = _run(source_resource(image_table=str(tmp_path / "labelled.parquet")), tmp_path)
    assert (metadata["evaluated_images"], metadata["top1_accuracy"]) == (3, pytest.approx(2 / 3))
    assert "| space shuttle | missile | 1 |" in metadata["most_confused"]

"""The HTML report, opened in a real headless Chromium: it loads without console messages, shows
the expected numbers, labels and pictures, needs no network, and its screenshot is not blank."""

import re
import shutil

import duckdb
import numpy as np
from PIL import Image

from inference_assets_tests.conftest import cpu_resources, run_all_steps, source_resource, work_area_resource
from inference_assets_tests.support import browser
from tools import screenshots


def _number(dom: str, element_id: str) -> str:
    return re.search(rf'id="{element_id}"><b>([^<]+)</b>', dom).group(1)


def test_the_report_in_a_real_browser(image_root, tmp_path):
    (image_root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (image_root / "holiday").mkdir()
    shutil.copy(image_root / "espresso" / "coffee.jpg", image_root / "holiday" / "coffee-copy.jpg")
    work_area = work_area_resource(tmp_path / "work")
    source = source_resource(image_root=str(image_root))
    results = run_all_steps(cpu_resources(source, work_area, tmp_path / "warehouse.duckdb"))
    path = work_area.layout.report_path
    metadata = {k: v.value for k, v in results[-1].asset_materializations_for_node("report")[0].metadata.items()}
    assert (metadata["images"], metadata["predicted"], metadata["failed"], metadata["thumbnails"]) == (8, 7, 1, 14)  # 7 in the gallery + 7 least confident

    # what the Dagster UI shows for each asset
    def meta(result, node):
        return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}

    manifest, predictions, warehouse = meta(results[0], "image_manifest"), meta(results[1], "prediction_files"), meta(results[2], "prediction_results")
    assert manifest["sample_images"].count("](data:image/png;base64,") == 4
    assert predictions["sample_predictions"].count("](data:image/png;base64,") == 5
    assert {"images_per_second", "device", "precision", "batch_size", "seconds", "predict_seconds", "reused", "predicted"} <= set(predictions)
    stages = [predictions[f"{stage}_seconds"] for stage in ("read", "model", "write")]  # time per stage
    assert all(t >= 0 for t in stages) and stages[1] > 0 and sum(stages) <= predictions["seconds"]
    rows = [line for line in predictions["per_partition"].splitlines() if line.startswith("| shard-")]
    assert len(rows) == 16 and sum(int(line.split(" | ")[2]) for line in rows) == predictions["predicted"] == 7
    for chart in ("class_distribution", "confidence_histogram"):
        assert warehouse[chart].startswith("![") and "data:image/png;base64," in warehouse[chart]
    assert "| decode | OSError: " in warehouse["failures_by_reason"] and "| 1 |" in warehouse["failures_by_reason"]
    assert "| predictions | 7 |" in warehouse["tables"] and len(warehouse["preview"].records) == 7
    assert {c.name for c in warehouse["dagster/column_schema"].columns} >= {"image_id", "class_label", "confidence", "topk_labels"}

    html = path.read_text()
    assert not re.search(r'(src|href)="(?!data:)', html), "the page refers to something outside itself"

    page = browser.load(path.as_uri())
    assert page.console == []
    dom = page.dom
    assert (_number(dom, "images"), _number(dom, "predicted"), _number(dom, "failed")) == ("8", "7", "1")
    assert _number(dom, "top1") == "75.0%" and _number(dom, "top5") == "100.0%"  # chelsea: a tabby called tiger cat
    for label in ("espresso (2)", "tiger cat", "tripod", "missile"):
        assert label.split(" (")[0] in dom
    assert re.search(r"<h3>espresso <small>\(2\)</small></h3>", dom)
    assert "broken.jpg" in dom and "decode" in dom  # the failure and its stage
    assert "tabby</td><td>tiger cat</td><td>1</td>" in dom  # the evaluation's confusion
    # the calibration of the one model (a reliability diagram) and the review queue's cards follow
    assert 'id="calibration"' in dom and 'id="reliability-tf_efficientnet_lite0"' in dom
    assert 'id="review-queue"' in dom and 'id="comparison"' not in dom  # one model: nothing to compare
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as conn:
        queued = conn.execute("SELECT count(*) FROM review_queue").fetchone()[0]
    assert queued >= 2  # chelsea.png: not its label (tabby); broken.jpg is no prediction, so never queued
    images = re.findall(r'<img [^>]*src="([^"]+)"', dom)
    assert len(images) == 2 + 14 + 1 + queued and all(src.startswith("data:image/png;base64,") for src in images)

    shot = browser.screenshot(path.as_uri(), tmp_path / "report.png")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    not_white = (pixels < 240).any(axis=2).mean()
    assert pixels.shape[:2] == (1600, 1200) and not_white > 0.05, f"screenshot looks blank ({not_white:.1%} drawn)"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000  # photos and charts, not flat colour

    # the README's picture of the report (make screenshots): the top of the page, small
    small = screenshots.report(path, tmp_path / "report-small.png", tmp_path)
    with Image.open(small) as image:
        assert image.mode == "P" and image.width == 900 and small.stat().st_size < 150_000
        assert (np.asarray(image.convert("L")) < 128).mean() > 0.01  # text and pictures drawn

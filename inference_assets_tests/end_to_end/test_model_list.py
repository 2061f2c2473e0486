"""Several models over one collection, through `make run`'s entry point with the real Lite0/Lite1/Lite2
weights on the sample photos: adding a model computes only its work (pixels shared where the
preprocessing is the same), removing one drops its rows; the ensemble is the mean of its members'
stored probabilities; the comparison equals a direct computation on the stored rows; the review
queue's files load back; the report shows the comparison in a real browser."""

import csv
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import duckdb
import numpy as np

from inference_assets.core.storage.results import read_results
from inference_assets_tests.support import browser
from inference_assets_tests.support.environment import PROJECT_ROOT, pipeline_env

MODELS_FILE = """\
primary: lite0
models:
  lite1: {model: tf_efficientnet_lite1}
  lite2: {model: tf_efficientnet_lite2}
  lite0_flip: {model: tf_efficientnet_lite0, tta: flip}
ensembles:
  lite_mean: {members: {lite0: 1, lite1: 1, lite2: 2}}
"""


def _run(env: dict) -> str:
    done = subprocess.run([sys.executable, "-m", "inference_assets.run", "--progress", "log"], env=env,
                          cwd=PROJECT_ROOT, capture_output=True, timeout=900)
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, out[-4000:]
    return out


def _files(work: Path) -> dict[str, int]:
    """Every pixel and result file under the work folder, with its modification time."""
    return {str(p.relative_to(work)): p.stat().st_mtime_ns
            for folder in ("preprocessed", "predictions") for p in (work / folder).rglob("*") if p.is_file()}


def _folders(paths, top: str) -> set[str]:
    return {p.split("/")[1] for p in paths if p.startswith(f"{top}/")}


def _probabilities(folder: Path) -> dict[str, np.ndarray]:
    rows = {}
    for path in sorted(folder.glob("*.parquet")):
        for row in read_results(path).to_pylist():
            if row["status"] == "predicted":
                rows[row["image_id"]] = np.array(row["probabilities"], dtype=np.float64)
    return rows


def test_models_side_by_side_from_the_command_line(image_root, tmp_path):
    env = pipeline_env(image_root, tmp_path)
    work, database = tmp_path / "work", tmp_path / "warehouse.duckdb"

    _run(env)  # the primary model alone, as before
    alone = _files(work)
    with duckdb.connect(str(database), read_only=True) as conn:
        assert conn.execute("SELECT model_name, kind, is_primary FROM models").fetchall() == [
            ("tf_efficientnet_lite0", "model", True)]
        assert conn.execute("SELECT count(*) FROM model_predictions").fetchone()[0] == 6

    # adding Lite1: only its pixels (240x240) and its predictions are computed
    _run({**env, "INFERENCE_MODELS": "lite1=tf_efficientnet_lite1"})
    with_lite1 = _files(work)
    assert {path: with_lite1[path] for path in alone} == alone, "a file of the primary model was rewritten"
    added = set(with_lite1) - set(alone)
    assert len(_folders(added, "preprocessed")) == 1 and len(_folders(added, "predictions")) == 1
    with duckdb.connect(str(database), read_only=True) as conn:
        assert conn.execute("SELECT model_name, predictions FROM models ORDER BY position").fetchall() == [
            ("tf_efficientnet_lite0", 6), ("lite1", 6)]

    # a file: Lite2, Lite0 with flip TTA (Lite0's pixels: no new pixel set), a weighted ensemble
    models_file = tmp_path / "models.yaml"
    models_file.write_text(MODELS_FILE)
    out = _run({**env, "INFERENCE_MODELS": str(models_file)})
    everything = _files(work)
    assert {path: everything[path] for path in with_lite1} == with_lite1, "Lite0's or Lite1's files were rewritten"
    added = set(everything) - set(with_lite1)
    assert len(_folders(added, "preprocessed")) == 1, "only Lite2 (260x260) needs pixels of its own"
    assert len(_folders(added, "predictions")) == 3  # lite2, lite0_flip, lite_mean

    with duckdb.connect(str(database), read_only=True) as conn:
        models = conn.execute("SELECT model_name, kind, tta, members, member_weights, predictions FROM models "
                              "ORDER BY position").fetchall()
        assert models == [
            ("lite0", "model", None, None, None, 6), ("lite1", "model", None, None, None, 6),
            ("lite2", "model", None, None, None, 6), ("lite0_flip", "model", "flip", None, None, 6),
            ("lite_mean", "ensemble", None, ["lite0", "lite1", "lite2"], [1.0, 1.0, 2.0], 6)]
        # the primary model's rows are the predictions table's
        assert conn.execute("SELECT image_id, class_label, confidence FROM model_predictions WHERE model_name = "
                            "'lite0' EXCEPT SELECT image_id, class_label, confidence FROM predictions").fetchall() == []

        # the ensemble: the weighted mean of its members' stored probabilities
        identities = dict(conn.execute("SELECT model_name, any_value(model_id) FROM model_predictions "
                                       "GROUP BY 1").fetchall())
        assert identities["lite_mean"] and len(set(identities.values())) == 5  # each model its own identity
        top1 = dict(conn.execute("SELECT image_id, class_index FROM model_predictions "
                                 "WHERE model_name = 'lite_mean'").fetchall())

        # the comparison equals a direct computation on the stored rows
        direct = conn.execute("""
            SELECT a.model_name, b.model_name, count(*), sum((a.class_index = b.class_index)::INT)
            FROM model_predictions a JOIN model_predictions b USING (image_id)
            JOIN models ma ON ma.model_name = a.model_name JOIN models mb ON mb.model_name = b.model_name
            WHERE ma.position < mb.position GROUP BY 1, 2 ORDER BY 1, 2""").fetchall()
        stored = conn.execute("SELECT model_a, model_b, images, agreements FROM comparison_pairs "
                              "ORDER BY 1, 2").fetchall()
        assert stored == direct and len(stored) == 10
        changes = conn.execute("SELECT model_a, model_b, count(*) FROM comparison_changes GROUP BY 1, 2").fetchall()
        assert {(a, b): n for a, b, n in changes} == {(a, b): n - agree for a, b, n, agree in direct if n > agree}
        # each model's accuracy on the labelled photos; the primary model's equals the evaluation's
        accuracy = dict(conn.execute("SELECT model_name, top1_accuracy FROM model_accuracy").fetchall())
        assert accuracy["lite0"] == conn.execute("SELECT top1_accuracy FROM evaluation_summary").fetchone()[0]
        assert set(accuracy) == {"lite0", "lite1", "lite2", "lite0_flip", "lite_mean"}

        calibration = conn.execute("SELECT model_name, images, ece FROM calibration_summary ORDER BY 1").fetchall()
        assert [name for name, _, _ in calibration] == sorted(accuracy)
        assert all(images == 4 and 0 <= ece <= 1 for _, images, ece in calibration)

        queue = conn.execute("SELECT rank, image_id, reasons FROM review_queue ORDER BY rank").fetchall()
    ensemble_dir = next(p for p in (work / "predictions").iterdir() if p.name.startswith("ensemble-lite_mean-"))
    members = {}
    for name in ("lite0", "lite1", "lite2"):
        folder = next(p for p in (work / "predictions").iterdir()
                      if p.name.startswith(f"tf_efficientnet_{name}-") and not p.name.endswith("-flip"))
        members[name] = _probabilities(folder)
    mean = _probabilities(ensemble_dir)
    assert len(mean) == 6
    for image_id, probabilities in mean.items():
        expected = (members["lite0"][image_id] + members["lite1"][image_id] + 2 * members["lite2"][image_id]) / 4
        assert np.allclose(probabilities, expected, atol=1e-6)
        assert top1[image_id] == int(np.argmax(expected))
    assert "lite_mean" in out and "lite0 vs lite1" in out

    # the review queue's files load back: the CSV, Label Studio's tasks and its labelling config
    review = work / "review"
    with open(review / "review_queue.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["rank"]), r["image_id"]) for r in rows] == [(rank, image) for rank, image, _ in queue]
    assert queue and {"lite0_label", "lite_mean_confidence"} <= set(rows[0])
    tasks = [json.loads(line) for line in (review / "label_studio_tasks.jsonl").read_text().splitlines()]
    assert [t["data"]["image_id"] for t in tasks] == [image for _, image, _ in queue]
    assert all(Path(t["data"]["image"]).exists() for t in tasks)
    assert [p["model_version"] for p in tasks[0]["predictions"]] == ["lite0", "lite1", "lite2", "lite0_flip",
                                                                     "lite_mean"]
    choices = {c.get("value") for c in ET.parse(review / "label_studio_config.xml").iter("Choice")}
    assert all(p["result"][0]["value"]["choices"][0] in choices for t in tasks for p in t["predictions"])

    # the report shows the comparison, with thumbnails of the changed images, in a real browser
    page = browser.load((work / "report" / "index.html").as_uri())
    assert page.console == []
    dom = page.dom
    for section in ("comparison", "model-accuracy", "calibration", "review-queue"):
        assert f'id="{section}"' in dom, section
    changed = [f"{a}-{b}" for a, b, n, agree in direct if n > agree]
    assert changed and all(f'id="changes-{pair}"' in dom for pair in changed)
    block = dom[dom.index(f'id="changes-{changed[0]}"'):]
    assert re.search(r'<img src="data:image/png;base64,', block[:20000])
    assert 'id="reliability-lite0"' in dom

    # removing models from the list drops their rows (their files stay, for when they come back)
    _run(env)
    with duckdb.connect(str(database), read_only=True) as conn:
        assert conn.execute("SELECT model_name FROM models").fetchall() == [("tf_efficientnet_lite0",)]
        assert conn.execute("SELECT DISTINCT model_name FROM model_predictions").fetchall() == [
            ("tf_efficientnet_lite0",)]
        assert conn.execute("SELECT count(*) FROM comparison_pairs").fetchone()[0] == 0

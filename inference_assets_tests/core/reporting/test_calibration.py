"""Calibration: ECE and reliability bins by hand, synthetic calibrated and over-confident models,
the temperature fit, label matching against ImageNet's classes, the stored tables and the report
section."""

import math
import sys
import tracemalloc
from html.parser import HTMLParser

import duckdb
import numpy as np
import pytest

from inference_assets.core.reporting import charts
from inference_assets.core.reporting.calibration import (
    CALIBRATION_TABLES,
    MIN_FIT_IMAGES,
    apply_temperature,
    calibrate,
    calibrated_confidences,
    calibration_html,
    expected_calibration_error,
    fit_temperature,
    halves,
    label_targets,
    reliability_bins,
    store_calibrated_predictions,
    store_calibration,
    stored_calibrations,
)
from inference_assets.core.warehouse.database import table_columns

pytestmark = pytest.mark.fast

HOSTILE = '<img src=x onerror=alert(1)>"&'


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _over_confident(n: int = 20000, classes: int = 10, temperature: float = 2.5, seed: int = 0):
    """Stored probabilities softmax(z) of a model whose labels follow softmax(z / temperature)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, classes)) * 4.0
    truth = _softmax(z / temperature)
    targets = (truth.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1).clip(0, classes - 1)
    return _softmax(z), targets


def test_ece_and_bins_match_a_hand_computation():
    confidences = [0.95, 0.9, 0.6, 0.55, 0.2]
    correct = [True, False, True, True, False]
    # bins of width 0.2: (0.8, 1] holds 0.95 and 0.9 (confidence 0.925, accuracy 0.5); (0.4, 0.6] holds
    # 0.6 and 0.55 (0.575, 1.0); (0, 0.2] holds 0.2 (0.2, 0.0)
    expected = (2 * abs(0.5 - 0.925) + 2 * abs(1.0 - 0.575) + 1 * abs(0.0 - 0.2)) / 5
    assert expected_calibration_error(confidences, correct, bins=5) == pytest.approx(expected) == pytest.approx(0.38)
    bins = reliability_bins(confidences, correct, bins=5)
    assert [(round(b.lower, 6), round(b.upper, 6), b.images) for b in bins] == [
        (0.0, 0.2, 1), (0.2, 0.4, 0), (0.4, 0.6, 2), (0.6, 0.8, 0), (0.8, 1.0, 2)]
    assert (bins[4].confidence, bins[4].accuracy) == (pytest.approx(0.925), 0.5)
    assert (bins[1].confidence, bins[1].accuracy) == (None, None)
    assert expected_calibration_error([], []) == 0.0


def test_a_perfectly_calibrated_set_has_ece_near_zero():
    rng = np.random.default_rng(7)
    confidences = rng.uniform(0.05, 1.0, size=200_000)
    correct = rng.random(confidences.size) < confidences  # right with probability = confidence
    assert expected_calibration_error(confidences, correct) < 0.01
    assert expected_calibration_error(confidences, ~correct) > 0.3  # the reverse is badly calibrated


def test_the_temperature_of_an_over_confident_model_is_recovered():
    probabilities, targets = _over_confident()
    temperature = fit_temperature(np.log(probabilities), targets)
    assert temperature == pytest.approx(2.5, rel=0.1)
    result = calibrate(probabilities, targets)
    assert result.images == len(targets) and result.note is None
    assert result.temperature == pytest.approx(temperature)
    assert result.ece_after < result.ece_before / 2
    assert result.nll_after < result.nll_before
    assert result.confidence > result.accuracy  # over-confident before scaling
    assert len(result.bins_before) == len(result.bins_after) == 15
    assert sum(b.images for b in result.bins_after) == len(targets)


def test_an_under_confident_model_gets_a_temperature_below_one():
    probabilities, targets = _over_confident(temperature=0.5, seed=1)
    assert fit_temperature(np.log(probabilities), targets) == pytest.approx(0.5, rel=0.1)


def test_unlabelled_rows_are_left_out_and_few_labels_fit_no_temperature():
    probabilities, targets = _over_confident(n=MIN_FIT_IMAGES + 5)
    targets[:10] = -1
    result = calibrate(probabilities, targets)
    assert result.images == MIN_FIT_IMAGES - 5
    assert result.temperature is None and result.ece_after is None and result.bins_after == []
    assert result.ece_before is not None and "labelled images" in result.note
    assert calibrate(probabilities, targets, fit=False).note == "temperature scaling not requested"
    empty = calibrate(probabilities, np.full(len(targets), -1))
    assert (empty.images, empty.ece_before, empty.temperature) == (0, None, None) and empty.note
    with pytest.raises(ValueError, match="class indices"):
        fit_temperature(np.log(probabilities), np.full(len(targets), -1))


def test_held_out_scales_each_half_by_the_temperature_of_the_other():
    probabilities, targets = _over_confident(n=400, seed=3)
    half = np.random.default_rng(4).integers(0, 2, size=len(targets))
    targets[:7] = -1  # unlabelled rows are left out of both halves
    result = calibrate(probabilities, targets, half=half)
    known = targets >= 0
    p, t, h = probabilities[known], targets[known], half[known]
    confidence, nll = np.empty(len(t)), 0.0
    for side in (0, 1):  # by hand: fit on one half, apply to the other
        temperature = fit_temperature(np.log(p[h != side]), t[h != side])
        scaled = apply_temperature(p[h == side], temperature)
        confidence[h == side] = scaled.max(axis=1)
        nll -= np.log(scaled[np.arange(len(scaled)), t[h == side]]).sum()
    correct = p.argmax(axis=1) == t
    assert result.ece_held_out == pytest.approx(expected_calibration_error(confidence, correct))
    assert result.nll_held_out == pytest.approx(nll / len(t), rel=1e-6)
    # on a model whose over-confidence is one temperature, the held-out ECE is close to the in-sample one
    assert result.ece_held_out < result.ece_before / 2 and abs(result.ece_held_out - result.ece_after) < 0.05


def test_held_out_needs_ten_images_in_each_half_and_a_fit():
    probabilities, targets = _over_confident(n=40, seed=5)
    one_sided = np.zeros(len(targets), dtype=int)
    one_sided[:9] = 1  # 9 images in one half: too few to fit its temperature on
    result = calibrate(probabilities, targets, half=one_sided)
    assert result.temperature is not None and (result.ece_held_out, result.nll_held_out) == (None, None)
    balanced = calibrate(probabilities, targets)  # alternate rows: 20 and 20
    assert balanced.ece_held_out is not None and balanced.nll_held_out > 0
    assert calibrate(probabilities, targets, fit=False).ece_held_out is None
    with pytest.raises(ValueError, match="halves"):
        calibrate(probabilities, targets, half=one_sided[:10])


def test_an_image_keeps_its_half_whatever_the_order_and_the_halves_are_even():
    ids = [f"image-{n:05d}" for n in range(10_000)]
    split = halves(ids)
    assert set(np.unique(split)) == {0, 1} and 0.47 < split.mean() < 0.53
    assert dict(zip(ids, split)) == dict(zip(ids[::-1], halves(ids[::-1])))
    assert list(halves(ids[:50])) == list(split[:50])  # more images do not move the earlier ones


def test_calibrating_many_images_makes_no_float64_copy_of_their_probabilities():
    n, classes = 8000, 1000
    rng = np.random.default_rng(6)
    probabilities = _softmax(rng.normal(size=(n, classes)) * 4).astype(np.float32)  # as result files store them
    targets = rng.integers(0, classes, size=n)
    tracemalloc.start()
    try:
        result = calibrate(probabilities, targets)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # its float32 log, half of it while fitting, fixed-size float64 blocks: about 3x the input (32 MB),
    # where whole float64 copies took 9.5x
    assert result.temperature is not None and result.ece_held_out is not None
    assert peak < 4 * probabilities.nbytes, f"{peak / probabilities.nbytes:.1f}x the probabilities"


def test_apply_temperature_keeps_rows_normalized_and_the_top_class():
    probabilities, _ = _over_confident(n=200)
    np.testing.assert_allclose(apply_temperature(probabilities, 1.0), probabilities, rtol=1e-9, atol=1e-12)
    softer = apply_temperature(probabilities, 2.5)
    np.testing.assert_allclose(softer.sum(axis=1), 1.0)
    assert (softer.max(axis=1) <= probabilities.max(axis=1) + 1e-12).all()
    index, confidence = calibrated_confidences(probabilities, 2.5)
    assert (index == probabilities.argmax(axis=1)).all()
    np.testing.assert_allclose(confidence, softer.max(axis=1))
    zeros = np.array([[1.0, 0.0, 0.0]])  # a stored 0 is clipped, not -inf
    assert np.isfinite(apply_temperature(zeros, 3.0)).all()
    with pytest.raises(ValueError, match="> 0"):
        apply_temperature(probabilities, 0.0)


def test_labels_match_imagenet_classes_as_the_evaluation_does():
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in range(info.num_classes())]
    tabby = names.index("tabby, tabby cat")
    labels = ["tabby", "n02123045", "Tabby_Cat", "holiday photos", None, "tabby"]
    assert label_targets(labels, names).tolist() == [tabby, tabby, tabby, -1, -1, tabby]
    assert label_targets([], names).dtype == np.int64


def _described(table):
    return [(c.name, c.type, c.nullable, c.unique) for c in table.columns]


def test_stored_tables_match_their_descriptions():
    probabilities, targets = _over_confident(n=500)
    results = {"lite0": calibrate(probabilities, targets), "few": calibrate(probabilities[:5], targets[:5])}
    for contents in ({}, results):  # empty tables are typed all the same
        with duckdb.connect() as conn:
            store_calibration(conn, contents)
            store_calibrated_predictions(conn, {})
            made = {name for (name,) in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
            assert made == set(CALIBRATION_TABLES)
            for name, table in CALIBRATION_TABLES.items():
                assert _described(table) == [(c.name, c.type, c.nullable, c.unique) for c in table_columns(conn, name)]
                assert table.description.strip() and all(c.description.strip() for c in table.columns)
            if contents:
                rows = conn.execute(
                    "SELECT model_name, images, temperature, note IS NULL FROM calibration_summary ORDER BY model_name"
                ).fetchall()
                assert rows[0][:3] == ("few", 5, None) and not rows[0][3]
                assert rows[1][0:2] == ("lite0", 500) and math.isclose(rows[1][2], results["lite0"].temperature)
                assert conn.execute(
                    "SELECT scaled, count(*), sum(images) FROM calibration_bins WHERE model_name = 'lite0' "
                    "GROUP BY scaled ORDER BY scaled").fetchall() == [(False, 15, 500), (True, 15, 500)]
                assert conn.execute("SELECT count(*) FROM calibration_bins WHERE scaled AND model_name = 'few'"
                                    ).fetchone() == (0,)
                assert stored_calibrations(conn) == results  # every field, held-out ones included, reads back
                # a table from before the held-out columns (calibration not run since an upgrade) still reads
                conn.execute("ALTER TABLE calibration_summary DROP COLUMN ece_held_out")
                conn.execute("ALTER TABLE calibration_summary DROP COLUMN nll_held_out")
                assert stored_calibrations(conn)["lite0"].ece_held_out is None


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(text: str) -> _Tags:
    parser = _Tags()
    parser.feed(text)
    return parser


def test_the_report_section_escapes_model_names_and_shows_a_diagram_per_model():
    probabilities, targets = _over_confident(n=500)
    results = {HOSTILE: calibrate(probabilities, targets), "lite1": calibrate(probabilities, targets, fit=False)}
    with duckdb.connect() as conn:
        conn.execute("CREATE TABLE models (model_name VARCHAR, position INTEGER)")
        conn.execute("INSERT INTO models VALUES ('lite1', 0), (?, 1)", [HOSTILE])
        text = calibration_html(conn, results)
    assert text.startswith('<h2>Calibration</h2><div id="calibration">') and text.endswith("</div>")
    assert HOSTILE not in text and "onerror=alert(1)>" not in text
    parsed = _parse(text)
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert [attrs["id"] for attrs in images] == ["reliability-lite1", f"reliability-{HOSTILE}"]  # configuration order
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,") and set(attrs) == {"id", "src", "alt"}
    assert HOSTILE in "".join(parsed.text)  # shown as text
    assert "never replaced" in text and "fitted on the labelled images" in text


def test_without_matplotlib_the_section_says_why_there_is_no_diagram(monkeypatch):
    probabilities, targets = _over_confident(n=100)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with duckdb.connect() as conn:
        text = calibration_html(conn, {"lite0": calibrate(probabilities, targets)})
        assert "<img" not in text and charts.MISSING in text
        assert "No model has labelled images" in calibration_html(conn, {})
